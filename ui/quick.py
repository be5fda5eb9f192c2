"""A fast first paint: describe the model from its config.json while the model itself loads in the background.

The home page's sidebar only needs the model's type, layers, heads and labels, all in
config.json, which reads in milliseconds, while importing torch and transformers and
loading the weights takes seconds on a cold start. ``describe(source)`` returns that
line (or None when it cannot be read cheaply: a hub id, a missing folder; the caller then
loads the model the usual way and shows its errors). ``warm(source)`` loads the model
into the shared cache (``ui.state.load_base``) in a background thread, so the next page
finds it ready. Nothing here imports torch.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

__all__ = ["describe", "describe_data", "warm"]

log = logging.getLogger(__name__)
_started: set = set()
_lock = threading.Lock()

# per model_type: (layers key, heads key); the architectures axlab supports
_KEYS = {"bert": ("num_hidden_layers", "num_attention_heads"), "roberta": ("num_hidden_layers", "num_attention_heads"),
         "electra": ("num_hidden_layers", "num_attention_heads"), "distilbert": ("n_layers", "n_heads"),
         "vit": ("num_hidden_layers", "num_attention_heads"), "deit": ("num_hidden_layers", "num_attention_heads"),
         "dinov2": ("num_hidden_layers", "num_attention_heads")}
_IMAGE_TYPES = {"vit", "deit", "dinov2"}
# built-in sources -> the cache folder names they are saved under (models/<prefix>*)
_BUILTIN = {"default": "default-", "default-vision": "default-vision-"}


def _folder(source: str) -> Path | None:
    from axlab.core.paths import cache_dir
    if source in _BUILTIN:
        prefix = _BUILTIN[source]
        others = [o for o in _BUILTIN.values() if o != prefix and o.startswith(prefix)]   # default- vs default-vision-
        found = [p.parent for p in cache_dir("models").glob(f"{prefix}*/config.json")
                 if (p.parent / "model.safetensors").exists() and not p.parent.name.startswith(tuple(others))]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None
    p = Path(source).expanduser()
    if (p / "config.json").exists() and (p / "model.safetensors").exists() and not (p / "axlab_variant.json").exists():
        return p
    return None


def describe(source: str) -> str | None:
    """``bert, 6 layers x 12 heads, 2 labels, reads text`` from config.json, or None (then load the model to know)."""
    try:
        folder = _folder(source)
        if folder is None:
            return None
        cfg = json.loads((folder / "config.json").read_text())
        keys = _KEYS.get(cfg.get("model_type"))
        if keys is None or cfg.get("auto_map"):
            return None
        n_labels = len(cfg.get("id2label") or {}) or int(cfg.get("num_labels") or 0)
        if not n_labels:
            return None
        reads = "images" if cfg["model_type"] in _IMAGE_TYPES else "text"
        return (f"{cfg['model_type']}, {int(cfg[keys[0]])} layers x {int(cfg[keys[1]])} heads, {n_labels} labels, "
                f"reads {reads}")
    except Exception:  # noqa: BLE001  (the usual load path reports what is wrong)
        return None


def describe_data(source: str, dataset: str) -> str | None:
    """``9,752 train / 1,000 val / 2,000 test`` from the model card, when the model was built on this dataset
    (its split is fixed by the card's seed); None otherwise."""
    try:
        folder = _folder(source)
        card = json.loads((folder / "axlab_card.json").read_text()) if folder is not None else {}
        sizes = card.get("split_sizes") or {}
        if card.get("dataset") != dataset or not all(k in sizes for k in ("train", "validation", "test")):
            return None
        return f"{sizes['train']:,} train / {sizes['validation']:,} val / {sizes['test']:,} test"
    except Exception:  # noqa: BLE001  (the usual load path reports what is wrong)
        return None


def warm(source: str, allow_pickle: bool = False, dataset: str | None = None) -> None:
    """Load the base model (and the dataset) into the shared caches in a background thread (once each)."""
    with _lock:
        if (source, allow_pickle, dataset) in _started:
            return
        _started.add((source, allow_pickle, dataset))

    def run():
        try:
            from .state import load_base, load_splits
            if dataset is not None:
                load_splits(dataset)
            load_base(source, allow_pickle)
        except Exception:  # noqa: BLE001  (the page that needs the model shows the error)
            log.info("background load of %s failed", source, exc_info=True)
            with _lock:
                _started.discard((source, allow_pickle, dataset))

    threading.Thread(target=run, name="axlab-warm-model", daemon=True).start()

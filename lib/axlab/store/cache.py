"""A small on-disk cache for analysis results (importance, head statistics).

A result is stored under ``axlab.paths.cache_dir("analysis")`` as one ``.npz`` file
(arrays) plus its key parts inside the file as JSON, so a cached file says what it is.
The key is a hash of:

* the model identity: :func:`model_key` hashes the state dict, the head layout and
  the top-k settings (so a pruned or quantized variant never reuses its base's
  results), or the caller passes its own ``model_key`` (e.g. a variant id);
* the data: :func:`split_key` hashes the texts and labels actually used;
* the method name and its parameters.

Usage::

    key = cache.make_key("importance", model=model_key(m), data=split_key(s), method="gradient")
    arrays = cache.load(key)            # None on a miss
    cache.save(key, {"importance": imp}, meta={...})
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from axlab.core.data import Split
from axlab.core.paths import cache_dir

__all__ = ["model_key", "split_key", "make_key", "load", "load_meta", "save", "clear", "cache_path", "cached"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def _hash_value(h, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.is_quantized:
            _hash_value(h, t.int_repr())
            scales = t.q_per_channel_scales() if t.qscheme() in (torch.per_channel_affine,
                                                                 torch.per_channel_symmetric) else t.q_scale()
            _hash_value(h, torch.as_tensor(scales))
            return
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        if t.numel():
            h.update(t.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, (tuple, list)):
        for v in value:
            _hash_value(h, v)
    else:
        h.update(repr(value).encode())


def model_key(model: nn.Module) -> str:
    """A content hash of a model: weights, head layout and top-k settings (16 hex chars)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(type(model).__name__.encode())
    for name, value in model.state_dict().items():
        h.update(name.encode())
        _hash_value(h, value)
    for mod_name, mod in model.named_modules():
        ids = getattr(mod, "axlab_head_ids", None)
        if ids is not None:
            h.update(f"{mod_name}:{list(ids)}:{getattr(mod, 'axlab_topk', None)}".encode())
    return h.hexdigest()


def split_key(split: Split) -> str:
    """A content hash of the inputs (texts, or images with their shapes) and labels of a split (16 hex chars)."""
    h = hashlib.blake2b(digest_size=8)
    for item, label in zip(split.inputs, split.labels):
        if isinstance(item, str):
            h.update(item.encode("utf-8", "surrogatepass"))
        else:
            a = np.ascontiguousarray(item)
            h.update(f"img{a.shape}{a.dtype}".encode())
            h.update(a.tobytes())
        h.update(f"\x00{int(label)}\x01".encode())
    return f"{len(split)}-{h.hexdigest()}"


def make_key(kind: str, **parts) -> str:
    """A file-name-safe key: ``kind`` plus a hash of the JSON of ``parts``."""
    blob = json.dumps({"v": FORMAT_VERSION, "kind": kind, **parts}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()}"


def cache_path(key: str) -> Path:
    return cache_dir("analysis") / f"{key}.npz"


def load(key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under ``key``, or None. A corrupt file counts as a miss."""
    path = cache_path(key)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            out = {k: f[k] for k in f.files if k != "__meta__"}
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable cache file %s: %s", path, e)
        return None
    log.info("cache hit %s", key)
    return out


def load_meta(key: str) -> dict | None:
    path = cache_path(key)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        return json.loads(str(f["__meta__"])) if "__meta__" in f.files else {}


def save(key: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> Path:
    """Store ``arrays`` (and JSON ``meta``) atomically under ``key``."""
    path = cache_path(key)
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__meta__"] = np.asarray(json.dumps(meta or {}, default=str))
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("cached %s", path)
    return path


def clear() -> int:
    """Delete every cached analysis result; returns how many files were removed."""
    n = 0
    for p in cache_dir("analysis").glob("*.npz"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def cached(kind: str, compute, *, model: nn.Module, split: Split, params: dict, enabled: bool = True,
           key: str | None = None) -> dict[str, np.ndarray]:
    """``compute() -> dict of arrays``, memoised on disk by model + data + kind + params.

    ``key`` replaces the model hash (e.g. a variant id the caller trusts); ``enabled=False``
    always computes and stores nothing.
    """
    if not enabled:
        return compute()
    parts = {"model": key or model_key(model), "data": split_key(split), "params": params}
    k = make_key(kind, **parts)
    hit = load(k)
    if hit is not None:
        return hit
    arrays = compute()
    save(k, arrays, meta={"kind": kind, **parts})
    return arrays

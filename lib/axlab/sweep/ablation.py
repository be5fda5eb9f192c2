"""Head ablation importance as Ray tasks: one evaluation per head, spread over workers.

The heads are cut into chunks (the heads of one layer, split further when there are
more workers than layers); each chunk is a Ray task running the same per-head
evaluation as :func:`axlab.analysis.importance.head_ablation` (gate one head to 0,
rerun the layers from that head's layer up on the cached hidden states). The driver
merges the chunks, so the result equals the sequential one; it is cached under the same
key, so either path finds the other's result.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from axlab.analysis.importance import AblationResult, _ablation_arrays, _check_split, _grid, _present_mask
from axlab.core.data import Split
from axlab.core.progress import Progress, as_progress
from axlab.store import cache
from axlab.sweep.session import ray_session

__all__ = ["ray_head_ablation", "head_chunks"]

log = logging.getLogger(__name__)
_MODELS: dict = {}                       # in a worker process: object id -> (model, tokenizer, split)


def head_chunks(model: nn.Module, n_chunks: int) -> list[list[tuple[int, int]]]:
    """The present heads in about ``n_chunks`` chunks, never mixing layers (a chunk shares one replay)."""
    present = _present_mask(model)
    per_layer = [[(layer, int(h)) for h in np.flatnonzero(present[layer].numpy())] for layer in range(len(present))]
    per_layer = [hs for hs in per_layer if hs]
    splits = max(1, math.ceil(n_chunks / max(1, len(per_layer))))
    chunks = []
    for hs in per_layer:
        size = math.ceil(len(hs) / min(splits, len(hs)))
        chunks += [hs[i:i + size] for i in range(0, len(hs), size)]
    return chunks


def _ablate_chunk(box: list, heads: list, batch_size: int, threads: int) -> dict:
    """Runs in a Ray worker: the per-head evaluation for ``heads`` only."""
    import ray
    key = box[0].hex()
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = ray.get(box[0])
    model, tokenizer, split = _MODELS[key]
    torch.set_num_threads(threads)
    return _ablation_arrays(model, tokenizer, split, batch_size, False, heads=heads)


def _ray_arrays(model, tokenizer, split, batch_size, progress, address, workers, threads, max_retries):
    n_layers, n_heads = _grid(model)
    with ray_session(address, workers) as n_cpus:
        import ray
        chunks = head_chunks(model, 2 * n_cpus)
        box = [ray.put((model, tokenizer, split))]
        task = ray.remote(num_cpus=1, max_retries=max_retries)(_ablate_chunk)
        pending = {task.remote(box, chunk, batch_size, threads): chunk for chunk in chunks}
        loss = np.full((n_layers, n_heads), np.nan)
        acc = np.full((n_layers, n_heads), np.nan)
        base = None
        prog = as_progress(progress, total=sum(len(c) for c in chunks), desc="head ablation (Ray)")
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                if not ready:
                    prog.update(0)       # lets a Stop callback raise
                    continue
                chunk = pending.pop(ready[0])
                part = ray.get(ready[0])
                for layer, head in chunk:
                    loss[layer, head], acc[layer, head] = part["loss"][layer, head], part["accuracy"][layer, head]
                base = part["base"] if base is None else base
                prog.update(len(chunk), f"layer {chunk[0][0]}")
        finally:
            prog.close()
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001  (already finished or gone)
                    pass
    if base is None:                     # no head at all: the base pass alone
        base = _ablation_arrays(model, tokenizer, split, batch_size, False, heads=[])["base"]
    return {"loss": loss, "accuracy": acc, "base": np.asarray(base), "n": np.array(len(split))}


def ray_head_ablation(model: nn.Module, tokenizer, split: Split, *, batch_size: int = 64, address: str | None = None,
                      workers: int | None = None, threads: int = 1, progress: Progress = None,
                      cache_results: bool = True, model_key: str | None = None, max_retries: int = 2) -> AblationResult:
    """:func:`axlab.analysis.importance.head_ablation` with the heads spread over Ray workers.

    Local Ray with ``workers`` CPUs (default: all cores), or the cluster at ``address`` /
    ``RAY_ADDRESS``. Same result and same cache entry as the sequential version.
    """
    split = _check_split(split, model)
    arrays = cache.cached("importance", lambda: _ray_arrays(model, tokenizer, split, batch_size, progress, address,
                                                            workers, threads, max_retries),
                          model=model, split=split, params={"method": "ablation_full"},
                          enabled=cache_results, key=model_key)
    return AblationResult(loss=torch.as_tensor(arrays["loss"]).float(),
                          accuracy=torch.as_tensor(arrays["accuracy"]).float(),
                          base_loss=float(arrays["base"][0]), base_accuracy=float(arrays["base"][1]),
                          n=int(arrays["n"]))

"""What each attention head does, measured over a data split (SG-Trans style analysis).

``head_statistics(model, tokenizer, split)`` returns a dict of (n_layers, n_heads) arrays,
each averaged over every real (non-padding) query token of the split:

* ``entropy``: -sum_j a_ij log a_ij in nats; low = a head that focuses on few tokens;
* ``mean_distance``: sum_j a_ij |i - j| in tokens; low = local head, high = global head;
* ``cls_share`` / ``sep_share``: attention mass on the [CLS] / [SEP] tokens (for RoBERTa
  <s> / </s>); heads that park attention there are often "no-op" heads;
* ``punct_share``: attention mass on punctuation tokens.

Heads removed by pruning are NaN. Padding never enters: padded queries are skipped and
padded keys get zero weight from the mask.

Images (a split of images and the model's image processor) get :data:`IMAGE_STATISTICS`,
averaged over every patch query of every image (prefix queries such as [CLS] left out):

* ``entropy``: as above, over the query's whole row;
* ``mean_distance``: the ViT paper's mean attention distance (Dosovitskiy et al. 2021,
  Fig. 7) in pixels of the model input: sum_j a_ij d(i, j) over patch keys j, with
  d the Euclidean distance between patch centres and the weights renormalised over the
  patch keys (:func:`mean_attention_distance`). Prefix tokens have no position, so they
  are left out; what they take is ``prefix_share``;
* ``prefix_share``: attention mass on the prefix tokens ([CLS], DeiT's distillation
  token, registers).
"""

from __future__ import annotations

import logging
import unicodedata

import numpy as np
import torch
from torch import nn

from axlab.analysis import vision
from axlab.core import registry
from axlab.core.attention import AttentionControl
from axlab.core.data import Split
from axlab.core.errors import DataError
from axlab.core.measure import MAX_LENGTH, is_images, iter_batches, require_cpu
from axlab.core.progress import Progress, as_progress
from axlab.store import cache

__all__ = ["STATISTICS", "IMAGE_STATISTICS", "head_statistics", "punctuation_ids", "mean_attention_distance"]

log = logging.getLogger(__name__)

# name -> (title for figures, one-line meaning)
STATISTICS = {
    "entropy": ("Attention entropy (nats)", "low = focused on a few tokens, high = spread out"),
    "mean_distance": ("Mean attention distance (tokens)", "low = local head, high = global head"),
    "cls_share": ("Share of attention on [CLS]", "mass each query puts on the first special token"),
    "sep_share": ("Share of attention on [SEP]", "mass on the separator; often a 'no-op' sink"),
    "punct_share": ("Share of attention on punctuation", "mass on tokens that are only punctuation"),
}
IMAGE_STATISTICS = {
    "entropy": ("Attention entropy (nats)", "low = focused on a few tokens, high = spread out"),
    "mean_distance": ("Mean attention distance (pixels)",
                      "attention-weighted distance from a patch to the patches it reads; low = local, high = global"),
    "prefix_share": ("Share of attention on [CLS] / prefix tokens", "mass each patch puts on [CLS] (and "
                     "distillation / register tokens); left out of the distance"),
}


def mean_attention_distance(weights, grid: tuple[int, int], patch: tuple[int, int] | int, n_prefix: int = 1,
                            *, renormalise: bool = True) -> np.ndarray:
    """Mean attention distance in pixels of (..., T, T) attention weights, averaged over patch queries.

    T = ``n_prefix`` + rows * cols. For each patch query i: sum_j a_ij d_ij over patch keys j
    (d: distance between patch centres in pixels, ``patch`` = (height, width) of a patch),
    divided by sum_j a_ij when ``renormalise`` (a true weighted mean; without it, the mass on
    prefix tokens counts as distance 0, as in some re-implementations). Returns shape (...).
    """
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    n = grid[0] * grid[1]
    if w.shape[-1] != n_prefix + n or w.shape[-2] != n_prefix + n:
        raise ValueError(f"weights end in {tuple(w.shape[-2:])}, expected ({n_prefix + n}, {n_prefix + n}) for "
                         f"{n_prefix} prefix tokens and a {grid[0]} x {grid[1]} grid")
    dist = torch.as_tensor(vision.patch_distances(grid, patch))          # (N, N)
    wp = w[..., n_prefix:, n_prefix:]                                    # (..., N, N) patch -> patch
    d = (wp * dist).sum(-1)                                              # (..., N)
    if renormalise:
        d = d / wp.sum(-1).clamp_min(1e-30)
    return d.mean(-1).numpy()


def _is_punct(token: str) -> bool:
    t = token.replace("##", "").replace("\u0120", "").replace("\u2581", "").strip()
    return bool(t) and all(unicodedata.category(c).startswith("P") for c in t)


def punctuation_ids(tokenizer) -> torch.Tensor:
    """Vocabulary ids whose token is made only of punctuation, as a bool mask over the vocab."""
    vocab = tokenizer.get_vocab()
    mask = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tok, i in vocab.items():
        if i not in special and _is_punct(tok):
            mask[i] = True
    return mask


def _special_id(tokenizer, *names: str) -> int | None:
    for name in names:
        i = getattr(tokenizer, name, None)
        if i is not None:
            return int(i)
    return None


@torch.no_grad()
def _compute(model: nn.Module, tokenizer, split: Split, batch_size: int, max_length: int,
             progress: Progress) -> dict[str, np.ndarray]:
    n_layers, n_heads = len(registry.layers(model)), registry.n_heads_config(model)
    head_ids = [list(registry.attention_module(model, i).axlab_head_ids) for i in range(n_layers)]
    cls_id = _special_id(tokenizer, "cls_token_id", "bos_token_id")
    sep_id = _special_id(tokenizer, "sep_token_id", "eos_token_id")
    punct = punctuation_ids(tokenizer)
    sums = {name: torch.zeros(n_layers, n_heads, dtype=torch.float64) for name in STATISTICS}
    n_queries = 0
    prog = as_progress(progress, total=len(split), desc="head statistics")
    was_training = model.training
    model.eval()
    try:
        for ix, batch in iter_batches(tokenizer, split.inputs, batch_size, max_length):
            ctrl = AttentionControl(capture=True)
            model(**batch, axlab=ctrl)
            ids, mask = batch["input_ids"], batch["attention_mask"].bool()     # (B, T)
            qmask = mask.double()                                                # (B, T)
            t = ids.shape[1]
            pos = torch.arange(t, dtype=torch.float64)
            dist = (pos[:, None] - pos[None, :]).abs()                           # (T, T)
            keys = {"cls_share": (ids == cls_id) & mask if cls_id is not None else torch.zeros_like(mask),
                    "sep_share": (ids == sep_id) & mask if sep_id is not None else torch.zeros_like(mask),
                    "punct_share": punct[ids.clamp(max=len(punct) - 1)] & mask}
            for layer in range(n_layers):
                if not head_ids[layer]:
                    continue
                w = ctrl.captured[layer].double()                                # (B, H_kept, T, T)
                per_query = {
                    "entropy": -(w * torch.log(w.clamp_min(1e-30))).sum(-1),      # (B, H_kept, T)
                    "mean_distance": (w * dist).sum(-1),
                }
                for name, kmask in keys.items():
                    per_query[name] = (w * kmask[:, None, None, :].double()).sum(-1)
                for name, v in per_query.items():
                    sums[name][layer, head_ids[layer]] += (v * qmask[:, None, :]).sum(dim=(0, 2))
            n_queries += int(mask.sum())
            prog.update(len(ix))
    finally:
        prog.close()
        model.train(was_training)
    return _per_head_means(sums, n_queries, head_ids, n_heads)


def _per_head_means(sums: dict, n_queries: int, head_ids: list[list[int]], n_heads: int) -> dict[str, np.ndarray]:
    """Per-query sums -> (n_layers, n_heads) means; removed heads are NaN."""
    out = {}
    for name, total in sums.items():
        arr = (total / max(1, n_queries)).numpy()
        for layer, kept in enumerate(head_ids):
            arr[layer, sorted(set(range(n_heads)) - set(kept))] = np.nan
        out[name] = arr
    return out


@torch.no_grad()
def _compute_images(model: nn.Module, processor, split, batch_size: int, progress: Progress) -> dict[str, np.ndarray]:
    n_layers, n_heads = len(registry.layers(model)), registry.n_heads_config(model)
    head_ids = [list(registry.attention_module(model, i).axlab_head_ids) for i in range(n_layers)]
    patch = vision.patch_size(model)
    sums = {name: torch.zeros(n_layers, n_heads, dtype=torch.float64) for name in IMAGE_STATISTICS}
    n_queries = 0
    prog = as_progress(progress, total=len(split), desc="head statistics")
    was_training = model.training
    model.eval()
    try:
        for ix, batch in iter_batches(processor, split.inputs, batch_size):
            ctrl = AttentionControl(capture=True)
            model(pixel_values=batch["pixel_values"], axlab=ctrl)
            grid = vision.patch_grid(model, batch["pixel_values"].shape)
            dist = torch.as_tensor(vision.patch_distances(grid, patch))             # (N, N) pixels
            n_prefix = None
            for layer in range(n_layers):
                if not head_ids[layer]:
                    continue
                w = ctrl.captured[layer].double()                                    # (B, H_kept, T, T)
                if n_prefix is None:
                    n_prefix = vision.check_tokens(model, w.shape[-1], grid)
                q = w[:, :, n_prefix:]                                               # (B, H_kept, N, T) patch queries
                wp = q[..., n_prefix:]                                               # (B, H_kept, N, N)
                per_query = {
                    "entropy": -(q * torch.log(q.clamp_min(1e-30))).sum(-1),        # (B, H_kept, N)
                    "mean_distance": (wp * dist).sum(-1) / wp.sum(-1).clamp_min(1e-30),
                    "prefix_share": q[..., :n_prefix].sum(-1),
                }
                for name, v in per_query.items():
                    sums[name][layer, head_ids[layer]] += v.sum(dim=(0, 2))
            n_queries += len(ix) * grid[0] * grid[1]
            prog.update(len(ix))
    finally:
        prog.close()
        model.train(was_training)
    return _per_head_means(sums, n_queries, head_ids, n_heads)


def head_statistics(model: nn.Module, tokenizer, split: Split, n: int | None = None, *, batch_size: int = 32,
                    max_length: int = MAX_LENGTH, progress: Progress = None, cache_results: bool = True,
                    model_key: str | None = None) -> dict[str, np.ndarray]:
    """Per-head statistics over the first ``n`` examples of ``split`` (all by default).

    Returns ``{name: (n_layers, n_heads) array}`` for every name in :data:`STATISTICS`
    (texts) or :data:`IMAGE_STATISTICS` (an image split; ``tokenizer`` is then the image
    processor). Results are cached on disk by model + data + settings unless ``cache_results=False``.
    """
    require_cpu(model, "Head statistics")
    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    split = split.head(n)
    if len(split) == 0:
        raise DataError("The split is empty, so there is nothing to measure.", "Pass a split with some examples.")
    if is_images(split.inputs):
        params = {"batch_size": batch_size, "stats": sorted(IMAGE_STATISTICS), "modality": "image"}
        return cache.cached("head_stats", lambda: _compute_images(model, tokenizer, split, batch_size, progress),
                            model=model, split=split, params=params, enabled=cache_results,
                            key=model_key)
    params = {"batch_size": batch_size, "max_length": max_length, "stats": sorted(STATISTICS)}
    return cache.cached("head_stats", lambda: _compute(model, tokenizer, split, batch_size, max_length, progress),
                        model=model, split=split, params=params, enabled=cache_results, key=model_key)

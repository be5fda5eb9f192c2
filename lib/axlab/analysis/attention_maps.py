"""Attention weights for a few inputs, with padding cut away, and attention rollout.

``attention_for(model, tokenizer, texts)`` runs the model once through the axlab
attention function with capture on and returns an :class:`AttentionResult`: the
tokens of each text and, per text and layer, an (n_heads, T, T) array of attention
weights over that text's real tokens only (padding is removed with the attention mask,
so it never shows). Heads removed by pruning are NaN rows on the original head grid,
so (layer, head) always means the same head as in the base model.

Texts longer than ``max_length`` tokens are cut to it (as everywhere in axlab);
``result.n_input_tokens[i]`` is the full length, ``result.truncated(i)`` says whether text i
was cut, and ``result.first_tokens(n)`` keeps the first ``n`` tokens of every map for a
readable view of a long input.

``rollout(result, index)`` is attention rollout (Abnar & Zuidema 2020): per layer the
head-averaged attention plus the residual connection, ``A_l = 0.5 * mean_h(W_l) + 0.5 * I``
(rows renormalised), multiplied through the layers, ``R = A_L @ ... @ A_1``. Row i of R
says how much each input token flows into position i at the top; every row sums to 1.
``head_reduce="max"`` fuses the heads by their maximum instead of their mean (the common
variant for ViTs); heads removed by pruning or gated off never enter either.

Images. For an image classifier (the registry's modality) the same ``attention_for``
takes one image or a list of uint8 images and an image processor, and returns an
:class:`ImageAttentionResult`: the same per-head (T, T) maps over prefix tokens
([CLS], DeiT's distillation token, registers) and patches, plus the patch grid, so
``result.patch_map(layer, head)`` is a head's [CLS] row (or a chosen query patch's row)
on the (rows, cols) patch grid and :func:`rollout_map` is the rollout's [CLS] row over
the patches. ``gates`` (n_layers, n_heads) runs the gated model and treats heads with
gate 0 as removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from axlab.core import registry
from axlab.core.attention import AttentionControl
from axlab.core.errors import AxlabError
from axlab.analysis import vision
from axlab.core.measure import MAX_LENGTH, encode, is_images, require_cpu, tokenize

__all__ = ["AttentionResult", "ImageAttentionResult", "attention_for", "rollout", "rollout_map", "HEAD_REDUCE"]

HEAD_REDUCE = ("mean", "max")

log = logging.getLogger(__name__)


@dataclass
class AttentionResult:
    """Attention of one or more texts.

    ``weights[i][l]`` is an (n_heads, T_i, T_i) float32 array for text i and layer l
    (query rows, key columns; NaN for heads that were removed). ``tokens[i]`` has T_i
    strings. ``head_ids[l]`` lists the original heads still present in layer l.
    """

    texts: list[str]
    tokens: list[list[str]]
    weights: list[list[np.ndarray]]
    head_ids: list[list[int]]
    n_heads: int
    special: list[list[bool]] = field(default_factory=list)   # per token: is it [CLS]/[SEP]/...
    n_input_tokens: list[int] = field(default_factory=list)   # per text: tokens before the length limit

    def __post_init__(self):
        if len(self.tokens) != len(self.weights) or len(self.texts) != len(self.tokens):
            raise ValueError("texts, tokens and weights must have one entry per text")

    @property
    def n_layers(self) -> int:
        return len(self.head_ids)

    def __len__(self) -> int:
        return len(self.texts)

    def stack(self, index: int = 0) -> np.ndarray:
        """All layers of one text as an (n_layers, n_heads, T, T) array."""
        self._check_index(index)
        return np.stack(self.weights[index])

    def head(self, layer: int, head: int, index: int = 0) -> np.ndarray:
        """One head's (T, T) map; raises if the head was removed."""
        self._check_index(index)
        if not 0 <= layer < self.n_layers or not 0 <= head < self.n_heads:
            raise AxlabError(f"There is no head ({layer}, {head}) in a {self.n_layers} x {self.n_heads} model.",
                             f"Pick a layer in 0..{self.n_layers - 1} and a head in 0..{self.n_heads - 1}.")
        if head not in self.head_ids[layer]:
            raise AxlabError(f"Head {head} of layer {layer} was removed from this model.",
                             f"Pick one of the heads still present: {self.head_ids[layer]}.")
        return self.weights[index][layer][head]

    def truncated(self, index: int = 0) -> bool:
        """Whether text ``index`` was longer than the length limit (only its first tokens were kept)."""
        self._check_index(index)
        return bool(self.n_input_tokens) and self.n_input_tokens[index] > len(self.tokens[index])

    def first_tokens(self, n: int) -> "AttentionResult":
        """A copy showing only the first ``n`` tokens of each text (query and key); the weights are not renormalised."""
        if n < 1:
            raise AxlabError("Show at least one token.", "Pick a number of tokens of 1 or more.")
        return AttentionResult(texts=list(self.texts), tokens=[t[:n] for t in self.tokens],
                               weights=[[w[:, :n, :n].copy() for w in per_layer] for per_layer in self.weights],
                               head_ids=[list(h) for h in self.head_ids], n_heads=self.n_heads,
                               special=[s[:n] for s in self.special], n_input_tokens=list(self.n_input_tokens))

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise AxlabError(f"Text index {index} is out of range; this result holds {len(self)} text(s).",
                             f"Use an index from 0 to {len(self) - 1}.")


@dataclass
class ImageAttentionResult(AttentionResult):
    """Attention of one or more images. Tokens are the prefix tokens then the patches, row-major.

    ``images[i]`` is the uint8 image as given; ``grid`` = (rows, cols) of patches;
    ``patch`` = (height, width) of a patch and ``input_size`` = (H, W) of the model input,
    both in model-input pixels; ``n_prefix`` tokens come before the patches.
    """

    images: list = field(default_factory=list)
    grid: tuple[int, int] = (0, 0)
    patch: tuple[int, int] = (0, 0)
    input_size: tuple[int, int] = (0, 0)
    n_prefix: int = 1

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def first_tokens(self, n: int) -> "ImageAttentionResult":
        """Images are never cut: the whole result (the maps need every patch)."""
        return self

    def query_row(self, query=None) -> int:
        """Token index of a query: None = [CLS]; an int = that token; (row, col) = that patch."""
        if query is None:
            return 0
        if isinstance(query, (tuple, list)):
            r, c = (int(q) for q in query)
            if not (0 <= r < self.grid[0] and 0 <= c < self.grid[1]):
                raise AxlabError(f"There is no patch ({r}, {c}) in a {self.grid[0]} x {self.grid[1]} grid.",
                                 f"Pick a row in 0..{self.grid[0] - 1} and a column in 0..{self.grid[1] - 1}.")
            return self.n_prefix + r * self.grid[1] + c
        t = int(query)
        if not 0 <= t < self.n_prefix + self.n_patches:
            raise AxlabError(f"There is no token {t}; this image has {self.n_prefix + self.n_patches}.",
                             "Pick a token index, a (row, col) patch or None for [CLS].")
        return t

    def to_grid(self, row: np.ndarray) -> np.ndarray:
        """A (..., T) row over all tokens as a (..., rows, cols) map over the patches (prefix dropped)."""
        row = np.asarray(row)
        return row[..., self.n_prefix:].reshape(*row.shape[:-1], *self.grid)

    def patch_map(self, layer: int, head: int, index: int = 0, query=None) -> np.ndarray:
        """One head's attention from ``query`` (default [CLS]) to every patch, as a (rows, cols) map."""
        return self.to_grid(self.head(layer, head, index)[self.query_row(query)])

    def layer_maps(self, layer: int, index: int = 0, query=None) -> np.ndarray:
        """Every head of a layer as an (n_heads, rows, cols) array (NaN for removed heads)."""
        self._check_index(index)
        if not 0 <= layer < self.n_layers:
            raise AxlabError(f"There is no layer {layer}; the model has {self.n_layers}.",
                             f"Pick a layer in 0..{self.n_layers - 1}.")
        return self.to_grid(self.weights[index][layer][:, self.query_row(query)])

    def prefix_share(self, layer: int, head: int, index: int = 0, query=None) -> float:
        """The attention mass the query puts on the prefix tokens (what a patch map leaves out)."""
        return float(self.head(layer, head, index)[self.query_row(query), :self.n_prefix].sum())


def _grid_weights(captured: torch.Tensor, b: int, keep, head_ids: list[int], present: list[int],
                  n_heads: int) -> np.ndarray:
    """(n_heads, T, T) on the original head grid from one example's captured (H_kept, T, T); NaN = absent."""
    t = len(keep) if keep is not None else captured.shape[-1]
    grid = np.full((n_heads, t, t), np.nan, dtype=np.float32)
    if head_ids:
        w = captured[b] if keep is None else captured[b][:, keep][:, :, keep]
        grid[head_ids] = w.float().numpy()
        grid[sorted(set(head_ids) - set(present))] = np.nan
    return grid


def _present(head_ids: list[list[int]], gates) -> list[list[int]]:
    if gates is None:
        return [list(h) for h in head_ids]
    g = torch.as_tensor(gates).detach()
    return [[h for h in ids if float(g[layer, h]) != 0.0] for layer, ids in enumerate(head_ids)]


@torch.no_grad()
def _image_attention(model: nn.Module, processor, images, *, batch_size: int, gates) -> ImageAttentionResult:
    images = vision.as_images(images)
    n_layers, n_heads = len(registry.layers(model)), registry.n_heads_config(model)
    module_ids = [list(registry.attention_module(model, i).axlab_head_ids) for i in range(n_layers)]
    present = _present(module_ids, gates)
    weights, grid, size, n_prefix, names = [], (0, 0), (0, 0), 1, []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            pixels = encode(processor, images[start:start + batch_size])["pixel_values"]   # (B, C, H, W)
            ctrl = AttentionControl(capture=True, gates=None if gates is None else torch.as_tensor(gates).float())
            model(pixel_values=pixels, axlab=ctrl)
            grid, size = vision.patch_grid(model, pixels.shape), tuple(int(s) for s in pixels.shape[-2:])
            live = [layer for layer in range(n_layers) if module_ids[layer]]
            t = ctrl.captured[live[0]].shape[-1] if live else None
            if t is not None:
                n_prefix = vision.check_tokens(model, t, grid)
            else:
                n_prefix = len(vision.prefix_tokens(model))
                t = n_prefix + grid[0] * grid[1]
            names = vision.token_names(model, grid)
            for b in range(pixels.shape[0]):
                per_layer = []
                for layer in range(n_layers):
                    if module_ids[layer]:
                        per_layer.append(_grid_weights(ctrl.captured[layer], b, None, module_ids[layer],
                                                       present[layer], n_heads))
                    else:
                        per_layer.append(np.full((n_heads, t, t), np.nan, dtype=np.float32))
                weights.append(per_layer)
    finally:
        model.train(was_training)
    n = len(images)
    return ImageAttentionResult(texts=[f"image {i}" for i in range(n)], tokens=[list(names) for _ in range(n)],
                                weights=weights, head_ids=present, n_heads=n_heads,
                                special=[[j < n_prefix for j in range(len(names))] for _ in range(n)],
                                n_input_tokens=[len(names)] * n, images=images, grid=grid,
                                patch=vision.patch_size(model), input_size=size, n_prefix=n_prefix)


def _as_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = [str(t) for t in texts]
    if not texts or any(not t.strip() for t in texts):
        raise AxlabError("No text to look at (an empty sentence was given).", "Type a sentence of a few words.")
    return texts


@torch.no_grad()
def attention_for(model: nn.Module, tokenizer, texts, *, max_length: int = MAX_LENGTH,
                  batch_size: int = 16, gates=None) -> AttentionResult:
    """Attention of every layer and head for ``texts`` (a string or a list), padding removed.

    For an image classifier, ``tokenizer`` is its image processor and ``texts`` one image or
    several (uint8 (H, W) / (H, W, 3)): the result is an :class:`ImageAttentionResult`.
    ``gates``: (n_layers, n_heads), run the gated model; heads at gate 0 count as removed.
    """
    require_cpu(model, "Attention capture")
    if vision.is_image_model(model) or is_images(texts):
        return _image_attention(model, tokenizer, texts, batch_size=batch_size, gates=gates)
    texts = _as_texts(texts)
    n_layers, n_heads = len(registry.layers(model)), registry.n_heads_config(model)
    module_ids = [list(registry.attention_module(model, i).axlab_head_ids) for i in range(n_layers)]
    head_ids = _present(module_ids, gates)
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    all_tokens, all_weights, all_special = [], [], []
    full = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            batch = tokenize(tokenizer, chunk, max_length)
            ctrl = AttentionControl(capture=True, gates=None if gates is None else torch.as_tensor(gates).float())
            model(**batch, axlab=ctrl)
            mask = batch["attention_mask"].bool()                       # (B, T)
            for b in range(len(chunk)):
                keep = mask[b].nonzero().squeeze(-1)                     # (T_b,) works for left or right padding
                ids = batch["input_ids"][b, keep].tolist()
                all_tokens.append(tokenizer.convert_ids_to_tokens(ids))
                all_special.append([i in special_ids for i in ids])
                per_layer = [_grid_weights(ctrl.captured[layer], b, keep, module_ids[layer], head_ids[layer],
                                           n_heads) if module_ids[layer]
                             else np.full((n_heads, len(keep), len(keep)), np.nan, dtype=np.float32)
                             for layer in range(n_layers)]
                all_weights.append(per_layer)
    finally:
        model.train(was_training)
    return AttentionResult(texts=texts, tokens=all_tokens, weights=all_weights, head_ids=head_ids,
                           n_heads=n_heads, special=all_special, n_input_tokens=full)


def rollout(result: AttentionResult, index: int = 0, *, residual: float = 0.5,
            layers: int | None = None, head_reduce: str = "mean") -> np.ndarray:
    """Attention rollout for input ``index``: a (T, T) matrix whose rows sum to 1.

    ``residual`` is the weight of the identity (the skip connection); 0.5 as in the paper.
    ``layers`` limits the rollout to the first few layers (default: all). ``head_reduce``:
    "mean" (the paper) or "max" over the heads present. A layer with no heads left passes
    its input through (identity).
    """
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    if head_reduce not in HEAD_REDUCE:
        raise ValueError(f"head_reduce must be one of {HEAD_REDUCE}, got {head_reduce!r}")
    stack = result.stack(index)                                         # (L, H, T, T)
    n_layers = stack.shape[0] if layers is None else int(layers)
    t = stack.shape[-1]
    eye = np.eye(t, dtype=np.float64)
    out = eye.copy()
    for layer in range(n_layers):
        heads = result.head_ids[layer]
        if heads:
            w = stack[layer, heads].astype(np.float64)                 # (H_present, T, T)
            fused = w.mean(axis=0) if head_reduce == "mean" else w.max(axis=0)
        else:
            fused = eye
        a = residual * eye + (1.0 - residual) * fused
        a = a / a.sum(axis=-1, keepdims=True)
        out = a @ out                                                   # (T, T): top rows <- input columns
    return out


def rollout_map(result: ImageAttentionResult, index: int = 0, *, query=None, residual: float = 0.5,
                head_reduce: str = "mean", layers: int | None = None, matrix: np.ndarray | None = None) -> np.ndarray:
    """The rollout's [CLS] row (or ``query``'s) over the patches, as a (rows, cols) map.

    The values are shares of the flow into [CLS]; they sum to 1 minus the share that stays
    on the prefix tokens. ``matrix``: an already computed :func:`rollout`.
    """
    if not isinstance(result, ImageAttentionResult):
        raise AxlabError("A rollout map over patches needs the attention of an image.",
                         "Call attention_for with an image classifier and an image.")
    r = rollout(result, index, residual=residual, head_reduce=head_reduce, layers=layers) if matrix is None \
        else np.asarray(matrix, dtype=np.float64)
    return result.to_grid(r[result.query_row(query)])

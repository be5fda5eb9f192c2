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
from axlab.core.measure import MAX_LENGTH, tokenize

__all__ = ["AttentionResult", "attention_for", "rollout"]

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


def _as_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = [str(t) for t in texts]
    if not texts or any(not t.strip() for t in texts):
        raise AxlabError("No text to look at (an empty sentence was given).", "Type a sentence of a few words.")
    return texts


@torch.no_grad()
def attention_for(model: nn.Module, tokenizer, texts, *, max_length: int = MAX_LENGTH,
                  batch_size: int = 16) -> AttentionResult:
    """Attention of every layer and head for ``texts`` (a string or a list), padding removed."""
    texts = _as_texts(texts)
    n_layers, n_heads = len(registry.layers(model)), registry.n_heads_config(model)
    head_ids = [list(registry.attention_module(model, i).axlab_head_ids) for i in range(n_layers)]
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    all_tokens, all_weights, all_special = [], [], []
    full = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            batch = tokenize(tokenizer, chunk, max_length)
            ctrl = AttentionControl(capture=True)
            model(**batch, axlab=ctrl)
            mask = batch["attention_mask"].bool()                       # (B, T)
            for b in range(len(chunk)):
                keep = mask[b].nonzero().squeeze(-1)                     # (T_b,) works for left or right padding
                ids = batch["input_ids"][b, keep].tolist()
                all_tokens.append(tokenizer.convert_ids_to_tokens(ids))
                all_special.append([i in special_ids for i in ids])
                per_layer = []
                for layer in range(n_layers):
                    grid = np.full((n_heads, len(keep), len(keep)), np.nan, dtype=np.float32)
                    if head_ids[layer]:
                        w = ctrl.captured[layer][b][:, keep][:, :, keep]  # (H_kept, T_b, T_b)
                        grid[head_ids[layer]] = w.float().numpy()
                    per_layer.append(grid)
                all_weights.append(per_layer)
    finally:
        model.train(was_training)
    return AttentionResult(texts=texts, tokens=all_tokens, weights=all_weights, head_ids=head_ids,
                           n_heads=n_heads, special=all_special, n_input_tokens=full)


def rollout(result: AttentionResult, index: int = 0, *, residual: float = 0.5,
            layers: int | None = None) -> np.ndarray:
    """Attention rollout for text ``index``: a (T, T) matrix whose rows sum to 1.

    ``residual`` is the weight of the identity (the skip connection); 0.5 as in the paper.
    ``layers`` limits the rollout to the first few layers (default: all). A layer with no
    heads left passes its input through (identity).
    """
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    stack = result.stack(index)                                         # (L, H, T, T)
    n_layers = stack.shape[0] if layers is None else int(layers)
    t = stack.shape[-1]
    eye = np.eye(t, dtype=np.float64)
    out = eye.copy()
    for layer in range(n_layers):
        if result.head_ids[layer]:
            mean = np.nanmean(stack[layer].astype(np.float64), axis=0)  # (T, T)
        else:
            mean = eye
        a = residual * eye + (1.0 - residual) * mean
        a = a / a.sum(axis=-1, keepdims=True)
        out = a @ out                                                   # (T, T): top rows <- input columns
    return out

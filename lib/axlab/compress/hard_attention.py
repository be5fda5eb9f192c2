"""Selective hard attention (AxFormer): in chosen layers keep the top-k scores per query.

The attention function (``axlab.attention``) does the work: a module with
``axlab_topk = k`` masks every score below the k-th largest of its row before the softmax,
so the kept weights are renormalised. Which layers gain from it is a search on
validation loss (:func:`axlab.compress.axformer.search_topk`, the same top-down walk as the AxFormer search, with
layer inputs cached).

On dense CPU kernels top-k attention is not faster (it adds a top-k); AxFormer uses it
for accuracy, and sparse kernels/hardware can exploit it.
"""

from __future__ import annotations

import copy

from torch import nn

from axlab.core import registry
from axlab.core.attention import set_topk
from axlab.core.errors import AxlabError
from axlab.core.recipe import RecipeContext, Step, register_transform

__all__ = ["hard_attention", "DEFAULT_KS"]

DEFAULT_KS = (4, 8, 16)


def _norm_topk(model: nn.Module, topk: dict) -> dict[int, int | None]:
    if not isinstance(topk, dict):
        raise AxlabError("hard_attention needs a mapping {layer: k}.", "Pass e.g. {4: 8, 5: 4}.")
    n = len(registry.layers(model))
    out = {}
    for layer, k in topk.items():
        i = int(layer)
        if not 0 <= i < n:
            raise AxlabError(f"hard_attention: layer {i} does not exist (the model has {n} layers).",
                             f"Use layer indices 0..{n - 1}.")
        if k is not None and int(k) < 1:
            raise AxlabError(f"hard_attention: k={k} for layer {i}; k must be at least 1.", "Use k >= 1 or None (dense).")
        out[i] = None if k is None else int(k)
    return out


def hard_attention(model: nn.Module, topk: dict) -> nn.Module:
    """A copy of ``model`` with top-k hard attention in the given layers ({layer: k}; None = dense)."""
    topk = _norm_topk(model, topk)
    out = copy.deepcopy(model)
    set_topk(out, topk)
    out.axlab_recipe = list(getattr(model, "axlab_recipe", [])) + [
        Step("hard_attention", topk={str(k): v for k, v in topk.items()})]
    return out


@register_transform("hard_attention")
def _op_hard_attention(model, ctx: RecipeContext, topk: dict):
    set_topk(model, _norm_topk(model, topk))
    return model

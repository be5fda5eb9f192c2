"""One attention function through which every supported model runs.

``use_axlab_attention(model)`` registers the function ``"axlab"`` with
``transformers.AttentionInterface`` and switches the model to it. With nothing set it
computes exactly what the stock eager implementation computes. It adds three things:

* per-(layer, head) gates, passed per call in an :class:`AttentionControl`
  (``gates`` of shape (n_layers, n_heads), 1 = keep; may require grad for importance);
* top-k hard attention (AxFormer's selective sparse attention): a layer whose module has
  ``axlab_topk = k`` keeps only the k largest scores per query and renormalises;
  this is a persistent property of a variant, so it lives on the module;
* capture of the attention weights, per call.

Per-call state goes through the forward kwargs (``model(**batch, axlab=ctrl)``), so one
cached model can serve several users at once without shared mutable state.

Each attention module carries ``axlab_layer`` (its layer index) and ``axlab_head_ids``
(which of the original heads it still holds, after physical pruning) so gates always
refer to the original (layer, head) grid.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from axlab.core import registry

__all__ = ["ATTN_NAME", "AttentionControl", "axlab_attention", "use_axlab_attention", "head_layout",
           "set_topk", "get_topk", "capture_attention"]

ATTN_NAME = "axlab"


@dataclass
class AttentionControl:
    """Per-call settings. ``gates``: (n_layers, n_heads) on the original head grid, 1 = keep."""

    gates: torch.Tensor | None = None
    capture: bool = False
    keep_grad: bool = False
    topk: dict[int, int] | None = None          # per-call override of the modules' top-k
    captured: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, H_kept, T, T)
    reached: int = 0                            # attention calls that received this control

    def require_reached(self, what: str) -> None:
        """Raise unless a forward pass handed this control to the attention function: gates
        that never reach it would silently change nothing."""
        if self.reached == 0:
            import transformers

            from axlab.core.errors import AxlabError
            raise AxlabError(f"{what} sets per-head gates, and this model's attention never received them "
                             f"(transformers {transformers.__version__} did not pass axlab's control to its "
                             "attention function).",
                             "Install the transformers version in requirements.txt, or load the model with "
                             "axlab.core.loading.load_model (it routes attention through axlab).")


def axlab_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    axlab: AttentionControl | None = None, **kwargs):
    # query, key, value: (B, H, T, d)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling          # (B, H, Tq, Tk)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    layer = getattr(module, "axlab_layer", None)
    k_top = getattr(module, "axlab_topk", None)
    if axlab is not None and axlab.topk is not None and layer in axlab.topk:
        k_top = axlab.topk[layer]
    if k_top is not None:
        # sym_min instead of a Python branch on the length: under torch.export / ONNX the
        # length is symbolic, and a branch would freeze the example's case into the graph
        # (TopK then fails on inputs shorter than k). With k >= length nothing is masked.
        k_eff = torch.sym_min(int(k_top), scores.size(-1))
        kth = torch.topk(scores, k_eff, dim=-1).values[..., -1:]          # (B, H, Tq, 1)
        scores = scores.masked_fill(scores < kth, torch.finfo(scores.dtype).min)
    weights = nn.functional.softmax(scores, dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value)                                     # (B, H, Tq, d)
    if axlab is not None:
        axlab.reached += 1
        if axlab.gates is not None:
            ids = getattr(module, "axlab_head_ids", None)
            g = axlab.gates[layer]
            if ids is not None:
                g = g[torch.as_tensor(ids, dtype=torch.long, device=g.device)]
            out = out * g.to(out.dtype).view(1, -1, 1, 1)
        if axlab.capture:
            axlab.captured[layer] = weights if axlab.keep_grad else weights.detach()
    return out.transpose(1, 2).contiguous(), weights


def _register() -> None:
    AttentionInterface.register(ATTN_NAME, axlab_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, eager_mask)


_register()


def use_axlab_attention(model: nn.Module) -> nn.Module:
    """Route ``model`` through the axlab attention function and tag its attention modules.

    Idempotent. Modules already tagged (a pruned model) keep their tags.
    """
    _register()
    n_heads = registry.n_heads_config(model)
    for i in range(len(registry.layers(model))):
        mod = registry.attention_module(model, i)
        mod.axlab_layer = i
        if getattr(mod, "axlab_head_ids", None) is None:
            mod.axlab_head_ids = list(range(n_heads))
        if not hasattr(mod, "axlab_topk"):
            mod.axlab_topk = None
    model.set_attn_implementation(ATTN_NAME)
    return model


def head_layout(model: nn.Module) -> list[list[int]]:
    """For each layer, the original head ids it still holds."""
    return [list(registry.attention_module(model, i).axlab_head_ids) for i in range(len(registry.layers(model)))]


def set_topk(model: nn.Module, topk: dict[int, int | None]) -> None:
    """Set persistent top-k hard attention per layer (None = dense). Mutates ``model``."""
    for layer, k in topk.items():
        registry.attention_module(model, int(layer)).axlab_topk = None if k is None else int(k)


def get_topk(model: nn.Module) -> dict[int, int]:
    out = {}
    for i in range(len(registry.layers(model))):
        k = getattr(registry.attention_module(model, i), "axlab_topk", None)
        if k is not None:
            out[i] = int(k)
    return out


@contextlib.contextmanager
def capture_attention(keep_grad: bool = False):
    """``with capture_attention() as ctrl: model(**batch, axlab=ctrl)``; then ``ctrl.captured``."""
    ctrl = AttentionControl(capture=True, keep_grad=keep_grad)
    yield ctrl

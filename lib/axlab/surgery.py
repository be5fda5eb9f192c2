"""Physical removal of heads and FFN neurons, in place, and the layout that records it.

Heads are named by their *original* (layer, head) index; each attention module keeps
``axlab_head_ids`` so later gates and removals still refer to the original grid.
A layer that loses all its heads gets an :class:`EmptyAttention` (output = the output
projection's bias, exactly what gating every head to 0 gives). A layer that loses all
FFN neurons keeps zero-width linears (output = the down-projection's bias).

``layout(model)`` describes the shapes; ``apply_layout(fresh_model, layout)`` reshapes a
freshly built model so an exported state dict loads into it (transformers 5 ignores
``config.pruned_heads``).
"""

from __future__ import annotations

import torch
from torch import nn

from . import registry

__all__ = ["EmptyAttention", "remove_heads_", "remove_ffn_neurons_", "layout", "apply_layout", "slice_linear"]


class EmptyAttention(nn.Module):
    """Stands in for an attention module with no heads left.

    For BERT-like models the output projection sits outside (``bias`` None): it returns a
    zero-width context so the (0-input) output projection yields its bias. For DistilBERT
    the output projection is inside, so it returns that bias directly.
    """

    def __init__(self, layer: int, bias: torch.Tensor | None = None):
        super().__init__()
        self.axlab_layer = layer
        self.axlab_head_ids: list[int] = []
        self.axlab_topk = None
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        b, t, _ = hidden_states.shape
        if self.bias is None:
            return hidden_states.new_zeros(b, t, 0), None
        return self.bias.expand(b, t, -1), None


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` (0 = outputs/rows, 1 = inputs/columns)."""
    w = linear.weight.detach().index_select(dim, index).clone()
    b = linear.bias.detach().clone() if linear.bias is not None else None
    if dim == 0 and b is not None:
        b = b.index_select(0, index).clone()
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    new.weight = nn.Parameter(w, requires_grad=linear.weight.requires_grad)
    if b is not None:
        new.bias = nn.Parameter(b, requires_grad=linear.bias.requires_grad)
    return new


def _set_path(root: nn.Module, path: str, value: nn.Module) -> None:
    parts = path.split(".")
    for p in parts[:-1]:
        root = getattr(root, p)
    setattr(root, parts[-1], value)


def remove_heads_(model: nn.Module, layer: int, heads: list[int]) -> None:
    """Remove original heads ``heads`` of ``layer`` from ``model`` (in place)."""
    spec = registry.spec_for(model)
    if isinstance(registry.attention_module(model, layer), EmptyAttention):
        return
    parts = registry.attention_parts(model, layer)
    mod = parts.module
    ids = list(getattr(mod, "axlab_head_ids", range(parts.n_heads)))
    drop = set(int(h) for h in heads)
    keep_pos = [p for p, h in enumerate(ids) if h not in drop]
    if len(keep_pos) == len(ids):
        return
    lay = registry.layers(model)[layer]
    if not keep_pos:
        if spec.o.startswith(spec.attn_self + "."):  # DistilBERT: out_lin lives inside the attention module
            _set_path(lay, spec.attn_self, EmptyAttention(layer, bias=parts.o.bias))
        else:
            _set_path(lay, spec.attn_self, EmptyAttention(layer))
            _set_path(lay, spec.o, slice_linear(parts.o, torch.zeros(0, dtype=torch.long), 1))
        return
    d = parts.head_dim
    rows = torch.cat([torch.arange(p * d, (p + 1) * d) for p in keep_pos])
    for name in (spec.q, spec.k, spec.v):
        setattr(mod, name, slice_linear(getattr(mod, name), rows, 0))
    _set_path(lay, spec.o, slice_linear(parts.o, rows, 1))
    mod.axlab_head_ids = [ids[p] for p in keep_pos]
    n = len(keep_pos)
    for attr in ("num_attention_heads", "n_heads"):
        if hasattr(mod, attr):
            setattr(mod, attr, n)
    if hasattr(mod, "all_head_size"):
        mod.all_head_size = n * d


def remove_ffn_neurons_(model: nn.Module, layer: int, neurons: list[int]) -> None:
    """Remove FFN neurons (current indices) of ``layer`` (in place)."""
    spec = registry.spec_for(model)
    ffn = registry.ffn_parts(model, layer)
    drop = set(int(i) for i in neurons)
    keep = torch.tensor([i for i in range(ffn.up.out_features) if i not in drop], dtype=torch.long)
    lay = registry.layers(model)[layer]
    _set_path(lay, spec.ffn_in, slice_linear(ffn.up, keep, 0))
    _set_path(lay, spec.ffn_out, slice_linear(ffn.down, keep, 1))


def layout(model: nn.Module) -> dict:
    """Shapes that differ from the config: heads kept per layer and FFN widths."""
    n_layers = len(registry.layers(model))
    mods = [registry.attention_module(model, i) for i in range(n_layers)]
    heads = [list(m.axlab_head_ids) for m in mods]
    ffn = [registry.ffn_parts(model, i).up.out_features for i in range(n_layers)]
    topk = {str(i): getattr(m, "axlab_topk", None) for i, m in enumerate(mods)}
    return {"heads": heads, "ffn": ffn, "topk": {k: v for k, v in topk.items() if v is not None}}


def apply_layout(model: nn.Module, lay: dict) -> nn.Module:
    """Reshape a freshly built model to ``lay`` (weights are loaded afterwards)."""
    n_heads = registry.n_heads_config(model)
    for i, kept in enumerate(lay.get("heads", [])):
        drop = [h for h in range(n_heads) if h not in set(kept)]
        if drop:
            remove_heads_(model, i, drop)
    for i, width in enumerate(lay.get("ffn", [])):
        cur = registry.ffn_parts(model, i).up.out_features
        if width < cur:
            remove_ffn_neurons_(model, i, list(range(width, cur)))
    for i, k in lay.get("topk", {}).items():
        registry.attention_module(model, int(i)).axlab_topk = int(k)
    return model

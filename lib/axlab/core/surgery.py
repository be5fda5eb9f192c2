"""Physical removal of heads and FFN neurons, in place, and the layout that records it.

Heads are named by their *original* (layer, head) index; each attention module keeps
``axlab_head_ids`` so later gates and removals still refer to the original grid.
A layer that loses all its heads gets an :class:`EmptyAttention` (output = the output
projection's bias, exactly what gating every head to 0 gives). A layer that loses all
FFN neurons keeps zero-width linears (output = the down-projection's bias).

A dropped layer becomes a :class:`SkippedLayer` (identity; it keeps its slot so layer
indices, gates and importance grids still refer to the original layers). Vocabulary
pruning swaps the word embeddings for a :class:`RemappedEmbedding`: the tokenizer is
unchanged, a buffer maps old ids to rows of a smaller table, unknown ids to [UNK].

``layout(model)`` describes the shapes; ``apply_layout(fresh_model, layout)`` reshapes a
freshly built model so an exported state dict loads into it (transformers 5 ignores
``config.pruned_heads``).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from axlab.core import registry

__all__ = ["EmptyAttention", "SkippedLayer", "RemappedEmbedding", "remove_heads_", "remove_ffn_neurons_",
           "skip_layer_", "remap_vocab_", "nearest_rows", "OOV_MODES", "is_skipped", "layout", "apply_layout",
           "slice_linear"]


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


class _NoParams(nn.Module):
    """A parameter-free stand-in for a removed Linear (keeps ``in_features``/``out_features``)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features


class SkippedLayer(nn.Module):
    """A dropped transformer layer: returns its input hidden states unchanged.

    It has no parameters. It mirrors the attribute paths the registry uses (attention
    module, FFN up/down) with parameter-free stand-ins so code that walks layers (head
    layouts, importance grids, layout()) sees "no heads, FFN width 0".
    """

    axlab_skipped = True

    def __init__(self, layer: int, spec: registry.ArchSpec, hidden: int):
        super().__init__()
        attn = _NoParams(hidden, 0)
        attn.axlab_layer, attn.axlab_head_ids, attn.axlab_topk = layer, [], None
        _build_path(self, spec.attn_self, attn)
        _build_path(self, spec.ffn_in, _NoParams(hidden, 0))
        _build_path(self, spec.ffn_out, _NoParams(0, hidden))
        self.axlab_layer = layer

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states                                  # (B, T, D)


class RemappedEmbedding(nn.Module):
    """Word embeddings restricted to the tokens a task uses; the tokenizer stays unchanged.

    ``old_to_new`` (int32, size = original vocabulary) maps each original id to a row of
    ``weight`` (n_kept, D); ids that were not kept map to the row of [UNK].
    """

    def __init__(self, old_vocab: int, n_kept: int, dim: int, padding_idx: int | None = None):
        super().__init__()
        self.register_buffer("old_to_new", torch.zeros(old_vocab, dtype=torch.int32))
        self.weight = nn.Parameter(torch.zeros(n_kept, dim))
        self.padding_idx = padding_idx
        self.num_embeddings, self.embedding_dim = n_kept, dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: (B, T) original ids -> (B, T, D)
        return nn.functional.embedding(self.old_to_new[input_ids].long(), self.weight)


def _build_path(root: nn.Module, path: str, leaf: nn.Module) -> None:
    parts = path.split(".")
    for p in parts[:-1]:
        if not hasattr(root, p):
            root.add_module(p, nn.Module())
        root = getattr(root, p)
    root.add_module(parts[-1], leaf)


def is_skipped(model: nn.Module, layer: int) -> bool:
    return bool(getattr(registry.layers(model)[layer], "axlab_skipped", False))


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` (0 = outputs/rows, 1 = inputs/columns)."""
    index = torch.as_tensor(index, dtype=torch.long, device=linear.weight.device)
    w = linear.weight.detach().index_select(dim, index).clone()
    b = linear.bias.detach().clone() if linear.bias is not None else None
    if dim == 0 and b is not None:
        b = b.index_select(0, index).clone()
    with warnings.catch_warnings():  # a zero-width Linear (block removed) warns that init is a no-op
        warnings.simplefilter("ignore", UserWarning)
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
    if is_skipped(model, layer) or isinstance(registry.attention_module(model, layer), EmptyAttention):
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
    if is_skipped(model, layer):
        return
    spec = registry.spec_for(model)
    ffn = registry.ffn_parts(model, layer)
    drop = set(int(i) for i in neurons)
    keep = torch.tensor([i for i in range(ffn.up.out_features) if i not in drop], dtype=torch.long)
    lay = registry.layers(model)[layer]
    _set_path(lay, spec.ffn_in, slice_linear(ffn.up, keep, 0))
    _set_path(lay, spec.ffn_out, slice_linear(ffn.down, keep, 1))


def skip_layer_(model: nn.Module, layer: int) -> None:
    """Replace ``layer`` by a :class:`SkippedLayer` (identity), in place."""
    if is_skipped(model, layer):
        return
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None) or cfg.dim
    registry.layers(model)[layer] = SkippedLayer(layer, registry.spec_for(model), hidden)


def nearest_rows(table: torch.Tensor, ids: torch.Tensor, candidates: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """For each of ``ids``, the one of ``candidates`` whose row of ``table`` is most cosine-similar."""
    cand = torch.nn.functional.normalize(table.index_select(0, candidates).float(), dim=-1)
    out = torch.empty(len(ids), dtype=torch.long)
    for lo in range(0, len(ids), chunk):
        rows = torch.nn.functional.normalize(table.index_select(0, ids[lo:lo + chunk]).float(), dim=-1)
        out[lo:lo + chunk] = candidates[(rows @ cand.T).argmax(-1)]
    return out


OOV_MODES = ("nearest", "unk")


def remap_vocab_(model: nn.Module, keep_ids: list[int], unk_id: int, oov: str = "unk",
                 exclude: list[int] | tuple = ()) -> None:
    """Keep only the rows ``keep_ids`` (original ids) of the word embeddings, in place.

    ``unk_id`` must be among ``keep_ids``. ``oov`` says where every other original id goes:
    "unk" (to ``unk_id``) or "nearest" (to the kept token whose embedding row is most
    cosine-similar to its own, ``exclude`` (special tokens) never chosen; no extra rows,
    so the same size, and a dropped word keeps a meaning close to its own). A model whose
    embeddings are already remapped is remapped again on the original id space.
    """
    if oov not in OOV_MODES:
        raise ValueError(f"oov must be one of {OOV_MODES}, got {oov!r}")
    emb = registry.word_embeddings(model)
    if isinstance(emb, RemappedEmbedding):
        old_map, old_weight = emb.old_to_new.long(), emb.weight.detach()
        full = old_weight[old_map]                                 # (V_orig, D) rows as the model sees them
    else:
        full = emb.weight.detach()                                 # (V_orig, D)
    old_vocab, dim = full.shape
    keep = sorted(set(int(i) for i in keep_ids) | {int(unk_id)})
    new = RemappedEmbedding(old_vocab, len(keep), dim, padding_idx=getattr(emb, "padding_idx", None))
    keep_t = torch.as_tensor(keep, dtype=torch.long)
    with torch.no_grad():
        new.weight.copy_(full.index_select(0, keep_t))
        mapping = torch.full((old_vocab,), keep.index(int(unk_id)), dtype=torch.int32)
        mapping[keep_t] = torch.arange(len(keep), dtype=torch.int32)
        if oov == "nearest":
            kept = torch.zeros(old_vocab, dtype=torch.bool)
            kept[keep_t] = True
            dropped = torch.nonzero(~kept).flatten()
            skip = set(int(i) for i in exclude) | {int(unk_id)}
            targets = torch.as_tensor([i for i in keep if i not in skip], dtype=torch.long)
            if len(dropped) and len(targets):
                mapping[dropped] = mapping[nearest_rows(full, dropped, targets)]
        new.old_to_new.copy_(mapping)
    new.weight.requires_grad_(emb.weight.requires_grad)
    registry.base_model(model).embeddings.word_embeddings = new


def layout(model: nn.Module) -> dict:
    """Shapes that differ from the config: heads kept per layer, FFN widths, skipped layers, vocabulary."""
    n_layers = len(registry.layers(model))
    mods = [registry.attention_module(model, i) for i in range(n_layers)]
    heads = [list(m.axlab_head_ids) for m in mods]
    ffn = [registry.ffn_parts(model, i).up.out_features for i in range(n_layers)]
    topk = {str(i): getattr(m, "axlab_topk", None) for i, m in enumerate(mods)}
    out = {"heads": heads, "ffn": ffn, "topk": {k: v for k, v in topk.items() if v is not None}}
    skipped = [i for i in range(n_layers) if is_skipped(model, i)]
    if skipped:
        out["skipped"] = skipped
    emb = registry.word_embeddings(model) if registry.modality(model) == "text" else None
    if isinstance(emb, RemappedEmbedding):
        out["vocab"] = {"original": int(emb.old_to_new.numel()), "kept": int(emb.weight.shape[0])}
    return out


def apply_layout(model: nn.Module, lay: dict) -> nn.Module:
    """Reshape a freshly built model to ``lay`` (weights are loaded afterwards)."""
    n_heads = registry.n_heads_config(model)
    for i in lay.get("skipped", []):
        skip_layer_(model, int(i))
    for i, kept in enumerate(lay.get("heads", [])):
        drop = [h for h in range(n_heads) if h not in set(kept)]
        if drop:
            remove_heads_(model, i, drop)
    for i, width in enumerate(lay.get("ffn", [])):
        if is_skipped(model, i):
            continue
        cur = registry.ffn_parts(model, i).up.out_features
        if width < cur:
            remove_ffn_neurons_(model, i, list(range(width, cur)))
    for i, k in lay.get("topk", {}).items():
        registry.attention_module(model, int(i)).axlab_topk = int(k)
    if "vocab" in lay:
        emb = registry.word_embeddings(model)
        registry.base_model(model).embeddings.word_embeddings = RemappedEmbedding(
            int(lay["vocab"]["original"]), int(lay["vocab"]["kept"]), emb.weight.shape[1],
            padding_idx=getattr(emb, "padding_idx", None))
    return model

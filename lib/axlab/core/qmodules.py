"""Quantized modules: how quantized weights are stored, computed with and rebuilt.

Three module types replace ``nn.Linear`` / ``nn.Embedding``; each keeps only plain
tensors in its ``state_dict`` so a safetensors save/load round-trips:

* :class:`Int8Linear` - int8 weights + per-output-channel scales; runs on an int8 kernel
  (torch.ao dynamic quantized linear: activations quantized on the fly). The kernel is
  built from the stored tensors by :func:`int8_backend`, the one place that touches
  torch.ao, so the backend is replaceable.
* :class:`QuantLinear` - weight-only k-bit (2..8): packed codes + per-channel or
  per-group scales; computes with the dequantized weight (cached). RTN and GPFQ
  (``axlab.compress``) both produce it.
* :class:`QuantEmbedding` - per-row k-bit embedding table (8 bits by default).

``quant_layout(model)`` records which modules are quantized and how;
``apply_quant_layout(fresh_model, layout)`` puts empty modules of the right shapes in
place so ``load_state_dict(saved, strict=True)`` restores the variant exactly. This
module sits in ``axlab.core`` because loading a saved variant needs it; the
algorithms that *produce* quantized modules live in ``axlab.compress.quantize`` and
``axlab.compress.gpfq``.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from axlab.core.errors import AxlabError
from axlab.core.packing import code_range, pack_codes, packed_nbytes, unpack_codes

__all__ = ["Int8Linear", "QuantLinear", "QuantEmbedding", "QUANT_MODULES", "int8_backend", "int8_channel_codes",
           "quantize_codes",
           "dequantize_codes", "layer_group_size", "outlier_mask", "split_outliers", "quant_layout",
           "apply_quant_layout", "is_quantized", "check_bits", "set_module"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# rounding


def check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise AxlabError(f"bits must be an integer from 2 to 8, got {bits!r}.",
                         "Use e.g. bits=4 (8 is near-lossless, 2 is aggressive).")
    return bits


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """(out, in) -> (out, G, g) with g = group_size (or in for per-channel)."""
    out_f, in_f = w.shape
    g = in_f if group_size is None else group_size
    if g <= 0 or in_f % g:
        raise AxlabError(f"group_size {group_size} does not divide the layer's {in_f} inputs.",
                         "Pick a group size that divides every layer's input width (e.g. 32 or 64), or None.")
    return w.reshape(out_f, in_f // g, g)


def layer_group_size(in_features: int, group_size: int | None) -> int | None:
    """The group size a layer uses: ``group_size``, or per-channel (None) when it does not
    divide the layer's input width (pruned layers can have any width)."""
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise AxlabError(f"group_size must be a positive integer or None, got {group_size!r}.",
                         "Use e.g. group_size=64, or None for one scale per output channel.")
    if in_features % group_size:
        log.info("group size %d does not divide %d inputs: per-channel scales for this layer", group_size, in_features)
        return None
    return group_size


def quantize_codes(w: torch.Tensor, bits: int, group_size: int | None = None,
                   scale_search: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest: ``w`` (out, in) -> codes (out, in) int8 and scales (out, G).

    Symmetric scaling with the full signed code range: ``scale = 2*max|w| / (2**bits - 1)``
    per output channel (or per group of ``group_size`` inputs), ``code = clamp(round(w / scale))``.
    ``scale_search`` shrinks each scale by a factor in [0.5, 1] chosen to minimise the
    squared weight error (data-free).
    """
    lo, hi = code_range(bits)
    wg = _grouped(w.detach().float(), group_size)                           # (out, G, g)
    base = (2 * wg.abs().amax(-1, keepdim=True) / (2 ** bits - 1)).clamp_min(1e-12)   # (out, G, 1)
    if scale_search:
        best_err, best = None, base
        for a in torch.linspace(0.5, 1.0, 21):
            s = base * a
            err = ((torch.clamp(torch.round(wg / s), lo, hi) * s - wg) ** 2).sum(-1, keepdim=True)
            if best_err is None:
                best_err, best = err, s
            else:
                better = err < best_err
                best_err, best = torch.where(better, err, best_err), torch.where(better, s, best)
        base = best
    codes = torch.clamp(torch.round(wg / base), lo, hi).to(torch.int8)
    return codes.reshape(w.shape), base.squeeze(-1)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """codes (out, in), scale (out, G) -> float weight (out, in)."""
    out_f, in_f = codes.shape
    g = in_f // scale.shape[1] if scale.shape[1] else in_f
    return (codes.float().reshape(out_f, -1, max(g, 1)) * scale.unsqueeze(-1)).reshape(out_f, in_f)


def outlier_mask(w: torch.Tensor, fraction: float) -> torch.Tensor:
    """The weights to keep exact (dense-and-sparse quantization, as in SpQR / SqueezeLLM).

    The ``fraction`` of ``w`` (out, in) that stands out most from its own row, by
    ``|w| / rms(row)``. A single huge weight (e.g. the one feeding a "massive activation")
    otherwise sets its row's whole step and rounds every other weight of the row to zero.
    Returns a bool mask (out, in); ``fraction=0`` selects nothing.
    """
    if not 0 <= fraction <= 0.1:
        raise AxlabError(f"outlier fraction {fraction} is out of range.",
                         "Use a fraction between 0 and 0.1 (e.g. 0.001 keeps 0.1% of the weights exact).")
    w = w.detach().float()
    k = int(math.ceil(fraction * w.numel())) if fraction > 0 else 0
    mask = torch.zeros(w.shape, dtype=torch.bool)
    if k == 0 or w.numel() == 0:
        return mask
    rms = w.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)
    idx = torch.topk((w.abs() / rms).reshape(-1), k).indices
    mask.view(-1)[idx] = True
    return mask


def split_outliers(w: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(flat index, value) of the masked weights, or None when the mask is empty."""
    if not bool(mask.any()):
        return None
    idx = mask.reshape(-1).nonzero().squeeze(1)
    return idx, w.detach().reshape(-1)[idx]


# ----------------------------------------------------------------------------------------
# modules


def int8_backend(weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """Build the int8 kernel for a Linear from its stored tensors: ``fn(x) -> y``.

    Uses torch.ao's dynamic quantized Linear (fbgemm/x86/oneDNN int8 GEMM, activations
    quantized per batch). torch.ao is deprecated; swap this one function to move to
    another backend. Falls back to a dequantized fp32 matmul if the kernel is missing.
    """
    w = weight_int8.float() * scale.unsqueeze(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.nn.quantized.dynamic import Linear as DynLinear
            qw = torch.quantize_per_channel(w, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
            mod = DynLinear(weight_int8.shape[1], weight_int8.shape[0], bias_=bias is not None, dtype=torch.qint8)
            mod.set_weight_bias(qw, None if bias is None else bias.detach().float())
        return mod
    except (RuntimeError, ImportError, AttributeError) as e:  # pragma: no cover - backend missing
        log.warning("int8 kernel unavailable (%s); using a dequantized fp32 matmul", e)
        return lambda x: F.linear(x, w, bias)


def int8_channel_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (out, in) -> int8 codes (out, in) in [-127, 127] and one scale per output channel
    (``max|w| / 127``): what :class:`Int8Linear` stores (and the int8 ONNX graph runs)."""
    w = w.detach().float()
    scale = (w.abs().amax(1) / 127).clamp_min(1e-12)                          # (out,)
    return torch.clamp(torch.round(w / scale.unsqueeze(1)), -127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """int8 weights (per-output-channel symmetric scales) on an int8 dynamic kernel.

    state_dict: ``weight_int8`` (out, in) int8, ``weight_scale`` (out,) float32, ``bias`` (out,).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._set_kernel(None)

    def _set_kernel(self, kernel) -> None:
        # a plain attribute, not a submodule: the packed torch.ao kernel must not enter state_dict()
        object.__setattr__(self, "_kernel", kernel)

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> "Int8Linear":
        m = cls(lin.in_features, lin.out_features, lin.bias is not None)
        codes, scale = int8_channel_codes(lin.weight)
        m.weight_int8.copy_(codes)
        m.weight_scale.copy_(scale)
        if lin.bias is not None:
            m.bias.copy_(lin.bias.detach())
        return m

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._set_kernel(None)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (out, in), for inspection and export."""
        return self.weight_int8.float() * self.weight_scale.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_int8.numel() == 0:           # zero-width layer (pruned): output = bias
            return F.linear(x, self.weight, self.bias)
        if torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
            return F.linear(x, self.weight, self.bias)
        if self._kernel is None:
            self._set_kernel(int8_backend(self.weight_int8, self.weight_scale, self.bias))
        shape = x.shape
        y = self._kernel(x.reshape(-1, shape[-1]).float().contiguous())
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class QuantLinear(nn.Module):
    """Weight-only k-bit Linear: packed codes + scales; computes with the dequantized weight.

    state_dict: ``packed`` (flat uint8, or int8 at 8 bits), ``scale`` (out, G) float32,
    ``bias`` (out,) float32. G = 1 per channel, in / group_size per group. With
    ``n_outliers`` > 0 also ``outlier_index`` (flat positions, int32) and ``outlier_value``
    (float16): weights kept exact beside the codes (whose code there is 0).
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None = None,
                 bias: bool = True, method: str = "rtn", n_outliers: int = 0):
        super().__init__()
        code_range(bits)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.method = bits, group_size, method
        n_groups = 1 if group_size is None else in_features // group_size
        dtype = torch.int8 if bits == 8 else torch.uint8
        self.register_buffer("packed", torch.zeros(packed_nbytes(in_features * out_features, bits), dtype=dtype))
        self.register_buffer("scale", torch.ones(out_features, n_groups))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("outlier_index", torch.zeros(n_outliers, dtype=torch.int32) if n_outliers else None)
        self.register_buffer("outlier_value", torch.zeros(n_outliers, dtype=torch.float16) if n_outliers else None)
        self._refresh()

    @property
    def n_outliers(self) -> int:
        return 0 if self.outlier_index is None else self.outlier_index.numel()

    def _refresh(self) -> None:
        # the dequantized weight, computed eagerly (not inside forward) so that a traced or
        # exported graph sees one constant weight rather than the unpacking ops
        with torch.no_grad():
            self._w = dequantize_codes(self.codes(), self.scale) if self.packed.numel() else \
                torch.zeros(self.out_features, self.in_features)
            if self.n_outliers:
                self._w.view(-1)[self.outlier_index.long()] += self.outlier_value.float()

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, bits: int,
                   group_size: int | None = None, method: str = "rtn",
                   outliers: tuple[torch.Tensor, torch.Tensor] | None = None) -> "QuantLinear":
        """``outliers``: (flat index, value) of weights kept exact; their codes must be 0."""
        out_f, in_f = codes.shape
        n_out = 0 if outliers is None else int(outliers[0].numel())
        m = cls(in_f, out_f, bits, group_size, bias is not None, method, n_out)
        m.packed.copy_(pack_codes(codes, bits))
        m.scale.copy_(scale.reshape(out_f, -1))
        if bias is not None:
            m.bias.copy_(bias.detach())
        if n_out:
            idx = outliers[0].long()
            if bool((codes.reshape(-1)[idx] != 0).any()):
                raise ValueError("codes at outlier positions must be 0")
            m.outlier_index.copy_(idx.to(torch.int32))
            m.outlier_value.copy_(outliers[1].detach().to(torch.float16))
        m._refresh()
        return m

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh()

    def codes(self) -> torch.Tensor:
        """The signed integer codes, (out, in) int8."""
        n = self.in_features * self.out_features
        return unpack_codes(self.packed, self.bits, n).reshape(self.out_features, self.in_features)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (out, in), cached."""
        return self._w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        g = "per-channel" if self.group_size is None else f"group {self.group_size}"
        o = f", {self.n_outliers} exact outliers" if self.n_outliers else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, {g}, {self.method}{o}"


class QuantEmbedding(nn.Module):
    """Embedding table with per-row symmetric k-bit codes (8 bits by default).

    state_dict: ``packed`` (flat), ``scale`` (num_embeddings, 1) float32.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int = 8, padding_idx: int | None = None,
                 remap_vocab: int | None = None):
        super().__init__()
        code_range(bits)
        # after vocabulary pruning: original token id -> row (see surgery.RemappedEmbedding)
        self.register_buffer("old_to_new", torch.zeros(remap_vocab, dtype=torch.int32) if remap_vocab else None)
        self.num_embeddings, self.embedding_dim, self.bits, self.padding_idx = \
            num_embeddings, embedding_dim, bits, padding_idx
        dtype = torch.int8 if bits == 8 else torch.uint8
        self.register_buffer("packed", torch.zeros(packed_nbytes(num_embeddings * embedding_dim, bits), dtype=dtype))
        self.register_buffer("scale", torch.ones(num_embeddings, 1))
        self._refresh()

    def _refresh(self) -> None:
        n = self.num_embeddings * self.embedding_dim
        self._codes = unpack_codes(self.packed, self.bits, n).reshape(self.num_embeddings, self.embedding_dim)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, bits: int = 8) -> "QuantEmbedding":
        remap = getattr(emb, "old_to_new", None)
        m = cls(emb.num_embeddings, emb.embedding_dim, bits, emb.padding_idx,
                remap_vocab=None if remap is None else remap.numel())
        if remap is not None:
            m.old_to_new.copy_(remap)
        codes, scale = quantize_codes(emb.weight, bits)
        m.packed.copy_(pack_codes(codes, bits))
        m.scale.copy_(scale)
        m._refresh()
        return m

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh()

    def codes(self) -> torch.Tensor:
        """The unpacked int8 codes (num_embeddings, embedding_dim), cached."""
        return self._codes

    @property
    def weight(self) -> torch.Tensor:
        return self.codes().float() * self.scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, T, D): gather int8 rows, then scale each row
        if self.old_to_new is not None:
            ids = self.old_to_new[ids].long()
        return self.codes()[ids].float() * self.scale[ids]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, per-row"


QUANT_MODULES = (Int8Linear, QuantLinear, QuantEmbedding)


# ----------------------------------------------------------------------------------------
# which modules, and replacing them


def set_module(root: nn.Module, path: str, value: nn.Module) -> None:
    parts = path.split(".")
    for p in parts[:-1]:
        root = getattr(root, p)
    setattr(root, parts[-1], value)



def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QUANT_MODULES) for m in model.modules())


# ----------------------------------------------------------------------------------------
# layout: rebuild the module structure before load_state_dict


def quant_layout(model: nn.Module) -> dict:
    """JSON description of the quantized modules: ``{"modules": {name: {...}}}``."""
    mods = {}
    for name, m in model.named_modules():
        if isinstance(m, Int8Linear):
            mods[name] = {"kind": "int8_linear", "in_features": m.in_features, "out_features": m.out_features,
                          "bias": m.bias is not None}
        elif isinstance(m, QuantLinear):
            mods[name] = {"kind": "quant_linear", "in_features": m.in_features, "out_features": m.out_features,
                          "bias": m.bias is not None, "bits": m.bits, "group_size": m.group_size, "method": m.method,
                          "n_outliers": m.n_outliers}
        elif isinstance(m, QuantEmbedding):
            mods[name] = {"kind": "quant_embedding", "num_embeddings": m.num_embeddings,
                          "embedding_dim": m.embedding_dim, "bits": m.bits, "padding_idx": m.padding_idx,
                          "remap_vocab": None if m.old_to_new is None else m.old_to_new.numel()}
    return {"version": 1, "modules": mods}


def apply_quant_layout(model: nn.Module, layout: dict) -> nn.Module:
    """Replace the modules named in ``layout`` with empty quantized modules (in place).

    Apply ``surgery.apply_layout`` first (pruned shapes), then this, then
    ``model.load_state_dict(saved, strict=True)``.
    """
    if not isinstance(layout, dict) or "modules" not in layout:
        raise AxlabError("Not a quantization layout.", "Pass the dict returned by quant_layout(model).")
    for name, spec in layout["modules"].items():
        kind = spec.get("kind")
        try:
            model.get_submodule(name)
        except AttributeError:
            raise AxlabError(f"The model has no module '{name}' named in the quantization layout.",
                             "Apply the pruning layout (surgery.apply_layout) first, to the same base model.") from None
        if kind == "int8_linear":
            new = Int8Linear(spec["in_features"], spec["out_features"], spec["bias"])
        elif kind == "quant_linear":
            new = QuantLinear(spec["in_features"], spec["out_features"], spec["bits"], spec["group_size"],
                              spec["bias"], spec.get("method", "rtn"), spec.get("n_outliers", 0))
        elif kind == "quant_embedding":
            new = QuantEmbedding(spec["num_embeddings"], spec["embedding_dim"], spec["bits"], spec.get("padding_idx"),
                                 spec.get("remap_vocab"))
        else:
            raise AxlabError(f"Unknown quantized module kind '{kind}' for '{name}'.",
                             "The layout was written by a newer axlab; upgrade axlab.")
        set_module(model, name, new)
    return model

"""Export a BERT-family classifier to a fused ONNX graph that ONNX Runtime's CPU runs fast.

The graph is written directly with ``onnx.helper`` from the model's weights (walking the
layers through the registry), not traced, so every layer can have its own shape:

* attention: one fused contrib op per layer with that layer's own ``num_heads``
  (``com.microsoft.Attention`` with merged q/k/v weights for fp32 weights;
  ``DynamicQuantizeLinear`` + ``com.microsoft.QAttention`` when q/k/v run on the int8
  kernel, the input quantized once; else one q/k/v projection + ``Split`` +
  ``com.microsoft.MultiHeadAttention``); a layer with no heads left contributes its
  output-projection bias;
* embeddings: ``com.microsoft.EmbedLayerNormalization`` for an fp32 word table (the
  token-type-0 row is folded into the position table; RoBERTa's padding-aware
  positions are computed in the graph and passed as ``position_ids``), else a gather
  (``com.microsoft.GatherBlockQuantized`` for a quantized table) + the LayerNorm form below;
* residual + LayerNorm as ``Add`` + the standard ``LayerNormalization`` (opset 17;
  ``FusedConfig.layernorm="standard"``, the default): with ONNX Runtime 1.32 its CPU kernel
  beat the same LayerNorm written as 9 elementwise nodes (``"elementwise"``, the default
  until 2026-12-01) by 1.12-1.15x at batch 1 and 1.05-1.10x at batch 32 on a whole student
  graph, on an Intel CPU with AVX-VNNI and on an AMD one with AVX2 (``bench/README.md``);
  ``layernorm="fused"`` writes ``com.microsoft.SkipLayerNormalization`` (projection bias
  folded in), whose CPU kernel was the slowest of the three. The FFN activation as
  ``BiasGelu`` (exact erf GELU) or ``FastGelu`` (tanh GELU), matching the model's own activation;
* weights as stored: ``nn.Linear`` -> ``MatMul``; ``QuantLinear`` (k-bit codes +
  scales) -> ``com.microsoft.MatMulNBits`` with the same codes (2 bits natively; 3 bits
  in a 4-bit container; 5-7 bits in an 8-bit container; never re-rounded), its fp16
  outliers added back by a gather + ``ScatterElements(reduction="add")``;
  ``Int8Linear`` -> ``com.microsoft.DynamicQuantizeMatMul`` (int8 per-channel weights,
  activations quantized at run time, as in ORT dynamic quantization);
  ``QuantEmbedding`` -> ``GatherBlockQuantized``. A pruned vocabulary becomes one
  ``Gather`` of the id map in front of the table.

The graph takes ``input_ids`` and ``attention_mask`` (int64, (batch, seq), both axes
dynamic) and returns ``logits`` (batch, n_labels).

Not supported (raise ``ExportError``): top-k hard attention (no fused op computes it;
use :func:`axlab.deploy.onnx_export.export_onnx`), activations other than GELU/ReLU.

Usage::

    result = export_fused_onnx(model, tokenizer, "model.onnx")
    result.parity_max_abs_diff, result.predictor(batch)
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from axlab.core import registry
from axlab.core.errors import ExportError
from axlab.core.qmodules import Int8Linear, QuantEmbedding, QuantLinear
from axlab.core.surgery import EmptyAttention, is_skipped

__all__ = ["FusedConfig", "FusedResult", "build_fused_graph", "export_fused_onnx", "fused_predictor",
           "op_histogram", "nbits_container", "pack_nbits", "fused_support", "FUSED_TYPES", "attention_node_count",
           "int8_twin", "runs_on_int8_kernel", "LOWBIT_KERNELS", "LAYERNORMS", "int8_kernel_saturates"]

log = logging.getLogger(__name__)

MS = "com.microsoft"
OPSET = 17                      # LayerNormalization (17), ScatterElements reduction="add" (16)
NBITS_KERNEL = (2, 4, 8)        # bit widths the CPU MatMulNBits kernel executes (ORT 1.32)
GBQ_BITS = (2, 4, 8)            # bit widths GatherBlockQuantized accepts for uint8 data
FUSED_TYPES = ("bert", "roberta", "distilbert", "electra")     # architectures the writer knows
LOWBIT_KERNELS = ("auto", "int8", "nbits")  # how k-bit codes run: see FusedConfig.lowbit_kernel
LAYERNORMS = ("elementwise", "standard", "fused")   # how LayerNorm is written: see FusedConfig.layernorm
_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")


@dataclass
class FusedConfig:
    """How to write the graph.

    ``attention``: "auto" (``Attention`` when q/k/v are plain fp32 Linears, ``QAttention``
    when they run on the int8 kernel with no outliers left to add at run time, else
    ``MultiHeadAttention``), "attention", or "mha".
    ``nbits_block``: MatMulNBits block size for per-channel codes (scales repeat per
    block); per-group codes use their group size (or its largest power-of-two divisor >= 16).
    ``accuracy_level``: MatMulNBits ``accuracy_level``; 0 computes in fp32 (same numbers
    as PyTorch), 4 quantizes activations to int8 (faster on VNNI/AMX, not exact).
    ``embed_layernorm``: use ``EmbedLayerNormalization`` when the word table is fp32.
    ``lowbit_kernel``: how k-bit ``QuantLinear`` codes run. "nbits": ``MatMulNBits``.
    "int8": the file stores the codes packed at 2, 4 or 8 bits and a small constant
    subgraph widens them to int8 when the session loads (ONNX Runtime folds it once), so
    ``DynamicQuantizeMatMul`` runs them with int8 activations: the file is k-bit, the
    weights in memory int8. Only for per-channel codes (one scale per output column);
    outliers are folded into the int8 weights on their column's grid where they fit, the
    rest added exactly at run time. "auto" (default): "int8" for per-channel codes,
    "nbits" for grouped ones.
    ``layernorm``: "standard" (default) writes the residual ``Add`` and the standard
    ``LayerNormalization`` (opset 17); "elementwise" writes every LayerNorm as its 9
    elementwise steps (ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div, Mul, Add; faster
    than the LayerNorm kernels of older ONNX Runtime versions, slower with 1.32);
    "fused" writes ``com.microsoft.SkipLayerNormalization`` / ``LayerNormalization`` (and
    lets ``embed_layernorm`` apply). Same numbers every way (parity 1e-4).
    ``unpad``: between attention blocks the tokens are packed, padding dropped: the output
    projections, LayerNorms and FFNs run on the batch's real tokens only (at batch 32 of
    reviews padded to the longest, about half the positions are padding); each attention
    block gathers them back into the padded (batch, seq) layout its fused op needs. Assumes
    right padding (the first position of every row is real, as BERT-family tokenizers pad);
    :func:`export_fused_onnx` turns it off for a tokenizer that pads on the left.
    ``cls_only``: the last layer computes its output (after attention, which still reads
    every token) for the first position only, the one the classification head reads.
    Both give the same logits as the padded graph (parity 1e-4).
    """

    attention: str = "auto"
    nbits_block: int = 32
    accuracy_level: int = 0
    embed_layernorm: bool = True
    lowbit_kernel: str = "auto"
    layernorm: str = "standard"
    unpad: bool = True
    cls_only: bool = True

    def __post_init__(self):
        if self.attention not in ("auto", "attention", "mha"):
            raise ValueError(f"attention must be 'auto', 'attention' or 'mha', got {self.attention!r}")
        if self.nbits_block < 16 or self.nbits_block & (self.nbits_block - 1):
            raise ValueError(f"nbits_block must be a power of two >= 16, got {self.nbits_block}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy_level must be 0..4, got {self.accuracy_level}")
        if self.lowbit_kernel not in LOWBIT_KERNELS:
            raise ValueError(f"lowbit_kernel must be one of {LOWBIT_KERNELS}, got {self.lowbit_kernel!r}")
        if self.layernorm not in LAYERNORMS:
            raise ValueError(f"layernorm must be one of {LAYERNORMS}, got {self.layernorm!r}")

    def padded(self) -> "FusedConfig":
        """This config in the padded layout (``unpad`` and ``cls_only`` off): every position
        through every layer, as the graph was before packing (and as ``fake_quantized`` emulates)."""
        return replace(self, unpad=False, cls_only=False)


# ----------------------------------------------------------------------------------------
# low-bit containers


def nbits_container(bits: int) -> int:
    """The narrowest bit width the CPU kernels execute that holds ``bits``-bit codes (2, 4 or 8)."""
    if not 2 <= bits <= 8:
        raise ExportError(f"Cannot store {bits}-bit codes.", "Use 2..8-bit codes.")
    return next(c for c in NBITS_KERNEL if c >= bits)


def pack_nbits(codes: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Signed codes (N, K) -> MatMulNBits ``B`` (N, ceil(K/block), block*bits/8) uint8.

    Each code is stored offset by ``2**(bits-1)`` (the op's default zero point), low bits
    first, sequentially along K; K is zero-code padded to whole blocks.
    """
    n, k = codes.shape
    kb = -(-k // block)
    off = 2 ** (bits - 1)
    u = np.full((n, kb * block), off, dtype=np.uint8)
    u[:, :k] = (codes.astype(np.int16) + off).astype(np.uint8)
    per = 8 // bits
    u = u.reshape(n, kb, block // per, per)
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(u << shifts, axis=-1).astype(np.uint8)       # (N, kb, blob)


def _pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed codes (V, D) -> uint8 (V, D*bits/8) packed along the last axis (GatherBlockQuantized)."""
    off = 2 ** (bits - 1)
    u = (codes.astype(np.int16) + off).astype(np.uint8)
    per = 8 // bits
    if per == 1:
        return u
    u = u.reshape(u.shape[0], -1, per)
    return np.bitwise_or.reduce(u << (np.arange(per) * bits).astype(np.uint8), axis=-1).astype(np.uint8)


def _pow2_block(width: int, cap: int | None = None) -> int | None:
    """Largest power of two >= 16 dividing ``width`` (at most ``cap``), or None."""
    b = 16
    best = None
    while width % b == 0 and (cap is None or b <= cap):
        best = b
        b *= 2
    return best


def fused_support(model: nn.Module) -> str | None:
    """Why ``model`` cannot be written as the fused graph, in words; None when it can.

    Checked before any work, so an export can fall back to the plain (dynamo) graph
    with a clear reason: an architecture the writer does not know (vision models,
    anything outside :data:`FUSED_TYPES`), top-k hard attention (no fused ONNX Runtime op
    computes it), an activation other than GELU/ReLU, or k-bit groups with no
    power-of-two block for MatMulNBits.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FUSED_TYPES:
        return (f"the fused graph supports {', '.join(FUSED_TYPES)} text classifiers, not "
                f"'{model_type or type(model).__name__}'")
    topk = [i for i in range(len(registry.layers(model)))
            if getattr(registry.attention_module(model, i), "axlab_topk", None) is not None]
    if topk:
        return (f"top-k hard attention in layer{'s' if len(topk) > 1 else ''} {', '.join(map(str, topk))}: "
                "no fused ONNX Runtime attention op computes it")
    act = getattr(model.config, "hidden_act", None) or getattr(model.config, "activation", "gelu")
    if act not in _ACTIVATIONS:
        return f"activation '{act}' has no fused ONNX form here"
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear) and m.group_size is not None and _pow2_block(m.group_size) is None:
            return f"'{name}' uses {m.bits}-bit groups of {m.group_size}, which MatMulNBits cannot block"
    return None


def runs_on_int8_kernel(lin: nn.Module, config: FusedConfig | None = None) -> bool:
    """True when the fused graph runs this ``QuantLinear``'s codes on the int8 kernel."""
    kernel = (config or FusedConfig()).lowbit_kernel
    return isinstance(lin, QuantLinear) and lin.group_size is None and kernel != "nbits"


class _Int8WithExact(Int8Linear):
    """An ``Int8Linear`` plus a few weights kept exact beside it: y[..., r] += x[..., c] * v."""

    def __init__(self, in_features: int, out_features: int, bias: bool, exact: tuple):
        super().__init__(in_features, out_features, bias)
        r, c, v = exact
        self.register_buffer("exact_row", torch.as_tensor(r, dtype=torch.long))
        self.register_buffer("exact_col", torch.as_tensor(c, dtype=torch.long))
        self.register_buffer("exact_value", torch.as_tensor(np.asarray(v, dtype=np.float32)))

    @property
    def weight(self) -> torch.Tensor:
        w = super().weight.clone()
        w.index_put_((self.exact_row, self.exact_col), self.exact_value, accumulate=True)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y.index_add(-1, self.exact_row, x[..., self.exact_col] * self.exact_value)


def int8_twin(model: nn.Module, config: FusedConfig | None = None) -> nn.Module | None:
    """The fused graph's int8-kernel computation, in PyTorch: a copy of ``model`` where every
    ``QuantLinear`` that the graph runs on ``DynamicQuantizeMatMul`` is an ``Int8Linear`` with
    the very int8 weights the graph builds (its codes, outliers folded in on the column's
    grid). Used to check the graph the way plain int8 models are checked (both runtimes
    quantize activations at run time). None when no k-bit codes run on the int8 kernel.
    Outliers too large for int8 on their column's grid stay exact (fp32, added at run time)
    in the graph and in the twin.
    """
    import copy

    names = [n for n, m in model.named_modules() if runs_on_int8_kernel(m, config)]
    if not names:
        return None
    twin = copy.deepcopy(model)
    for name in names:
        q: QuantLinear = twin.get_submodule(name)
        col_scale = _np(q.scale)[:, 0].astype(np.float32)
        codes = q.codes().numpy().astype(np.int64)                                 # (out, in)
        folded, left = _split_outliers(_outliers([q]), col_scale)
        if folded is not None:
            r, c, v = folded
            codes[r, c] = np.round(v.astype(np.float64) / col_scale[r]).astype(np.int64)
        lin = Int8Linear(q.in_features, q.out_features, q.bias is not None) if left is None else \
            _Int8WithExact(q.in_features, q.out_features, q.bias is not None, left)
        lin.weight_int8.copy_(torch.from_numpy(codes.astype(np.int8)))
        lin.weight_scale.copy_(torch.from_numpy(col_scale))
        if q.bias is not None:
            lin.bias.copy_(q.bias)
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, child, lin)
    return twin.eval()


ATTENTION_OPS = ("Attention", "MultiHeadAttention", "QAttention")      # com.microsoft fused attention ops


def attention_node_count(ops: dict) -> int:
    """Fused attention nodes (com.microsoft Attention, MultiHeadAttention, QAttention) in an :func:`op_histogram`."""
    return sum(int(ops.get(f"{MS}:{op}", 0)) for op in ATTENTION_OPS)


# ----------------------------------------------------------------------------------------
# graph builder


class _Graph:
    """Collects nodes and initializers; hands out unique tensor names."""

    def __init__(self):
        from onnx import helper, numpy_helper
        self.h, self.nh = helper, numpy_helper
        self.nodes, self.inits, self._n = [], [], 0
        self.counts: dict[str, int] = {}

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, array) -> str:
        name = self.name(base)
        array = np.asarray(array)
        self.inits.append(self.nh.from_array(array if array.flags.c_contiguous else array.copy(), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str | None = None, base: str | None = None,
           **attrs) -> str | list[str]:
        outs = [self.name(base or op_type) for _ in range(n_out)]
        self.nodes.append(self.h.make_node(op_type, inputs, outs, name=self.name(f"n_{op_type}"), domain=domain,
                                           **attrs))
        self.counts[op_type] = self.counts.get(op_type, 0) + 1
        return outs[0] if n_out == 1 else outs


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def _linear_kind(lin: nn.Module) -> str:
    if isinstance(lin, QuantLinear):
        return "nbits"
    if isinstance(lin, Int8Linear):
        return "int8"
    if isinstance(lin, nn.Linear):
        return "fp32"
    raise ExportError(f"Cannot export a {type(lin).__name__} as a linear layer.", "Use nn.Linear or axlab's quantized modules.")


def _bias(lin: nn.Module) -> np.ndarray | None:
    b = getattr(lin, "bias", None)
    return None if b is None else _np(b)


def _outliers(lins: list[QuantLinear]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(output row, input column, fp16 value) of the weights kept exact in ``lins`` stacked along outputs."""
    rows, cols, vals, base_row = [], [], [], 0
    for m in lins:
        if m.n_outliers:
            idx = m.outlier_index.long().numpy()
            rows.append(idx // m.in_features + base_row)
            cols.append(idx % m.in_features)
            vals.append(m.outlier_value.numpy())
        base_row += m.out_features
    if not rows:
        return None
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64), np.concatenate(vals)


def _split_outliers(out: tuple | None, col_scale: np.ndarray) -> tuple[tuple | None, tuple | None]:
    """(outliers that fit int8 on their column's grid, the rest); each part None when empty."""
    if out is None:
        return None, None
    r, c, v = out
    fits = np.abs(np.round(v.astype(np.float64) / col_scale[r])) <= 127
    part = lambda m: (r[m], c[m], v[m]) if m.any() else None     # noqa: E731
    return part(fits), part(~fits)


class _Writer:
    """Walks one model and writes its fused graph."""

    def __init__(self, model: nn.Module, cfg: FusedConfig):
        self.model, self.cfg, self.g = model, cfg, _Graph()
        self.spec = registry.spec_for(model)
        self.cfg_hf = model.config

    # --- linear layers -------------------------------------------------------------------

    def matmul(self, x: str, lins: list[nn.Module], tag: str, bias: np.ndarray | None = None) -> str:
        """x @ W.T (+ ``bias``) for one Linear or several of the same kind stacked along outputs.

        The linears' own biases are NOT added; ``bias`` is, inside ``DynamicQuantizeMatMul``
        (its optional bias input) where the weights run on the int8 kernel, else by an ``Add``.
        """
        kinds = {_linear_kind(m) for m in lins}
        if len(kinds) != 1:
            raise ValueError("matmul: mixed linear kinds")
        kind = kinds.pop()
        g = self.g
        if kind == "fp32":
            w = np.concatenate([_np(m.weight).T for m in lins], axis=1)         # (K, N)
            return self._plus(g.op("MatMul", [x, g.const(f"{tag}_w", w)], base=tag), bias, tag)
        plan = self._int8_plan(lins)
        if plan is not None:
            wq, col_scale, left = self._int8_weight(plan, tag)
            return self._add_outliers(x, self._dqmm(x, wq, col_scale, bias, tag), left, tag)
        return self._nbits(x, lins, tag, bias)

    def _int8_plan(self, lins: list[nn.Module]) -> dict | None:
        """How ``lins`` (stacked along outputs) run on the int8 kernel, or None when they do not.

        ``Int8Linear``: their int8 weights. ``QuantLinear`` with one scale per column (see
        :func:`runs_on_int8_kernel`) and one container width: their codes, widened to int8 at
        load; outliers that fit int8 on their column's grid folded in, ``left`` the rest.
        Only numpy here: nothing is written to the graph.
        """
        kinds = {_linear_kind(m) for m in lins}
        if kinds == {"int8"}:
            return {"wq": np.concatenate([m.weight_int8.numpy().T for m in lins], axis=1),     # (K, N) int8
                    "col_scale": np.concatenate([_np(m.weight_scale) for m in lins]), "left": None}
        if kinds != {"nbits"} or len({nbits_container(m.bits) for m in lins}) > 1:
            return None
        if not all(runs_on_int8_kernel(m, self.cfg) for m in lins):
            return None
        codes = np.concatenate([m.codes().numpy() for m in lins], axis=0)          # (N, K) signed
        col_scale = np.concatenate([_np(m.scale) for m in lins], axis=0)[:, 0].astype(np.float32)
        folded, left = _split_outliers(_outliers(lins), col_scale)
        return {"codes_t": codes.T, "cbits": nbits_container(lins[0].bits), "folded": folded, "left": left,
                "col_scale": col_scale}

    def _int8_weight(self, plan: dict, tag: str) -> tuple[str, np.ndarray, tuple | None]:
        """(the int8 (K, N) weight tensor in the graph, column scales, outliers left) of an :meth:`_int8_plan`."""
        if "wq" in plan:
            return self.g.const(f"{tag}_wq", plan["wq"]), plan["col_scale"], None
        wq = self._widened_codes(plan["codes_t"], plan["cbits"], tag, plan["folded"], plan["col_scale"])
        return wq, plan["col_scale"], plan["left"]

    def _plus(self, y: str, bias: np.ndarray | None, tag: str) -> str:
        return y if bias is None else self.g.op("Add", [y, self.g.const(f"{tag}_b", bias)])

    def _dqmm(self, x: str, wq: str, col_scale: np.ndarray, bias: np.ndarray | None, tag: str) -> str:
        """``DynamicQuantizeMatMul`` (int8 weights ``wq`` (K, N), one scale per column), bias folded in."""
        g = self.g
        ins = [x, wq, g.const(f"{tag}_ws", col_scale)] + (["", g.const(f"{tag}_b", bias)] if bias is not None else [])
        return g.op("DynamicQuantizeMatMul", ins, domain=MS, base=tag)

    def _nbits(self, x: str, lins: list[QuantLinear], tag: str, bias: np.ndarray | None = None) -> str:
        g = self.g
        bits = {nbits_container(m.bits) for m in lins}
        groups = {m.group_size for m in lins}
        if len(bits) > 1 or len(groups) > 1:                     # mixed precision: one op each, then concat
            outs = [self.matmul(x, [m], f"{tag}{i}") for i, m in enumerate(lins)]     # each on its own kernel
            return self._plus(g.op("Concat", outs, axis=-1, base=tag), bias, tag)
        cbits, group = bits.pop(), groups.pop()
        k = lins[0].in_features
        codes = np.concatenate([m.codes().numpy() for m in lins], axis=0)          # (N, K) signed
        scale = np.concatenate([_np(m.scale) for m in lins], axis=0)               # (N, G)
        if group is not None and self.cfg.lowbit_kernel == "int8":
            raise ExportError(f"{group}-wide groups have several scales per column; the int8 kernel takes one.",
                              "Use FusedConfig(lowbit_kernel='nbits') (MatMulNBits) for grouped codes.")
        if group is None:
            block = self.cfg.nbits_block
            kb = -(-k // block)
            scales = np.repeat(scale, kb, axis=1)                                   # (N, kb)
        else:
            block = _pow2_block(group)
            if block is None:
                raise ExportError(f"Group size {group} has no power-of-two block >= 16 for MatMulNBits.",
                                  "Quantize with a group size that is a multiple of 16, or per channel.")
            scales = np.repeat(scale, group // block, axis=1)
        n = codes.shape[0]
        y = g.op("MatMulNBits", [x, g.const(f"{tag}_q{cbits}", pack_nbits(codes, cbits, block)),
                                 g.const(f"{tag}_s", scales.astype(np.float32))],
                 domain=MS, base=tag, K=k, N=n, bits=cbits, block_size=block,
                 accuracy_level=self.cfg.accuracy_level)
        return self._plus(self._add_outliers(x, y, _outliers(lins), tag), bias, tag)

    def _widened_codes(self, codes_t: np.ndarray, cbits: int, tag: str,
                       outliers: tuple | None = None, col_scale: np.ndarray | None = None) -> str:
        """Signed codes (K, N) stored packed at ``cbits`` (2, 4 or 8) bits -> an int8 (K, N) tensor.

        Below 8 bits the initializer is uint8 (K, ceil(N*cbits/8)), code ``j`` of a byte in
        bits ``j*cbits``, offset by ``2**(cbits-1)``; the unpacking ops read only
        initializers, so ONNX Runtime's constant folding runs them once at session load.
        ``outliers`` (rows, cols, values; each within int8 of its column's grid, see
        :func:`_split_outliers`) are written into the int8 matrix as
        ``round(value / col_scale[row])``: below 8 bits the int8 container has room for
        them on the column's own grid, so they cost nothing at run time (a rounding error
        of at most half a step instead of exact fp16); the file stores them as a sparse
        list (int32 flat index + int8 code).
        """
        g = self.g
        kdim, n = codes_t.shape
        oidx = oval = None
        if outliers is not None:
            r, c, v = outliers
            oval = np.round(v.astype(np.float64) / col_scale[r]).astype(np.int8)
            oidx = (c * n + r).astype(np.int32)                                      # flat (K, N) index
        if cbits == 8:
            wide = codes_t.astype(np.int8)
            if oidx is not None:
                wide.reshape(-1)[oidx] = oval
            return g.const(f"{tag}_wq", wide)
        per, off = 8 // cbits, 2 ** (cbits - 1)
        n_pad = -(-n // per) * per
        padded = np.zeros((kdim, n_pad), dtype=np.int16)
        padded[:, :n] = codes_t
        packed = _pack_rows(padded, cbits)                                           # (K, n_pad/per) uint8
        p32 = g.op("Cast", [g.const(f"{tag}_q{cbits}", packed)], to=6)
        parts = []
        for j in range(per):
            v = g.op("Div", [p32, g.const(f"{tag}_d", np.array(2 ** (j * cbits), np.int32))]) if j else p32
            v = g.op("Mod", [v, g.const(f"{tag}_m", np.array(2 ** cbits, np.int32))])
            parts.append(g.op("Unsqueeze", [v, g.const(f"{tag}_ax", np.array([-1], np.int64))]))
        wide = g.op("Reshape", [g.op("Concat", parts, axis=-1),
                                g.const(f"{tag}_shape", np.array([kdim, n_pad], np.int64))])
        if n_pad != n:
            wide = g.op("Slice", [wide, g.const(f"{tag}_s0", np.array([0], np.int64)),
                                  g.const(f"{tag}_s1", np.array([n], np.int64)),
                                  g.const(f"{tag}_s2", np.array([1], np.int64))])
        wide = g.op("Sub", [wide, g.const(f"{tag}_off", np.array(off, np.int32))])
        if oidx is not None:
            flat = g.op("Reshape", [wide, g.const(f"{tag}_flat", np.array([-1], np.int64))])
            flat = g.op("ScatterElements", [flat, g.const(f"{tag}_oidx", oidx),
                                            g.op("Cast", [g.const(f"{tag}_oq", oval)], to=6)], axis=0)
            wide = g.op("Reshape", [flat, g.const(f"{tag}_shape2", np.array([kdim, n], np.int64))])
        return g.op("Cast", [wide], to=3, base=f"{tag}_wq")                          # int8

    def _add_outliers(self, x: str, y: str, out: tuple | None, tag: str) -> str:
        """Weights kept exact beside the codes, ``out`` = (rows, cols, values): y[..., r] += x[..., c] * v
        (fp32, at run time: a gather and a scatter per layer)."""
        if out is None:
            return y
        g = self.g
        r, c, v = out
        xs = g.op("Gather", [x, g.const(f"{tag}_ocol", c)], axis=-1)                       # (..., n_out)
        upd = g.op("Mul", [xs, g.op("Cast", [g.const(f"{tag}_oval", v.astype(np.float16))], to=1)])
        ridx = g.op("Expand", [g.const(f"{tag}_orow", r), g.op("Shape", [upd])])
        return g.op("ScatterElements", [y, ridx, upd], axis=-1, reduction="add", base=tag)

    def linear(self, x: str, lin: nn.Module, tag: str) -> str:
        """x @ W.T + b."""
        return self.matmul(x, [lin], tag, bias=_bias(lin))

    def residual_branch(self, x: str, lin: nn.Module, tag: str) -> tuple[str, np.ndarray | None]:
        """(x @ W.T, the bias still to add) for a block's last projection: with ``SkipLayerNormalization``
        the bias goes there; with elementwise LayerNorm it is added here (for free inside the int8 kernel)."""
        if self.cfg.layernorm == "fused":
            return self.matmul(x, [lin], tag), _bias(lin)
        return self.matmul(x, [lin], tag, bias=_bias(lin)), None

    # --- blocks ----------------------------------------------------------------------------

    def _ln_params(self, ln: nn.LayerNorm, tag: str) -> tuple[str, str, float]:
        return self.g.const(f"{tag}_gamma", _np(ln.weight)), self.g.const(f"{tag}_beta", _np(ln.bias)), float(ln.eps)

    def skip_ln(self, x: str, skip: str, bias: np.ndarray | None, ln: nn.LayerNorm, tag: str) -> str:
        """LayerNorm(x + skip + bias): one SkipLayerNormalization ("fused"), else Add + :meth:`bias_ln`."""
        g = self.g
        if self.cfg.layernorm != "fused":
            s = g.op("Add", [x, skip])
            return self.bias_ln(s, bias, ln, tag)
        gamma, beta, eps = self._ln_params(ln, tag)
        ins = [x, skip, gamma, beta] + ([g.const(f"{tag}_bias", bias)] if bias is not None else [])
        return g.op("SkipLayerNormalization", ins, domain=MS, epsilon=eps, base=tag)

    def bias_ln(self, x: str, bias: np.ndarray | None, ln: nn.LayerNorm, tag: str) -> str:
        """LayerNorm(x + bias) (a removed block leaves only its output bias)."""
        g = self.g
        gamma, beta, eps = self._ln_params(ln, tag)
        if bias is not None:
            x = g.op("Add", [x, g.const(f"{tag}_bias", bias)])
        if self.cfg.layernorm in ("standard", "fused"):
            return g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=eps, base=tag)
        # (x - mean) / sqrt(var + eps) * gamma + beta, var the biased variance as in torch; the
        # square is Mul(d, d) (ONNX Runtime's LayerNormFusion looks for Pow and would turn the steps
        # back into its LayerNorm kernel; ReduceSumSquare, one op fewer, measured slower at batch 1)
        d = g.op("Sub", [x, g.op("ReduceMean", [x], axes=[-1], keepdims=1)])
        var = g.op("ReduceMean", [g.op("Mul", [d, d])], axes=[-1], keepdims=1)
        std = g.op("Sqrt", [g.op("Add", [var, g.const(f"{tag}_eps", np.array(eps, np.float32))])])
        return g.op("Add", [g.op("Mul", [g.op("Div", [d, std]), gamma]), beta], base=tag)

    def activation(self, x: str, bias: np.ndarray | None, tag: str) -> str:
        act = getattr(self.cfg_hf, "hidden_act", None) or getattr(self.cfg_hf, "activation", "gelu")
        g = self.g
        b = g.const(f"{tag}_b", bias) if bias is not None else None
        if act == "gelu":
            return g.op("BiasGelu", [x, b], domain=MS) if b else g.op("Gelu", [x], domain=MS)
        if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            return g.op("FastGelu", [x] + ([b] if b else []), domain=MS)
        if act == "relu":
            return g.op("Relu", [g.op("Add", [x, b]) if b else x])
        raise ExportError(f"Activation '{act}' has no fused ONNX form here.", "Use export_onnx (dynamo) for this model.")

    def embeddings(self, ids: str) -> str:
        """(B, S) int64 ids -> (B, S, H) after the embedding LayerNorm (and ELECTRA's projection)."""
        g, emb_mod = self.g, registry.base_model(self.model).embeddings
        word = registry.word_embeddings(self.model)
        pos_mod = emb_mod.position_embeddings
        tte = getattr(emb_mod, "token_type_embeddings", None)
        tte0 = None if tte is None else _np(tte.weight[0])                          # token type 0, folded in
        pos_q = isinstance(pos_mod, QuantEmbedding)
        pos_tab = None if pos_q else _np(pos_mod.weight) + (0 if tte0 is None else tte0)      # (P, E)
        ln = emb_mod.LayerNorm
        remap = getattr(word, "old_to_new", None)
        ids32 = g.op("Cast", [ids], to=6)                                           # int32
        if remap is not None:
            if int(remap.max()) < 2 ** 15:                                        # half the bytes: int16 map
                ids32 = g.op("Cast", [g.op("Gather", [g.const("vocab_map", remap.numpy().astype(np.int16)), ids32])],
                             to=6, base="ids_mapped")
            else:
                ids32 = g.op("Gather", [g.const("vocab_map", remap.numpy().astype(np.int32)), ids32],
                             base="ids_mapped")
        pos_ids = None
        if self.spec.model_type == "roberta":                                       # positions skip padding
            pad = int(emb_mod.padding_idx)
            m = g.op("Cast", [g.op("Not", [g.op("Equal", [ids, g.const("pad_id", np.array(pad, np.int64))])])], to=6)
            csum = g.op("CumSum", [m, g.const("axis1", np.array(1, np.int32))])
            pos_ids = g.op("Add", [g.op("Mul", [csum, m]), g.const("pad_i32", np.array(pad, np.int32))],
                           base="position_ids")
        if (self.cfg.embed_layernorm and self.cfg.layernorm == "fused" and not isinstance(word, QuantEmbedding)
                and not pos_q):
            gamma, beta, eps = self._ln_params(ln, "emb_ln")
            ins = [ids32, "", g.const("word_emb", _np(word.weight)), g.const("pos_emb", pos_tab), "", gamma, beta, "",
                   pos_ids or ""]
            while ins[-1] == "":
                ins.pop()
            x = g.op("EmbedLayerNormalization", ins, n_out=2, domain=MS, epsilon=eps, base="emb")[0]
        else:
            if isinstance(word, QuantEmbedding):
                w = self._quant_gather(word, ids32, "word")
            else:
                w = g.op("Gather", [g.const("word_emb", _np(word.weight)), ids32], base="word")
            if pos_q:                                                               # quantized table: gather rows
                if pos_ids is None:                                                 # 0..S-1
                    seq = g.op("Gather", [g.op("Shape", [ids]), g.const("one_s", np.array(1, np.int64))])
                    pos_ids = g.op("Range", [g.const("zero_i", np.array(0, np.int32)), g.op("Cast", [seq], to=6),
                                             g.const("one_i", np.array(1, np.int32))], base="position_ids")
                p = self._quant_gather(pos_mod, pos_ids, "pos")
                if tte0 is not None:
                    p = g.op("Add", [p, g.const("tte0", tte0)])
            elif pos_ids is None:                                                   # rows 0..S-1: (S, E)
                seq = g.op("Gather", [g.op("Shape", [ids]), g.const("one", np.array([1], np.int64))])
                p = g.op("Slice", [g.const("pos_emb", pos_tab), g.const("zero", np.array([0], np.int64)), seq,
                                   g.const("axis0", np.array([0], np.int64))])
            else:
                p = g.op("Gather", [g.const("pos_emb", pos_tab), pos_ids])
            x = self.skip_ln(w, p, None, ln, "emb_ln")
        proj = getattr(emb_mod, "embeddings_project", None) or getattr(registry.base_model(self.model),
                                                                        "embeddings_project", None)
        if proj is not None:
            x = self.linear(x, proj, "emb_proj")
        return x

    def _quant_gather(self, emb: QuantEmbedding, ids32: str, tag: str) -> str:
        g = self.g
        codes = emb.codes().numpy()                                                 # (V, D) signed
        scale = _np(emb.scale)                                                      # (V, 1)
        block = _pow2_block(emb.embedding_dim, cap=128)
        cbits = next((c for c in GBQ_BITS if c >= emb.bits), None)
        if block is not None and cbits is not None:
            return g.op("GatherBlockQuantized",
                        [g.const(f"{tag}_q{cbits}", _pack_rows(codes, cbits)), ids32,
                         g.const(f"{tag}_s", np.repeat(scale, emb.embedding_dim // block, axis=1))],
                        domain=MS, bits=cbits, block_size=block, gather_axis=0, quantize_axis=1, base=tag)
        # fallback: int8 rows gathered, then scaled
        rows = g.op("Cast", [g.op("Gather", [g.const(f"{tag}_q8", codes.astype(np.int8)), ids32])], to=1)
        return g.op("Mul", [rows, g.op("Gather", [g.const(f"{tag}_s", scale), ids32])], base=tag)

    def attention(self, x: str, layer: int, mask32: str) -> tuple[str | None, np.ndarray | None]:
        """Context after the output projection, *without* its bias; (None, bias) for a layer with no heads.

        ``x``: the rows the layers compute (see :class:`_Rows`); the context comes back as the same rows.
        """
        mod = registry.attention_module(self.model, layer)
        if isinstance(mod, EmptyAttention):
            if mod.bias is not None:                                                 # DistilBERT
                return None, _np(mod.bias)
            return None, _bias(registry.layers(self.model)[layer].get_submodule(self.spec.o))
        if getattr(mod, "axlab_topk", None) is not None:
            raise ExportError(f"Layer {layer} uses top-k hard attention, which no fused ONNX Runtime op computes.",
                              "Export this variant with export_onnx (dynamo graph), or remove the hard attention.")
        x = self.rows.padded(x)                                                     # (B, S, H)
        p = registry.attention_parts(self.model, layer)
        n_heads, hq = p.n_heads, p.q.out_features
        scale = float(p.head_dim ** -0.5)
        g, tag = self.g, f"L{layer}_attn"
        qkv = [p.q, p.k, p.v]
        biases = [_bias(m) if _bias(m) is not None else np.zeros(m.out_features, np.float32) for m in qkv]
        bias = g.const(f"{tag}_qkv_b", np.concatenate(biases))
        fp32 = all(_linear_kind(m) == "fp32" for m in qkv)
        mode = self.cfg.attention                                # "auto" and "attention" write the same
        if mode != "mha" and fp32:
            w = np.concatenate([_np(m.weight).T for m in qkv], axis=1)            # (H, 3*hq)
            ctx = g.op("Attention", [x, g.const(f"{tag}_qkv_w", w), bias, mask32], domain=MS,
                       num_heads=n_heads, scale=scale, base=tag)
        elif mode != "mha" and (plan := self._int8_plan(qkv)) is not None and plan["left"] is None:
            # int8 q/k/v: the input quantized once, projection and attention in one QAttention
            wq, col_scale, _ = self._int8_weight(plan, f"{tag}_qkv")
            xq, xs, xz = g.op("DynamicQuantizeLinear", [x], n_out=3, base=f"{tag}_xq")
            ctx = g.op("QAttention", [xq, wq, bias, xs, g.const(f"{tag}_qkv_ws", col_scale), mask32, xz], domain=MS,
                       num_heads=n_heads, scale=scale, base=tag)
        else:
            kinds = {_linear_kind(m) for m in qkv}
            if len(kinds) == 1:
                q, k, v = g.op("Split", [self.matmul(x, qkv, f"{tag}_qkv"), g.const(f"{tag}_split",
                                         np.array([hq, hq, hq], np.int64))], n_out=3, axis=-1)
            else:
                q, k, v = (self.matmul(x, [m], f"{tag}_{n}") for m, n in zip(qkv, "qkv"))
            ctx = g.op("MultiHeadAttention", [q, k, v, bias, mask32], domain=MS, num_heads=n_heads, scale=scale,
                       base=tag)                                                     # (B, S, hq)
        return self.residual_branch(self.rows.from_padded(ctx, hq), p.o, f"{tag}_out")

    def ffn(self, x: str, layer: int) -> tuple[str | None, np.ndarray | None]:
        f = registry.ffn_parts(self.model, layer)
        if f.up.out_features == 0:
            return None, _bias(f.down)
        tag = f"L{layer}_ffn"
        h = self.activation(self.matmul(x, [f.up], f"{tag}_up"), _bias(f.up), tag)
        return self.residual_branch(h, f.down, f"{tag}_down")

    def layer_norms(self, layer: int) -> tuple[nn.LayerNorm, nn.LayerNorm]:
        lay = registry.layers(self.model)[layer]
        if self.spec.model_type == "distilbert":
            return lay.sa_layer_norm, lay.output_layer_norm
        return lay.attention.output.LayerNorm, lay.output.LayerNorm

    def head(self, x: str) -> str:
        """Logits from the encoder's output ``x`` (its [CLS] rows, see :class:`_Rows`)."""
        g, m, t = self.g, self.model, self.spec.model_type
        cls = self.rows.cls(x)                                                                        # (B, H)
        if t == "bert":
            pooler = registry.base_model(m).pooler
            h = g.op("Tanh", [self.linear(cls, pooler.dense, "pooler")]) if pooler is not None else cls
            return self.linear(h, m.classifier, "classifier")
        if t == "distilbert":
            h = g.op("Relu", [self.linear(cls, m.pre_classifier, "pre_classifier")])
            return self.linear(h, m.classifier, "classifier")
        h = self.linear(cls, m.classifier.dense, "head_dense")
        if t == "roberta":
            h = g.op("Tanh", [h])
        else:                                                                        # electra: gelu
            h = g.op("Gelu", [h], domain=MS)
        return self.linear(h, m.classifier.out_proj, "classifier")

    def write(self):
        from onnx import TensorProto, helper
        g = self.g
        x = self.embeddings("input_ids")
        mask32 = g.op("Cast", ["attention_mask"], to=6, base="mask_i32")
        kept = [i for i in range(len(registry.layers(self.model))) if not is_skipped(self.model, i)]
        rows = self.rows = _Rows(g, int(self.cfg_hf.hidden_size), self.cfg.unpad)
        x = rows.pack(x)
        for i in kept:
            ln_attn, ln_ffn = self.layer_norms(i)
            rows.last = self.cfg.cls_only and i == kept[-1]          # from here on, [CLS] rows only
            ctx, b = self.attention(x, i, mask32)
            x = rows.residual(x)
            x = (self.bias_ln(x, b, ln_attn, f"L{i}_ln1") if ctx is None
                 else self.skip_ln(ctx, x, b, ln_attn, f"L{i}_ln1"))
            y, b = self.ffn(x, i)
            x = self.bias_ln(x, b, ln_ffn, f"L{i}_ln2") if y is None else self.skip_ln(y, x, b, ln_ffn, f"L{i}_ln2")
        logits = self.head(x)
        g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="out"))
        ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("input_ids",
                                                                                               "attention_mask")]
        outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", int(self.cfg_hf.num_labels)])]
        graph = helper.make_graph(g.nodes, "axlab_fused", ins, outs, g.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                                  producer_name="axlab")
        model.ir_version = 10
        return model


class _Rows:
    """Which token rows the graph computes, between attention blocks.

    Padded (``unpad`` off): (B, S, H) everywhere. Packed (``unpad`` on): (N, H), the N real
    tokens of the batch in row-major order (``NonZero`` of the flattened mask); before each
    attention block they are gathered back to (B, S, H), every padding position taking a copy
    of the real token before it (finite values that the mask hides from the keys, and whose
    own outputs are dropped again). Once ``last`` is set (the last layer, ``cls_only``): the
    rows after attention are the [CLS] rows only, (B, H).
    """

    def __init__(self, g: _Graph, hidden: int, unpad: bool):
        self.g, self.hidden, self.unpad, self.last, self.done = g, hidden, unpad, False, False
        if not unpad:
            return
        to_1d = g.const("flat", np.array([-1], np.int64))
        flat = g.op("Reshape", ["attention_mask", to_1d], base="mask_flat")
        self.idx = g.op("Reshape", [g.op("NonZero", [flat]), to_1d], base="token_rows")            # (N,)
        before = g.op("Sub", [g.op("CumSum", [flat, g.const("axis0", np.array(0, np.int64))]),
                              g.const("one", np.array(1, np.int64))])
        self.inv = g.op("Max", [before, g.const("zero", np.array(0, np.int64))], base="padded_rows")  # (B*S,)
        shape = g.op("Shape", ["attention_mask"])
        self.shape3 = g.op("Concat", [shape, g.const("hidden", np.array([hidden], np.int64))], axis=0)
        seq = g.op("Gather", [shape, g.const("one_s", np.array(1, np.int64))])
        starts = g.op("Range", [g.const("zero_s", np.array(0, np.int64)), g.op("Size", ["attention_mask"]), seq])
        self.cls_idx = g.op("Gather", [self.inv, starts], base="cls_rows")                     # (B,)

    def pack(self, x: str) -> str:
        """(B, S, H) after the embeddings -> the rows the layers compute."""
        if not self.unpad:
            return x
        g = self.g
        flat = g.op("Reshape", [x, g.const("rows_shape", np.array([-1, self.hidden], np.int64))])
        return g.op("Gather", [flat, self.idx], axis=0, base="packed")

    def padded(self, x: str) -> str:
        """The rows -> (B, S, H), the layout of the fused attention ops."""
        if not self.unpad:
            return x
        return self.g.op("Reshape", [self.g.op("Gather", [x, self.inv], axis=0), self.shape3], base="padded")

    def from_padded(self, ctx: str, width: int) -> str:
        """An attention block's (B, S, width) output -> the rows (its [CLS] rows in the last layer)."""
        g = self.g
        if self.last:
            return g.op("Gather", [ctx, g.const("cls_pos", np.array(0, np.int64))], axis=1, base="cls_ctx")
        if not self.unpad:
            return ctx
        flat = g.op("Reshape", [ctx, g.const("rows_shape", np.array([-1, width], np.int64))])
        return g.op("Gather", [flat, self.idx], axis=0, base="packed_ctx")

    def residual(self, x: str) -> str:
        """The residual stream ``x`` as the rows the block's output has (the [CLS] rows in the last layer)."""
        if self.last and not self.done:
            self.done = True
            return self._cls(x)
        return x

    def cls(self, x: str) -> str:
        """The encoder's output -> its [CLS] rows (B, H)."""
        return x if self.done else self._cls(x)

    def _cls(self, x: str) -> str:
        g = self.g
        if self.unpad:
            return g.op("Gather", [x, self.cls_idx], axis=0, base="cls")
        return g.op("Gather", [x, g.const("cls_pos", np.array(0, np.int64))], axis=1, base="cls")


def build_fused_graph(model: nn.Module, config: FusedConfig | None = None):
    """The fused ``onnx.ModelProto`` of ``model`` (not checked; see :func:`export_fused_onnx`)."""
    with torch.no_grad():
        proto = _Writer(model, config or FusedConfig()).write()
    return proto


# ----------------------------------------------------------------------------------------
# running and checking


def fused_predictor(path_or_bytes, threads: int | None = None) -> Callable:
    """An ONNX Runtime CPU predictor: fn(batch dict) -> logits (torch tensor)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    src = str(path_or_bytes) if isinstance(path_or_bytes, (str, Path)) else path_or_bytes
    session = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])

    def predict(batch: dict) -> torch.Tensor:
        feeds = {n: np.ascontiguousarray(np.asarray(batch[n], dtype=np.int64)) for n in ("input_ids", "attention_mask")}
        return torch.from_numpy(session.run(None, feeds)[0])

    predict.session = session
    return predict


_SATURATES: bool | None = None


def int8_kernel_saturates() -> bool:
    """True when this CPU's ONNX Runtime int8 matmul saturates on full-range int8 weights.

    Without AVX-VNNI (e.g. AVX2-only x86 CPUs) ONNX Runtime's uint8 x int8 kernels add products
    in pairs into int16 (``vpmaddubsw``), which clips once ``|w1| + |w2|`` exceeds about 128 at
    large activations: int8 weights near +-127 then lose accuracy, k-bit codes up to 7 bits do
    not. Measured once per process on one ``DynamicQuantizeMatMul`` whose exact result is known.
    """
    global _SATURATES
    if _SATURATES is None:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        k = 64
        w = numpy_helper.from_array(np.full((k, 1), 127, np.int8), "w")
        ws = numpy_helper.from_array(np.ones(1, np.float32), "ws")
        node = helper.make_node("DynamicQuantizeMatMul", ["x", "w", "ws"], ["y"], domain=MS)
        graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], [w, ws])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)])
        model.ir_version = 10
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        y = float(sess.run(None, {"x": np.ones((1, k), np.float32)})[0][0, 0])
        _SATURATES = abs(y - 127.0 * k) > 0.01 * 127 * k
        if _SATURATES:
            log.info("ONNX Runtime's int8 kernel saturates on this CPU (no AVX-VNNI): %.0f instead of %d", y, 127 * k)
    return _SATURATES


def op_histogram(proto) -> dict[str, int]:
    """Node count per op type ("domain:op" for contrib ops)."""
    out: dict[str, int] = {}
    for n in proto.graph.node:
        key = f"{n.domain}:{n.op_type}" if n.domain else n.op_type
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


@dataclass
class FusedResult:
    path: Path
    size_bytes: int
    parity_max_abs_diff: float          # max |ORT - PyTorch| over the parity batches
    parity: dict                        # "BxT" -> max abs diff
    ops: dict                           # op histogram of the written graph
    predictor: Callable = field(repr=False)


def export_fused_onnx(model: nn.Module, tokenizer, path: str | Path, *, config: FusedConfig | None = None,
                      tolerance: float | None = 1e-4, threads: int | None = None, overwrite: bool = False,
                      batches: list[dict] | None = None) -> FusedResult:
    """Write the fused graph of ``model`` to ``path`` and check it against PyTorch.

    ``tolerance``: the largest allowed |logit difference| on the parity batches (several
    lengths, padded and unpadded); ``None`` reports the difference without enforcing it
    (use for ``Int8Linear`` models, whose activations are quantized differently by
    ONNX Runtime's and PyTorch's int8 kernels, and for ``accuracy_level=4``).
    Raises ``ExportError`` (and leaves nothing at ``path``) when parity fails.
    """
    from axlab.deploy.onnx_export import check_parity, parity_batches
    path = Path(path).expanduser().resolve()
    if path.exists() and not overwrite:
        raise ExportError(f"'{path}' already exists.", "Choose another path, or pass overwrite=True.")
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    config = config or FusedConfig()
    if config.unpad and getattr(tokenizer, "padding_side", "right") == "left":
        log.info("the tokenizer pads on the left: the fused graph keeps the padded layout (unpad=False)")
        config = replace(config, unpad=False)
    try:
        proto = build_fused_graph(model, config)
        import onnx
        onnx.save(proto, str(tmp))
        predictor = fused_predictor(tmp, threads)
        parity = check_parity(model, predictor, batches if batches is not None else parity_batches(tokenizer))
        worst = max(parity.values())
        log.info("fused ONNX parity: max abs diff %.2e over %s", worst, ", ".join(parity))
        if tolerance is not None and not worst <= tolerance:
            raise ExportError(f"The fused ONNX graph differs from PyTorch by up to {worst:.2e} "
                              f"(tolerance {tolerance:.0e}); per batch shape: {parity}.",
                              "Report the variant's recipe; export it with export_onnx meanwhile.")
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        if tmp.exists():
            tmp.unlink()
    return FusedResult(path=path, size_bytes=path.stat().st_size, parity_max_abs_diff=worst, parity=parity,
                       ops=op_histogram(proto), predictor=predictor)

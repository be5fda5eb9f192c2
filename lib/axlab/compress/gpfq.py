"""GPFQ: greedy path-following post-training quantization (Lybrand & Saab; Zhang, Zhou & Saab).

Layer by layer (in forward order), each neuron's weights ``w`` are quantized one input
coordinate ``t`` at a time, carrying the running error ``u`` forward:

    q_t = Q( <x~_t, u_{t-1} + w_t x_t> / ||x~_t||^2 )        u_t = u_{t-1} + w_t x_t - q_t x~_t

where ``x_t`` is column t of the layer's input in the *original* network (X) and
``x~_t`` the same column in the *already quantized* network (X~), so errors made by
earlier layers are corrected too. ``Q`` rounds to the alphabet ``scale * {-2^(b-1) .. 2^(b-1)-1}``.

Vectorised form used here. With ``A = X~^T X`` and ``B = X~^T X~`` (in x in) the inner
product needs no token-sized state: ``<x~_t, u_{t-1}> = sum_{s<t} w_s A[t,s] - q_s B[t,s]``.
So every output row (neuron) of a layer is processed at once, looping over input
coordinates, with a running ``E`` (rows, in) updated lazily per block of columns (as in
GPTQ's lazy batch updates; exact, only reordered). Cost is independent of the number of
calibration tokens, so more calibration data is cheap (only the Gram matrices grow in sum).

Levers on top of the published algorithm (all optional):
* ``scale_grid``: per-neuron scale search. Each neuron is quantized with every scale
  factor in the grid (rows duplicated, still one vectorised pass) and keeps the one with
  the smallest ``||X w - X~ q||``.
* ``sparsity``: thresholded rounding (soft or hard, threshold in units of the neuron's
  step) that sets small weights to zero; the error feedback compensates.
* ``bias_correction``: ``b~ = b + mean(X) W^T - mean(X~) Q^T``, so the layer's mean output
  matches the original's.
* ``bits_per_layer`` (mixed precision): e.g. from :func:`choose_bits`, which measures each
  layer's sensitivity (KL of the logits when only that layer is rounded) and spends a
  size budget greedily.
* ``refine_passes``: coordinate descent on the same objective after the greedy pass
  (:func:`refine_rows`): each code is re-chosen given all the others, so it also sees the
  codes after it. The error never grows; on the default model 3 passes cut the mean
  per-layer error at 3 bits from 0.33 to 0.26 (and the logits' KL to fp32 by a sixth).
* ``outliers``: dense-and-sparse storage (as in SpQR / SqueezeLLM). The weights that stand
  out most from their row (``|w| / rms(row)``, top fraction per layer) are kept exact in
  float16 beside the codes, and the path-following runs around them. In MiniLM one FFN
  weight of layer 0 feeds a "massive activation" (about 200x the typical output); under
  per-row max scaling it sets its row's step and rounds the rest of the row to zero.
  Keeping 0.1% of the weights exact (about 0.05 bits per weight) cut the KL of the 3-bit
  model's logits to fp32 threefold.
* ``damp``: a ridge on the Gram matrices (as GPTQ's dampening), pulling codes towards
  plain rounding when calibration data is scarce.

Linears that read the same input tensor (q, k, v) share their Gram matrices and are
quantized together.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from axlab.compress.quantize import calibration_texts, quantize_embeddings_, rtn_linear, target_linears
from axlab.core import registry
from axlab.core.errors import AxlabError
from axlab.core.measure import forward, iter_batches, require_cpu, token_mask
from axlab.core.packing import code_range
from axlab.core.progress import Progress, as_progress
from axlab.core.qmodules import (
    QuantLinear,
    check_bits,
    layer_group_size,
    outlier_mask,
    quantize_codes,
    set_module,
    split_outliers,
)
from axlab.core.recipe import RecipeContext, register_transform

__all__ = ["GPFQConfig", "GPFQReport", "gpfq", "gpfq_rows", "choose_bits", "DEFAULT_SCALE_GRID"]

log = logging.getLogger(__name__)

DEFAULT_SCALE_GRID = (0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class GPFQConfig:
    bits: int = 4
    group_size: int | None = None
    scale_grid: tuple[float, ...] | None = DEFAULT_SCALE_GRID   # None = plain max scaling
    sparsity: float = 0.0              # threshold in units of the step; 0 = plain GPFQ
    threshold: str = "soft"            # "soft" | "hard"
    bias_correction: bool = True
    bits_per_layer: dict | None = None  # {linear name: bits}; others use ``bits``
    embeddings: bool = False           # also round the word embeddings (8 bits per row) first
    embedding_bits: int = 8
    scope: str = "encoder"
    batch_size: int = 32
    block_size: int = 128
    order: str = "natural"             # "natural" | "energy": largest ||x~_t|| first (like GPTQ's act-order)
    damp: float = 0.0                  # ridge on the Gram matrices, as a fraction of their mean diagonal
    refine_passes: int = 3             # coordinate-descent passes over GPFQ's codes (same objective); 0 = off
                                       # (with sparsity > 0 the threshold's zeros stay zero)
    outliers: float = 0.001            # fraction of each layer's weights kept exact (fp16, sparse); 0 = off

    def __post_init__(self):
        check_bits(self.bits)
        for name, b in (self.bits_per_layer or {}).items():
            check_bits(b)
        if self.scale_grid is not None:
            self.scale_grid = tuple(float(a) for a in self.scale_grid)
            if not self.scale_grid or any(not 0 < a <= 2 for a in self.scale_grid):
                raise ValueError("scale_grid factors must be in (0, 2]")
        if self.sparsity < 0:
            raise ValueError("sparsity threshold must be >= 0")
        if self.threshold not in ("soft", "hard"):
            raise ValueError("threshold must be 'soft' or 'hard'")
        if self.order not in ("natural", "energy"):
            raise ValueError("order must be 'natural' or 'energy'")
        if self.batch_size < 1 or self.block_size < 1:
            raise ValueError("batch_size and block_size must be >= 1")
        if self.damp < 0:
            raise ValueError("damp must be >= 0")
        if not 0 <= self.outliers <= 0.1:
            raise ValueError("outliers must be a fraction between 0 and 0.1")
        if self.refine_passes < 0:
            raise ValueError("refine_passes must be >= 0")


@dataclass
class GPFQReport:
    config: dict
    n_texts: int
    n_tokens: int
    seconds: float
    layers: list[dict] = field(default_factory=list)  # name, bits, rel_error, rtn_rel_error, zeros, mean_scale_factor

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------
# the core: quantize many rows at once from Gram matrices


def _column_scales(scale: torch.Tensor, n: int, group_size: int | None, dtype=torch.float64) -> torch.Tensor:
    """Scales (R, G) per row (and group) -> (R, n): the scale of every input column."""
    scale = scale.to(dtype)
    if scale.shape[1] > 1:
        return scale.repeat_interleave(n if group_size is None else group_size, dim=1)
    return scale.expand(scale.shape[0], n)


def _live_columns(diagB: torch.Tensor) -> list[bool]:
    """Which input columns are not all zero in X~ (elsewhere q_t does not matter)."""
    return (diagB > 1e-12 * max(float(diagB.max()), 1e-30)).tolist() if diagB.numel() else []


def gpfq_rows(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor,
              hi: torch.Tensor, group_size: int | None = None, sparsity: float = 0.0, threshold: str = "soft",
              block_size: int = 128, dtype: torch.dtype = torch.float64,
              order: torch.Tensor | None = None, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """GPFQ codes for every row of ``W`` (R, in).

    A = X~^T X, B = X~^T X~ (in, in); scale (R, G) per row (and group); lo, hi (R, 1) code
    range per row. Computes in ``dtype`` (float32 is about twice as fast; float64 matches
    the token-space algorithm exactly). ``order`` is the permutation of input coordinates
    to walk (None = natural order); codes come back in the natural order. ``fixed`` (R, in)
    bool marks weights kept exact (outliers): there q_t = w_t and the code is 0, and the
    path-following carries on around them. Returns integer codes (R, in) as float64.
    """
    R, n = W.shape
    W = W.to(dtype)
    A, B = A.to(dtype), B.to(dtype)
    col_scale = _column_scales(scale, n, group_size, dtype)
    if order is not None:
        order = order.long()
        W, col_scale = W[:, order], col_scale[:, order]
        A, B = A[order][:, order], B[order][:, order]
        fixed = None if fixed is None else fixed[:, order]
    E = torch.zeros(R, n, dtype=dtype)                # E[:, t] = <x~_t, u_{t-1}> per row
    codes = torch.zeros(R, n, dtype=dtype)
    Qw = torch.zeros(R, n, dtype=dtype)               # dequantized q
    diagA, diagB = torch.diagonal(A), torch.diagonal(B)
    lo, hi = lo.to(dtype), hi.to(dtype)
    live = _live_columns(diagB)                       # x~_t != 0
    for s in range(0, n, block_size):
        e = min(s + block_size, n)
        for t in range(s, e):
            if live[t]:
                arg = (W[:, t] * diagA[t] + E[:, t]) / diagB[t]          # (R,)
            else:                                                      # x~_t == 0: q_t does not matter
                arg = W[:, t].clone()
            st = col_scale[:, t]
            v = arg / st                                               # in units of the step
            if sparsity > 0:
                if threshold == "soft":
                    v = torch.sign(v) * torch.clamp(v.abs() - sparsity, min=0)
                else:
                    v = torch.where(v.abs() < sparsity, torch.zeros_like(v), v)
            c = torch.minimum(torch.maximum(torch.round(v), lo[:, 0]), hi[:, 0])
            q = c * st
            if fixed is not None:
                c = torch.where(fixed[:, t], 0.0, c)
                q = torch.where(fixed[:, t], W[:, t], q)
            codes[:, t] = c
            Qw[:, t] = q
            if t + 1 < e:                                              # within-block lazy update
                E[:, t + 1:e] += W[:, t:t + 1] * A[t + 1:e, t] - q.unsqueeze(1) * B[t + 1:e, t]
        if e < n:                                                      # rest of the columns, one matmul
            E[:, e:] += W[:, s:e] @ A[e:, s:e].T - Qw[:, s:e] @ B[e:, s:e].T
    if order is not None:
        codes = codes[:, torch.argsort(order)]
    return codes.double()


def refine_rows(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                lo: torch.Tensor, hi: torch.Tensor, group_size: int | None = None, passes: int = 1,
                block_size: int = 128, dtype: torch.dtype = torch.float32,
                fixed: torch.Tensor | None = None, exact: torch.Tensor | None = None) -> torch.Tensor:
    """Coordinate descent on ``||X w - X~ q||^2`` from given integer ``codes`` (R, in).

    Each step re-chooses one code given all the others: ``q_t = Q(q_t + ((A w)_t - (B q)_t) / B_tt)``
    where ``(A w)_t = <x~_t, X w>`` -- the exact minimiser on the alphabet, so the error never
    grows. GPFQ only looks back (each code sees the error of those before it); a pass lets
    every code also see those after it. Rows are independent and processed at once; ``B q``
    is updated lazily per block of columns, as in :func:`gpfq_rows`. Positions in ``fixed``
    (R, in) bool are not revisited; ``exact`` (a subset of them) marks weights kept exact
    (outliers: code 0, value w). Returns codes (R, in) as float64.
    """
    R, n = W.shape
    W, A, B = W.to(dtype), A.to(dtype), B.to(dtype)
    col_scale = _column_scales(scale, n, group_size, dtype)
    codes = codes.to(dtype).clone()
    lo, hi = lo.to(dtype)[:, 0], hi.to(dtype)[:, 0]
    target = W @ A.T                                 # (R, in): <x~_t, X w> per row, A = X~^T X
    diagB = torch.diagonal(B)
    live = _live_columns(diagB)
    exact_w = None if exact is None else torch.where(exact, W, 0.0)
    for _ in range(passes):
        Qw = codes * col_scale if exact_w is None else codes * col_scale + exact_w
        Bq = Qw @ B                                  # (R, in), B symmetric
        for s in range(0, n, block_size):
            e = min(s + block_size, n)
            delta = torch.zeros(R, e - s, dtype=dtype)
            for t in range(s, e):
                if not live[t]:
                    continue
                st = col_scale[:, t]
                q_new = Qw[:, t] + (target[:, t] - Bq[:, t]) / diagB[t]
                c = torch.minimum(torch.maximum(torch.round(q_new / st), lo), hi)
                d = c * st - Qw[:, t]
                if fixed is not None:
                    d = torch.where(fixed[:, t], 0.0, d)
                    c = torch.where(fixed[:, t], codes[:, t], c)
                codes[:, t] = c
                Qw[:, t] += d
                delta[:, t - s] = d
                if t + 1 < e:                        # within-block lazy update
                    Bq[:, t + 1:e] += d.unsqueeze(1) * B[t, t + 1:e]
            if e < n:
                Bq[:, e:] += delta @ B[s:e, e:]
    return codes.double()


def _row_errors(W: torch.Tensor, Qw: torch.Tensor, G: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """||X w_r - X~ q_r||^2 per row from Gram matrices (G = X^T X). (R,)"""
    W, Qw = W.double(), Qw.double()
    return ((W @ G) * W).sum(1) - 2 * ((Qw @ A) * W).sum(1) + ((Qw @ B) * Qw).sum(1)


# ----------------------------------------------------------------------------------------
# calibration plumbing: cached layer inputs, Gram matrices of linear inputs


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted input is captured."""


def _layer_inputs(model: nn.Module, batches: list[dict]) -> list[tuple]:
    """For each batch: (hidden_states, other args, kwargs) entering transformer layer 0."""
    first = registry.layers(model)[0]
    out = []

    def pre(mod, args, kwargs):
        out.append((args[0].detach(), args[1:], dict(kwargs)))
        raise _Stop

    h = first.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        for b in batches:
            try:
                forward(model, b)
            except _Stop:
                pass
    finally:
        h.remove()
    return out


def _run_layer(layer: nn.Module, h: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    out = layer(h, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _capture_input(layer: nn.Module, linear: nn.Module, h, args, kwargs) -> torch.Tensor:
    """The input of ``linear`` when ``layer`` runs on ``h``; stops the layer right there."""
    got = []

    def pre(mod, inp):
        got.append(inp[0].detach())
        raise _Stop

    hd = linear.register_forward_pre_hook(pre)
    try:
        _run_layer(layer, h, args, kwargs)
    except _Stop:
        pass
    finally:
        hd.remove()
    if not got:
        raise AxlabError("A linear layer was not reached during calibration.", "Report this model to axlab.")
    return got[0]


def _input_groups(layer: nn.Module, names: list[str], h, args, kwargs) -> list[list[str]]:
    """Group the layer's target linears (relative names) by shared input tensor, in call order."""
    order: list[tuple[str, torch.Tensor]] = []   # keep the tensors alive so identities stay unique
    hooks = []
    for n in names:
        def pre(mod, inp, n=n):
            order.append((n, inp[0]))            # returns None: records only
        hooks.append(layer.get_submodule(n).register_forward_pre_hook(pre))
    try:
        _run_layer(layer, h, args, kwargs)
    finally:
        for hd in hooks:
            hd.remove()
    groups: list[list[str]] = []
    seen: dict[int, list[str]] = {}
    for n, x in order:
        key = id(x)
        if n in {m for g in groups for m in g}:
            continue
        if key in seen:
            seen[key].append(n)
        else:
            seen[key] = [n]
            groups.append(seen[key])
    missing = [n for n in names if n not in {m for g in groups for m in g}]
    return groups + [[n] for n in missing]


# ----------------------------------------------------------------------------------------
# the public entry point


def gpfq(model: nn.Module, tokenizer, texts: list[str], bits: int = 4, *, progress: Progress = None,
         **options) -> nn.Module:
    """A copy of ``model`` with every encoder Linear quantized by GPFQ to ``bits`` bits.

    ``texts`` are calibration inputs (e.g. 128-512 training texts). ``options`` are the
    fields of :class:`GPFQConfig` (group_size, scale_grid, sparsity, threshold,
    bias_correction, bits_per_layer, embeddings, ...). The returned model carries a
    :class:`GPFQReport` in ``model.axlab_gpfq_report``.
    """
    cfg = GPFQConfig(bits=bits, **options)
    if not texts:
        raise AxlabError("GPFQ needs calibration texts.", "Pass e.g. 256 training texts (quantize.calibration_texts).")
    t0 = time.perf_counter()
    qmodel, report_layers, n_tokens = sequential_quantize(model, tokenizer, texts, cfg, _quantize_linear,
                                                          desc="GPFQ", progress=progress)
    qmodel.axlab_gpfq_report = GPFQReport(config=asdict(cfg), n_texts=len(texts), n_tokens=n_tokens,
                                          seconds=time.perf_counter() - t0, layers=report_layers)
    log.info("GPFQ %d-bit: %d layers in %.1f s (%d calibration tokens)", cfg.bits, len(report_layers),
             qmodel.axlab_gpfq_report.seconds, n_tokens)
    return qmodel


def sequential_quantize(model: nn.Module, tokenizer, texts: list, cfg, quantize_linear, *, desc: str,
                        progress: Progress = None) -> tuple[nn.Module, list[dict], int]:
    """The layer-by-layer pass GPFQ and GPTQ share; returns (quantized copy, per-layer reports, tokens).

    Both networks run the calibration inputs layer by layer: each Linear of a layer is
    quantized by ``quantize_linear(qmodel, name, linear, stats, cfg)`` from the statistics
    of its input in the original network (X) and in the network quantized so far (X~);
    Linears that read the same input share them. Padding is excluded (``token_mask``).
    ``cfg`` needs ``batch_size``, ``embeddings``, ``embedding_bits`` and ``scope``.
    """
    require_cpu(model, "GPFQ / GPTQ quantization")
    ref = model
    qmodel = copy.deepcopy(model).eval()
    batches = [b for _, b in iter_batches(tokenizer, list(texts), cfg.batch_size)]

    with torch.no_grad():
        if cfg.embeddings:
            quantize_embeddings_(qmodel, check_bits(cfg.embedding_bits))
        inputs = _layer_inputs(ref, batches)                                # original network
        masks = [token_mask(b, x[0]) for b, x in zip(batches, inputs)]     # (B, T) each; images: all True
        n_tokens = int(sum(int(m.sum()) for m in masks))
        h_ref = [x[0] for x in inputs]
        h_q = [x[0] for x in _layer_inputs(qmodel, batches)] if cfg.embeddings else list(h_ref)

        all_names = set(target_linears(ref, cfg.scope))
        layer_prefix = _layer_prefixes(ref)
        report_layers: list[dict] = []
        prog = as_progress(progress, total=len(all_names), desc=desc)
        for li, (Lr, Lq) in enumerate(zip(registry.layers(ref), registry.layers(qmodel))):
            prefix = layer_prefix[li]
            rel_names = [n[len(prefix):] for n in sorted(all_names) if n.startswith(prefix)]
            if rel_names:
                for group in _input_groups(Lr, rel_names, h_ref[0], inputs[0][1], inputs[0][2]):
                    # X~ of the quantized network so far (earlier groups of this layer included)
                    stats = _gram(Lr, Lq, group[0], h_ref, h_q, inputs, masks)
                    for rel in group:
                        report_layers.append(quantize_linear(qmodel, prefix + rel, Lq.get_submodule(rel), stats, cfg))
                        prog.update(1, prefix + rel)
            # propagate both networks through this (now quantized) layer
            for b, (_, args, kwargs) in enumerate(inputs):
                h_ref[b] = _run_layer(Lr, h_ref[b], args, kwargs)
                h_q[b] = _run_layer(Lq, h_q[b], args, kwargs)
        # linears outside the encoder (scope="all") need their inputs captured from a full forward
        for n in [n for n in sorted(all_names) if not any(n.startswith(p) for p in layer_prefix)]:
            stats = _gram_full(ref, qmodel, n, batches, masks)
            report_layers.append(quantize_linear(qmodel, n, qmodel.get_submodule(n), stats, cfg))
            prog.update(1, n)
        prog.close()
    qmodel.eval()
    return qmodel, report_layers, n_tokens


def _layer_prefixes(model: nn.Module) -> list[str]:
    by_id = {id(m): n for n, m in model.named_modules()}
    return [by_id[id(L)] + "." for L in registry.layers(model)]


@dataclass
class _Stats:
    G: torch.Tensor      # X^T X    (in, in)
    A: torch.Tensor      # X~^T X   (in, in)
    B: torch.Tensor      # X~^T X~  (in, in)
    mx: torch.Tensor     # mean of X rows  (in,)
    mxq: torch.Tensor    # mean of X~ rows (in,)
    n: int


def _accumulate(st: _Stats | None, X: torch.Tensor, Xq: torch.Tensor) -> _Stats:
    X, Xq = X.float(), Xq.float()                                         # (N, in); fp32 per batch, fp64 sums
    if st is None:
        d = X.shape[1]
        z = torch.zeros(d, d, dtype=torch.float64)
        st = _Stats(z.clone(), z.clone(), z.clone(), torch.zeros(d, dtype=torch.float64),
                    torch.zeros(d, dtype=torch.float64), 0)
    st.G += (X.T @ X).double()
    st.A += (Xq.T @ X).double()
    st.B += (Xq.T @ Xq).double()
    st.mx += X.double().sum(0)
    st.mxq += Xq.double().sum(0)
    st.n += X.shape[0]
    return st


def _finish(st: _Stats) -> _Stats:
    st.mx, st.mxq = st.mx / max(st.n, 1), st.mxq / max(st.n, 1)
    return st


def _gram(Lr, Lq, rel: str, h_ref, h_q, inputs, masks) -> _Stats:
    st = None
    for b, (_, args, kwargs) in enumerate(inputs):
        X = _capture_input(Lr, Lr.get_submodule(rel), h_ref[b], args, kwargs)
        Xq = _capture_input(Lq, Lq.get_submodule(rel), h_q[b], args, kwargs)
        st = _accumulate(st, X[masks[b]], Xq[masks[b]])                    # valid tokens only
    return _finish(st)


def _gram_full(ref, qmodel, name: str, batches, masks) -> _Stats:
    st = None
    for b, batch in enumerate(batches):
        xs = []
        for m in (ref, qmodel):
            got = []
            hd = m.get_submodule(name).register_forward_pre_hook(lambda mod, inp: got.append(inp[0].detach()))
            try:
                forward(m, batch)
            finally:
                hd.remove()
            xs.append(got[0])
        X, Xq = xs
        if X.dim() == 3:
            X, Xq = X[masks[b]], Xq[masks[b]]
        st = _accumulate(st, X, Xq)
    return _finish(st)


@contextlib.contextmanager
def _one_thread():
    """The column loop is many small ops: one thread avoids sync overhead (much faster on
    a busy machine). Restores the caller's setting."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _quantize_linear(qmodel: nn.Module, name: str, lin: nn.Linear, st: _Stats, cfg: GPFQConfig) -> dict:
    with _one_thread():
        return _quantize_linear_impl(qmodel, name, lin, st, cfg)


def _quantize_linear_impl(qmodel: nn.Module, name: str, lin: nn.Linear, st: _Stats, cfg: GPFQConfig) -> dict:
    bits = int((cfg.bits_per_layer or {}).get(name, cfg.bits))
    lo, hi = code_range(bits)
    W = lin.weight.detach().double()                                      # (R, in)
    R, n = W.shape
    gs = layer_group_size(n, cfg.group_size)
    mask = outlier_mask(W, cfg.outliers)                                   # kept exact, in float16
    fixed = mask if bool(mask.any()) else None
    if fixed is not None:
        W = torch.where(mask, W.half().double(), W)
    _, base = quantize_codes(W.masked_fill(mask, 0), bits, gs)            # max scaling (R, G)
    grid = cfg.scale_grid or (1.0,)
    k = len(grid)
    Wk = W.repeat(k, 1)                                                    # (k*R, in)
    scales = torch.cat([base.double() * a for a in grid])                 # (k*R, G)
    lo_t = torch.full((k * R, 1), float(lo), dtype=torch.float64)
    hi_t = torch.full((k * R, 1), float(hi), dtype=torch.float64)
    order = torch.argsort(torch.diagonal(st.B), descending=True, stable=True) if cfg.order == "energy" else None
    A, B = st.A, st.B
    if cfg.damp > 0:                                                       # ridge: pulls q towards w
        ridge = cfg.damp * float(torch.diagonal(B).mean()) * torch.eye(n, dtype=B.dtype)
        A, B = A + ridge, B + ridge
    codes = gpfq_rows(Wk, A, B, scales, lo_t, hi_t, gs, cfg.sparsity, cfg.threshold, cfg.block_size,
                      dtype=torch.float32, order=order, fixed=None if fixed is None else fixed.repeat(k, 1))
    exact = torch.where(mask, W, 0.0)

    def dequant(c, sc):
        return c * _column_scales(sc, n, gs) + exact.repeat(c.shape[0] // R, 1)

    deq = dequant(codes, scales)
    err = _row_errors(Wk, deq, st.G, st.A, st.B).view(k, R)                # (k, R)
    best = err.argmin(0)                                                   # (R,)
    rows = best * R + torch.arange(R)
    codes, scale, deq = codes[rows], scales[rows], deq[rows]
    gp = float(err.gather(0, best.unsqueeze(0)).sum())
    if cfg.refine_passes:
        keep = mask | (codes == 0) if cfg.sparsity > 0 else fixed           # keep the threshold's zeros
        codes = refine_rows(W, A, B, codes, scale, lo_t[:R], hi_t[:R], gs, cfg.refine_passes, cfg.block_size,
                            fixed=keep, exact=fixed)
        deq = dequant(codes, scale)
        gp = float(_row_errors(W, deq, st.G, st.A, st.B).sum())
    bias = lin.bias.detach().double().clone() if lin.bias is not None else None
    if cfg.bias_correction:
        shift = st.mx @ W.T - st.mxq @ deq.T                                # (R,)
        bias = shift if bias is None else bias + shift
    # relative errors ||XW - X~Q|| / ||XW|| (weights only), GPFQ vs RTN on the same X~
    ref_energy = float(((W @ st.G) * W).sum())
    rtn_codes, rtn_scale = quantize_codes(W, bits, gs)
    rtn_deq = rtn_codes.double() * _column_scales(rtn_scale, n, gs)
    rt = float(_row_errors(W, rtn_deq, st.G, st.A, st.B).sum())
    new = QuantLinear.from_codes(codes.to(torch.int8), scale.float(), None if bias is None else bias.float(),
                                 bits, gs, "gpfq", split_outliers(W, mask))
    set_module(qmodel, name, new)
    return {"name": name, "bits": bits, "rel_error": math.sqrt(max(gp, 0) / ref_energy) if ref_energy > 0 else 0.0,
            "rtn_rel_error": math.sqrt(max(rt, 0) / ref_energy) if ref_energy > 0 else 0.0,
            "zeros": float(((codes == 0) & ~mask).double().mean()), "outliers": int(mask.sum()),
            "mean_scale_factor": float(torch.tensor(grid, dtype=torch.float64)[best].mean())}


# ----------------------------------------------------------------------------------------
# mixed precision


@torch.no_grad()
def choose_bits(model: nn.Module, tokenizer, texts: list[str], avg_bits: float, candidates=(2, 3, 4),
                scope: str = "encoder", batch_size: int = 32, progress: Progress = None,
                outliers: float = 0.0) -> dict[str, int]:
    """Bits per Linear layer under a size budget of ``avg_bits`` per weight (on average).

    Sensitivity of layer l at b bits = KL(p_fp32 || p) of the output distribution when only
    layer l is rounded (RTN, per channel, keeping the ``outliers`` fraction exact as the
    quantizer will) to b bits, on ``texts``. Starting from the fewest bits everywhere, the
    upgrade with the largest sensitivity drop per extra bit is taken while the budget allows.
    """
    require_cpu(model, "Bit allocation")
    cands = sorted({check_bits(int(b)) for b in candidates})
    if not cands[0] <= avg_bits:
        raise AxlabError(f"avg_bits {avg_bits} is below the smallest candidate ({cands[0]} bits).",
                         "Raise avg_bits or add a smaller candidate.")
    names = target_linears(model, scope)
    batches = [b for _, b in iter_batches(tokenizer, list(texts), batch_size)]
    work = copy.deepcopy(model).eval()

    def logprobs(m):
        return torch.cat([torch.log_softmax(forward(m, b).logits, -1)
                          for b in batches])

    ref = logprobs(work)
    sens: dict[str, dict[int, float]] = {}
    prog = as_progress(progress, total=len(names) * len(cands), desc="sensitivity")
    for name in names:
        lin = work.get_submodule(name)
        sens[name] = {}
        for b in cands:
            set_module(work, name, rtn_linear(lin, b, outliers=outliers))
            lp = logprobs(work)
            sens[name][b] = float((ref.exp() * (ref - lp)).sum(-1).mean())
            prog.update(1, f"{name} {b}b")
        set_module(work, name, lin)
    prog.close()
    sizes = {n: model.get_submodule(n).weight.numel() for n in names}
    budget = avg_bits * sum(sizes.values())
    chosen = {n: cands[0] for n in names}
    used = sum(sizes[n] * chosen[n] for n in names)
    while True:
        best, best_gain = None, 0.0
        for n in names:
            i = cands.index(chosen[n])
            if i + 1 >= len(cands):
                continue
            nb = cands[i + 1]
            extra = sizes[n] * (nb - chosen[n])
            if used + extra > budget + 1e-9:
                continue
            gain = (sens[n][chosen[n]] - sens[n][nb]) / extra
            if best is None or gain > best_gain:
                best, best_gain = n, gain
        if best is None:
            break
        nb = cands[cands.index(chosen[best]) + 1]
        used += sizes[best] * (nb - chosen[best])
        chosen[best] = nb
    log.info("mixed precision: %.2f bits/weight on average", used / max(sum(sizes.values()), 1))
    return chosen


# ----------------------------------------------------------------------------------------
# recipe op


@register_transform("quantize_gpfq")
def _op_gpfq(model: nn.Module, ctx: RecipeContext, bits: int = 4, n_calibration: int = 256, seed: int = 0,
             avg_bits: float | None = None, candidates: tuple = (2, 3, 4), **params) -> nn.Module:
    """GPFQ on ``n_calibration`` seeded training texts. ``avg_bits`` turns on mixed precision
    (bits per layer from measured sensitivity, see gpfq.choose_bits)."""
    if ctx.tokenizer is None:
        raise AxlabError("Step 'quantize_gpfq' needs the tokenizer.", "Pass tokenizer= to apply_recipe.")
    texts = calibration_texts(ctx.require_splits("quantize_gpfq"), n_calibration, seed)
    if avg_bits is not None and params.get("bits_per_layer") is None:
        params["bits_per_layer"] = choose_bits(model, ctx.tokenizer, texts[:64], avg_bits, candidates,
                                               scope=params.get("scope", "encoder"), progress=ctx.progress,
                                               outliers=params.get("outliers", GPFQConfig.outliers))
    return gpfq(model, ctx.tokenizer, texts, bits, progress=ctx.progress, **params)

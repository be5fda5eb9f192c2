"""GPTQ: accurate post-training quantization from second-order information (Frantar et al., 2022).

A reference peer for GPFQ (:mod:`axlab.compress.gpfq`), written from the paper. For each
Linear layer with weights ``W`` (rows, in) and calibration inputs ``X~`` (tokens, in) of
the *already quantized* network, GPTQ minimises ``||X~ W^T - X~ Q^T||^2`` row by row:

    H = 2 X~^T X~ + damp * mean(diag H) * I                 (in, in); damp = 1%
    U = chol(H^-1)^T  (upper triangular)
    for each input column t, in blocks of 128 columns:
        q_t = Q(w_t)                                          round to the grid
        e_t = (w_t - q_t) / U[t, t]
        w_{t+1..} -= e_t U[t, t+1..]                          spread the error on the columns not yet quantized

The columns of one block are updated eagerly, the rest once per block (the paper's
"lazy batch updates"; exact, only reordered). Columns whose input is always zero get
``H[t, t] = 1`` (their code is plain rounding). ``act_order`` walks columns by
decreasing ``H[t, t]`` (the paper's follow-up heuristic; off by default, as in the paper).

To be a fair peer of GPFQ it uses the same quantization grid and scale granularity
(symmetric codes ``scale * {-2^(b-1) .. 2^(b-1)-1}``, scales from max scaling per output
channel or per group, fixed before the column loop: :func:`axlab.core.qmodules.quantize_codes`),
the same layer-by-layer pass (the inputs of a layer come from the quantized layers before
it, q/k/v sharing their input statistics), and stores the same :class:`QuantLinear`
(``method="gptq"``), so the variant saves, reloads and exports like a GPFQ one.
Optional levers shared with GPFQ: ``outliers`` (a fraction of weights kept exact in
float16; GPTQ treats them as columns with zero error), ``bias_correction``.

The report (``model.axlab_gptq_report``) gives per layer both GPFQ's error
``||X W^T - X~ Q^T|| / ||X W^T||`` (``rel_error``, comparable with GPFQ's report) and
GPTQ's own objective ``||X~ (W - Q)^T|| / ||X~ W^T||`` (``own_rel_error``), each next to
round-to-nearest's with the same scales.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from axlab.compress.gpfq import (
    _column_scales,
    _live_columns,
    _one_thread,
    _row_errors,
    _Stats,
    sequential_quantize,
)
from axlab.compress.quantize import calibration_texts
from axlab.core.errors import AxlabError
from axlab.core.packing import code_range
from axlab.core.progress import Progress
from axlab.core.qmodules import QuantLinear, check_bits, layer_group_size, outlier_mask, quantize_codes, set_module
from axlab.core.recipe import RecipeContext, register_transform

__all__ = ["GPTQConfig", "GPTQReport", "gptq", "gptq_rows"]

log = logging.getLogger(__name__)


@dataclass
class GPTQConfig:
    bits: int = 4
    group_size: int | None = None
    damp: float = 0.01                 # dampening, as a fraction of the mean diagonal of H (the paper: 1%)
    block_size: int = 128              # lazy batch updates (the paper: 128)
    act_order: bool = False            # walk columns by decreasing H[t, t]
    outliers: float = 0.0              # fraction of each layer's weights kept exact (fp16, sparse); 0 = off
    bias_correction: bool = False      # b~ = b + mean(X) W^T - mean(X~) Q^T (not in the paper)
    embeddings: bool = False           # also round the word embeddings (``embedding_bits`` per row) first
    embedding_bits: int = 8
    scope: str = "encoder"
    batch_size: int = 32

    def __post_init__(self):
        check_bits(self.bits)
        if not 0 <= self.damp:
            raise ValueError("damp must be >= 0")
        if self.batch_size < 1 or self.block_size < 1:
            raise ValueError("batch_size and block_size must be >= 1")
        if not 0 <= self.outliers <= 0.1:
            raise ValueError("outliers must be a fraction between 0 and 0.1")


@dataclass
class GPTQReport:
    config: dict
    n_texts: int
    n_tokens: int
    seconds: float
    layers: list[dict] = field(default_factory=list)  # name, bits, rel_error, rtn_rel_error, own_rel_error, ...

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------
# the core: quantize many rows at once from the Hessian


def _upper_cholesky_of_inverse(H: torch.Tensor, damp: float) -> torch.Tensor:
    """U with U^T U = (H + damp * mean(diag H) I)^-1, U upper triangular (float64).

    If H is not positive definite after dampening (rank-deficient calibration data in
    float precision), the dampening grows tenfold until it is.
    """
    n = H.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    mean_diag = float(torch.diagonal(H).mean()) if n else 1.0
    d = damp
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(H + d * mean_diag * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                if d != damp:
                    log.warning("GPTQ: H needed dampening %.3g (asked %.3g) to be positive definite", d, damp)
                return U
        d = max(d * 10, 1e-6)
    raise AxlabError("GPTQ could not invert the calibration Hessian of a layer.",
                     "Use more calibration texts, or a larger damp (e.g. 0.1).")


def gptq_rows(W: torch.Tensor, H: torch.Tensor, scale: torch.Tensor, lo: int, hi: int,
              group_size: int | None = None, damp: float = 0.01, block_size: int = 128,
              order: torch.Tensor | None = None, fixed: torch.Tensor | None = None,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ codes for every row of ``W`` (R, in) given ``H`` = 2 X~^T X~ (in, in).

    ``scale`` (R, G) per row (and group), fixed; codes in [lo, hi]. ``order``: the
    permutation of input columns to walk (None = natural). ``fixed`` (R, in) bool marks
    weights kept exact (outliers): code 0, value = the (error-updated) weight rounded to
    float16, so they absorb earlier errors and add none. The column loop runs in ``dtype``
    (the Cholesky factor in float64). Returns (codes (R, in) float64, exact values (R, in)
    float64, zero outside ``fixed``), both in the natural column order.
    """
    R, n = W.shape
    W = W.to(torch.float64).clone()
    H = H.to(torch.float64).clone()
    col_scale = _column_scales(scale, n, group_size, torch.float64)
    dead = [t for t, live in enumerate(_live_columns(torch.diagonal(H))) if not live]
    if dead:                                                 # no signal: plain rounding there
        idx = torch.tensor(dead)
        H[idx, :] = 0
        H[:, idx] = 0
        H[idx, idx] = 1.0
    if order is not None:
        order = order.long()
        W, col_scale, H = W[:, order], col_scale[:, order], H[order][:, order]
        fixed = None if fixed is None else fixed[:, order]
    U = _upper_cholesky_of_inverse(H, damp).to(dtype)         # (n, n)
    W, col_scale = W.to(dtype), col_scale.to(dtype)
    codes = torch.zeros(R, n, dtype=dtype)
    exact = torch.zeros(R, n, dtype=dtype)
    for s in range(0, n, block_size):
        e = min(s + block_size, n)
        W1 = W[:, s:e].clone()                               # (R, b): this block, updated as we go
        Err = torch.zeros(R, e - s, dtype=dtype)
        U1 = U[s:e, s:e]
        for i in range(e - s):
            t = s + i
            w = W1[:, i]
            st = col_scale[:, t]
            c = torch.clamp(torch.round(w / st), lo, hi)
            q = c * st
            if fixed is not None:
                keep = fixed[:, t]
                c = torch.where(keep, 0.0, c)
                wk = w.to(torch.float16).to(dtype)
                q = torch.where(keep, wk, q)
                exact[:, t] = torch.where(keep, wk, 0.0)
            codes[:, t] = c
            err = (w - q) / U1[i, i]                         # (R,)
            if i + 1 < e - s:
                W1[:, i + 1:] -= err.unsqueeze(1) * U1[i, i + 1:].unsqueeze(0)
            Err[:, i] = err
        if e < n:                                            # the rest of the columns, one matmul
            W[:, e:] -= Err @ U[s:e, e:]
    if order is not None:
        inv = torch.argsort(order)
        codes, exact = codes[:, inv], exact[:, inv]
    return codes.double(), exact.double()


# ----------------------------------------------------------------------------------------
# one layer


def _quantize_linear(qmodel: nn.Module, name: str, lin: nn.Linear, st: _Stats, cfg: GPTQConfig) -> dict:
    with _one_thread():
        return _quantize_linear_impl(qmodel, name, lin, st, cfg)


def _quantize_linear_impl(qmodel: nn.Module, name: str, lin: nn.Linear, st: _Stats, cfg: GPTQConfig) -> dict:
    bits = cfg.bits
    lo, hi = code_range(bits)
    W = lin.weight.detach().double()                                      # (R, in)
    R, n = W.shape
    gs = layer_group_size(n, cfg.group_size)
    mask = outlier_mask(W, cfg.outliers)
    fixed = mask if bool(mask.any()) else None
    _, scale = quantize_codes(W.masked_fill(mask, 0), bits, gs)           # the grid GPFQ and RTN use (R, G)
    H = 2 * st.B                                                          # 2 X~^T X~
    order = torch.argsort(torch.diagonal(H), descending=True, stable=True) if cfg.act_order else None
    codes, exact = gptq_rows(W, H, scale, lo, hi, gs, cfg.damp, cfg.block_size, order=order, fixed=fixed)
    cs = _column_scales(scale, n, gs)
    deq = codes * cs + exact                                              # (R, in)
    bias = lin.bias.detach().double().clone() if lin.bias is not None else None
    if cfg.bias_correction:
        shift = st.mx @ W.T - st.mxq @ deq.T                              # (R,)
        bias = shift if bias is None else bias + shift
    # errors, each next to round-to-nearest with the same scales
    rtn_codes, rtn_scale = quantize_codes(W, bits, gs)
    rtn_deq = rtn_codes.double() * _column_scales(rtn_scale, n, gs)
    ref_energy = float(((W @ st.G) * W).sum())                            # ||X W^T||^2
    own_energy = float(((W @ st.B) * W).sum())                            # ||X~ W^T||^2

    def rel(x: float, energy: float) -> float:
        return math.sqrt(max(x, 0.0) / energy) if energy > 0 else 0.0

    def own(Q: torch.Tensor) -> float:
        D = W - Q
        return float(((D @ st.B) * D).sum())

    outliers = None
    if fixed is not None:
        idx = mask.reshape(-1).nonzero().squeeze(1)
        outliers = (idx, exact.reshape(-1)[idx])
    new = QuantLinear.from_codes(codes.to(torch.int8), scale.float(), None if bias is None else bias.float(),
                                 bits, gs, "gptq", outliers)
    set_module(qmodel, name, new)
    return {"name": name, "bits": bits,
            "rel_error": rel(float(_row_errors(W, deq, st.G, st.A, st.B).sum()), ref_energy),
            "rtn_rel_error": rel(float(_row_errors(W, rtn_deq, st.G, st.A, st.B).sum()), ref_energy),
            "own_rel_error": rel(own(deq), own_energy), "rtn_own_rel_error": rel(own(rtn_deq), own_energy),
            "zeros": float(((codes == 0) & ~mask).double().mean()), "outliers": int(mask.sum())}


# ----------------------------------------------------------------------------------------
# the public entry point


def gptq(model: nn.Module, tokenizer, texts: list[str], bits: int = 4, *, progress: Progress = None,
         **options) -> nn.Module:
    """A copy of ``model`` with every encoder Linear quantized by GPTQ to ``bits`` bits.

    ``texts`` are calibration inputs (the same as GPFQ's, e.g. from
    :func:`axlab.compress.quantize.calibration_texts`). ``options`` are the fields of
    :class:`GPTQConfig`. The returned model carries a :class:`GPTQReport` in
    ``model.axlab_gptq_report``. ``model`` is not modified.
    """
    cfg = GPTQConfig(bits=bits, **options)
    if not texts:
        raise AxlabError("GPTQ needs calibration texts.", "Pass e.g. 256 training texts (quantize.calibration_texts).")
    t0 = time.perf_counter()
    qmodel, report_layers, n_tokens = sequential_quantize(model, tokenizer, texts, cfg, _quantize_linear,
                                                          desc="GPTQ", progress=progress)
    qmodel.axlab_gptq_report = GPTQReport(config=asdict(cfg), n_texts=len(texts), n_tokens=n_tokens,
                                          seconds=time.perf_counter() - t0, layers=report_layers)
    log.info("GPTQ %d-bit: %d layers in %.1f s (%d calibration tokens)", cfg.bits, len(report_layers),
             qmodel.axlab_gptq_report.seconds, n_tokens)
    return qmodel


# ----------------------------------------------------------------------------------------
# recipe op


@register_transform("quantize_gptq")
def _op_gptq(model: nn.Module, ctx: RecipeContext, bits: int = 4, n_calibration: int = 256, seed: int = 0,
             **params) -> nn.Module:
    """GPTQ on ``n_calibration`` seeded training texts (the same draw as quantize_gpfq's)."""
    if ctx.tokenizer is None:
        raise AxlabError("Step 'quantize_gptq' needs the tokenizer.", "Pass tokenizer= to apply_recipe.")
    texts = calibration_texts(ctx.require_splits("quantize_gptq"), n_calibration, seed)
    return gptq(model, ctx.tokenizer, texts, bits, progress=ctx.progress, **params)

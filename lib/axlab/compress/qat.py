"""Quantization-aware training: the deployed int8 rounding inside a fine-tuning or distillation loop.

A model that is fine-tuned in fp32 and rounded afterwards loses what the rounding costs
(a few tenths of a point for int8 weights, activations and 4-bit embeddings on a MiniLM).
Inside :func:`fake_quantized` the model computes what its int8 deployment computes, so
training learns weights that survive the rounding (Jacob et al. 2018; Q8BERT, Zafrir et
al. 2019):

* every Linear with weights: the weight rounded per output channel to int8
  (``scale = max|w| / 127``, codes in [-127, 127]: :meth:`axlab.core.qmodules.Int8Linear.from_linear`),
  and its input rounded per tensor to uint8 with a zero point (``scale = (max(x, 0) -
  min(x, 0)) / 255``: ONNX's ``DynamicQuantizeLinear``, which feeds ONNX Runtime's
  ``DynamicQuantizeMatMul`` / ``QAttention``; torch's own dynamic int8 kernels round
  activations slightly differently, so this emulates the ONNX file, not ``Int8Linear``);
* the word table per row at ``embedding_bits`` and the learned position table at
  ``position_bits`` (``scale = 2 max|row| / (2**bits - 1)``: :func:`axlab.core.qmodules.quantize_codes`,
  what :func:`axlab.compress.quantize.quantize_rest` stores).

Activations are rounded over every (batch, position) of the tensor, padding included: the
fused graph written with ``FusedConfig().padded()``. The default fused
graph rounds them over the real tokens only (and the last layer's over the [CLS] rows), a
slightly different scale per batch, so its logits differ from this emulation by that
rounding; on CPUs without AVX-VNNI ONNX Runtime's int8 kernel also clips full-range int8
weights (:func:`axlab.deploy.fused_onnx.int8_kernel_saturates`).

Gradients pass the rounding unchanged (straight-through estimator). The weights stay fp32
(the latent weights); on leaving the context the model computes in fp32 again, and
quantizing it the usual way (``quantize_rest``, the fused ONNX export) gives exactly the
codes it was trained with.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from torch import nn

from axlab.core import registry
from axlab.core.packing import code_range
from axlab.core.qmodules import dequantize_codes, int8_channel_codes, quantize_codes
from axlab.core.surgery import RemappedEmbedding

__all__ = ["fake_quantized", "int8_weight", "row_codes_weight", "uint8_activation"]

log = logging.getLogger(__name__)


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` forward, identity gradient to ``x``."""
    return x + (q - x).detach()


def int8_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` (out, in) rounded as :class:`~axlab.core.qmodules.Int8Linear` stores it (per output
    channel); no gradient (see :func:`_ste`)."""
    codes, scale = int8_channel_codes(w)
    return codes.float() * scale.unsqueeze(1)


def row_codes_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` (rows, dim) rounded per row to signed ``bits``-bit codes, as
    :func:`~axlab.core.qmodules.quantize_codes` does for an embedding table; no gradient."""
    return dequantize_codes(*quantize_codes(w, bits))


def uint8_activation(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded as ONNX's ``DynamicQuantizeLinear`` rounds it: one uint8 scale and zero
    point for the whole tensor, its range widened to include 0."""
    xd = x.detach()
    lo, hi = torch.clamp(xd.min(), max=0.0), torch.clamp(xd.max(), min=0.0)
    scale = (hi - lo) / 255
    if float(scale) == 0.0:
        return x
    zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale


def _linear_forward(mod: nn.Linear, activations: bool):
    def forward(x):
        if activations:
            x = _ste(x, uint8_activation(x))
        return F.linear(x, _ste(mod.weight, int8_weight(mod.weight)), mod.bias)
    return forward


def _embedding_forward(mod: nn.Module, bits: int):
    def forward(ids):
        w = _ste(mod.weight, row_codes_weight(mod.weight, bits))
        if isinstance(mod, RemappedEmbedding):         # the task's vocabulary only (prune_vocab)
            return F.embedding(mod.old_to_new[ids].long(), w)
        return F.embedding(ids, w, mod.padding_idx, mod.max_norm, mod.norm_type, mod.scale_grad_by_freq, mod.sparse)
    return forward


def _tables(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """(word table, learned position table) of a text model (None where absent)."""
    if registry.modality(model) != "text":
        return None, None
    emb = getattr(registry.base_model(model), "embeddings", None)
    return registry.word_embeddings(model), getattr(emb, "position_embeddings", None)


@contextlib.contextmanager
def fake_quantized(model: nn.Module, *, embedding_bits: int | None = 8, position_bits: int | None = 8,
                   activations: bool = True):
    """Inside this context ``model`` computes as its int8 deployment does (see the module doc).

    ``embedding_bits`` / ``position_bits``: the word / position table's bits per code (None:
    left in fp32). ``activations``: also round every Linear's input to uint8. Only plain
    ``nn.Linear`` / ``nn.Embedding`` modules (and a task-vocabulary table from ``prune_vocab``)
    are rounded, layers quantized already are left as they are; the model is changed in place
    for the duration and restored on exit.
    """
    patched: list[nn.Module] = []
    try:
        for mod in model.modules():
            if type(mod) is nn.Linear and mod.weight.numel() > 0:
                mod.forward = _linear_forward(mod, activations)
                patched.append(mod)
        word, pos = _tables(model)
        for table, bits in ((word, embedding_bits), (pos, position_bits)):
            if bits and type(table) in (nn.Embedding, RemappedEmbedding):
                code_range(bits)
                table.forward = _embedding_forward(table, bits)
                patched.append(table)
        log.debug("fake-quantized %d modules", len(patched))
        yield model
    finally:
        for mod in patched:
            del mod.forward

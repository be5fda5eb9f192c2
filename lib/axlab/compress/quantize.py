"""Quantization transforms: int8 dynamic (PyTorch) and weight-only k-bit round-to-nearest.

Both return a new model whose layers are the quantized modules of
:mod:`axlab.core.qmodules` (``Int8Linear``, ``QuantLinear``, ``QuantEmbedding``).
GPFQ, the data-driven k-bit quantizer, is in :mod:`axlab.compress.gpfq`.

Recipe ops: ``quantize_int8``, ``quantize_rtn``, ``quantize_rest`` (what a weight quantizer
leaves in fp32, packed for deployment; ``quantize_gpfq`` is registered by
:mod:`axlab.compress.gpfq`). ``layer_errors`` / ``error_figure`` compare methods layer by layer.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from axlab.core import registry
from axlab.core.errors import AxlabError
from axlab.core.qmodules import (
    QUANT_MODULES,
    Int8Linear,
    QuantEmbedding,
    QuantLinear,
    apply_quant_layout,
    check_bits,
    is_quantized,
    layer_group_size,
    outlier_mask,
    quant_layout,
    quantize_codes,
    set_module,
    split_outliers,
)
from axlab.core.recipe import RecipeContext, register_transform

__all__ = ["int8_dynamic", "rtn", "rtn_linear", "target_linears", "calibration_texts", "layer_errors", "error_figure",
           "quantize_embeddings_", "embedding_name", "position_embedding_name", "quantize_rest",
           # the modules, re-exported for convenience (defined in axlab.core.qmodules)
           "Int8Linear", "QuantLinear", "QuantEmbedding", "QUANT_MODULES", "quant_layout", "apply_quant_layout",
           "is_quantized"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# which modules, and replacing them


def target_linears(model: nn.Module, scope: str = "encoder") -> list[str]:
    """Names of the Linear layers to quantize, in forward order.

    ``scope="encoder"``: every Linear inside the transformer layers (q, k, v, o, FFN up and
    down, whatever their pruned shapes); ``"all"`` adds the pooler and classifier.
    Zero-width layers (all heads or FFN neurons pruned) are skipped: nothing to store.
    """
    if scope not in ("encoder", "all"):
        raise AxlabError(f"Unknown scope '{scope}'.", "Use scope='encoder' or scope='all'.")
    enc = {id(m) for m in registry.layers(model).modules()}
    names = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.weight.numel() > 0 and (scope == "all" or id(mod) in enc):
            names.append(name)
    return names


def embedding_name(model: nn.Module) -> str:
    emb = registry.word_embeddings(model)
    for name, mod in model.named_modules():
        if mod is emb:
            return name
    raise AxlabError("Could not find the word embeddings.", "Use a supported architecture.")  # pragma: no cover


def position_embedding_name(model: nn.Module) -> str | None:
    """Name of the learned position-embedding table (None if the model has none)."""
    emb_mod = getattr(registry.base_model(model), "embeddings", None)
    pos = getattr(emb_mod, "position_embeddings", None)
    if not isinstance(pos, (nn.Embedding, QuantEmbedding)):
        return None
    return next(name for name, mod in model.named_modules() if mod is pos)


def quantize_embeddings_(model: nn.Module, bits: int, position_bits: int | None = None) -> None:
    """Word embeddings to ``bits``-bit codes per row, in place (already quantized: left as is).

    ``position_bits``: also the learned position table (512 x hidden rows: 0.8 MB of fp32 in
    a MiniLM; 8 bits keep it within a quarter step of each row's range).
    """
    emb = registry.word_embeddings(model)
    if not isinstance(emb, QuantEmbedding):
        set_module(model, embedding_name(model), QuantEmbedding.from_embedding(emb, bits))
    _quantize_positions_(model, position_bits)


def _quantize_positions_(model: nn.Module, bits: int | None) -> None:
    name = position_embedding_name(model) if bits else None
    if name is not None and not isinstance(model.get_submodule(name), QuantEmbedding):
        set_module(model, name, QuantEmbedding.from_embedding(model.get_submodule(name), check_bits(bits)))


def int8_dynamic(model: nn.Module, embeddings: bool = False, scope: str = "all") -> nn.Module:
    """A copy of ``model`` with its Linear layers on int8 weights + int8 dynamic kernels.

    Like ``torch.ao.quantization.quantize_dynamic`` with per-channel weights (all Linear
    layers by default, as quantize_dynamic does), but stored as plain tensors.
    ``embeddings=True`` also stores the word embeddings in 8 bits per row.
    """
    model = copy.deepcopy(model)
    for name in target_linears(model, scope):
        set_module(model, name, Int8Linear.from_linear(model.get_submodule(name)))
    if embeddings:
        quantize_embeddings_(model, 8)
    model.eval()
    return model


def quantize_rest(model: nn.Module, embedding_bits: int | None = 8, position_bits: int | None = 8,
                  linears: bool = True) -> nn.Module:
    """A copy of ``model`` with what a weight quantizer leaves in fp32 made small for deployment.

    ``linears``: every Linear still in fp32 (the pooler and classifier after GPFQ, GPTQ or RTN,
    which quantize the encoder) on int8 weights. ``embedding_bits``: the word table at that
    many bits per row, unless it is quantized already (None: left as is). ``position_bits``:
    the learned position table (None: left as is). Layers already quantized are never
    re-rounded. A model that reads pixels has no word or position table here: only its
    Linears are touched.
    """
    model = int8_dynamic(model, scope="all") if linears else copy.deepcopy(model)
    if registry.modality(model) == "text":
        if embedding_bits:
            quantize_embeddings_(model, check_bits(embedding_bits))
        _quantize_positions_(model, position_bits)
    model.eval()
    return model


def rtn_linear(lin: nn.Linear, bits: int, group_size: int | None = None, scale_search: bool = False,
               outliers: float = 0.0) -> "QuantLinear":
    """One Linear rounded to nearest (the ``outliers`` fraction kept exact, see :func:`outlier_mask`)."""
    mask = outlier_mask(lin.weight, outliers)
    codes, scale = quantize_codes(lin.weight.detach().masked_fill(mask, 0), bits, group_size, scale_search)
    return QuantLinear.from_codes(codes, scale, lin.bias, bits, group_size, "rtn", split_outliers(lin.weight, mask))


def rtn(model: nn.Module, bits: int, group_size: int | None = None, embeddings: bool = False,
        embedding_bits: int = 8, scale_search: bool = False, scope: str = "encoder",
        outliers: float = 0.0) -> nn.Module:
    """A copy of ``model`` with weight-only k-bit round-to-nearest Linear layers.

    Per output channel (``group_size=None``) or per group of ``group_size`` inputs;
    ``scale_search`` picks each scale by minimising weight MSE instead of max scaling;
    ``outliers`` keeps that fraction of each layer's weights exact (see :func:`outlier_mask`).
    """
    check_bits(bits)
    model = copy.deepcopy(model)
    for name in target_linears(model, scope):
        lin = model.get_submodule(name)
        set_module(model, name, rtn_linear(lin, bits, layer_group_size(lin.in_features, group_size), scale_search,
                                            outliers))
    if embeddings:
        quantize_embeddings_(model, check_bits(embedding_bits))
    model.eval()
    return model


# ----------------------------------------------------------------------------------------
# calibration data and per-layer error


def calibration_texts(splits, n: int = 256, seed: int = 0) -> list[str]:
    """``n`` texts drawn (seeded) from the training split, for calibration."""
    if isinstance(n, bool) or not isinstance(n, (int, float)) and not hasattr(n, "__index__") or int(n) != n or n < 1:
        raise AxlabError(f"The number of calibration texts must be a positive whole number, not {n!r}.",
                         "Use e.g. 256 (CLI: --calibration 256).")
    texts = list(splits.train.inputs)
    if not texts:
        raise AxlabError("The training split is empty, so there is no calibration data.",
                         "Use a dataset with a training split.")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(texts), generator=g)[:n].tolist()
    return [texts[i] for i in idx]


@torch.no_grad()
def layer_errors(original: nn.Module, quantized: dict[str, nn.Module], tokenizer, texts: list[str],
                 batch_size: int = 32, names: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Per-layer relative output error ``||X W + b - (X~ Q + b~)|| / ||X W + b||``.

    X are the layer inputs in ``original``, X~ in each quantized model, on the same
    tokens (padding excluded). Returns ``{method: {layer name: error}}``.
    """
    from axlab.core.measure import forward, iter_batches
    names = names or target_linears(original, "all")
    out = {}
    for method, qmodel in quantized.items():
        num = {n: 0.0 for n in names}
        den = {n: 0.0 for n in names}
        for _, batch in iter_batches(tokenizer, texts, batch_size):
            mask = batch["attention_mask"].bool() if "attention_mask" in batch else None   # (B, T); images: none
            ys = {}
            for tag, m in (("ref", original), ("q", qmodel)):
                hooks = []
                for n in names:
                    def hook(mod, inp, outp, n=n, tag=tag):
                        ys[(tag, n)] = (outp[mask] if mask is not None else outp.flatten(0, 1)) if outp.dim() == 3 else outp
                    hooks.append(m.get_submodule(n).register_forward_hook(hook))
                try:
                    forward(m, batch)
                finally:
                    for h in hooks:
                        h.remove()
            for n in names:
                if ("ref", n) in ys and ("q", n) in ys:
                    num[n] += float(((ys[("ref", n)] - ys[("q", n)]) ** 2).sum())
                    den[n] += float((ys[("ref", n)] ** 2).sum())
        out[method] = {n: (num[n] / den[n]) ** 0.5 if den[n] > 0 else 0.0 for n in names}
    return out


def error_figure(errors: dict[str, dict[str, float]], title: str = "Per-layer relative error"):
    """Plotly grouped bars: one bar per method for each layer (log scale)."""
    import plotly.graph_objects as go
    fig = go.Figure()
    for method, per_layer in errors.items():
        names = list(per_layer)
        short = [n.replace("bert.encoder.layer.", "L").replace("roberta.encoder.layer.", "L")
                 .replace("electra.encoder.layer.", "L").replace("distilbert.transformer.layer.", "L") for n in names]
        fig.add_bar(name=method, x=short, y=[per_layer[n] for n in names])
    fig.update_layout(title=title, barmode="group", yaxis_type="log", yaxis_title="||XW - X~Q|| / ||XW||",
                      xaxis_title="layer", legend_title="method")
    return fig


# ----------------------------------------------------------------------------------------
# recipe ops


@register_transform("quantize_int8")
def _op_int8(model: nn.Module, ctx: RecipeContext, embeddings: bool = False, scope: str = "all") -> nn.Module:
    return int8_dynamic(model, embeddings=embeddings, scope=scope)


@register_transform("quantize_rest")
def _op_rest(model: nn.Module, ctx: RecipeContext, embedding_bits: int | None = 8, position_bits: int | None = 8,
             linears: bool = True) -> nn.Module:
    return quantize_rest(model, embedding_bits, position_bits, linears)


@register_transform("quantize_rtn")
def _op_rtn(model: nn.Module, ctx: RecipeContext, bits: int = 4, group_size: int | None = None,
            embeddings: bool = False, embedding_bits: int = 8, scale_search: bool = False,
            scope: str = "encoder", outliers: float = 0.0) -> nn.Module:
    return rtn(model, bits, group_size, embeddings, embedding_bits, scale_search, scope, outliers)

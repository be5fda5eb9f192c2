"""Export a variant to ONNX, check it against PyTorch, optionally quantize it to int8.

``export_onnx`` uses the dynamo exporter (``torch.onnx.export(..., dynamo=True)``)
with dynamic batch and sequence axes; the legacy tracer was seen to produce wrong
logits silently, so parity is always checked: the exported graph runs in ONNX Runtime
on batches of several lengths (one token to the maximum length, padded and unpadded)
and the export fails if any logit differs from PyTorch by more than ``tolerance``.

The graph takes ``input_ids`` and ``attention_mask`` (int64, (batch, seq)) and returns
``logits`` (batch, n_labels). Pruned layers with uneven heads, layers with no heads
left and top-k hard attention export too (the top-k uses a symbolic ``min(k, seq)``).

``int8=True`` adds ONNX Runtime dynamic int8 quantization of the checked fp32 file
(``onnxruntime.quantization.quantize_dynamic``) next to it. int8 changes the numbers on
purpose, so its difference to PyTorch is reported, not enforced; measure its accuracy.

A variant quantized with ``axlab.quantize.int8_dynamic`` runs int8 kernels in PyTorch
that also quantize activations; the graph records its int8 weights dequantized. Parity
is enforced against exactly that computation and the (int8-sized) difference to the
variant's own PyTorch kernels is reported as ``variant_max_abs_diff``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import uuid
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from axlab.core.errors import ExportError
from axlab.core.measure import MAX_LENGTH, encode, forward, tokenize

__all__ = ["OnnxResult", "export_onnx", "onnx_predictor", "parity_batches", "check_parity", "measure_onnx",
           "DEFAULT_TOLERANCE"]

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4
INPUTS = ("input_ids", "attention_mask")
IMAGE_INPUTS = ("pixel_values",)


@dataclass
class OnnxResult:
    path: Path                           # the checked fp32 graph
    size_bytes: int
    parity_max_abs_diff: float           # max |ORT - PyTorch| over all parity batches
    predictor: Callable                  # fn(batch dict) -> logits (torch tensor), ONNX Runtime fp32
    parity: dict                         # "BxT" -> max abs diff, per parity batch
    int8_path: Path | None = None
    int8_size_bytes: int | None = None
    int8_max_abs_diff: float | None = None   # informational: int8 vs PyTorch fp32 on the parity batches
    int8_predictor: Callable | None = None
    # max |ORT - the variant in PyTorch|; equals parity_max_abs_diff unless the variant runs int8
    # kernels in PyTorch (axlab.quantize.int8_dynamic), whose dequantized weights are what is exported
    variant_max_abs_diff: float | None = None
    graph: str = "plain"                 # "plain" (dynamo export) or "fused" (axlab.deploy.fused_onnx)
    fallback_reason: str | None = None   # why a fused export fell back to the plain graph
    ops: dict | None = None              # op histogram of the fused graph(s): {"fp32": {...}, "int8": {...}}

    def moved_to(self, folder: Path) -> "OnnxResult":
        """The same result after its folder was renamed (sessions stay valid: ORT holds the graph in memory)."""
        folder = Path(folder)
        return replace(self, path=folder / self.path.name,
                       int8_path=folder / self.int8_path.name if self.int8_path else None)

    def summary(self) -> dict:
        return {"path": str(self.path), "size_bytes": self.size_bytes, "parity_max_abs_diff": self.parity_max_abs_diff,
                "parity": self.parity, "int8_path": str(self.int8_path) if self.int8_path else None,
                "int8_size_bytes": self.int8_size_bytes, "int8_max_abs_diff": self.int8_max_abs_diff,
                "variant_max_abs_diff": self.variant_max_abs_diff, "graph": self.graph,
                "fallback_reason": self.fallback_reason}


class _LogitsOnly(nn.Module):
    """(input_ids, attention_mask) -> logits, the signature the ONNX graph gets."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids, attention_mask: (B, T) int64 -> logits (B, n_labels)
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class _PixelLogits(nn.Module):
    """pixel_values -> logits, the signature an image classifier's ONNX graph gets."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: (B, C, H, W) float32 -> logits (B, n_labels)
        return self.model(pixel_values=pixel_values).logits


def _is_image_processor(processor) -> bool:
    return hasattr(processor, "image_mean") or (hasattr(processor, "size") and not hasattr(processor, "vocab_size")
                                                and not callable(getattr(processor, "tokenize", None)))


def _image_batches(processor) -> list[dict]:
    """Pixel batches of 1, 2 and 5 images (seeded noise, a blank and a bright image), at the processor's size."""
    size = getattr(processor, "size", None)

    def dim(*names) -> int | None:
        for n in names:
            v = size.get(n) if isinstance(size, dict) else getattr(size, n, None)
            if v:
                return int(v)
        return None
    if isinstance(size, (int, float)):
        h = w = int(size)
    else:
        h = dim("height", "shortest_edge") or 224
        w = dim("width", "shortest_edge") or h
    channels = len(getattr(processor, "image_mean", None) or [0, 0, 0])
    rng = np.random.default_rng(0)

    def image(kind: str) -> np.ndarray:
        shape = (h, w) if channels == 1 else (h, w, 3)
        if kind == "noise":
            return rng.integers(0, 256, size=shape, dtype=np.uint8)
        return np.full(shape, 0 if kind == "blank" else 255, dtype=np.uint8)

    sets = [["noise"], ["blank", "bright"], ["noise", "noise", "blank", "noise", "bright"]]
    return [encode(processor, [image(k) for k in kinds]) for kinds in sets]


def _export_view(model: nn.Module) -> tuple[nn.Module, bool]:
    """The computation the exporter records, as a PyTorch model; True if it differs from ``model``'s.

    An ``Int8Linear`` (axlab.quantize.int8_dynamic) runs an int8 kernel that also
    quantizes activations at run time; the exporter records its int8 weights
    dequantized (fp32 compute), which ONNX Runtime's int8 pass can quantize again.
    Parity is checked against that computation; the difference to the variant as it
    runs in PyTorch is reported separately.
    """
    try:
        from axlab.core.qmodules import Int8Linear
    except ImportError:
        return model, False
    if not any(isinstance(m, Int8Linear) for m in model.modules()):
        return model, False
    view = copy.deepcopy(model)
    for name, m in list(view.named_modules()):
        if isinstance(m, Int8Linear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            lin.weight = nn.Parameter(m.weight.detach().clone(), requires_grad=False)
            if m.bias is not None:
                lin.bias = nn.Parameter(m.bias.detach().clone(), requires_grad=False)
            parent, _, attr = name.rpartition(".")
            setattr(view.get_submodule(parent) if parent else view, attr, lin)
    return view.eval(), True


def parity_batches(tokenizer, max_length: int = MAX_LENGTH) -> list[dict]:
    """Batches of several shapes to check an export on: for a tokenizer, 1 token of text, short, mid,
    max length and a padded mix; for an image processor, 1, 2 and 5 images (noise, blank, bright)."""
    if _is_image_processor(tokenizer):
        return _image_batches(tokenizer)
    words = ("the film is a quiet , warm and funny story but the plot drags and the ending is flat . " * 40).split()

    def text(n: int) -> str:
        return " ".join(words[:n])

    shapes = [[""], [text(1)], [text(9)], [text(40), text(3)], [text(500)], [text(2), text(25), text(500), text(7)]]
    return [tokenize(tokenizer, texts, max_length) for texts in shapes]


def onnx_predictor(path: str | Path, threads: int | None = None) -> Callable:
    """An ONNX Runtime predictor: fn(batch dict) -> logits (torch tensor)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def predict(batch: dict) -> torch.Tensor:
        feeds = {n: np.ascontiguousarray(np.asarray(batch[n], dtype=np.float32 if n == "pixel_values" else np.int64))
                 for n in names}
        return torch.from_numpy(session.run(None, feeds)[0])

    predict.session = session
    return predict


def check_parity(model: nn.Module, predictor: Callable, batches: list[dict]) -> dict:
    """Max abs difference of ``predictor`` against PyTorch per batch ("BxT" -> float)."""
    out = {}
    for b in batches:
        with torch.inference_mode():
            ref = forward(model, b).logits.float()
        got = predictor(b).float()
        key = "x".join(str(s) for s in (b["pixel_values"] if "pixel_values" in b else b["input_ids"]).shape)
        out[key] = float((got - ref).abs().max()) if got.shape == ref.shape else float("inf")
    return out


@contextlib.contextmanager
def _quiet(all_info: bool = False):
    """Silence the exporters' chatter: stdout prints, warnings, INFO logs of onnxscript / onnx_ir / torch.onnx.

    ``all_info`` also mutes INFO and WARNING records of other loggers (onnxruntime's
    quantizer logs advice on the root logger) for the duration; errors still pass.
    """
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")
    saved = {n: logging.getLogger(n).level for n in names}
    sink = io.StringIO()
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        if all_info:
            logging.disable(logging.WARNING)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield sink
    finally:
        if all_info:
            logging.disable(logging.NOTSET)
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _torch_export(model: nn.Module, example: dict, path: Path) -> None:
    from torch.export import Dim

    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    if n_bytes > 1_800_000_000:
        raise ExportError(f"The model has {n_bytes / 1e9:.1f} GB of weights, too large for a single ONNX file.",
                          "Models over ~1.8 GB need external data files, which axlab does not write yet.")
    batch = Dim("batch", min=1, max=4096)
    if "pixel_values" in example:                    # an image classifier: only the batch axis varies
        wrapped, args, names = _PixelLogits(model).eval(), (example["pixel_values"],), list(IMAGE_INPUTS)
        dyn = {"pixel_values": {0: batch}}
    else:
        wrapped, names = _LogitsOnly(model).eval(), list(INPUTS)
        args = (example["input_ids"], example["attention_mask"])
        max_len = int(getattr(model.config, "max_position_embeddings", 0) or MAX_LENGTH * 4)
        seq = Dim("seq", min=1, max=max_len)
        dyn = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    # the exporter prints progress lines to stdout and warns a lot; the library does neither
    with _quiet() as sink:
        torch.onnx.export(wrapped, args, str(path), dynamo=True, dynamic_shapes=dyn, input_names=names,
                          output_names=["logits"], external_data=False, verbose=False, optimize=True)
    if sink.getvalue().strip():
        log.debug("torch.onnx.export: %s", sink.getvalue().strip())


def empty_weight_nodes(path: Path) -> list[str]:
    """Names of MatMul/Gemm nodes whose weight has a zero-sized dimension (an FFN block or an
    attention block removed by pruning). ONNX Runtime's quantizer turns such weights into
    garbage scales (accuracy fell 3.5 points on a pruned model) or fails (per channel), so
    they stay fp32: there is nothing to quantize in them anyway."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name: tuple(i.dims) for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
            and any(x in inits and 0 in inits[x] for x in n.input)]


def _quantize_int8(src: Path, dst: Path, per_channel: bool = False) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    skip = empty_weight_nodes(src)
    with _quiet(all_info=True):
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                         nodes_to_exclude=skip)


def export_onnx(model: nn.Module, tokenizer, path: str | Path, int8: bool = False, overwrite: bool = False, *,
                tolerance: float = DEFAULT_TOLERANCE, threads: int | None = None,
                int8_per_channel: bool = False) -> OnnxResult:
    """Export ``model`` to ONNX at ``path`` and check parity; with ``int8`` also write ``<stem>_int8.onnx``.

    ``int8_per_channel``: one int8 scale per output column of each weight instead of one
    per tensor (ONNX Runtime's ``per_channel``); a few more bytes, usually more accurate
    on pruned models.

    Raises ``ExportError`` if the graph differs from PyTorch by more than ``tolerance``
    on any parity batch (nothing is left at ``path`` then). ``model`` is not modified.
    """
    from axlab.core.folder import eval_mode
    with eval_mode(model):
        return _export_onnx(model, tokenizer, path, int8, overwrite, tolerance, threads, int8_per_channel)


def _export_onnx(model: nn.Module, tokenizer, path, int8: bool, overwrite: bool, tolerance: float,
                 threads: int | None, int8_per_channel: bool = False) -> OnnxResult:
    path = Path(path).expanduser().resolve()
    int8_path = path.with_name(f"{path.stem}_int8{path.suffix or '.onnx'}") if int8 else None
    for p in (path, int8_path):
        if p is not None and p.exists() and not overwrite:
            raise ExportError(f"'{p}' already exists.",
                              "Choose another path, or pass overwrite=True (CLI: --overwrite).")
    path.parent.mkdir(parents=True, exist_ok=True)
    batches = parity_batches(tokenizer)
    tag = uuid.uuid4().hex[:8]
    tmp = path.with_name(f".{path.name}.tmp-{tag}")
    tmp8 = path.with_name(f".{path.name}.int8-tmp-{tag}")
    view, differs = _export_view(model)
    try:
        _torch_export(view, batches[min(3, len(batches) - 1)], tmp)
        predictor = onnx_predictor(tmp, threads)
        parity = check_parity(view, predictor, batches)
        worst = max(parity.values())
        log.info("ONNX parity: max abs diff %.2e over %s", worst, ", ".join(parity))
        if not worst <= tolerance:
            raise ExportError(f"The ONNX graph differs from PyTorch by up to {worst:.2e} (tolerance {tolerance:.0e}); "
                              f"per batch shape: {parity}.",
                              "This variant uses an operation the exporter does not translate faithfully. "
                              "Export the variant without that step, or report it with the recipe.")
        variant_diff = max(check_parity(model, predictor, batches).values()) if differs else worst
        if differs:
            log.info("ONNX vs the variant's int8 kernels in PyTorch: max abs diff %.2e", variant_diff)
        int8_diff = int8_pred = None
        if int8:
            _quantize_int8(tmp, tmp8, int8_per_channel)
            int8_pred = onnx_predictor(tmp8, threads)
            int8_diff = max(check_parity(model, int8_pred, batches).values())
            os.replace(tmp8, int8_path)
        os.replace(tmp, path)
    finally:
        for p in (tmp, tmp8):
            if p.exists():
                p.unlink()
    return OnnxResult(path=path, size_bytes=path.stat().st_size, parity_max_abs_diff=worst, predictor=predictor,
                      parity=parity, int8_path=int8_path, int8_size_bytes=int8_path.stat().st_size if int8 else None,
                      int8_max_abs_diff=int8_diff, int8_predictor=int8_pred, variant_max_abs_diff=variant_diff)


def measure_onnx(predictor: Callable, tokenizer, split, split_name: str = "test", *, with_latency: bool = True,
                 latency_runs: tuple[int, int] = (50, 10)) -> dict:
    """Accuracy / macro-F1 and ONNX Runtime latency (b1, b32) of an ONNX predictor, as a flat dict."""
    from axlab.core.measure import measure

    m = measure(predictor, tokenizer, split, split_name=split_name, with_latency=with_latency,
                latency_runs=latency_runs)
    keys = ("accuracy", "macro_f1", "loss", "n", "split", "latency_b1_ms", "latency_b1_p90_ms", "latency_b32_ms",
            "latency_b32_p90_ms", "threads")
    return {k: getattr(m, k) for k in keys}

"""Export a variant: the variant folder (+ ONNX, + int8, + comparison report) in one atomic folder.

The ONNX file is the **fused** graph by default (:mod:`axlab.deploy.fused_onnx`: one
``com.microsoft`` Attention/QAttention/MultiHeadAttention per layer, k-bit variants with their own
codes: per-channel codes stored at their width and run by the int8 kernel
``DynamicQuantizeMatMul``, grouped codes as ``MatMulNBits``; int8 as
``DynamicQuantizeMatMul``). Where the fused
writer cannot express the variant (top-k hard attention, an architecture it does not
know, ...) the plain dynamo graph (:mod:`axlab.deploy.onnx_export`) is written instead and
the reason is logged and recorded (``measurements["onnx"]["fallback_reason"]``);
``onnx_graph="plain"`` asks for the plain graph. Either way the file is parity-checked
against PyTorch before it is kept, and (with ``splits``) measured: accuracy, and latency
interleaved with the PyTorch variant in the same rounds (medians and spreads, speed-up,
"within noise"), next to its size (:func:`export_comparison`).

The folder format (and its atomic writes) is :mod:`axlab.core.folder`; loading it back is
:func:`axlab.core.loading.load_variant` (also ``axlab.load_variant``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from axlab.core.errors import ExportError
from axlab.core.measure import compare_latency, measure, size_report
from axlab.core.folder import atomic_folder, eval_mode, write_variant_files
from axlab.core.loading import load_variant
from axlab.core.progress import Progress, as_progress

__all__ = ["export_variant", "ExportResult", "export_all", "export_onnx_graph", "export_comparison", "ONNX_GRAPHS"]

log = logging.getLogger(__name__)

ONNX_GRAPHS = ("fused", "plain")


def export_variant(model: nn.Module, tokenizer, folder: str | Path, *, recipe: list | None = None,
                   measurements: dict | None = None, base: str = "", labels: list[str] | None = None,
                   overwrite: bool = False, name: str | None = None, dataset: str | None = None,
                   extra: dict | None = None, verify: bool = True) -> Path:
    """Write ``model`` (a variant) to ``folder`` atomically; return the folder.

    ``verify`` reloads the written folder before it is moved into place and checks
    that the reloaded model gives the same logits on the probe texts.
    ``model`` is not modified.
    """
    if tokenizer is None and verify:
        raise ExportError("No tokenizer given.", "Pass the variant's tokenizer: the folder must be usable on its own.")
    recipe = recipe if recipe is not None else list(getattr(model, "axlab_recipe", []) or [])
    with atomic_folder(folder, overwrite) as tmp, eval_mode(model):
        write_variant_files(model, tokenizer, tmp, recipe=recipe, measurements=measurements, base=base, labels=labels,
                       name=name, dataset=dataset, extra=extra)
        if verify:
            load_variant(tmp, verify=True)       # rebuild + probe check, raises on a mismatch
    target = Path(folder).expanduser().resolve()
    log.info("exported variant to %s", target)
    return target


# ---------------------------------------------------------------------------------------------
# the three outputs at once (CLI `axlab export`, the app's Export page)
# ---------------------------------------------------------------------------------------------

@dataclass
class ExportResult:
    folder: Path
    measurements: dict                              # the variant's measurements incl. onnx/onnx_int8 entries
    onnx: object | None = None                      # axlab.onnx_export.OnnxResult
    report: dict | None = None                      # {"html", "json", "md"} paths
    files: dict = field(default_factory=dict)       # relative path -> bytes
    comparison: list = field(default_factory=list)  # export_comparison(measurements): PyTorch vs ONNX rows


# ---------------------------------------------------------------------------------------------
# the ONNX file: fused by default, plain as the fallback
# ---------------------------------------------------------------------------------------------

def _int8_diffs(q: nn.Module, predictor, batches: list[dict]) -> tuple[float, float]:
    """(ORT's, torch.ao's) largest logit difference to the dequantized-weight computation of ``q``."""
    import torch

    from axlab.core.measure import forward
    from axlab.deploy.onnx_export import _export_view, check_parity
    view, _ = _export_view(q)
    ort_diff = max(check_parity(view, predictor, batches).values())
    with torch.inference_mode():
        torch_diff = max(float((forward(q, b).logits - forward(view, b).logits).abs().max()) for b in batches)
    return ort_diff, torch_diff


def _within_int8_bar(ort_diff: float, torch_diff: float) -> bool:
    """ORT no further from the dequantized-weight computation than torch.ao is, plus 1e-3."""
    return ort_diff <= 1.5 * torch_diff + 1e-3


def seven_bit_twin(q: nn.Module) -> nn.Module:
    """A copy of ``q`` whose ``Int8Linear`` weights are halved onto 7 bits (codes in [-64, 64], scales
    doubled): ONNX Runtime's int8 kernel cannot clip them on any CPU (see ``int8_kernel_saturates``)."""
    import copy

    import torch

    from axlab.core.qmodules import Int8Linear
    out = copy.deepcopy(q)
    for m in out.modules():
        if isinstance(m, Int8Linear):
            m.weight_int8.copy_(torch.round(m.weight_int8.float() / 2).to(torch.int8))
            m.weight_scale.mul_(2)
            m._set_kernel(None)
    return out


def _int8_parity(q: nn.Module, predictor, batches: list[dict], config=None) -> float:
    """ONNX Runtime vs an ``Int8Linear`` model. Both runtimes quantize activations at run time,
    differently: ORT must be no further from the dequantized-weight computation than torch.ao
    is (plus 1e-3). Returns ORT's difference to that computation; raises ExportError otherwise.

    On a CPU whose ONNX Runtime int8 kernel clips full-range int8 weights (no AVX-VNNI), a
    right graph fails that bar there; the graph writer is then checked on ``q``'s 7-bit twin
    (which nothing clips) and, when that passes, the difference is reported, not refused.
    """
    from axlab.deploy.fused_onnx import build_fused_graph, fused_predictor, int8_kernel_saturates
    ort_diff, torch_diff = _int8_diffs(q, predictor, batches)
    if _within_int8_bar(ort_diff, torch_diff):
        return ort_diff
    if int8_kernel_saturates():
        q7 = seven_bit_twin(q)
        d7, t7 = _int8_diffs(q7, fused_predictor(build_fused_graph(q7, config).SerializeToString()), batches)
        if _within_int8_bar(d7, t7):
            log.warning("this CPU's ONNX Runtime int8 kernel clips full-range int8 weights (no AVX-VNNI): the fused "
                        "int8 graph's logits differ from the int8 computation by %.2e here (torch.ao: %.2e); the same "
                        "graph with 7-bit weights matches (%.2e vs %.2e), so the file is right and computes the int8 "
                        "model exactly on CPUs with VNNI", ort_diff, torch_diff, d7, t7)
            return ort_diff
    raise ExportError(f"The fused int8 graph differs from the int8 computation by {ort_diff:.2e} "
                      f"(PyTorch's own int8 kernels: {torch_diff:.2e}).", "Export with onnx_graph='plain'.")


def _export_fused(model: nn.Module, tokenizer, path: Path, int8: bool, threads: int | None,
                  lowbit_kernel: str = "auto"):
    from axlab.compress.quantize import int8_dynamic
    from axlab.core.qmodules import Int8Linear
    from axlab.deploy.fused_onnx import FusedConfig, export_fused_onnx, int8_twin
    from axlab.deploy.onnx_export import OnnxResult, check_parity, parity_batches

    batches = parity_batches(tokenizer)
    cfg = FusedConfig(lowbit_kernel=lowbit_kernel)
    # k-bit codes run on the int8 kernel: checked like int8 weights, against their int8 twin
    reference = int8_twin(model, cfg) or model
    has_int8 = any(isinstance(m, Int8Linear) for m in reference.modules())
    fp = export_fused_onnx(model, tokenizer, path, config=cfg, threads=threads, batches=batches,
                           tolerance=None if has_int8 else 1e-4)
    try:
        parity = _int8_parity(reference, fp.predictor, batches, cfg) if has_int8 else fp.parity_max_abs_diff
        variant = max(check_parity(model, fp.predictor, batches).values()) if has_int8 else parity
        ops = {"fp32": fp.ops}
        int8_path = int8_pred = int8_diff = None
        if int8:                                    # int8 weights + dynamic int8 activations + 8-bit embeddings
            int8_path = path.with_name(f"{path.stem}_int8{path.suffix or '.onnx'}")
            q8 = int8_dynamic(model, embeddings=True)
            r8 = export_fused_onnx(q8, tokenizer, int8_path, threads=threads, batches=batches, tolerance=None)
            try:
                _int8_parity(q8, r8.predictor, batches)
            except ExportError:
                int8_path.unlink(missing_ok=True)
                raise
            int8_pred = r8.predictor
            int8_diff = max(check_parity(model, int8_pred, batches).values())      # vs the variant, informational
            ops["int8"] = r8.ops
    except Exception:
        path.unlink(missing_ok=True)
        raise
    return OnnxResult(path=fp.path, size_bytes=fp.size_bytes, parity_max_abs_diff=parity, predictor=fp.predictor,
                      parity=fp.parity, int8_path=int8_path,
                      int8_size_bytes=int8_path.stat().st_size if int8_path is not None else None,
                      int8_max_abs_diff=int8_diff, int8_predictor=int8_pred, variant_max_abs_diff=variant,
                      graph="fused", ops=ops)


def export_onnx_graph(model: nn.Module, tokenizer, path: str | Path, *, graph: str = "fused", int8: bool = False,
                      int8_per_channel: bool = True, threads: int | None = None, lowbit_kernel: str = "auto"):
    """Write the checked ONNX file of ``model`` (and ``<stem>_int8.onnx`` with ``int8``); an OnnxResult.

    ``graph="fused"`` (default): the fused graph, natively quantized (a k-bit variant's own
    codes, stored at their width and run by the int8 kernel, or ``MatMulNBits`` for grouped
    codes; ``int8``: int8 weights and embeddings with dynamic int8
    activations). Falls back to the plain dynamo graph (ONNX Runtime dynamic int8 for
    ``int8``) when :func:`axlab.deploy.fused_onnx.fused_support` gives a reason or the fused
    export fails; the reason is logged and in ``result.fallback_reason``.
    ``lowbit_kernel`` (fused graph, k-bit variants): "auto" (default: per-channel codes on the
    int8 kernel, int8 activations, fastest on CPUs with VNNI; grouped codes on MatMulNBits),
    "int8", or "nbits" (every k-bit layer on ``MatMulNBits`` with fp32 activations: the same
    numbers as the PyTorch variant, slower on such CPUs).
    ``graph="plain"``: the dynamo graph. ``model`` is not modified.
    """
    from dataclasses import replace

    from axlab.deploy.fused_onnx import LOWBIT_KERNELS, fused_support
    from axlab.deploy.onnx_export import export_onnx
    if lowbit_kernel not in LOWBIT_KERNELS:     # checked here: a bad value must not fall back to the plain graph
        raise ExportError(f"Unknown low-bit kernel '{lowbit_kernel}'.", f"Use one of: {', '.join(LOWBIT_KERNELS)}.")
    if graph not in ONNX_GRAPHS:
        raise ExportError(f"Unknown ONNX graph '{graph}'.", f"Use one of: {', '.join(ONNX_GRAPHS)}.")
    path = Path(path)
    reason = None
    if graph == "fused":
        reason = fused_support(model)
        if reason is None:
            try:
                with eval_mode(model):
                    return _export_fused(model, tokenizer, path, int8, threads, lowbit_kernel)
            except Exception as e:  # noqa: BLE001  (any failure of the fused writer: the plain graph still works)
                reason = f"the fused export failed ({type(e).__name__}: {e})"
        log.warning("ONNX export: writing the plain (dynamo) graph instead of the fused one: %s", reason)
    res = export_onnx(model, tokenizer, path, int8=int8, int8_per_channel=int8_per_channel, threads=threads)
    return replace(res, graph="plain", fallback_reason=reason)


def _measure_runtimes(model: nn.Module, predictors: dict, tokenizer, split, split_name: str,
                      latency_runs: tuple[int, int] = (50, 10), rounds: int = 5) -> dict:
    """Accuracy of each ONNX predictor, and latency interleaved with the PyTorch ``model`` in the same rounds."""
    out = {}
    for key, p in predictors.items():
        m = measure(p, tokenizer, split, split_name=split_name, with_latency=False)
        out[key] = {"accuracy": m.accuracy, "macro_f1": m.macro_f1, "loss": m.loss, "n": m.n, "split": split_name}
    if not len(split):
        return out
    models = {"pytorch": model, **predictors}
    for tag, bs, runs in (("b1", 1, latency_runs[0]), ("b32", 32, latency_runs[1])):
        r = min(rounds, max(1, runs))
        lat = compare_latency(models, tokenizer, split.inputs, bs, rounds=r, runs_per_round=max(1, runs // r),
                              warmup=3 if bs == 1 else 1, base="pytorch")
        pt = lat["models"]["pytorch"]
        for key in predictors:
            mm, ratio = lat["models"][key], lat["ratios"][key]
            out[key].update({f"latency_{tag}_ms": mm["median_ms"], f"latency_{tag}_p90_ms": mm["p90_ms"],
                             f"latency_{tag}_spread_ms": mm["spread_ms"], "threads": lat["threads"]})
            out[key].setdefault("vs_pytorch", {})[tag] = {
                "pytorch_ms": pt["median_ms"], "pytorch_spread_ms": pt["spread_ms"], "speedup": ratio["speedup"],
                "speedup_range": ratio["speedup_range"], "within_noise": ratio["within_noise"]}
    return out


def export_comparison(measurements: dict) -> list[dict]:
    """The exported files next to the PyTorch variant: one row per runtime (accuracy, latency with
    spread, size). The PyTorch latency is the one measured in the same rounds as the ONNX files."""
    m = measurements or {}
    onnx = m.get("onnx") or {}
    vs = onnx.get("vs_pytorch") or {}
    rows = [{"runtime": "pytorch", "graph": "-", "accuracy": m.get("accuracy"),
             "latency_b1_ms": vs.get("b1", {}).get("pytorch_ms", m.get("latency_b1_ms")),
             "latency_b1_spread_ms": vs.get("b1", {}).get("pytorch_spread_ms", m.get("latency_b1_spread_ms")),
             "latency_b32_ms": vs.get("b32", {}).get("pytorch_ms", m.get("latency_b32_ms")),
             "latency_b32_spread_ms": vs.get("b32", {}).get("pytorch_spread_ms", m.get("latency_b32_spread_ms")),
             "size_bytes": m.get("size_bytes"), "speedup_b1": 1.0 if vs else None, "within_noise_b1": None}]
    for key, runtime in (("onnx", "onnxruntime"), ("onnx_int8", "onnxruntime-int8")):
        o = m.get(key)
        if not o:
            continue
        v1 = (o.get("vs_pytorch") or {}).get("b1") or {}
        rows.append({"runtime": runtime, "graph": onnx.get("graph", "plain"), "accuracy": o.get("accuracy"),
                     "latency_b1_ms": o.get("latency_b1_ms"), "latency_b1_spread_ms": o.get("latency_b1_spread_ms"),
                     "latency_b32_ms": o.get("latency_b32_ms"), "latency_b32_spread_ms": o.get("latency_b32_spread_ms"),
                     "size_bytes": o.get("size_bytes"), "speedup_b1": v1.get("speedup"),
                     "within_noise_b1": v1.get("within_noise")})
    return rows


def export_all(model: nn.Module, tokenizer, folder: str | Path, *, recipe: list | None = None,
               measurements: dict | None = None, base: str = "", labels: list[str] | None = None,
               name: str | None = None, dataset: str | None = None, overwrite: bool = False,
               onnx: bool = True, int8: bool = False, splits=None, measure_split: str = "test",
               limit: int | None = None, report_variants: list | None = None, report: bool = True,
               progress: Progress = None, int8_per_channel: bool = True,
               base_measurements: dict | None = None, onnx_graph: str = "fused",
               lowbit_kernel: str = "auto") -> ExportResult:
    """Variant folder + ONNX (+ int8) + comparison report, in one atomic folder.

    ``onnx_graph``: "fused" (default; falls back to "plain" with a recorded reason where the
    fused writer cannot express the variant, see :func:`export_onnx_graph`) or "plain";
    ``lowbit_kernel``: how a k-bit variant's codes run in the fused graph (see there).
    The plain graph's int8 file uses per-channel weight scales by default
    (``int8_per_channel``): on the benchmark's pruned model they kept 0.8325 test accuracy
    where per-tensor scales gave 0.821.

    ``splits`` (axlab.data.Splits) lets the ONNX files be measured (accuracy on
    ``measure_split``, first ``limit`` examples, and ONNX Runtime latency interleaved with
    the PyTorch variant's); their size and latency join the measurements under ``"onnx"`` /
    ``"onnx_int8"``, and ``ExportResult.comparison`` puts them next to the PyTorch variant.
    ``report_variants`` are the other variants (axlab.variants.Variant or dicts) to
    compare against; the exported one is added to them. The report always has a base-model
    row: from ``report_variants`` (the one with an empty recipe), else ``base_measurements``,
    else the exported model itself when its recipe is empty.
    """
    from axlab.core.data import align_labels

    if onnx_graph not in ONNX_GRAPHS:
        raise ExportError(f"Unknown ONNX graph '{onnx_graph}'.", f"Use one of: {', '.join(ONNX_GRAPHS)}.")

    steps = 1 + int(onnx) + int(onnx and int8) + int(report)
    prog = as_progress(progress, total=steps, desc="export")
    recipe = recipe if recipe is not None else list(getattr(model, "axlab_recipe", []) or [])
    measurements = dict(measurements or {})
    if splits is not None:
        splits = align_labels(splits, model)           # labels matched to the model's by name
    result_onnx = None
    with atomic_folder(folder, overwrite) as tmp, eval_mode(model):
        if onnx:
            result_onnx = export_onnx_graph(model, tokenizer, tmp / "onnx" / "model.onnx", graph=onnx_graph,
                                            int8=int8, int8_per_channel=int8_per_channel, lowbit_kernel=lowbit_kernel)
            prog.update(1, f"ONNX export ({result_onnx.graph} graph) and parity check")
            if measurements.get("size_bytes") is None:
                measurements["size_bytes"] = size_report(model)["size_bytes"]
            measurements["onnx"] = {"size_bytes": result_onnx.size_bytes, "graph": result_onnx.graph,
                                    "lowbit_kernel": lowbit_kernel if result_onnx.graph == "fused" else None,
                                    "parity_max_abs_diff": result_onnx.parity_max_abs_diff,
                                    "variant_max_abs_diff": result_onnx.variant_max_abs_diff}
            if result_onnx.fallback_reason:
                measurements["onnx"]["fallback_reason"] = result_onnx.fallback_reason
            if result_onnx.ops:
                from axlab.deploy.fused_onnx import attention_node_count
                measurements["onnx"]["fused_attention_nodes"] = attention_node_count(result_onnx.ops["fp32"])
                measurements["onnx"]["ops"] = result_onnx.ops["fp32"]
            if int8:
                measurements["onnx_int8"] = {"size_bytes": result_onnx.int8_size_bytes, "graph": result_onnx.graph,
                                             "max_abs_diff_vs_pytorch": result_onnx.int8_max_abs_diff}
            if splits is not None:
                split = splits[measure_split].head(limit)
                preds = {"onnx": result_onnx.predictor}
                if int8:
                    preds["onnx_int8"] = result_onnx.int8_predictor
                for key, got in _measure_runtimes(model, preds, tokenizer, split, measure_split).items():
                    measurements[key].update(got)
            if int8:
                prog.update(1, "ONNX int8 written" + (" and measured" if splits is not None else ""))
        write_variant_files(model, tokenizer, tmp, recipe=recipe, measurements=measurements, base=base, labels=labels,
                       name=name, dataset=dataset, extra=None)
        load_variant(tmp, verify=True)
        prog.update(1, "variant folder written and verified")
        report_paths = None
        if report:
            from axlab.deploy.compare import as_record
            from axlab.deploy.report import write_report
            from axlab.store.variants import Variant
            this = Variant(name=name or "exported", base=str(base), dataset=dataset or "", recipe=list(recipe),
                           measurements=measurements)
            key = (this.name, json.dumps(this.recipe, sort_keys=True))
            others = [v for v in (report_variants or [])     # the exported variant itself is replaced by `this`
                      if (as_record(v)["name"], json.dumps(as_record(v)["recipe"], sort_keys=True)) != key]
            if recipe and base_measurements and not any(not as_record(v)["recipe"] for v in others):
                others = [Variant(name="base", base=str(base), dataset=dataset or "", recipe=[],
                                  measurements=dict(base_measurements))] + others
            report_paths = write_report(others + [this], tmp / "report", splits=splits,
                                        title=f"axlab comparison: {name or 'exported variant'}")
            prog.update(1, "report written")
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    prog.close()
    target = Path(folder).expanduser().resolve()

    def moved(p):
        return target / Path(p).relative_to(tmp) if p is not None else None

    if result_onnx is not None:
        result_onnx = result_onnx.moved_to(target / "onnx")
    if report_paths:
        report_paths = {k: moved(v) for k, v in report_paths.items()}
    return ExportResult(folder=target, measurements=measurements, onnx=result_onnx, report=report_paths, files=files,
                        comparison=export_comparison(measurements) if onnx else [])

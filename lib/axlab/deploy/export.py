"""Export a variant: the variant folder (+ ONNX, + int8, + comparison report) in one atomic folder.

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
from axlab.core.folder import atomic_folder, eval_mode, write_variant_files
from axlab.core.loading import load_variant
from axlab.core.progress import Progress, as_progress

__all__ = ["export_variant", "ExportResult", "export_all"]

log = logging.getLogger(__name__)


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


def export_all(model: nn.Module, tokenizer, folder: str | Path, *, recipe: list | None = None,
               measurements: dict | None = None, base: str = "", labels: list[str] | None = None,
               name: str | None = None, dataset: str | None = None, overwrite: bool = False,
               onnx: bool = True, int8: bool = False, splits=None, measure_split: str = "test",
               limit: int | None = None, report_variants: list | None = None, report: bool = True,
               progress: Progress = None, int8_per_channel: bool = True,
               base_measurements: dict | None = None) -> ExportResult:
    """Variant folder + ONNX (+ int8) + comparison report, in one atomic folder.

    The int8 file uses per-channel weight scales by default (``int8_per_channel``): on the
    benchmark's pruned model they kept 0.8325 test accuracy where per-tensor scales gave 0.821.

    ``splits`` (axlab.data.Splits) lets the ONNX files be measured (accuracy on
    ``measure_split``, first ``limit`` examples, and ONNX Runtime latency); their
    size and latency join the measurements under ``"onnx"`` / ``"onnx_int8"``.
    ``report_variants`` are the other variants (axlab.variants.Variant or dicts) to
    compare against; the exported one is added to them. The report always has a base-model
    row: from ``report_variants`` (the one with an empty recipe), else ``base_measurements``,
    else the exported model itself when its recipe is empty.
    """
    from axlab.core.data import align_labels
    from axlab.deploy.onnx_export import export_onnx, measure_onnx

    steps = 1 + int(onnx) + int(onnx and int8) + int(report)
    prog = as_progress(progress, total=steps, desc="export")
    recipe = recipe if recipe is not None else list(getattr(model, "axlab_recipe", []) or [])
    measurements = dict(measurements or {})
    if splits is not None:
        splits = align_labels(splits, model)           # labels matched to the model's by name
    result_onnx = None
    with atomic_folder(folder, overwrite) as tmp, eval_mode(model):
        if onnx:
            result_onnx = export_onnx(model, tokenizer, tmp / "onnx" / "model.onnx", int8=int8,
                                      int8_per_channel=int8_per_channel)
            prog.update(1, "ONNX export and parity check")
            measurements["onnx"] = {"size_bytes": result_onnx.size_bytes,
                                    "parity_max_abs_diff": result_onnx.parity_max_abs_diff,
                                    "variant_max_abs_diff": result_onnx.variant_max_abs_diff}
            if int8:
                measurements["onnx_int8"] = {"size_bytes": result_onnx.int8_size_bytes,
                                             "max_abs_diff_vs_pytorch": result_onnx.int8_max_abs_diff}
            if splits is not None:
                split = splits[measure_split].head(limit)
                measurements["onnx"].update(measure_onnx(result_onnx.predictor, tokenizer, split, measure_split))
                if int8:
                    measurements["onnx_int8"].update(
                        measure_onnx(result_onnx.int8_predictor, tokenizer, split, measure_split))
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
    return ExportResult(folder=target, measurements=measurements, onnx=result_onnx, report=report_paths, files=files)

"""CLI commands for exporting variants and writing the comparison report.

    axlab export default --out DIR [--onnx] [--int8] [--overwrite]     # the base model
    axlab export default --variant ID --out DIR --onnx --int8          # a saved variant (replays its recipe)
    axlab export default --variant ID --out DIR --onnx --onnx-graph plain   # the plain (dynamo) graph
    axlab report --out DIR [--workspace W] [--overwrite]               # the saved variants, compared

``export`` writes the variant folder (reloadable with ``axlab.export.load_variant``),
with ``--onnx`` the checked ONNX file (and ``--int8`` its int8 version), and the
comparison report, all into one folder that appears only when complete.

The ONNX file is the fused graph by default (one fused attention node per layer; a k-bit
GPFQ/GPTQ/RTN variant keeps its own codes, stored at their width and run by the int8
kernel (``MatMulNBits`` for grouped codes); ``--int8``: int8 weights,
embeddings and dynamic int8 activations). Where the fused writer cannot express the
variant (top-k hard attention, an unsupported architecture) the plain dynamo graph is
written and ``onnx.fallback_reason`` says why. The output puts the ONNX files' accuracy,
latency (interleaved with the PyTorch variant, with spread) and size next to the PyTorch
variant's (``comparison``).
"""

from __future__ import annotations

import argparse
import logging

from axlab.cli.common import add_model_args, emit, load_splits, positive_int

__all__ = ["add_commands", "cmd_export", "cmd_report"]

log = logging.getLogger(__name__)


def cmd_export(args) -> None:
    from axlab.compress import apply_recipe
    from axlab.core.folder import check_target
    from axlab.core.loading import load_model
    from axlab.core.measure import hardware_info, measure
    from axlab.deploy.export import export_all
    from axlab.store.variants import VariantStore

    check_target(args.out, args.overwrite)       # refuse before the slow part
    store = VariantStore()
    variant = store.get(args.variant) if args.variant else None
    source = variant.base if variant is not None and args.model == "default" else args.model
    bundle = load_model(source, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code)
    splits = load_splits(args, bundle)
    if variant is not None:
        model = apply_recipe(bundle.model, variant.recipe, tokenizer=bundle.tokenizer, splits=splits)
        recipe, measurements, name = variant.recipe, dict(variant.measurements), args.name or variant.name
    else:
        model = bundle.model
        recipe = list(getattr(model, "axlab_recipe", []) or [])
        measurements, name = dict(bundle.info.get("measurements") or {}), args.name or "base"
    split = splits[args.split].head(args.limit)
    base_measurements = None
    if not args.no_measure and (measurements.get("accuracy") is None or variant is not None):
        # the variant and its base, latency interleaved in the same rounds (the report's base row and ratios)
        m = measure(model, bundle.tokenizer, split, split_name=args.split,
                    compare_to=bundle.model if variant is not None else None).to_dict()
        if variant is None or measurements.get("accuracy") is None:
            measurements.update(m)
        if variant is not None:
            base_measurements = measure(bundle.model, bundle.tokenizer, split, split_name=args.split,
                                        with_latency=False).to_dict()
            vs = m["latency_vs_base"]
            for key in ("b1", "b32"):
                base_measurements[f"latency_{key}_ms"] = vs[key]["base_ms"]
                base_measurements[f"latency_{key}_spread_ms"] = vs[key]["base_spread_ms"]
            measurements.setdefault("latency_vs_base", vs)
    others = store.list(workspace=args.workspace, base=source, dataset=splits.name)
    res = export_all(model, bundle.tokenizer, args.out, recipe=recipe, measurements=measurements, base=source,
                     labels=bundle.labels, name=name, dataset=splits.name, overwrite=args.overwrite,
                     onnx=args.onnx, int8=args.int8, splits=None if args.no_measure else splits,
                     measure_split=args.split, limit=args.limit, report_variants=others, report=not args.no_report,
                     base_measurements=base_measurements, onnx_graph=args.onnx_graph,
                     lowbit_kernel=args.lowbit_kernel)
    if variant is not None:
        new = {k: res.measurements[k] for k in ("onnx", "onnx_int8") if k in res.measurements}
        if new:
            store.update_measurements(variant.id, new)
    out = {"folder": str(res.folder), "files": res.files, "accuracy": res.measurements.get("accuracy"),
           "report": {k: str(p) for k, p in (res.report or {}).items()}}
    for key in ("onnx", "onnx_int8"):
        if key in res.measurements:
            out[key] = {k: v for k, v in res.measurements[key].items() if k != "ops"}
    if args.onnx:
        onnx = res.measurements.get("onnx") or {}
        out["onnx_graph"] = onnx.get("graph")
        if onnx.get("fallback_reason"):
            out["onnx_fallback_reason"] = onnx["fallback_reason"]
            log.warning("the ONNX file is the plain graph: %s", onnx["fallback_reason"])
        out["comparison"] = res.comparison
    if args.json:
        out["hardware"] = hardware_info()
    emit(out, args.json)


def cmd_report(args) -> None:
    from axlab.core.errors import AxlabError
    from axlab.deploy.report import write_report
    from axlab.store.variants import VariantStore

    variants = VariantStore().list(workspace=args.workspace, base=args.base, dataset=args.dataset)
    if not variants:
        raise AxlabError(f"No saved variants in workspace '{args.workspace}'"
                         + (f" for base '{args.base}'" if args.base else "") + ".",
                         "Create variants with `axlab prune` / `axlab quantize` or in the app, or pick another "
                         "--workspace (see `axlab variants`).")
    splits = None
    datasets = {v.dataset for v in variants}
    from axlab.core.data import DATASETS
    if len(datasets) == 1 and next(iter(datasets)) in DATASETS:     # a user's file: its path is not recorded here
        from axlab.core.data import load_dataset
        splits = load_dataset(next(iter(datasets)), seed=args.seed)
    paths = write_report(variants, args.out, splits=splits, title=args.title, overwrite=args.overwrite)
    emit({"variants": len(variants), **{k: str(p) for k, p in paths.items()}}, args.json)


def add_commands(sub: argparse._SubParsersAction) -> None:

    s = sub.add_parser("export", help="export a variant: reloadable folder, ONNX (--onnx, --int8), report")
    add_model_args(s)
    s.add_argument("--out", required=True, help="output folder (created; must not exist unless --overwrite)")
    s.add_argument("--variant", help="id of a saved variant (see `axlab variants`); default: the model itself")
    s.add_argument("--name", help="name shown in the folder's README and the report")
    s.add_argument("--onnx", action="store_true", help="also export ONNX, parity-checked against PyTorch")
    s.add_argument("--int8", action="store_true",
                   help="with --onnx: also an int8 file (fused: int8 weights + embeddings, dynamic int8 activations)")
    s.add_argument("--onnx-graph", choices=["fused", "plain"], default="fused",
                   help="fused (default): ONNX Runtime's fused attention and native low-bit weights, falling back to "
                        "plain with the reason where the variant needs it; plain: the dynamo export")
    s.add_argument("--lowbit-kernel", choices=["auto", "int8", "nbits"], default="auto",
                   help="fused graph, k-bit variants: auto (default: per-channel codes on the int8 kernel with int8 "
                        "activations, fastest on VNNI CPUs), int8, or nbits (MatMulNBits, fp32 activations: the "
                        "PyTorch variant's exact numbers)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.add_argument("--no-report", action="store_true", help="skip the comparison report")
    s.add_argument("--no-measure", action="store_true", help="do not measure accuracy/latency (faster)")
    s.add_argument("--split", default="test", choices=["validation", "test"])
    s.add_argument("--limit", type=positive_int, default=None, help="measure on the first N examples of the split")
    s.add_argument("--workspace", default="default", help="variants to compare against in the report")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("report", help="self-contained HTML + JSON + Markdown comparison of saved variants")
    s.add_argument("--out", required=True, help="folder for report.html, report.json, report.md")
    s.add_argument("--workspace", default="default")
    s.add_argument("--base", help="only variants of this base model")
    s.add_argument("--dataset", help="only variants measured on this dataset")
    s.add_argument("--seed", type=int, default=0, help="the dataset split seed (for the split hashes)")
    s.add_argument("--title", default="axlab comparison")
    s.add_argument("--overwrite", action="store_true", help="replace existing report files")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_report)

"""Quantization side by side on the default model (MiniLM-L6 fine-tuned on Rotten Tomatoes).

    python bench/bench_quant.py                         # writes bench/results/quant.json (+ quant_errors.html)
    python bench/bench_quant.py --bits 3 4 --calibration 256 --no-onnx

One run measures, on the 2,000 test reviews:
1. fp32, torch int8 dynamic (Linear layers; and + 8-bit embeddings), ONNX Runtime int8
   (the export's quantized graph): accuracy, latency at batch 1 and 32, size;
2. weight-only RTN (per-channel max scaling, the baseline; and with 0.1% of the weights kept
   exact) and GPFQ at each bit width: axlab's default (scale search, bias correction,
   3 refinement passes, 0.1% exact outliers) and the plain published algorithm (max
   scaling, nothing else); GPFQ with mixed precision at an average of 3 bits (2, 3 or 4 per
   layer); calibration texts from the training split; sizes are the packed sizes an export
   writes, and ``bits_per_weight`` counts codes, scales and outliers of the quantized layers;
3. per-layer relative error ||XW - X~Q|| / ||XW|| of RTN vs GPFQ at 3 bits (plotly HTML);
4. for every row, its agreement with fp32's predictions and the KL of its output
   distribution to fp32's (``measure.fidelity``): near-lossless variants tie on accuracy
   within a review or two, not on these; GPFQ is also run on calibration sets drawn with
   ``--seeds`` seeds at ``--seed-bits`` (``gpfq_over_seeds``: mean, min, max);
5. GPTQ (``axlab.compress.gptq``, Frantar et al. 2022, the paper's algorithm: max scaling,
   1% dampening, blocks of 128, natural column order) as GPFQ's peer at ``--peer-bits``:
   the same calibration texts per draw (seeds 0 .. ``--seeds``-1) and the same grid and
   scale granularity for both; ``gptq_vs_gpfq`` has accuracy and KL to fp32 per method
   (mean, min, max over the draws). ``gptq N-bit + levers`` (seed 0) is GPTQ with GPFQ's
   exact outliers and bias correction.

    python bench/bench_quant.py --peers-only            # only section 5 (+ RTN), merged into quant.json

Weight-only k-bit layers compute with their dequantized weights (no k-bit CPU kernel), so
their latency equals fp32 and is not measured. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from axlab.compress import quantize as Q
from axlab.compress.gpfq import choose_bits, gpfq
from axlab.compress.gptq import gptq
from axlab.core.data import load_dataset
from axlab.core.loading import load_model
from axlab.core.measure import fidelity, hardware_info, latency, predict_logits, scores, size_report


def bits_per_weight(model) -> float | None:
    """Stored bits per weight of the k-bit layers: packed codes + scales + exact outliers."""
    mods = [m for m in model.modules() if isinstance(m, Q.QuantLinear)]
    n = sum(m.in_features * m.out_features for m in mods)
    if not n:
        return None
    nbytes = sum(m.packed.numel() * m.packed.element_size() + m.scale.numel() * 4 + m.n_outliers * 6 for m in mods)
    return 8 * nbytes / n


def row(model_or_pred, tok, test, *, reference, size_of=None, size_bytes=None, lat=False, args=None,
        **extra) -> dict:
    """One row: accuracy, closeness to ``reference`` (fp32 test logits), size, latency."""
    logits = predict_logits(model_or_pred, tok, test.texts)
    ev = scores(logits, test.labels)
    fid = fidelity(logits, reference)
    out = {"accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"], "loss": ev["loss"],
           "agreement_with_fp32": fid["agreement"], "kl_to_fp32": fid["kl"], **extra}
    if size_of is not None:
        out["size_bytes"] = size_report(size_of)["size_bytes"]
        bpw = bits_per_weight(size_of)
        if bpw is not None:
            out["bits_per_weight"] = round(bpw, 3)
    if size_bytes is not None:
        out["size_bytes"] = int(size_bytes)
    if lat:
        b1 = latency(model_or_pred, tok, test.texts, 1, n_runs=args.latency_runs, threads=args.threads)
        b32 = latency(model_or_pred, tok, test.texts, 32, n_runs=max(args.latency_runs // 5, 3), warmup=2,
                      threads=args.threads)
        out.update(latency_b1_ms=b1["median_ms"], latency_b32_ms=b32["median_ms"])
    return out


# the published algorithm: per-channel max scaling, no bias correction, no refinement, no outliers
PLAIN = dict(scale_grid=None, bias_correction=False, refine_passes=0, outliers=0.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8])
    ap.add_argument("--calibration", type=int, default=512, help="GPFQ calibration texts (training split)")
    ap.add_argument("--mixed-avg-bits", type=float, default=3.0, help="0 skips the mixed-precision row")
    ap.add_argument("--group-size", type=int, default=None,
                    help="scales per group of this many inputs for RTN and GPFQ (default: one per output channel)")
    ap.add_argument("--outliers", type=float, default=0.001, help="fraction of weights kept exact (rtn/gpfq rows)")
    ap.add_argument("--seeds", type=int, default=3, help="calibration draws for GPFQ at --seed-bits (1 = only seed 0)")
    ap.add_argument("--seed-bits", type=int, nargs="*", default=[3, 4])
    ap.add_argument("--peer-bits", type=int, nargs="*", default=[2, 3, 4],
                    help="bits at which GPTQ runs next to GPFQ, both over --seeds calibration draws")
    ap.add_argument("--peers-only", action="store_true",
                    help="only fp32 accuracy, RTN, GPFQ and GPTQ at --peer-bits; merged into the rows already in --out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency-runs", type=int, default=100)
    ap.add_argument("--limit", type=int, default=None, help="first N test reviews (default all 2,000)")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quant.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    bundle = load_model("default")
    model, tok = bundle.model, bundle.tokenizer
    splits = load_dataset("rotten_tomatoes")
    test = splits.test.head(args.limit)
    calib = Q.calibration_texts(splits, args.calibration)
    res = {"hardware": hardware_info(), "n_test": len(test), "calibration_texts": len(calib), "timing_note":
           "latency on a shared 2-core machine: noisy", "rows": {}}
    rows = res["rows"]
    ref = predict_logits(model, tok, test.texts)                  # fp32: what every row is compared with

    def log(name):
        r = rows[name]
        sys.stderr.write(f"{name:>24}: acc {r['accuracy']:.4f}  agree {r['agreement_with_fp32']:.4f}  "
                         f"KL {r['kl_to_fp32']:.4f}  size {r.get('size_bytes', 0) / 1e6:.1f} MB"
                         + (f"  b1 {r['latency_b1_ms']:.1f} ms" if "latency_b1_ms" in r else "") + "\n")

    rows["fp32"] = row(model, tok, test, reference=ref, size_of=model, lat=not args.peers_only, args=args)
    log("fp32")
    if args.peers_only:
        return peers_only(args, model, tok, splits, test, ref, calib, res, log)
    for name, kw in (("torch int8 dynamic", {}), ("torch int8 + emb8", {"embeddings": True})):
        q = Q.int8_dynamic(model, **kw)
        rows[name] = row(q, tok, test, reference=ref, size_of=q, lat=True, args=args); log(name)
    if not args.no_onnx:
        try:
            from axlab.deploy.onnx_export import export_onnx
            with tempfile.TemporaryDirectory() as d:
                r = export_onnx(model, tok, Path(d) / "model.onnx", int8=True)
                rows["onnx fp32"] = row(r.predictor, tok, test, reference=ref, size_bytes=r.size_bytes, lat=True, args=args,
                                        parity_max_abs_diff=r.parity_max_abs_diff); log("onnx fp32")
                rows["onnx int8"] = row(r.int8_predictor, tok, test, reference=ref, size_bytes=r.int8_size_bytes, lat=True,
                                        args=args); log("onnx int8")
        except Exception as e:  # the ONNX path belongs to the export module; report, do not fail the bench
            res["onnx_error"] = f"{type(e).__name__}: {e}"

    def gpfq_row(name, bits, calibration=None, **options):
        return quant_row(gpfq, rows, name, bits, model, tok, test, ref, calib if calibration is None else calibration,
                         args, log, **options)

    errs_models = {}
    for bits in args.bits:
        q = Q.rtn(model, bits, group_size=args.group_size)
        rows[f"rtn {bits}-bit"] = row(q, tok, test, reference=ref, size_of=q, bits=bits, group_size=args.group_size)
        log(f"rtn {bits}-bit")
        if bits < 8:
            qo = Q.rtn(model, bits, group_size=args.group_size, outliers=args.outliers)
            rows[f"rtn {bits}-bit + outliers"] = row(qo, tok, test, reference=ref, size_of=qo, bits=bits, outliers=args.outliers)
            log(f"rtn {bits}-bit + outliers")
        g = gpfq_row(f"gpfq {bits}-bit", bits, outliers=args.outliers)
        gpfq_row(f"gpfq {bits}-bit plain", bits, **PLAIN)
        if bits in args.seed_bits or bits in args.peer_bits:     # calibration sets drawn with other seeds
            for seed in range(1, args.seeds):
                gpfq_row(f"gpfq {bits}-bit seed {seed}", bits, outliers=args.outliers,
                         calibration=Q.calibration_texts(splits, args.calibration, seed=seed))
        if bits in args.peer_bits:
            gptq_rows(args, model, tok, splits, test, ref, calib, rows, log, bits)
        if bits == 3:
            errs_models = {"rtn 3-bit": q, "gpfq 3-bit": g}
    if args.mixed_avg_bits:
        t0 = time.perf_counter()
        bpl = choose_bits(model, tok, calib[:48], args.mixed_avg_bits, candidates=(2, 3, 4), progress=False,
                          outliers=args.outliers)
        g = gpfq(model, tok, calib, 3, bits_per_layer=bpl, outliers=args.outliers, progress=False)
        name = f"gpfq mixed {args.mixed_avg_bits:g}-bit avg"
        rows[name] = row(g, tok, test, reference=ref, size_of=g, quantize_seconds=time.perf_counter() - t0, bits_per_layer=bpl)
        log(name)
    if errs_models:
        errs = Q.layer_errors(model, errs_models, tok, calib[:128], names=Q.target_linears(model))
        res["layer_errors_3bit"] = errs
        html = Path(args.out).with_name("quant_errors.html")
        Q.error_figure(errs, "Per-layer relative error at 3 bits: RTN vs GPFQ").write_html(html, include_plotlyjs=True)
    res["gpfq_over_seeds"] = {}
    summarise(res, args, args.bits)
    return write(res, args)


# GPTQ as published: max scaling, 1% dampening, blocks of 128, natural order; "+ levers": GPFQ's outliers and
# bias correction on top
GPTQ_LEVERS = dict(bias_correction=True)


def quant_row(method, rows, name, bits, model, tok, test, ref, calibration, args, log, **options):
    t0 = time.perf_counter()
    q = method(model, tok, calibration, bits, group_size=args.group_size, progress=False, **options)
    secs = time.perf_counter() - t0
    rep = (getattr(q, "axlab_gpfq_report", None) or q.axlab_gptq_report).layers
    rows[name] = row(q, tok, test, reference=ref, size_of=q, bits=bits, group_size=args.group_size, quantize_seconds=secs,
                     options=options or ("axlab defaults" if method is gpfq else "the paper's GPTQ"),
                     mean_rel_error=sum(r["rel_error"] for r in rep) / len(rep),
                     mean_rtn_rel_error=sum(r["rtn_rel_error"] for r in rep) / len(rep))
    log(name)
    return q


def gptq_rows(args, model, tok, splits, test, ref, calib, rows, log, bits):
    """GPTQ at ``bits`` on the same calibration draws as GPFQ's rows (seed 0 = ``calib``)."""
    for seed in range(args.seeds):
        texts = calib if seed == 0 else Q.calibration_texts(splits, args.calibration, seed=seed)
        quant_row(gptq, rows, f"gptq {bits}-bit" + (f" seed {seed}" if seed else ""), bits, model, tok, test, ref,
                  texts, args, log)
    quant_row(gptq, rows, f"gptq {bits}-bit + levers", bits, model, tok, test, ref, calib, args, log,
              outliers=args.outliers, **GPTQ_LEVERS)


def _over(got: list[dict]) -> dict:
    acc, kl = [r["accuracy"] for r in got], [r["kl_to_fp32"] for r in got]
    return {"n_seeds": len(got), "mean_accuracy": sum(acc) / len(acc), "min_accuracy": min(acc), "max_accuracy": max(acc),
            "mean_kl_to_fp32": sum(kl) / len(kl), "min_kl_to_fp32": min(kl), "max_kl_to_fp32": max(kl)}


def summarise(res: dict, args, bits_list) -> None:
    rows = res["rows"]
    fp = rows["fp32"]["accuracy"]
    for r in rows.values():
        r["delta_vs_fp32_points"] = round(100 * (r["accuracy"] - fp), 2)
    res.setdefault("gpfq_over_seeds", {})
    res.setdefault("gptq_vs_gpfq", {})
    for bits in bits_list:
        names = [f"gpfq {bits}-bit"] + [f"gpfq {bits}-bit seed {s}" for s in range(1, args.seeds)]
        got = [rows[n] for n in names if n in rows]
        rtn = {"rtn_accuracy": rows[f"rtn {bits}-bit"]["accuracy"], "rtn_kl_to_fp32": rows[f"rtn {bits}-bit"]["kl_to_fp32"]}
        if len(got) > 1:
            s = _over(got)
            res["gpfq_over_seeds"][str(bits)] = {k: s[k] for k in ("n_seeds", "mean_accuracy", "min_accuracy",
                                                                     "max_accuracy", "mean_kl_to_fp32")} | rtn
        peers = [rows[n] for n in [f"gptq {bits}-bit"] + [f"gptq {bits}-bit seed {s}" for s in range(1, args.seeds)]
                 if n in rows]
        if peers and got:
            a, b = _over(got), _over(peers)
            res["gptq_vs_gpfq"][str(bits)] = {
                "gpfq": a, "gptq": b, **rtn,
                "gpfq_ahead_on_accuracy": a["mean_accuracy"] > b["mean_accuracy"],
                "gpfq_ahead_on_kl": a["mean_kl_to_fp32"] < b["mean_kl_to_fp32"],
                "gpfq_options": "axlab defaults (scale search, bias correction, 3 refinement passes, "
                                f"{args.outliers:g} exact outliers)",
                "gptq_options": "the paper's (max scaling, damp 0.01, block 128, natural order)",
                "gptq_plus_levers": {k: rows[f"gptq {bits}-bit + levers"][k] for k in ("accuracy", "kl_to_fp32")}
                if f"gptq {bits}-bit + levers" in rows else None,
                "gpfq_plain_seed0": {k: rows[f"gpfq {bits}-bit plain"][k] for k in ("accuracy", "kl_to_fp32")}
                if f"gpfq {bits}-bit plain" in rows else None}


def write(res: dict, args) -> int:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    sys.stderr.write(f"wrote {args.out}\n")
    return 0


def peers_only(args, model, tok, splits, test, ref, calib, res, log) -> int:
    """RTN, GPFQ (axlab defaults) and GPTQ at ``--peer-bits`` over ``--seeds`` draws, merged into ``--out``."""
    rows = res["rows"]
    for bits in args.peer_bits:
        q = Q.rtn(model, bits, group_size=args.group_size)
        rows[f"rtn {bits}-bit"] = row(q, tok, test, reference=ref, size_of=q, bits=bits, group_size=args.group_size)
        log(f"rtn {bits}-bit")
        for seed in range(args.seeds):
            texts = calib if seed == 0 else Q.calibration_texts(splits, args.calibration, seed=seed)
            quant_row(gpfq, rows, f"gpfq {bits}-bit" + (f" seed {seed}" if seed else ""), bits, model, tok, test, ref,
                      texts, args, log, outliers=args.outliers)
        gptq_rows(args, model, tok, splits, test, ref, calib, rows, log, bits)
        _merge(args, res, rows, [b for b in args.peer_bits if f"gptq {b}-bit" in rows])   # written after each width
    return 0


def _merge(args, res, rows, done_bits) -> None:
    old = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    merged = {**old, "hardware": res["hardware"]}
    if old and (old.get("n_test"), old.get("calibration_texts")) != (res["n_test"], res["calibration_texts"]):
        merged = res                                  # another setting: the old rows are not comparable
    merged.setdefault("rows", {})
    merged["rows"].update(rows)
    merged["peers_run"] = {"command": "python bench/bench_quant.py " + " ".join(sys.argv[1:]),
                           "date": time.strftime("%Y-%m-%d %H:%M"),
                           "rows": sorted(set(rows) | set((old.get("peers_run") or {}).get("rows", []))),
                           "note": "these rows were re-measured by a --peers-only run; the others are from the last "
                                   "full run (same test split, same calibration draw for seed 0)"}
    summarise(merged, args, done_bits)
    write(merged, args)


if __name__ == "__main__":
    sys.exit(main())

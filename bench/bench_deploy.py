"""What reaches the deployed file: ONNX Runtime peers against axlab's fused graphs, side by side.

    python bench/bench_deploy.py            # default model, 2,000 test reviews -> bench/results/deploy.{json,md}
    python bench/bench_deploy.py --quick    # 300 test reviews, fewer latency rounds

Rows (all ONNX Runtime, CPU, 2 threads):
  peers  ort fp32 (dynamo export); ort dynamic int8; ort dynamic int8 per-channel;
         ort transformer optimizer (model_type bert) + dynamic int8 per-channel
  axlab  fused fp32 (one Attention node per layer, the default LayerNorm form: residual Add +
         LayerNormalization since 2026-12-01; results/deploy.* were measured before, with the
         9 elementwise steps);
         the same with ONNX Runtime's LayerNorm kernels (EmbedLayerNormalization,
         SkipLayerNormalization: FusedConfig(layernorm="fused"));
         fused int8 (the variant's own int8 weights as DynamicQuantizeMatMul + 8-bit embeddings),
         and the same with ONNX Runtime's LayerNorm kernels;
         fused GPFQ 4-bit (its own codes as MatMulNBits, accuracy_level 4) + 8-bit embeddings;
         the same + the task's vocabulary only (prune_vocab on the training texts);
         fp32, int8 and GPFQ 4-bit + vocabulary again in the padded layout
         (``FusedConfig().padded()``: every position through every layer, as
         before unpadding), each paired with its default (packed tokens, [CLS]-only last layer)

Accuracy on the test split; latency interleaved across all rows in one call
(axlab.core.measure.compare_latency: per-round medians, their spread, and "within noise"
when a row's rounds overlap the fastest peer's).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

log = logging.getLogger("bench_deploy")
RESULTS = Path(__file__).resolve().parent / "results"


def accuracy(predictor, tokenizer, split) -> float:
    correct = 0
    for batch, idx in _batches(tokenizer, split):
        correct += int((predictor(batch).argmax(-1).numpy() == np.asarray(split.labels)[idx]).sum())
    return correct / len(split)


def _batches(tokenizer, split, bs: int = 64):
    from axlab.core.measure import tokenize
    for i in range(0, len(split), bs):
        yield tokenize(tokenizer, split.texts[i:i + bs]), np.arange(i, min(i + bs, len(split)))


def ort_predictor(path, threads: int = 2):
    from axlab.deploy.fused_onnx import fused_predictor
    return fused_predictor(path, threads=threads)


def build(bundle, splits, out: Path, n_calibration: int) -> dict:
    """name -> (predictor, file path, kind, note)."""
    from axlab.compress.gpfq import gpfq
    from axlab.compress.prune import prune_vocab
    from axlab.compress.quantize import calibration_texts, int8_dynamic
    from axlab.deploy.fused_onnx import FusedConfig, export_fused_onnx
    from axlab.deploy.onnx_export import export_onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    PADDED = FusedConfig().padded()

    model, tok = bundle.model, bundle.tokenizer
    rows = {}
    t0 = time.perf_counter()
    res = export_onnx(model, tok, out / "ort_fp32.onnx")
    rows["ort fp32"] = (res.path, "peer")
    quantize_dynamic(str(res.path), str(out / "ort_int8.onnx"), weight_type=QuantType.QInt8)
    rows["ort int8"] = (out / "ort_int8.onnx", "peer")
    quantize_dynamic(str(res.path), str(out / "ort_int8_pc.onnx"), weight_type=QuantType.QInt8, per_channel=True)
    rows["ort int8 per-channel"] = (out / "ort_int8_pc.onnx", "peer")
    from onnxruntime.transformers.optimizer import optimize_model
    cfg = model.config
    opt = optimize_model(str(res.path), model_type="bert", num_heads=cfg.num_attention_heads,
                         hidden_size=cfg.hidden_size)
    opt.save_model_to_file(str(out / "ort_opt.onnx"))
    quantize_dynamic(str(out / "ort_opt.onnx"), str(out / "ort_opt_int8.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True)
    rows["ort optimizer + int8 per-channel"] = (out / "ort_opt_int8.onnx", "peer")
    log.info("peers built in %.0f s", time.perf_counter() - t0)

    fused = export_fused_onnx(model, tok, out / "fused_fp32.onnx")
    rows["axlab fused fp32"] = (fused.path, "axlab")
    kernel_ln = FusedConfig(layernorm="fused")
    rows["axlab fused fp32, ORT LayerNorm kernels"] = (
        export_fused_onnx(model, tok, out / "fused_fp32_ln.onnx", config=kernel_ln).path, "axlab")
    rows[PADDED_NAME % "fused fp32"] = (
        export_fused_onnx(model, tok, out / "fused_fp32_padded.onnx", config=PADDED).path, "axlab")
    q8 = int8_dynamic(model, embeddings=True)
    export_fused_onnx(q8, tok, out / "fused_int8.onnx", tolerance=None)
    rows["axlab fused int8 + int8 embeddings"] = (out / "fused_int8.onnx", "axlab")
    export_fused_onnx(q8, tok, out / "fused_int8_padded.onnx", tolerance=None, config=PADDED)
    rows[PADDED_NAME % "fused int8 + int8 embeddings"] = (out / "fused_int8_padded.onnx", "axlab")
    export_fused_onnx(q8, tok, out / "fused_int8_ln.onnx", config=kernel_ln, tolerance=None)
    rows["axlab fused int8 + int8 embeddings, ORT LayerNorm kernels"] = (out / "fused_int8_ln.onnx", "axlab")
    texts = calibration_texts(splits, n_calibration, seed=0)
    t1 = time.perf_counter()
    g4 = gpfq(model, tok, texts, 4, embeddings=True, embedding_bits=8)
    log.info("GPFQ 4-bit in %.0f s", time.perf_counter() - t1)
    nb = FusedConfig(accuracy_level=4, nbits_block=128)
    export_fused_onnx(g4, tok, out / "fused_gpfq4.onnx", config=nb, tolerance=None)
    rows["axlab fused GPFQ 4-bit + int8 embeddings"] = (out / "fused_gpfq4.onnx", "axlab")
    small, report = prune_vocab(model, tok, list(splits.train.texts))
    g4v = gpfq(small, tok, texts, 4, embeddings=True, embedding_bits=8)
    export_fused_onnx(g4v, tok, out / "fused_gpfq4_vocab.onnx", config=nb, tolerance=None)
    rows["axlab fused GPFQ 4-bit + task vocabulary"] = (out / "fused_gpfq4_vocab.onnx", "axlab")
    export_fused_onnx(g4v, tok, out / "fused_gpfq4_vocab_padded.onnx", tolerance=None,
                      config=nb.padded())
    rows[PADDED_NAME % "fused GPFQ 4-bit + task vocabulary"] = (out / "fused_gpfq4_vocab_padded.onnx", "axlab")
    return rows


PADDED_NAME = "axlab %s, padded layout"


def padded_pairs(lat_rounds: dict) -> dict:
    """{default row: {"speedup": median over rounds of padded / default, "range": [lo, hi], "within_noise"}}
    for every row that has a padded-layout twin; ``lat_rounds``: row -> per-round medians (ms)."""
    from axlab.core.measure import paired_speedup
    out = {}
    for name in lat_rounds:
        stem = name.removeprefix("axlab ")
        twin = PADDED_NAME % stem
        if twin in lat_rounds and twin != name:
            ps = paired_speedup(lat_rounds[twin], lat_rounds[name])
            out[name] = {"speedup": round(float(np.median(ps["speedups"])), 3),
                         "range": [round(x, 3) for x in ps["range"]], "within_noise": ps["within_noise"]}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="default")
    ap.add_argument("--dataset", default="rotten_tomatoes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    import axlab
    from axlab.core.measure import compare_latency, hardware_info
    from axlab.deploy.fused_onnx import int8_kernel_saturates

    bundle = axlab.load_model(args.model)
    splits = axlab.load_dataset(args.dataset)
    test = splits.test.head(300 if args.quick else None)
    with tempfile.TemporaryDirectory() as d:
        files = build(bundle, splits, Path(d), 64 if args.quick else 512)
        preds = {name: ort_predictor(path, args.threads) for name, (path, _) in files.items()}
        rows = {}
        for name, (path, kind) in files.items():
            rows[name] = {"kind": kind, "size_mb": round(path.stat().st_size / 1e6, 2),
                          "test_accuracy": round(accuracy(preds[name], bundle.tokenizer, test), 4)}
            log.info("%s: %s", name, rows[name])
        rounds = 3 if args.quick else 7
        lat = {}
        for bs, runs in ((1, 20), (32, 2)):
            lat[bs] = compare_latency(preds, bundle.tokenizer, list(test.texts), batch_size=bs, rounds=rounds,
                                      runs_per_round=runs if not args.quick else max(1, runs // 2))
    peers = [n for n, r in rows.items() if r["kind"] == "peer" and "int8" in n]
    out = {"model": args.model, "dataset": args.dataset, "n_test": len(test), "threads": args.threads,
           "hardware": hardware_info(), "int8_kernel_saturates": int8_kernel_saturates(),
           "load_average": os.getloadavg(), "rows": rows, "latency": {}}
    for bs, res in lat.items():
        ms = {n: res["models"][n]["median_ms"] for n in rows}
        best_peer = min(peers, key=lambda n: ms[n])
        for n in rows:
            r = rows[n]
            r[f"b{bs}_ms"] = round(ms[n], 3)
            r[f"b{bs}_spread_ms"] = [round(x, 3) for x in res["models"][n]["spread_ms"]]
            lo_n, hi_n = res["models"][n]["spread_ms"]
            lo_p, hi_p = res["models"][best_peer]["spread_ms"]
            r[f"b{bs}_vs_fastest_int8_peer"] = round(ms[best_peer] / ms[n], 3)
            r[f"b{bs}_within_noise"] = bool(lo_n <= hi_p and lo_p <= hi_n) and n != best_peer
        out["latency"][f"b{bs}_fastest_int8_peer"] = best_peer
        out["latency"][f"b{bs}_packed_vs_padded"] = padded_pairs(
            {n: res["models"][n]["round_medians_ms"] for n in rows})
    dest = Path(args.out) / ("deploy_quick.json" if args.quick else "deploy.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2, default=str))
    lines = ["| row | kind | test acc | size MB | b1 ms [spread] | b1 vs fastest int8 peer | b32 ms [spread] | "
             "b32 vs peer |", "|---|---|---|---|---|---|---|---|"]
    for n, r in rows.items():
        def cell(bs):
            ratio = f"{r[f'b{bs}_vs_fastest_int8_peer']:.2f}x" + (" (within noise)" if r[f"b{bs}_within_noise"] else "")
            return f"{r[f'b{bs}_ms']:.2f} [{r[f'b{bs}_spread_ms'][0]:.2f}-{r[f'b{bs}_spread_ms'][1]:.2f}] | {ratio}"
        lines.append(f"| {n} | {r['kind']} | {r['test_accuracy']:.4f} | {r['size_mb']:.1f} | {cell(1)} | {cell(32)} |")
    lines += ["", "Packed tokens and a [CLS]-only last layer (the default) against the padded layout, "
              "paired per round:", ""]
    for bs in (1, 32):
        for n, p in out["latency"][f"b{bs}_packed_vs_padded"].items():
            lines.append(f"- {n}, batch {bs}: {p['speedup']:.2f}x [{p['range'][0]:.2f}-{p['range'][1]:.2f}]"
                         + (" (within noise)" if p["within_noise"] else ""))
    lines += ["", f"{out['hardware']['cpu']} ({out['hardware'].get('onnxruntime')}); {args.threads} threads; "
              f"{len(test)} test reviews; ONNX Runtime's int8 kernel saturates here: {out['int8_kernel_saturates']}."]
    dest.with_suffix(".md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":
    main()

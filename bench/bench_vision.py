"""Vision rows: the default vision model (MNIST ViT) and its axlab variants against PyTorch and ONNX Runtime peers.

    python bench/bench_vision.py            # -> bench/results/vision.json and vision.md
    python bench/bench_vision.py --quick    # 1,000 test digits, top-layer search, fewer rounds and steps (the tests)

Rows, all measured in one run (accuracy and macro-F1 on the MNIST test split; latency at batch 1
and 32 interleaved across every row in the same rounds, with each row's spread and "within
noise" against the fastest peer; size = the bytes a user deploys):

  peers  pytorch fp32; pytorch int8 (torch.ao dynamic quantization of every Linear);
         onnxruntime fp32 (torch.onnx.export); onnxruntime int8 (quantize_dynamic, per channel)
  axlab  AxFormer (accuracy-driven head / FFN pruning, judged on validation);
         GPFQ 4-bit (256 calibration digits);
         self-distilled, first k blocks (SDViT, then drop the later blocks; k = the fewest blocks
         whose validation accuracy is within --max-loss of the base);
         best combination: AxFormer, self-distilled truncations and both, each exported by axlab to
         ONNX (fp32 and ONNX Runtime int8); the candidate with the lowest validation batch-1 latency
         among those whose validation accuracy is within --max-loss of the base

Every choice reads validation only; test is only reported.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

log = logging.getLogger("bench_vision")
RESULTS = Path(__file__).resolve().parent / "results"


def onnx_peer(model, processor, images, folder: Path, int8: bool, threads: int):
    """What anyone gets from ONNX Runtime in two calls: torch.onnx.export (+ quantize_dynamic)."""
    import onnxruntime as ort
    from axlab.core.measure import encode

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).logits

    x = encode(processor, list(images[:2]))["pixel_values"]
    path = folder / "model.onnx"
    if not path.exists():
        torch.onnx.export(Logits(model).eval(), (x,), str(path), input_names=["pixel_values"], output_names=["logits"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
                          opset_version=17)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        qpath = folder / "model.int8.onnx"
        quantize_dynamic(str(path), str(qpath), weight_type=QuantType.QInt8, per_channel=True)
        path = qpath
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def predict(batch):
        return torch.from_numpy(sess.run(None, {"pixel_values": batch["pixel_values"].numpy()})[0])
    return predict, path.stat().st_size


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="default-vision")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-loss", type=float, default=0.005, help="accuracy a choice may lose on validation")
    ap.add_argument("--sd-steps", type=int, default=None)
    ap.add_argument("--out", default=str(RESULTS / "vision"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("bench_vision", "axlab"):
        logging.getLogger(name).setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from axlab.compress import axformer
    from axlab.compress.distill import self_distill
    from axlab.compress.gpfq import gpfq
    from axlab.compress.prune import drop_layers
    from axlab.compress.quantize import calibration_texts
    from axlab.core.images import load_image_dataset
    from axlab.core.loading import load_model
    from axlab.core.measure import compare_latency, evaluate, hardware_info, size_report

    t_start = time.perf_counter()
    bundle = load_model(args.model)
    model, proc = bundle.model, bundle.processor
    splits = load_image_dataset("mnist")
    n_test = 1000 if args.quick else len(splits.test)
    n_val = 1000 if args.quick else 5000
    test, val = splits.test.head(n_test), splits.validation.head(n_val)
    sd_steps = args.sd_steps or (30 if args.quick else 600)
    n_layers = bundle.n_layers
    search_layers = [n_layers - 1] if args.quick else None          # --quick: the top layer only

    def val_acc(m) -> float:
        return evaluate(m, proc, val, batch_size=256)["accuracy"]

    base_val = val_acc(model)
    log.info("base validation accuracy %.4f on %d", base_val, len(val))
    rows: dict[str, dict] = {}
    predictors: dict[str, object] = {}
    work = Path(tempfile.mkdtemp(prefix="axlab-bench-vision-"))

    # --- peers -----------------------------------------------------------------------------------
    predictors["pytorch fp32"] = model
    rows["pytorch fp32"] = {"kind": "peer", "size_bytes": size_report(model)["size_bytes"], "recipe": "as loaded"}
    torch_int8 = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    predictors["pytorch int8"] = torch_int8
    with tempfile.TemporaryDirectory() as d:
        torch.save(torch_int8.state_dict(), Path(d) / "m.pt")
        rows["pytorch int8"] = {"kind": "peer", "size_bytes": (Path(d) / "m.pt").stat().st_size,
                                "recipe": "torch.ao quantize_dynamic (Linear, qint8)"}
    for name, int8 in (("onnxruntime fp32", False), ("onnxruntime int8", True)):
        pred, size = onnx_peer(model, proc, val.images, work, int8, args.threads)
        predictors[name] = pred
        rows[name] = {"kind": "peer", "size_bytes": size,
                      "recipe": "torch.onnx.export" + (" + quantize_dynamic per channel" if int8 else "")}

    # --- axlab -----------------------------------------------------------------------------------
    search = axformer.cached_search(model, proc, splits, config=axformer.SearchConfig(
        n_val=n_val, ffn_groups=4, significance=0.0, layers=search_layers,
        stages=("ffn_block", "ffn_groups", "attention_block", "heads")))
    ax_model = search.model
    calib = calibration_texts(splits, 256)
    g4 = gpfq(model, proc, calib, 4)
    sd = self_distill(model, proc, splits.train, steps=sd_steps, batch_size=64, seed=0)
    sd_val = {k: val_acc(drop_layers(sd, list(range(k, n_layers))) if k < n_layers else sd)
              for k in range(1, n_layers + 1)}
    base_k_val = {k: val_acc(drop_layers(model, list(range(k, n_layers))) if k < n_layers else model)
                  for k in range(1, n_layers + 1)}
    k_sd = min([k for k, a in sd_val.items() if a >= base_val - args.max_loss] or [n_layers])
    sd_trunc = drop_layers(sd, list(range(k_sd, n_layers))) if k_sd < n_layers else sd
    for name, m, recipe in (("axlab AxFormer", ax_model, f"AxFormer search (heads, FFN) on {n_val} validation digits"),
                            ("axlab GPFQ 4-bit", g4, "GPFQ 4-bit, 256 calibration digits"),
                            (f"axlab self-distilled, first {k_sd} blocks", sd_trunc,
                             f"self_distill {sd_steps} steps" + (f", drop blocks {k_sd + 1}-{n_layers}"
                                                                 if k_sd < n_layers else ", all blocks kept"))):
        predictors[name] = m
        rows[name] = {"kind": "axlab", "size_bytes": size_report(m)["size_bytes"], "recipe": recipe}

    # best combination, chosen on validation, deployed as the file a user ships: structural variants
    # (AxFormer, self-distilled truncations, both) exported by axlab to ONNX, fp32 and ORT int8
    from axlab.deploy.export import export_onnx_graph
    structural = {"base": model, "axformer": ax_model}
    for k in range(1, n_layers):
        if sd_val[k] >= base_val - 2 * args.max_loss:      # worth combining: near the bar
            structural[f"sd first {k}"] = drop_layers(sd, list(range(k, n_layers)))
    if k_sd < n_layers:
        sd_search = axformer.cached_search(sd_trunc, proc, splits, config=axformer.SearchConfig(
            n_val=n_val, ffn_groups=4, significance=0.0, layers=search_layers,
            stages=("ffn_block", "ffn_groups", "attention_block", "heads")))
        structural[f"sd first {k_sd} + axformer"] = sd_search.model
    cands, cand_size = {}, {}
    for i, (name, m) in enumerate(structural.items()):
        res = export_onnx_graph(m, proc, work / f"cand{i}.onnx", graph="plain", int8=True, threads=args.threads)
        cands[f"{name} (onnx fp32)"], cand_size[f"{name} (onnx fp32)"] = res.predictor, res.size_bytes
        cands[f"{name} (onnx int8)"], cand_size[f"{name} (onnx int8)"] = res.int8_predictor, res.int8_size_bytes
    cand_val = {n: val_acc(m) for n, m in cands.items()}
    ok = [n for n, a in cand_val.items() if a >= base_val - args.max_loss] or ["base (onnx fp32)"]
    lat_val = compare_latency({n: cands[n] for n in ok}, proc, val.images[:512], batch_size=1, rounds=3,
                              runs_per_round=20, threads=args.threads)
    best = min(ok, key=lambda n: (lat_val["models"][n]["median_ms"], -cand_val[n]))
    predictors["axlab best combination"] = cands[best]
    rows["axlab best combination"] = {"kind": "axlab", "size_bytes": cand_size[best], "recipe": best,
                                      "candidates_validation_accuracy": cand_val,
                                      "candidates_validation_b1_ms": {n: lat_val["models"][n]["median_ms"] for n in ok}}

    # --- measure everything on test, latency interleaved -----------------------------------------
    for name, pred in predictors.items():
        ev = evaluate(pred, proc, test, batch_size=256)
        rows[name].update(test_accuracy=ev["accuracy"], test_macro_f1=ev["macro_f1"])
    rounds, runs = (3, 10) if args.quick else (7, 20)
    lat = {bs: compare_latency(predictors, proc, test.images, batch_size=bs, rounds=rounds,
                               runs_per_round=runs if bs == 1 else max(2, runs // 4), threads=args.threads)
           for bs in (1, 32)}
    peers = [n for n, r in rows.items() if r["kind"] == "peer"]
    fastest = {bs: min(peers, key=lambda n: lat[bs]["models"][n]["median_ms"]) for bs in (1, 32)}
    for name, r in rows.items():
        for bs in (1, 32):
            m = lat[bs]["models"][name]
            f = lat[bs]["models"][fastest[bs]]
            overlap = max(m["spread_ms"][0], f["spread_ms"][0]) <= min(m["spread_ms"][1], f["spread_ms"][1])
            r[f"b{bs}_ms"] = m["median_ms"]
            r[f"b{bs}_spread_ms"] = m["spread_ms"]
            r[f"b{bs}_vs_fastest_peer"] = f["median_ms"] / m["median_ms"]
            r[f"b{bs}_within_noise"] = bool(overlap) and name != fastest[bs]
        r["size_mb"] = r["size_bytes"] / 1e6
    result = {"benchmark": "vision: default MNIST ViT, peers vs axlab variants", "task": "image classification",
              "model": args.model, "n_test": len(test), "n_validation": len(val), "base_validation_accuracy": base_val,
              "max_validation_loss": args.max_loss, "fastest_peer": fastest, "rows": rows,
              "sd_truncation": {"k": k_sd, "sd_validation_by_k": sd_val, "base_validation_by_k": base_k_val,
                                "steps": sd_steps},
              "latency": {"rounds": rounds, "runs_per_round": runs, "threads": args.threads},
              "hardware": hardware_info(), "load_average": os.getloadavg(),
              "seconds": round(time.perf_counter() - t_start, 1), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "quick": args.quick}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


def _ms(r: dict, bs: int) -> str:
    lo, hi = r[f"b{bs}_spread_ms"]
    return f"{r[f'b{bs}_ms']:.2f} [{lo:.2f}-{hi:.2f}]"


def _ratio(r: dict, bs: int) -> str:
    return f"{r[f'b{bs}_vs_fastest_peer']:.2f}x" + (" (within noise)" if r[f"b{bs}_within_noise"] else "")


def markdown(result: dict) -> str:
    lines = [f"Vision: {result['model']} on {result['n_test']} MNIST test digits "
             f"(choices on {result['n_validation']} validation digits; load average "
             f"{result['load_average'][0]:.1f}). Latency: median of per-round medians [spread], interleaved.", "",
             "| row | kind | test acc | macro-F1 | size MB | b1 ms [spread] | b1 vs fastest peer | b32 ms [spread] "
             "| b32 vs fastest peer | recipe |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['kind']} | {r['test_accuracy']:.4f} | {r['test_macro_f1']:.4f} | "
                     f"{r['size_mb']:.3f} | {_ms(r, 1)} | {_ratio(r, 1)} | {_ms(r, 32)} | {_ratio(r, 32)} | "
                     f"{r['recipe']} |")
    sd = result["sd_truncation"]
    lines += ["", f"Self-distilled truncation: k = {sd['k']} blocks kept (validation accuracy by k: SD "
              + ", ".join(f"{k}: {a:.4f}" for k, a in sd["sd_validation_by_k"].items()) + "; without SD "
              + ", ".join(f"{k}: {a:.4f}" for k, a in sd["base_validation_by_k"].items()) + ")."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""The fused graph's layouts side by side: padded, packed tokens + [CLS]-only last layer, and each with
ONNX Runtime's LayerNorm kernels; the packed one also with the 9-node elementwise LayerNorm, against the
default Add + LayerNormalization (interleaved latency, paired per round, 2 threads).

    python bench/bench_layouts.py                  # default model -> bench/results/layouts.json
    python bench/bench_layouts.py --model DIR      # any supported text classifier folder
    python bench/bench_layouts.py --quick          # fewer rounds and runs (keeps the code working)

Three models, timing only (none is trained here): the model itself in int8 (int8 weights and
embeddings), with the task vocabulary and RTN 4-bit codes, and with layers 2 and 4 dropped,
FFN -25% (magnitude) and RTN 4-bit codes: the shape of the bench's distilled students.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def models(bundle, splits) -> dict:
    from axlab.compress.prune import drop_layers, ffn_by_budget, prune_ffn, prune_vocab
    from axlab.compress.quantize import int8_dynamic, rtn
    from axlab.core import registry
    base = bundle.model
    out = {"int8": int8_dynamic(base, embeddings=True)}
    vocab, _ = prune_vocab(base, bundle.tokenizer, list(splits.train.texts))
    out["task vocabulary, RTN 4-bit"] = rtn(vocab, 4, scope="all")
    n = len(registry.layers(base))
    small = drop_layers(base, [i for i in (2, 4) if i < n - 1])
    out["layers 2, 4 dropped, FFN -25%, RTN 4-bit"] = rtn(prune_ffn(small, ffn_by_budget(small, 0.25)), 4, scope="all")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dataset", default="rotten_tomatoes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    import axlab
    from axlab.core.measure import compare_latency, hardware_info, paired_speedup
    from axlab.deploy.fused_onnx import FusedConfig, build_fused_graph, fused_predictor, int8_kernel_saturates

    bundle = axlab.load_model(args.model)
    bundle.model.float()
    splits = axlab.load_dataset(args.dataset)
    texts = list(splits.test.texts)
    lnk = FusedConfig(layernorm="fused")
    layouts = {"padded": FusedConfig().padded(), "packed + [CLS]-only": FusedConfig(),
               "packed + [CLS]-only, elementwise LayerNorm": FusedConfig(layernorm="elementwise"),
               "padded, LayerNorm kernels": lnk.padded(),
               "packed + [CLS]-only, LayerNorm kernels": lnk}
    plan = ((1, 6, 2), (32, 1, 2)) if args.quick else ((1, 60, 9), (32, 4, 7))
    out = {"model": args.model, "threads": args.threads, "hardware": hardware_info(),
           "int8_kernel_saturates": int8_kernel_saturates(), "results": {}}
    for mname, m in models(bundle, splits).items():
        preds = {n: fused_predictor(build_fused_graph(m, c).SerializeToString(), threads=args.threads)
                 for n, c in layouts.items()}
        for bs, runs, rounds in plan:
            r = compare_latency(preds, bundle.tokenizer, texts, batch_size=bs, rounds=rounds, runs_per_round=runs,
                                threads=args.threads, base="padded")
            res = {"ms": {n: round(v["median_ms"], 3) for n, v in r["models"].items()},
                   "vs_padded": {n: {"speedup": round(v["speedup"], 3), "range": [round(x, 3) for x in
                                                                                  v["speedup_range"]],
                                     "within_noise": v["within_noise"]} for n, v in r["ratios"].items()}}
            # the default LayerNorm form (Add + LayerNormalization) against the 9-node elementwise one, paired
            ps = paired_speedup(r["models"]["packed + [CLS]-only, elementwise LayerNorm"]["round_medians_ms"],
                                r["models"]["packed + [CLS]-only"]["round_medians_ms"])
            res["standard_vs_elementwise_layernorm"] = {"paired_median": round(ps["median"], 3),
                                                        "range": [round(x, 3) for x in ps["range"]],
                                                        "interval95": ps["interval"] and [round(x, 3)
                                                                                          for x in ps["interval"]]}
            out["results"][f"{mname}, batch {bs}"] = res
            sys.stdout.write(f"{mname}, batch {bs}: " + ", ".join(
                f"{n} {v['speedup']:.2f}x [{v['range'][0]:.2f}-{v['range'][1]:.2f}]"
                + (" (within noise)" if v["within_noise"] else "") for n, v in res["vs_padded"].items()) + "\n")
    dest = Path(args.out) / ("layouts_quick.json" if args.quick else "layouts.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()

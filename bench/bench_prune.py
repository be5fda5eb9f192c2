"""Pruning side by side on the default model (MiniLM-L6 fine-tuned on Rotten Tomatoes).

    python bench/bench_prune.py                 # writes bench/results/prune.json
    python bench/bench_prune.py --threads 2 --seeds 0 1 2 --distill-steps 150

What it measures (decisions on validation, every figure on the 2,000 test reviews):
1. baseline vs the AxFormer search result (accuracy, latency at batch 1 and 32, size),
   the search time and decision counts; the AxFormer recipe is cached for reuse
   (``axlab.compress.axformer.cached_search``), so a rerun skips the search and reports the
   original search time;
2. 40% of heads removed by gradient importance vs 40% at random (mean of several seeds);
3. vocabulary pruning to the training texts' tokens: out-of-vocabulary rate on test, size;
4. optionally, AxFormer + a short distillation from the unpruned teacher.

Latency is measured in alternating rounds (baseline, variant, baseline, ...) and the median
of the round medians is reported, which damps drift on a shared machine; still, timings on
a shared machine are noisy and are reported as such.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from axlab.analysis.importance import head_importance
from axlab.compress import prune
from axlab.compress.axformer import SearchConfig, cached_search
from axlab.core import surgery
from axlab.core.data import load_dataset
from axlab.core.loading import load_model
from axlab.core.measure import evaluate, hardware_info, latency, size_report


def paired_latency(models: dict, tok, texts, batch_size: int, rounds: int, runs: int, threads: int) -> dict:
    per = {k: [] for k in models}
    for r in range(rounds):
        for name, m in models.items():
            per[name].append(latency(m, tok, texts, batch_size, n_runs=runs, warmup=3, seed=r, threads=threads)["median_ms"])
    return {k: {"median_ms": statistics.median(v), "round_medians_ms": [round(x, 3) for x in v]} for k, v in per.items()}


def row(model, tok, test) -> dict:
    ev = evaluate(model, tok, test)
    return {"accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"], "loss": ev["loss"], **size_report(model)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prune.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fraction", type=float, default=0.4)
    ap.add_argument("--rounds", type=int, default=3, help="alternating latency rounds")
    ap.add_argument("--distill-steps", type=int, default=0)
    ap.add_argument("--refresh", action="store_true", help="rerun the AxFormer search even if cached")
    ap.add_argument("--n-val", type=int, default=None, help="search on the first N validation examples (default all)")
    ap.add_argument("--ffn-groups", type=int, default=4)
    ap.add_argument("--significance", type=float, default=1.0,
                    help="keep a change only if the validation loss drops by more than this many paired SEs")
    ap.add_argument("--importance-n", type=int, default=500, help="validation examples for head importance")
    ap.add_argument("--topk", type=int, nargs="*", default=[8], help="hard-attention k values tried")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    bundle = load_model("default")
    splits = load_dataset("rotten_tomatoes")
    model, tok, test = bundle.model, bundle.tokenizer, splits.test
    out: dict = {"model": "default (MiniLM-L6 fine-tuned on rotten_tomatoes)", "dataset": splits.key,
                 "test_n": len(test), "validation_n": len(splits.validation), "threads": args.threads,
                 "hardware": hardware_info(),
                 "note": ("All decisions (AxFormer search, head importance) used the validation split; every "
                          "accuracy here is on test. Timings on a 2-core machine are noisy; the latency rounds "
                          "alternate baseline and variant so drift hits both.")}
    base = row(model, tok, test)
    out["baseline"] = base
    print(f"baseline: {base['accuracy']:.4f}", file=sys.stderr)

    # 1. AxFormer
    t0 = time.time()
    cfg = SearchConfig(n_val=args.n_val, ffn_groups=args.ffn_groups, topk_values=tuple(args.topk),
                       significance=args.significance,
                       stages=tuple(st for st in SearchConfig().stages if args.topk or st != "hard_attention"))
    res = cached_search(model, tok, splits, config=cfg, refresh=args.refresh, progress=False)
    ax = row(res.model, tok, test)
    lay = surgery.layout(res.model)
    out["axformer"] = {**ax, "search": res.summary(), "wall_s_this_run": round(time.time() - t0, 1),
                       "recipe": res.recipe,
                       "layout": {"heads_per_layer": [len(h) for h in lay["heads"]], "ffn_per_layer": lay["ffn"],
                                  "topk": lay["topk"]}}
    print(f"axformer: {ax['accuracy']:.4f} search {res.seconds:.0f}s cached={res.cached}", file=sys.stderr)
    lat_models = {"baseline": model, "axformer": res.model}
    _latency_into(out, lat_models, tok, test, args)
    _write(out, args)
    if args.distill_steps:
        from axlab.compress.distill import distill
        t0 = time.time()
        dist = distill(res.model, model, tok, splits.train, steps=args.distill_steps, progress=False)
        out["axformer_distilled"] = {**row(dist, tok, test), "steps": args.distill_steps,
                                     "distill_s": round(time.time() - t0, 1)}
        print(f"axformer+distill: {out['axformer_distilled']['accuracy']:.4f}", file=sys.stderr)

    # 2. 40% heads: gradient vs random
    t0 = time.time()
    imp = head_importance(model, tok, splits.validation.head(args.importance_n), method="gradient", progress=False)
    grad_model = prune.prune_heads(model, prune.heads_by_budget(imp, args.fraction))
    grad = row(grad_model, tok, test)
    rand = []
    for s in args.seeds:
        r = row(prune.prune_heads(model, prune.random_heads(model, args.fraction, seed=s)), tok, test)
        rand.append({"seed": s, "accuracy": r["accuracy"]})
    out["heads_40"] = {"fraction": args.fraction, "gradient": grad,
                       "random": rand, "random_mean_accuracy": statistics.mean(r["accuracy"] for r in rand),
                       "gradient_minus_random_points": 100 * (grad["accuracy"] - statistics.mean(r["accuracy"] for r in rand)),
                       "seconds": round(time.time() - t0, 1)}
    _write(out, args)
    print(f"heads 40%: gradient {grad['accuracy']:.4f} random mean {out['heads_40']['random_mean_accuracy']:.4f}",
          file=sys.stderr)

    # 3. vocabulary pruning
    vmodel, vrep = prune.prune_vocab(model, tok, splits.train.texts, eval_texts=test.texts)
    out["vocab"] = {**vrep, **{k: v for k, v in row(vmodel, tok, test).items() if k in ("accuracy", "size_bytes", "params")}}

    out["bench_seconds"] = round(time.time() - t_start, 1)
    _write(out, args)
    return 0


def _latency_into(out: dict, models: dict, tok, test, args) -> None:
    """Latency at batch 1 and 32 in alternating rounds, written into out[name]; then the comparison."""
    for bs, runs in ((1, 30), (32, 4)):
        lat = paired_latency(models, tok, test.texts, bs, args.rounds, runs, args.threads)
        for name, v in lat.items():
            out[name][f"latency_b{bs}_ms"] = v["median_ms"]
            out[name][f"latency_b{bs}_rounds_ms"] = v["round_medians_ms"]
    a, b = out["axformer"], out["baseline"]
    out["axformer_vs_baseline"] = {
        "accuracy_delta_points": round(100 * (a["accuracy"] - b["accuracy"]), 2),
        "size_ratio": a["size_bytes"] / b["size_bytes"], "params_ratio": a["params"] / b["params"],
        "speedup_b1": b["latency_b1_ms"] / a["latency_b1_ms"], "speedup_b32": b["latency_b32_ms"] / a["latency_b32_ms"],
        "search_minutes": a["search"]["seconds"] / 60,
        "targets": {"search_under_15_min": a["search"]["seconds"] < 900,
                    "accuracy_at_least_baseline_minus_0.5": a["accuracy"] >= b["accuracy"] - 0.005,
                    "smaller": a["size_bytes"] < b["size_bytes"]}}
    print(json.dumps(out["axformer_vs_baseline"], indent=2), file=sys.stderr)


def _write(out: dict, args) -> None:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2, default=str))
    tmp.replace(args.out)


if __name__ == "__main__":
    sys.exit(main())

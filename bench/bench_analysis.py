"""Time the "look inside" analyses on the default model and record what they find.

    python bench/bench_analysis.py [--threads N] [--quick] [--out bench/results/analysis.json]

Measures (caching off, so every figure is a real computation):
  * gradient importance (Michel et al.) over 1,000 validation reviews;
  * head statistics over 1,000 validation reviews;
  * ablation of each of the 72 heads alone over 500 validation reviews;
  * captum integrated gradients over the gates on 500 validation reviews;
  * attention maps + rollout and token attributions for one sentence;
the Spearman rank agreement between the three importance methods on the same 500
reviews, and, for each method, the held-out loss/accuracy (validation 500-999) with its
12 top- vs 12 bottom-ranked heads gated off. Timings on a shared machine are noisy: the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from axlab.analysis.attention_maps import attention_for, rollout
from axlab.analysis.attributions import token_attributions
from axlab.analysis.head_stats import head_statistics
from axlab.analysis.importance import _batches, _loss_acc, agreement, head_ablation, head_importance, rank_heads
from axlab.core.data import load_dataset
from axlab.core.loading import load_model
from axlab.core.measure import hardware_info

SENTENCE = "A gorgeous, witty and moving film, though the middle drags."


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 2)


def top(imp, k=5) -> list[list[int]]:
    return [[int(r.layer), int(r.head)] for r in rank_heads(imp).head(k).itertuples()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="10x fewer examples (smoke run)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "analysis.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = 10 if args.quick else 1
    bundle = load_model("default")
    model, tok = bundle.model, bundle.tokenizer
    val = load_dataset("rotten_tomatoes").validation
    v1000, v500 = val.head(1000 // scale), val.head(500 // scale)
    res: dict = {"model": "default", "n_layers": bundle.n_layers, "n_heads": bundle.n_heads,
                 "load_avg_before": os.getloadavg(), "hardware": hardware_info(), "timings_s": {}}
    t = res["timings_s"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:               # after every stage, so a long run leaves partial figures
        out.write_text(json.dumps(res, indent=2, default=str) + "\n")

    grad, t[f"gradient_importance_{len(v1000)}"] = timed(
        lambda: head_importance(model, tok, v1000, method="gradient", progress=False, cache_results=False))
    save()
    stats, t[f"head_statistics_{len(v1000)}"] = timed(
        lambda: head_statistics(model, tok, v1000, progress=False, cache_results=False))
    save()
    abl, t[f"ablation_72_heads_{len(v500)}"] = timed(
        lambda: head_ablation(model, tok, v500, progress=False, cache_results=False))
    save()
    cap, t[f"captum_ig_gates_{len(v500)}_8steps"] = timed(
        lambda: head_importance(model, tok, v500, method="captum", n_steps=8, progress=False, cache_results=False))
    grad500 = head_importance(model, tok, v500, method="gradient", progress=False, cache_results=False)
    att, t["attention_one_sentence"] = timed(lambda: attention_for(model, tok, SENTENCE))
    roll = rollout(att)
    attr, t["token_attributions_one_sentence_50steps"] = timed(lambda: token_attributions(model, tok, SENTENCE))
    res["load_avg_after"] = os.getloadavg()

    res["ablation"] = {"n": abl.n, "base_loss": round(abl.base_loss, 4), "base_accuracy": round(abl.base_accuracy, 4),
                       "max_loss_increase": round(float(abl.loss_increase.max()), 4),
                       "max_accuracy_drop": round(float(abl.accuracy_drop.max()), 4),
                       "heads_whose_removal_lowers_loss": int((abl.loss_increase < 0).sum()),
                       "top5": top(abl.loss_increase)}
    # Real behaviour: gate off the 12 top- vs bottom-ranked heads (of 72), loss on held-out reviews.
    held = type(val)(val.texts[500:1000], val.labels[500:1000])
    held_batches = _batches(tok, held, 64)
    res["remove_12_heldout_500"] = {"none": [round(x, 4) for x in _loss_acc(model, held_batches, None)]}
    for name, imp in {"gradient": grad500, "ablation": abl.loss_increase, "captum": cap}.items():
        ranked = rank_heads(imp)
        row = {}
        for which, rows in (("top", ranked.head(12)), ("bottom", ranked.tail(12))):
            gates = torch.ones(bundle.n_layers, bundle.n_heads)
            gates[list(rows["layer"]), list(rows["head"])] = 0
            row[which] = [round(x, 4) for x in _loss_acc(model, held_batches, gates)]      # [loss, accuracy]
        res["remove_12_heldout_500"][name] = row
    res["top5"] = {"gradient_1000": top(grad), "gradient_500": top(grad500), "ablation_500": top(abl.loss_increase),
                   "captum_500": top(cap)}
    res["spearman_500"] = agreement({"gradient": grad500, "ablation": abl.loss_increase,
                                     "captum": cap}).round(3).to_dict()
    res["head_statistics_layer_means"] = {k: [round(float(x), 3) for x in np.nanmean(v, axis=1)]
                                          for k, v in stats.items()}
    res["rollout_cls"] = {tok_: round(float(v), 3) for tok_, v in zip(att.tokens[0], roll[0])}
    res["attribution"] = {"label": attr.label, "p": round(attr.output, 4), "delta": attr.delta,
                          "scores": {tok_: round(float(s), 4) for tok_, s in zip(attr.tokens, attr.scores)}}
    save()
    sys.stdout.write(json.dumps({"timings_s": t, "spearman_500": res["spearman_500"], "ablation": res["ablation"],
                                 "remove_12_heldout_500": res["remove_12_heldout_500"]},
                                indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

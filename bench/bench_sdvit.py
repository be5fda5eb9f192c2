"""What self-distillation (SDViT) buys, on the default vision model (the MNIST ViT).

    python bench/bench_sdvit.py                    # writes bench/results/sdvit.json and sdvit.md
    python bench/bench_sdvit.py --model own        # a small ViT trained here (when default-vision is missing)
    python bench/bench_sdvit.py --quick --out /tmp/sdvit   # tiny and fast: what the tests run

Protocol (choices on validation, every reported figure on test):

* **base**: the model as loaded. **ce**: base fine-tuned with plain cross-entropy for the same
  steps, learning rate, batches and seed as self-distillation (``self_distill(alpha=0)``): the
  control, so "SD helps" cannot be "more training helps". **sd**: base self-distilled
  (``self_distill``), its (alpha, temperature) chosen from a small grid on validation: the
  highest mean early-exit accuracy over the blocks whose final-exit validation accuracy is
  within 0.2 points of the base's.
* (a) early-exit accuracy and macro-F1 of every block (``analysis.early_exit``), base / ce / sd.
* (b) keep the first k blocks (``prune.drop_layers`` of the rest; its logits are exactly block
  k's exit), for every k: with no fine-tuning; and after a short fine-tune of the truncated
  model (``--ft-steps`` steps, same for every arm) with plain cross-entropy or with the SD
  objective over its kept blocks, starting from base, ce or sd. ce -> truncate -> fine-tune
  against sd -> truncate -> fine-tune is the equal-budget comparison.
* (c) accuracy of base / ce / sd on ``mnist_shifted`` (the MNIST test digits under four fixed
  shifts), overall and per shift.
* optionally (``--text``), (a) on the default text model (a quick sanity read).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from axlab.analysis.early_exit import early_exit_accuracy
from axlab.compress.distill import self_distill
from axlab.compress.prune import drop_layers
from axlab.core import registry
from axlab.core.images import load_image_dataset
from axlab.core.measure import evaluate, hardware_info

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_sdvit")


def own_vit(train, steps: int, seed: int = 0, layers: int = 6, hidden: int = 64):
    """A small ViT (the default-vision shape: 28x28, patch 7, 4 layers x 4 heads, hidden 64) trained here with cross-entropy."""
    from transformers import ViTImageProcessor

    from axlab.core.testing import tiny_vision_model
    model = tiny_vision_model("vit", num_labels=10, seed=seed, hidden=hidden, layers=layers, heads=4,
                              intermediate=2 * hidden)
    names = train.label_names or [str(i) for i in range(10)]
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    proc = ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.1307], image_std=[0.3081])
    model = self_distill(model, proc, train, steps=steps, lr=2e-3, alpha=0.0, batch_size=128, seed=seed,
                         progress=False)
    model.axlab_recipe = []
    return model, proc


def load_vision(args, splits):
    if args.model == "own":
        return own_vit(splits.train, args.own_steps, layers=2 if args.quick else 6, hidden=32 if args.quick else 64)
    from axlab.core.loading import load_model
    try:
        bundle = load_model(args.model)
    except Exception as e:  # noqa: BLE001
        sys.exit(f"Could not load '{args.model}' ({type(e).__name__}: {e}). Build it (axlab prepare vision) "
                 "or run with --model own.")
    return bundle.model, getattr(bundle, "processor", None) or bundle.tokenizer


def exits(model, proc, split) -> dict:
    ee = early_exit_accuracy(model, proc, split, batch_size=256, progress=False)
    return {k: [round(x, 5) for x in ee[k]] for k in ("accuracy", "macro_f1")} | {"n": ee["n"]}


def sd_choose(base, proc, splits, val, args) -> tuple:
    """The (alpha, temperature) of the grid with the best mean validation exit accuracy, final kept."""
    base_val = exits(base, proc, val)
    tried = []
    best = None
    for alpha in args.alphas:
        for t in args.temperatures:
            t0 = time.time()
            m = self_distill(base, proc, splits.train, steps=args.steps, lr=args.lr, alpha=alpha, temperature=t,
                             batch_size=args.batch_size, seed=args.seed, progress=False)
            v = exits(m, proc, val)
            ok = v["accuracy"][-1] >= base_val["accuracy"][-1] - 0.002
            rec = {"alpha": alpha, "temperature": t, "validation_mean_exit": float(np.mean(v["accuracy"])),
                   "validation_final": v["accuracy"][-1], "final_kept": ok, "seconds": round(time.time() - t0, 1)}
            tried.append(rec)
            log.info("SD alpha=%g T=%g: validation exits %s", alpha, t, v["accuracy"])
            key = (ok, rec["validation_mean_exit"])
            if best is None or key > best[0]:
                best = (key, m, rec)
    return best[1], best[2], tried, base_val


def shifted(model, proc, shift_test) -> dict:
    ev = evaluate(model, proc, shift_test, batch_size=256)
    out = {"accuracy": round(ev["accuracy"], 5), "macro_f1": round(ev["macro_f1"], 5)}
    tags = np.array(shift_test.tags) if shift_test.tags else None
    if tags is not None:
        from axlab.core.measure import predict_logits
        from axlab.core.data import align_labels
        sp = align_labels(shift_test, model)
        pred = predict_logits(model, proc, sp.inputs, 256).argmax(-1).numpy()
        y = np.asarray(sp.labels)
        out["per_shift"] = {t: round(float((pred[tags == t] == y[tags == t]).mean()), 5) for t in sorted(set(tags))}
    return out


def keep_first_k(models: dict, proc, splits, test, args) -> dict:
    n = len(registry.layers(models["base"]))
    out = {"ks": list(range(1, n + 1)), "no_finetune": {}, "finetuned": {}, "ft_steps": args.ft_steps}
    for name, m in models.items():
        out["no_finetune"][name] = exits(m, proc, test)["accuracy"]       # block k's exit == keep-first-k
    arms = [("base", 0.0, "base + CE"), ("base", args.chosen_alpha, "base + SD"), ("ce", 0.0, "ce + CE"),
            ("sd", 0.0, "sd + CE"), ("sd", args.chosen_alpha, "sd + SD")]
    for src, alpha, label in arms:
        accs = []
        for k in range(1, n):
            cut = drop_layers(models[src], list(range(k, n)))
            a = alpha if k > 1 else 0.0                    # one kept block: no intermediate exit to train
            ft = self_distill(cut, proc, splits.train, steps=args.ft_steps, lr=args.lr, alpha=a,
                              temperature=args.chosen_t, batch_size=args.batch_size, seed=args.seed + 1,
                              progress=False)
            accs.append(round(evaluate(ft, proc, test, batch_size=256)["accuracy"], 5))
        out["finetuned"][label] = accs + [None]
        log.info("keep-first-k %s: %s", label, accs)
    return out


def text_sanity(args) -> dict:
    from axlab.core.data import load_dataset
    from axlab.core.loading import load_model
    b = load_model("default")
    ds = load_dataset("rotten_tomatoes")
    val, test = ds.validation.head(args.text_n), ds.test.head(args.text_n)
    base_val = exits(b.model, b.tokenizer, val)
    before = exits(b.model, b.tokenizer, test)
    t0 = time.time()
    kw = dict(steps=args.text_steps, lr=2e-5, batch_size=16, seed=args.seed, progress=False)
    sd = self_distill(b.model, b.tokenizer, ds.train, alpha=args.chosen_alpha, temperature=args.chosen_t, **kw)
    ce = self_distill(b.model, b.tokenizer, ds.train, alpha=0.0, **kw)
    return {"model": "default", "dataset": "rotten_tomatoes", "steps": args.text_steps, "lr": 2e-5, "batch_size": 16,
            "n": len(test), "validation_before": base_val, "before": before, "ce": exits(ce, b.tokenizer, test),
            "after": exits(sd, b.tokenizer, test), "seconds": round(time.time() - t0, 1)}


def markdown(res: dict) -> str:
    ee = res["early_exit"]
    n = res["model"]["layers"]
    lines = [f"# Self-distillation (SDViT) on {res['model']['name']}", "",
             f"Command: `{res['command']}` ({res['seconds']:.0f} s, {res['hardware']['threads']} threads). "
             f"SD: {res['sd']['steps']} steps, batch {res['sd']['batch_size']}, lr {res['sd']['lr']}, chosen on "
             f"validation: alpha={res['sd']['chosen']['alpha']}, T={res['sd']['chosen']['temperature']}. "
             "ce = the same fine-tune without the SD term (the control). Test figures.", "",
             "## (a) Early-exit accuracy per block (test)", "",
             "| model | " + " | ".join(f"block {i}" for i in range(1, n + 1)) + " |",
             "|---" * (n + 1) + "|"]
    for name in ("before", "ce", "after"):
        lines.append(f"| {name} | " + " | ".join(f"{x:.4f}" for x in ee[name]["test"]["accuracy"]) + " |")
    k = res["keep_first_k"]
    lines += ["", f"## (b) Keep the first k blocks (test accuracy; fine-tune {k['ft_steps']} steps)", "",
              "| variant | " + " | ".join(f"k={i}" for i in k["ks"]) + " |", "|---" * (len(k["ks"]) + 1) + "|"]
    for name, accs in k["no_finetune"].items():
        lines.append(f"| {name}, no fine-tune | " + " | ".join(f"{x:.4f}" for x in accs) + " |")
    for name, accs in k["finetuned"].items():
        lines.append(f"| {name} | " + " | ".join("-" if x is None else f"{x:.4f}" for x in accs) + " |")
    s = res["shifted"]
    tags = list(s["before"].get("per_shift", {}))
    lines += ["", "## (c) mnist_shifted (test digits under fixed shifts)", "",
              "| model | all | " + " | ".join(tags) + " |", "|---" * (len(tags) + 2) + "|"]
    for name in ("before", "ce", "after"):
        lines.append(f"| {name} | {s[name]['accuracy']:.4f} | " +
                     " | ".join(f"{s[name]['per_shift'][t]:.4f}" for t in tags) + " |")
    if res.get("text"):
        t = res["text"]
        lines += ["", f"## Text sanity read: (a) on the default text model ({t['n']} test reviews, {t['steps']} steps)",
                  ""]
        for name in ("before", "ce", "after"):
            lines.append(f"- {name}: " + ", ".join(f"{x:.3f}" for x in t[name]["accuracy"]))
    lines += ["", "## Reading", ""] + [f"- {x}" for x in res["findings"]]
    return "\n".join(lines) + "\n"


def findings(res: dict) -> list[str]:
    ee, out = res["early_exit"], []
    b, c, a = (np.array(ee[x]["test"]["accuracy"]) for x in ("before", "ce", "after"))
    mid = slice(0, len(b) - 1)
    out.append(f"(a) mean intermediate-exit test accuracy: before {b[mid].mean():.4f}, ce {c[mid].mean():.4f}, "
               f"sd {a[mid].mean():.4f}; final exit: before {b[-1]:.4f}, ce {c[-1]:.4f}, sd {a[-1]:.4f}.")
    k = res["keep_first_k"]
    ce_ft, sd_ft = k["finetuned"]["ce + CE"][:-1], k["finetuned"]["sd + CE"][:-1]
    wins = sum(s > x for s, x in zip(sd_ft, ce_ft))
    out.append(f"(b) after truncation and an equal fine-tune, sd beats the ce control at {wins} of {len(ce_ft)} depths "
               f"(largest gap {max(s - x for s, x in zip(sd_ft, ce_ft)):+.4f}, smallest "
               f"{min(s - x for s, x in zip(sd_ft, ce_ft)):+.4f}).")
    s = res["shifted"]
    out.append(f"(c) mnist_shifted: before {s['before']['accuracy']:.4f}, ce {s['ce']['accuracy']:.4f}, "
               f"sd {s['after']['accuracy']:.4f} (sd - ce = {s['after']['accuracy'] - s['ce']['accuracy']:+.4f}).")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default-vision", help="a vision model source, or 'own' (trained here)")
    p.add_argument("--quick", action="store_true", help="tiny own model, small data: seconds (what the tests run)")
    p.add_argument("--steps", type=int, default=400, help="self-distillation (and control) steps")
    p.add_argument("--ft-steps", type=int, default=150, help="fine-tune steps after truncation, every arm")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--temperatures", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument("--n-val", type=int, default=2000, help="validation digits used for choices")
    p.add_argument("--n-test", type=int, default=None, help="test digits (default all 10,000)")
    p.add_argument("--own-steps", type=int, default=1500, help="training steps of --model own")
    p.add_argument("--text", action="store_true", help="also (a) on the default text model")
    p.add_argument("--text-steps", type=int, default=100)
    p.add_argument("--text-n", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.own_steps, args.steps, args.ft_steps = "own", 60, 20, 10
        args.alphas, args.temperatures, args.n_val, args.n_test = [1.0], [2.0], 200, 300
        args.batch_size = 32
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    splits = load_image_dataset("mnist")
    shifts = load_image_dataset("mnist_shifted").test
    val, test = splits.validation.head(args.n_val), splits.test.head(args.n_test)
    if args.quick:
        splits.train = splits.train.head(4000)
        shifts = shifts.head(args.n_test)
    base, proc = load_vision(args, splits)
    base.axlab_recipe = []
    n_layers = len(registry.layers(base))
    log.info("model ready: %d layers (%.0f s)", n_layers, time.time() - t0)
    sd, chosen, tried, base_val = sd_choose(base, proc, splits, val, args)
    args.chosen_alpha, args.chosen_t = chosen["alpha"], chosen["temperature"]
    ce = self_distill(base, proc, splits.train, steps=args.steps, lr=args.lr, alpha=0.0, batch_size=args.batch_size,
                      seed=args.seed, progress=False)
    models = {"base": base, "ce": ce, "sd": sd}
    early = {name: {"validation": exits(m, proc, val) if name != "before" else base_val, "test": exits(m, proc, test)}
             for name, m in (("before", base), ("ce", ce), ("after", sd))}
    early["before"]["validation"] = base_val
    log.info("(a) done (%.0f s)", time.time() - t0)
    kfk = keep_first_k(models, proc, splits, test, args)
    log.info("(b) done (%.0f s)", time.time() - t0)
    shift = {name: shifted(m, proc, shifts) for name, m in (("before", base), ("ce", ce), ("after", sd))}
    log.info("(c) done (%.0f s)", time.time() - t0)
    res = {"command": "python bench/bench_sdvit.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "model": {"name": args.model if args.model != "own" else f"own ViT ({n_layers} layers, trained here, "
                     f"{args.own_steps} steps)", "layers": n_layers, "params": sum(x.numel() for x in base.parameters())},
           "sd": {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed, "grid": tried,
                  "chosen": chosen, "recipe": sd.axlab_recipe},
           "data": {"validation": len(val), "test": len(test), "shifted": len(shifts)},
           "early_exit": early, "keep_first_k": kfk, "shifted": shift}
    if args.text:
        res["text"] = text_sanity(args)
    res["seconds"] = round(time.time() - t0, 1)
    res["hardware"] = hardware_info()
    res["findings"] = findings(res)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sdvit.json").write_text(json.dumps(res, indent=1))
    (out / "sdvit.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

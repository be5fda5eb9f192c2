"""CLI: ``axlab prune`` (structured / unstructured pruning by hand or by budget) and ``axlab axformer``.

Both measure the baseline and the result on the *test* split (budgets and the search use
validation) and can save the variant to the store (``--save NAME``).
"""

from __future__ import annotations

import argparse
import time

from axlab.cli.common import (add_model_args, data_notes, emit, load_model_and_data, measure_against_base,
                              positive_int, save_variant)

__all__ = ["add_commands"]


def _layers_arg(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _check(args) -> None:
    """Refuse bad fractions before loading anything."""
    from axlab.core.errors import AxlabError
    for flag in ("heads_fraction", "ffn_fraction", "unstructured"):
        v = getattr(args, flag, 0.0) or 0.0
        if not 0.0 <= v < 1.0:
            raise AxlabError(f"--{flag.replace('_', '-')} must be at least 0 and below 1, not {v}.",
                             f"Use e.g. --{flag.replace('_', '-')} 0.3 (the fraction to remove).")
    if getattr(args, "distill_soup", 1) > 1 and not getattr(args, "distill_steps", 0):
        raise AxlabError("--distill-soup averages distilled students, but nothing is distilled.",
                         "Add --distill-steps, e.g. --distill-steps 300 --distill-soup 3.")


def _at_least_one(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1 (e.g. 3)")
    return v


def cmd_prune(args) -> None:
    from axlab.compress import prune
    from axlab.core.errors import AxlabError
    _check(args)
    bundle, splits = load_model_and_data(args)
    model, tok = bundle.model, bundle.tokenizer
    test = splits.test.head(args.limit)
    info: dict = {}
    t0 = time.time()
    out = model
    if args.heads_fraction:
        if args.by == "random":
            plan = prune.random_heads(out, args.heads_fraction, seed=args.prune_seed)
        else:
            from axlab.analysis.importance import head_importance
            imp = head_importance(out, tok, splits.validation.head(args.importance_limit), method=args.by, progress=False)
            plan = prune.heads_by_budget(imp, args.heads_fraction)
        out = prune.prune_heads(out, plan)
        info["heads_removed"] = sum(len(v) for v in plan.values())
    if args.ffn_fraction:
        plan = prune.ffn_by_budget(out, args.ffn_fraction, args.ffn_by, tok,
                                   splits.validation.head(args.importance_limit), scope=args.ffn_scope, progress=False)
        out = prune.prune_ffn(out, plan)
        info["ffn_neurons_removed"] = sum(len(v) for v in plan.values())
    if args.drop_layers:
        out = prune.drop_layers(out, _layers_arg(args.drop_layers))
    if args.vocab:
        out, rep = prune.prune_vocab(out, tok, splits.train.texts, eval_texts=splits.test.texts)
        info["vocab"] = {k: rep[k] for k in ("vocab_size", "kept", "oov_rate")}
    if args.unstructured:
        out = prune.unstructured(out, args.unstructured, args.criterion, args.scope, tokenizer=tok, splits=splits)
        info["unstructured"] = {k: v for k, v in prune.sparsity_report(out).items() if k in ("encoder_sparsity", "note")}
    if out is model:
        raise AxlabError("Nothing to prune.", "Pass e.g. --heads-fraction 0.4, --ffn-fraction 0.3, --drop-layers 5, "
                                              "--vocab or --unstructured 0.5.")
    if args.distill_steps:
        from axlab.compress.distill import distill
        out = distill(out, model, tok, splits.train, steps=args.distill_steps, soup=args.distill_soup,
                      teacher_source="base", progress=False)
        info["distill_steps"] = args.distill_steps
        if args.distill_soup > 1:
            info["distill_soup"] = args.distill_soup
    info["seconds"] = round(time.time() - t0, 1)
    base_m, new_m, compare = measure_against_base(model, out, tok, test, args)
    vid = save_variant(args, splits, list(getattr(out, "axlab_recipe", [])), new_m, base_m)
    emit({"model": args.model, "dataset": splits.name, "test_n": len(test), "baseline": base_m, "pruned": new_m,
          "compare": compare, **info, "recipe_ops": [s["op"] for s in out.axlab_recipe],
          "variant_id": vid, "notes": data_notes(splits)}, args.json)


def cmd_axformer(args) -> None:
    from axlab.compress.axformer import SearchConfig, cached_search
    bundle, splits = load_model_and_data(args)
    cfg = SearchConfig(tolerance=args.tolerance, n_val=args.n_val, time_budget_s=args.time_budget,
                       ffn_groups=args.ffn_groups, topk_values=tuple(args.topk),
                       criterion=args.criterion, significance=args.significance,
                       accuracy_guard=args.accuracy_guard)
    res = cached_search(bundle.model, bundle.tokenizer, splits, config=cfg, hard_attention=not args.no_hard_attention,
                        refresh=args.refresh, progress=False)
    test = splits.test.head(args.limit)
    base_m, new_m, compare = measure_against_base(bundle.model, res.model, bundle.tokenizer, test, args)
    vid = save_variant(args, splits, list(getattr(res.model, "axlab_recipe", res.recipe)), new_m, base_m,
                       notes="AxFormer search")
    emit({"model": args.model, "dataset": splits.name, "search": res.summary(), "recipe": res.recipe,
          "baseline_test": base_m, "axformer_test": new_m, "compare": compare, "variant_id": vid,
          "notes": data_notes(splits) + ["search decisions used validation only; figures are on test"]},
         args.json)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=positive_int, default=None, help="measure on the first N test examples")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--save", metavar="NAME", help="save the variant (recipe + measurements) to the store")


def add_commands(sub) -> None:
    from axlab.compress.prune import FFN_CRITERIA
    p = sub.add_parser("prune", help="structured/unstructured pruning by hand or by budget; measured on test")
    add_model_args(p)
    p.add_argument("--heads-fraction", type=float, default=0.0, help="remove this fraction of heads")
    p.add_argument("--by", default="gradient", help="head importance method (gradient, ablation, captum) or 'random'")
    p.add_argument("--prune-seed", type=int, default=0, help="seed for --by random")
    p.add_argument("--importance-limit", type=int, default=500, help="validation examples used to score")
    p.add_argument("--ffn-fraction", type=float, default=0.0, help="remove this fraction of FFN neurons")
    p.add_argument("--ffn-by", default="magnitude", choices=FFN_CRITERIA)
    p.add_argument("--ffn-scope", default="layer", choices=("layer", "global"))
    p.add_argument("--drop-layers", default="", help="comma-separated layers to skip, e.g. 4,5")
    p.add_argument("--vocab", action="store_true", help="keep only the tokens the training texts use")
    p.add_argument("--unstructured", type=float, default=0.0, help="zero this fraction of encoder weights")
    p.add_argument("--criterion", default="magnitude", choices=("magnitude", "data"))
    p.add_argument("--scope", default="global", choices=("global", "layer"))
    p.add_argument("--distill-steps", type=int, default=0, help="recover with this many distillation steps")
    p.add_argument("--distill-soup", type=_at_least_one, default=1, metavar="K",
                   help="distil K students (seeds 0..K-1) and average their weights (model soup; K times the time)")
    _common(p)
    p.set_defaults(fn=cmd_prune)
    p = sub.add_parser("axformer", help="AxFormer accuracy-driven pruning search (cached); measured on test")
    add_model_args(p)
    p.add_argument("--tolerance", type=float, default=0.0, help="allowed validation-loss increase (absolute)")
    p.add_argument("--no-hard-attention", action="store_true")
    p.add_argument("--n-val", type=int, default=None, help="search on the first N validation examples")
    p.add_argument("--ffn-groups", type=int, default=4)
    p.add_argument("--topk", type=int, nargs="+", default=[8], help="hard-attention k values tried per layer")
    p.add_argument("--criterion", default="loss", choices=("loss", "calibrated_loss"),
                   help="score: validation loss (the paper) or the loss at the best temperature")
    p.add_argument("--significance", type=float, default=1.0,
                   help="keep a change only if the loss drops by more than this many paired standard errors "
                        "(default 1; 0 = the paper's rule, which overfitted validation on the default model)")
    p.add_argument("--accuracy-guard", action="store_true", help="also require validation accuracy not to drop")
    p.add_argument("--time-budget", type=float, default=None, help="stop the search after this many seconds")
    p.add_argument("--refresh", action="store_true", help="ignore a cached result")
    _common(p)
    p.set_defaults(fn=cmd_axformer)

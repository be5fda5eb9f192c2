"""CLI commands for the "look inside" analyses.

    axlab importance default --method gradient --json
    axlab attention default --text "A gorgeous, witty film." [--html view.html]
    axlab head-stats default --limit 500 --json
    axlab attribute default --text "A gorgeous, witty film." --json
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from axlab.cli.common import add_model_args, data_notes, emit, load_bundle, load_splits, positive_int

__all__ = ["add_commands"]


def _matrix(a) -> list[list[float | None]]:
    arr = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    return [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in arr]


def _load(args):
    return load_bundle(args)


def _split(args, bundle):
    """The chosen split, its labels matched to the model's by name."""
    splits = load_splits(args, bundle)
    return splits, splits[args.split].head(args.limit)


def _target(bundle, target: str | None) -> int | None:
    """--target as a class index or one of the model's label names."""
    if target is None:
        return None
    names = list(bundle.labels)
    if target in names:
        return names.index(target)
    folded = [n.casefold() for n in names]
    if target.casefold() in folded and folded.count(target.casefold()) == 1:
        return folded.index(target.casefold())
    if target.lstrip("-").isdigit() and 0 <= int(target) < len(names):
        return int(target)
    from axlab.core.errors import AxlabError
    raise AxlabError(f"--target {target!r} is not one of the model's classes.",
                     "Use a label name or an index: " + ", ".join(f"{i} = {n}" for i, n in enumerate(names)) + ".")


def cmd_importance(args) -> None:
    from axlab.analysis.importance import METHODS, agreement, head_ablation, head_importance, rank_heads
    bundle = _load(args)
    splits, split = _split(args, bundle)
    methods = list(METHODS) if args.method == "all" else [args.method]
    out: dict = {"model": args.model, "dataset": splits.name, "split": args.split, "n": len(split), "methods": {},
                 "notes": data_notes(splits)}
    imps = {}
    for method in methods:
        kw = {"n_steps": args.n_steps} if method == "captum" else {}
        t0 = time.perf_counter()
        if method == "ablation":
            ablate = head_ablation
            if args.ray:
                from axlab.sweep.ablation import ray_head_ablation as ablate
            ab = ablate(bundle.model, bundle.tokenizer, split, cache_results=not args.no_cache)
            imp = ab.loss_increase
        else:
            imp = head_importance(bundle.model, bundle.tokenizer, split, method=method, progress=None,
                                  cache_results=not args.no_cache, **kw)
        seconds = time.perf_counter() - t0
        imps[method] = imp
        ranked = rank_heads(imp).head(args.top)
        entry = {"seconds": round(seconds, 2), "importance": _matrix(imp),
                 "top": [{"layer": int(r.layer), "head": int(r.head), "importance": float(r.importance)}
                         for r in ranked.itertuples()]}
        if method == "ablation":
            entry.update(base_loss=ab.base_loss, base_accuracy=ab.base_accuracy, accuracy_drop=_matrix(ab.accuracy_drop))
        out["methods"][method] = entry
    if len(imps) > 1:
        out["spearman"] = agreement(imps).round(4).to_dict()
    emit(out, args.json)


def _one_input(args, bundle):
    """--text for a text model, --image (a file) for an image model; a clear error otherwise."""
    from axlab.core.errors import AxlabError
    image = getattr(args, "image", None)
    if bundle.modality == "image":
        if not image:
            raise AxlabError(f"'{args.model}' is an image model: give an image file with --image, not --text.",
                             "For example --image digit.png (PNG, JPEG, ...).")
        from pathlib import Path

        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(Path(image).expanduser()) as im:
                return np.asarray(im.convert("L" if im.mode in ("L", "1", "I;16", "I") else "RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as e:
            raise AxlabError(f"Cannot read the image '{image}': {e}.", "Give a PNG or JPEG file.") from None
    if image or args.text is None:
        raise AxlabError(f"'{args.model}' is a text model: give a sentence with --text, not --image.",
                         "For example --text \"a quiet, well acted film\".")
    return args.text


def cmd_attention(args) -> None:
    from axlab.analysis.attention_maps import attention_for, rollout
    bundle = _load(args)
    res = attention_for(bundle.model, bundle.tokenizer, _one_input(args, bundle))
    roll = rollout(res)
    if bundle.modality == "image":
        from axlab.analysis.attention_maps import rollout_map
        out = {"model": args.model, "grid": list(res.grid), "n_layers": res.n_layers, "n_heads": res.n_heads,
               "rollout_cls_patches": np.round(rollout_map(res, matrix=roll), 4).tolist()}
    else:
        out = {"model": args.model, "tokens": res.tokens[0], "n_layers": res.n_layers, "n_heads": res.n_heads,
               "rollout_cls": [round(float(v), 4) for v in roll[0]]}
    if args.layer is not None and args.head is not None:
        out["head"] = {"layer": args.layer, "head": args.head,
                       "weights": np.round(res.head(args.layer, args.head).astype(float), 4).tolist()}
    if args.html:
        from axlab.analysis import viz
        fig = (viz.head_heatmap(res, args.layer, args.head) if args.layer is not None and args.head is not None
               else viz.model_view(res))
        out["html"] = str(viz.save_html(fig, args.html))
    emit(out, args.json)


def cmd_head_stats(args) -> None:
    from axlab.analysis.head_stats import head_statistics
    bundle = _load(args)
    splits, split = _split(args, bundle)
    t0 = time.perf_counter()
    stats = head_statistics(bundle.model, bundle.tokenizer, split, cache_results=not args.no_cache)
    out = {"model": args.model, "dataset": splits.name, "split": args.split, "n": len(split),
           "seconds": round(time.perf_counter() - t0, 2), **{k: _matrix(v) for k, v in stats.items()}}
    emit(out, args.json)


def cmd_attribute(args) -> None:
    from axlab.analysis.attributions import token_attributions
    bundle = _load(args)
    a = token_attributions(bundle.model, bundle.tokenizer, _one_input(args, bundle),
                           target=_target(bundle, args.target),
                           n_steps=args.n_steps,
                           method=args.method)
    emit({"model": args.model, **a.to_dict()}, args.json)


def _data_args(p: argparse.ArgumentParser, limit: int | None) -> None:
    p.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p.add_argument("--limit", type=positive_int, default=limit, help="first N examples of the split")
    p.add_argument("--no-cache", action="store_true", help="recompute even if a cached result exists")


def add_commands(sub) -> None:
    p = sub.add_parser("importance", help="head importance over a split (gradient, ablation, captum)")
    add_model_args(p)
    _data_args(p, 1000)
    p.add_argument("--method", default="gradient", choices=["gradient", "ablation", "captum", "all"])
    p.add_argument("--n-steps", type=int, default=8, help="integration steps for --method captum")
    p.add_argument("--top", type=int, default=10, help="how many top heads to list")
    p.add_argument("--ray", action="store_true", help="ablation: one Ray task per share of the heads (local, or RAY_ADDRESS)")
    p.set_defaults(fn=cmd_importance)

    p = sub.add_parser("attention", help="attention maps and rollout for one sentence (or one image)")
    add_model_args(p, dataset=False)
    p.add_argument("--text", help="the sentence (text models)")
    p.add_argument("--image", help="an image file (image models)")
    p.add_argument("--layer", type=int)
    p.add_argument("--head", type=int)
    p.add_argument("--html", help="write a self-contained HTML figure (model view, or the chosen head)")
    p.set_defaults(fn=cmd_attention)

    p = sub.add_parser("head-stats", help="per-head entropy, attention distance, [CLS]/[SEP]/punctuation share")
    add_model_args(p)
    _data_args(p, 1000)
    p.set_defaults(fn=cmd_head_stats)

    p = sub.add_parser("attribute", help="token attributions (integrated gradients) for one sentence, or pixel "
                                         "saliency for one image")
    add_model_args(p, dataset=False)
    p.add_argument("--text", help="the sentence (text models)")
    p.add_argument("--image", help="an image file (image models)")
    p.add_argument("--target", help="class to explain, by label name or index (default: the predicted one)")
    p.add_argument("--n-steps", type=int, default=50)
    p.add_argument("--method", default="auto", choices=["auto", "integrated_gradients", "occlusion"])
    p.set_defaults(fn=cmd_attribute)

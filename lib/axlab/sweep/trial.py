"""Trials: planned on the driver (concrete recipes), run anywhere (one function, no state).

:func:`plan` turns a spec's trials into concrete work: the head-pruning and FFN-pruning
steps are decided once on the driver from the base's importance (computed once per
method and cached on disk), so a trial's recipe is the same on every worker and in
every run. The only search that runs inside a trial is AxFormer (the tolerance is the
trial's choice; the kept removals land in the stored recipe).

:func:`run_trial` is what a worker runs, on Ray or in this process: rebuild the variant
from the recipe on the base, measure validation (used to choose), then test (reported:
accuracy, latency at batch 1 and 32, size), with a fixed number of torch threads.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import torch

from axlab.analysis.importance import head_importance
from axlab.compress import apply_recipe, axformer
from axlab.compress.prune import ffn_by_budget, ffn_importance, heads_by_budget, random_heads
from axlab.core.measure import evaluate, measure
from axlab.core.recipe import Step
from axlab.sweep.spec import SweepSpec, trial_key, trial_label

__all__ = ["plan", "run_trial", "val_split", "test_split"]

log = logging.getLogger(__name__)


def val_split(splits, settings: dict):
    return splits.validation.head(settings.get("n_val"))


def test_split(splits, settings: dict):
    return splits.test.head(settings.get("n_test"))


def _json(obj):
    """Canonical JSON form (int keys become strings, as they will in the store)."""
    return json.loads(json.dumps(obj))


def plan(spec: SweepSpec, bundle, splits, progress=False, ablation=None) -> list[dict]:
    """The spec's trials as work items: ``{key, index, label, choices, pre, search, post}``.

    ``pre`` (pruning) and ``post`` (distillation, quantization) are concrete recipe steps;
    ``search`` is an AxFormer tolerance or None. Head importance runs once per method
    (cached on disk); ``ablation(model, tokenizer, split)`` replaces the sequential ablation
    importance (the Ray runner hands in :func:`axlab.sweep.ablation.ray_head_ablation`).
    """
    settings = spec.trial_settings()
    model, tok = bundle.model, bundle.tokenizer
    val = val_split(splits, settings)
    importance: dict = {}
    ffn_scores = None
    items = []
    for index, choices in enumerate(spec.trials()):
        pre, post = [], []
        if "head_fraction" in choices:
            method, frac = choices["importance"], choices["head_fraction"]
            if method == "random":
                heads = random_heads(model, frac, seed=spec.sample_seed)
            else:
                if method not in importance and method == "ablation" and ablation is not None:
                    importance[method] = ablation(model, tok, val, progress=progress)
                elif method not in importance:
                    importance[method] = head_importance(model, tok, val, method=method, progress=progress)
                heads = heads_by_budget(importance[method], frac)
            pre.append(Step("prune_heads", heads=heads))
        if "ffn_fraction" in choices:
            if ffn_scores is None:
                crit = settings["ffn_criterion"]
                ffn_scores = ffn_importance(model, crit, tok, val if crit != "magnitude" else None,
                                            progress=progress)
            pre.append(Step("prune_ffn", neurons=ffn_by_budget(model, choices["ffn_fraction"], scores=ffn_scores)))
        if choices.get("distill"):
            post.append(Step("distill", teacher="base", steps=settings["distill_steps"], seed=0))
        q = choices.get("quantizer")
        if q == "int8":
            post.append(Step("quantize_int8"))
        elif q == "rtn":
            post.append(Step("quantize_rtn", bits=choices["bits"]))
        elif q == "gpfq":
            post.append(Step("quantize_gpfq", bits=choices["bits"], n_calibration=choices["n_calibration"], seed=0))
        items.append({"key": trial_key(settings, choices), "index": index, "label": trial_label(choices),
                      "choices": choices, "pre": _json(pre), "search": choices.get("axformer_tolerance"),
                      "post": _json(post), "recipe": _json(pre + post)})
    return items


def run_trial(model, tokenizer, splits, trial: dict, settings: dict) -> dict:
    """Rebuild the trial's variant on ``model`` (never modified), measure it on validation and test.

    Returns ``{recipe, measurements, seconds, worker}``; ``measurements`` is the test
    measurement (as every variant's) plus ``validation`` (accuracy, macro-F1, loss, n).
    """
    torch.set_num_threads(int(settings.get("threads") or 1))
    t0 = time.perf_counter()
    val, test = val_split(splits, settings), test_split(splits, settings)
    recipe = list(trial["pre"])
    if trial.get("search") is not None:
        start = apply_recipe(model, recipe, tokenizer=tokenizer, splits=splits, progress=False)
        cfg = axformer.SearchConfig(tolerance=float(trial["search"]), n_val=settings.get("n_val"), ffn_groups=4)
        recipe += _json(axformer.search(start, tokenizer, val, config=cfg, progress=False).recipe)
    recipe += list(trial["post"])
    variant = apply_recipe(model, recipe, tokenizer=tokenizer, splits=splits, progress=False)
    t1 = time.perf_counter()
    v = evaluate(variant, tokenizer, val, progress=False)
    t2 = time.perf_counter()
    m = measure(variant, tokenizer, test, split_name="test", latency_runs=(int(settings["latency_runs"]), 3),
                threads=int(settings.get("threads") or 1), progress=False).to_dict()
    t3 = time.perf_counter()
    m["validation"] = {k: v[k] for k in ("accuracy", "macro_f1", "loss", "n")}
    return {"recipe": recipe, "measurements": m, "worker": f"{socket.gethostname()}:{os.getpid()}",
            "seconds": {"build": t1 - t0, "validate": t2 - t1, "test": t3 - t2, "total": t3 - t0}}

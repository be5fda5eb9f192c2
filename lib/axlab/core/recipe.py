"""Recipes: a JSON list of steps, and the table of transforms that replay them.

A *step* is ``{"op": name, "params": {...}}``. Transforms register themselves with
:func:`register_transform`; a registered function receives a model it may modify in
place (``apply_recipe`` hands it a private copy) and a :class:`RecipeContext` giving the
tokenizer and data (for calibration). Replaying a recipe on the base rebuilds the
variant: the store keeps recipes and measurements, never pickled models.

The table lives here, at the bottom of the package, so every layer can name steps; the
built-in transforms (``axlab.compress``) fill it when they are imported. Use
``axlab.compress.apply_recipe`` (or ``axlab.apply_recipe``), which guarantees that.

Public transforms (``axlab.compress.prune.prune_heads`` ...) copy their input first, so
they never mutate it; ``apply_recipe`` copies the base once.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from typing import Callable

from torch import nn

from axlab.core.errors import AxlabError

__all__ = ["Step", "RecipeContext", "register_transform", "TRANSFORMS", "apply_step", "apply_recipe",
           "validate_recipe", "describe_step", "describe_recipe", "BUILTIN_OPS"]

log = logging.getLogger(__name__)


@dataclass
class RecipeContext:
    """What a transform may need besides the model: tokenizer, data splits, label names."""

    tokenizer: object = None
    splits: object = None           # axlab.data.Splits or None
    progress: object = None
    base: object = None             # the unmodified base model (e.g. the teacher for distillation)

    def require_splits(self, op: str):
        if self.splits is None:
            raise AxlabError(f"Step '{op}' needs data (calibration or training examples).",
                             "Pass the dataset's splits in the RecipeContext (apply_recipe(..., splits=...)).")
        return self.splits


TransformFn = Callable[[nn.Module, RecipeContext], nn.Module]
TRANSFORMS: dict[str, Callable] = {}
# The names of the ops axlab.compress registers, so a recipe can be checked (e.g. by the
# store) without importing the transforms; tests/test_variants.py keeps it equal to them.
BUILTIN_OPS = frozenset({"prune_heads", "prune_ffn", "drop_layers", "prune_vocab", "unstructured", "hard_attention",
                         "self_distill",
                         "distill", "quantize_int8", "quantize_rtn", "quantize_gpfq", "quantize_gptq",
                         "quantize_rest"})


def register_transform(op: str):
    """Decorator: ``@register_transform("prune_heads") def f(model, ctx, **params) -> model``."""
    def deco(fn):
        TRANSFORMS[op] = fn
        return fn
    return deco


def Step(op: str, **params) -> dict:  # noqa: N802  (reads like a constructor)
    return {"op": op, "params": params}


def validate_recipe(recipe: list[dict], *, check_ops: bool = True) -> list[dict]:
    """Raise AxlabError unless ``recipe`` is a JSON list of known steps; return it.

    Known: the built-in ops (:data:`BUILTIN_OPS`) and any op registered in this process.
    ``check_ops=False`` checks the structure only.
    """
    if not isinstance(recipe, list):
        raise AxlabError("A recipe must be a list of steps.", "Use e.g. [{'op': 'prune_heads', 'params': {...}}].")
    for i, step in enumerate(recipe):
        if not isinstance(step, dict) or "op" not in step:
            raise AxlabError(f"Step {i} is not a {{'op': ..., 'params': ...}} mapping.", "Fix the recipe JSON.")
        if not isinstance(step.get("params", {}), dict):
            raise AxlabError(f"Step {i}'s params are not a mapping.", "Fix the recipe JSON.")
        if check_ops and step["op"] not in TRANSFORMS and step["op"] not in BUILTIN_OPS:
            raise AxlabError(f"Step {i} has unknown op '{step['op']}'.",
                             f"Known ops: {', '.join(sorted(BUILTIN_OPS | set(TRANSFORMS)))}.")
    json.dumps(recipe)  # must be JSON-serialisable
    return recipe


def apply_step(model: nn.Module, step: dict, ctx: RecipeContext) -> nn.Module:
    """Apply one step to ``model`` in place (the model must be private to the caller)."""
    fn = TRANSFORMS.get(step["op"])
    if fn is None:
        validate_recipe([step])       # raises the clear unknown-op error
        raise AxlabError(f"The op '{step['op']}' is not registered in this process.",
                         "Import axlab.compress first (it registers the built-in transforms), or use "
                         "axlab.compress.apply_recipe.")
    out = fn(model, ctx, **step.get("params", {}))
    return out if out is not None else model


def apply_recipe(base: nn.Module, recipe: list[dict], *, tokenizer=None, splits=None, progress=None) -> nn.Module:
    """A new model: the base with every step of ``recipe`` applied. The base is not touched."""
    validate_recipe(recipe)
    model = copy.deepcopy(base)
    ctx = RecipeContext(tokenizer=tokenizer, splits=splits, progress=progress, base=base)
    for step in recipe:
        model = apply_step(model, step, ctx)
    model.eval()
    model.axlab_recipe = list(recipe)
    return model


def _count_lists(mapping) -> int:
    return sum(len(v) for v in (mapping or {}).values())


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def describe_step(step: dict) -> str:
    """One step in words, e.g. ``remove 29 heads in 6 layers`` or ``GPFQ 4-bit weights``."""
    op, p = step.get("op", "?"), step.get("params", {}) or {}
    if op == "prune_heads":
        heads = p.get("heads") or {}
        return f"remove {_n(_count_lists(heads), 'head')} in {_n(sum(1 for v in heads.values() if v), 'layer')}"
    if op == "prune_ffn":
        neurons = p.get("neurons") or {}
        return (f"remove {_n(_count_lists(neurons), 'FFN neuron')} in "
                f"{_n(sum(1 for v in neurons.values() if v), 'layer')}")
    if op == "drop_layers":
        return f"drop layers {sorted(p.get('layers') or [])}"
    if op == "prune_vocab":
        return "keep only the vocabulary the task uses"
    if op == "unstructured":
        return f"unstructured sparsity {float(p.get('sparsity', 0)):.0%} ({p.get('criterion', 'magnitude')})"
    if op == "hard_attention":
        topk = {k: v for k, v in (p.get("topk") or {}).items() if v}
        return "top-k hard attention in " + (", ".join(f"layer {k} (k={v})" for k, v in topk.items()) or "no layer")
    if op == "distill":
        k = p.get("soup", 1)
        return f"distill from the base ({p.get('steps', '?')} steps" + (f", soup of {k} students)" if k > 1 else ")")
    if op == "self_distill":
        how = f"{p.get('steps', '?')} steps"
        if not p.get("alpha", 1.0) and not p.get("exit_ce", 0.0):
            return f"fine-tune on the labels ({how})"
        return f"self-distil the intermediate blocks toward the last ({how})"
    if op == "quantize_int8":
        return "int8 weights and activations" + (" + int8 embeddings" if p.get("embeddings") else "")
    if op == "quantize_rest":
        emb, pos = p.get("embedding_bits", 8), p.get("position_bits", 8)
        parts = (["int8 for the remaining fp32 layers"] if p.get("linears", True) else []) + (
            [f"{emb}-bit word table"] if emb else []) + ([f"{pos}-bit position table"] if pos else [])
        return "pack the rest: " + (", ".join(parts) or "nothing")
    if op in ("quantize_rtn", "quantize_gpfq", "quantize_gptq"):
        name = {"quantize_rtn": "RTN", "quantize_gpfq": "GPFQ", "quantize_gptq": "GPTQ"}[op]
        bits = f"{p['avg_bits']:g}-bit average" if p.get("avg_bits") is not None else f"{p.get('bits', 4)}-bit"
        group = f", groups of {p['group_size']}" if p.get("group_size") else ""
        return f"{name} {bits} weights{group}" + (" + quantized embeddings" if p.get("embeddings") else "")
    return op.replace("_", " ")


def describe_recipe(recipe: list[dict]) -> str:
    """A recipe in one line of words (``the base model`` for an empty one)."""
    return "; ".join(describe_step(s) for s in recipe) if recipe else "the base model"

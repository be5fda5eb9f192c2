"""Variants: a base model source + a recipe (JSON list of steps) + measurements.

A *step* is ``{"op": name, "params": {...}}``. Transforms register themselves with
:func:`register_transform`; a registered function receives a model it may modify in
place (``apply_recipe`` hands it a private copy) and a :class:`RecipeContext` giving the
tokenizer and data (for calibration). Replaying a recipe on the base rebuilds the
variant: the store keeps recipes and measurements, never pickled models.

Public transforms (``axlab.prune.prune_heads`` ...) copy their input first, so they
never mutate it; ``apply_recipe`` copies the base once.
"""

from __future__ import annotations

import copy
import json
import logging
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from .errors import AxlabError
from .paths import data_dir

__all__ = ["Step", "RecipeContext", "register_transform", "TRANSFORMS", "apply_step", "apply_recipe", "Variant",
           "VariantStore", "load_variant_folder", "validate_recipe"]

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


def register_transform(op: str):
    """Decorator: ``@register_transform("prune_heads") def f(model, ctx, **params) -> model``."""
    def deco(fn):
        TRANSFORMS[op] = fn
        return fn
    return deco


def _ensure_registered() -> None:
    # importing these modules registers their transforms
    import importlib
    for mod in ("axlab.prune", "axlab.quantize", "axlab.hard_attention", "axlab.distill", "axlab.axformer"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def Step(op: str, **params) -> dict:  # noqa: N802  (reads like a constructor)
    return {"op": op, "params": params}


def validate_recipe(recipe: list[dict]) -> list[dict]:
    _ensure_registered()
    if not isinstance(recipe, list):
        raise AxlabError("A recipe must be a list of steps.", "Use e.g. [{'op': 'prune_heads', 'params': {...}}].")
    for i, step in enumerate(recipe):
        if not isinstance(step, dict) or "op" not in step:
            raise AxlabError(f"Step {i} is not a {{'op': ..., 'params': ...}} mapping.", "Fix the recipe JSON.")
        if step["op"] not in TRANSFORMS:
            raise AxlabError(f"Step {i} has unknown op '{step['op']}'.", f"Known ops: {', '.join(sorted(TRANSFORMS))}.")
    json.dumps(recipe)  # must be JSON-serialisable
    return recipe


def apply_step(model: nn.Module, step: dict, ctx: RecipeContext) -> nn.Module:
    """Apply one step to ``model`` in place (the model must be private to the caller)."""
    _ensure_registered()
    fn = TRANSFORMS[step["op"]]
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


@dataclass
class Variant:
    name: str
    base: str                                  # model source ("default", hub id, folder)
    dataset: str
    recipe: list = field(default_factory=list)
    measurements: dict = field(default_factory=dict)
    hardware: dict = field(default_factory=dict)
    workspace: str = "default"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created: float = field(default_factory=time.time)
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class VariantStore:
    """Variants in SQLite under the user's data directory; survives restarts.

    Rows carry a ``workspace`` so several app sessions can keep separate lists in one file
    (or share one on purpose by using the same workspace name).
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else data_dir() / "variants.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.execute("""CREATE TABLE IF NOT EXISTS variants (
                id TEXT PRIMARY KEY, workspace TEXT, name TEXT, base TEXT, dataset TEXT, recipe TEXT,
                measurements TEXT, hardware TEXT, created REAL, notes TEXT)""")

    def _conn(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30)
        c.execute("PRAGMA journal_mode=WAL")
        return c

    def add(self, v: Variant) -> Variant:
        validate_recipe(v.recipe)
        with self._conn() as c:
            c.execute("INSERT OR REPLACE INTO variants VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (v.id, v.workspace, v.name, v.base, v.dataset, json.dumps(v.recipe), json.dumps(v.measurements),
                       json.dumps(v.hardware), v.created, v.notes))
        return v

    def update_measurements(self, vid: str, measurements: dict) -> None:
        v = self.get(vid)
        merged = {**v.measurements, **measurements}
        with self._conn() as c:
            c.execute("UPDATE variants SET measurements=? WHERE id=?", (json.dumps(merged), vid))

    @staticmethod
    def _row(r) -> Variant:
        return Variant(id=r[0], workspace=r[1], name=r[2], base=r[3], dataset=r[4], recipe=json.loads(r[5]),
                       measurements=json.loads(r[6]), hardware=json.loads(r[7]), created=r[8], notes=r[9] or "")

    def get(self, vid: str) -> Variant:
        with self._conn() as c:
            r = c.execute("SELECT * FROM variants WHERE id=?", (vid,)).fetchone()
        if r is None:
            raise AxlabError(f"No variant with id '{vid}'.", "List variants with `axlab variants`.")
        return self._row(r)

    def list(self, workspace: str | None = "default", base: str | None = None, dataset: str | None = None) -> list[Variant]:
        q, args = "SELECT * FROM variants WHERE 1=1", []
        for col, val in (("workspace", workspace), ("base", base), ("dataset", dataset)):
            if val is not None:
                q += f" AND {col}=?"
                args.append(val)
        with self._conn() as c:
            rows = c.execute(q + " ORDER BY created", args).fetchall()
        return [self._row(r) for r in rows]

    def delete(self, vid: str) -> None:
        with self._conn() as c:
            c.execute("DELETE FROM variants WHERE id=?", (vid,))


def load_variant_folder(folder):
    """Load an exported variant folder (implemented by axlab.export)."""
    from .export import load_variant
    return load_variant(folder)

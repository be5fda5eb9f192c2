"""The variant store: variants (base source + recipe + measurements) in SQLite.

A variant is never a pickled model: replaying its recipe on the base rebuilds it
(:func:`axlab.compress.apply_recipe`). The store survives restarts and is shared by the
workbench, the CLI and notebooks.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from axlab.core.errors import AxlabError
from axlab.core.paths import data_dir
from axlab.core.recipe import validate_recipe

__all__ = ["Variant", "VariantStore"]

log = logging.getLogger(__name__)


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

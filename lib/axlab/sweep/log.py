"""The sweep log: each sweep's spec and each trial's status, next to the variant store.

Two tables in the variant store's SQLite file: ``sweeps`` (id, workspace, spec JSON) and
``sweep_trials`` (one row per trial: status ``ok`` / ``failed``, the error, the variant id
of a measured trial). Measured trials are ordinary variants in the variant store (tagged
with the sweep id); the log adds what a variant cannot hold (failures, the spec to
rerun). Only the driver of a sweep writes here; any reader (the Sweep page) may poll it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

__all__ = ["SweepLog"]


class SweepLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self._conn() as c:
            c.execute("""CREATE TABLE IF NOT EXISTS sweeps (
                id TEXT, workspace TEXT, name TEXT, spec TEXT, created REAL, updated REAL, state TEXT,
                PRIMARY KEY (id, workspace))""")
            c.execute("""CREATE TABLE IF NOT EXISTS sweep_trials (
                sweep_id TEXT, workspace TEXT, key TEXT, idx INTEGER, label TEXT, choices TEXT, status TEXT,
                recipe TEXT, error TEXT, variant_id TEXT, seconds TEXT, worker TEXT, finished REAL,
                PRIMARY KEY (sweep_id, workspace, key))""")

    def _conn(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30)
        c.execute("PRAGMA journal_mode=WAL")
        return c

    # --------------------------------------------------------------------- sweeps

    def begin(self, sweep_id: str, workspace: str, name: str, spec: dict) -> None:
        now = time.time()
        with self._conn() as c:
            c.execute("INSERT OR IGNORE INTO sweeps VALUES (?,?,?,?,?,?,?)",
                      (sweep_id, workspace, name, json.dumps(spec), now, now, "running"))
            c.execute("UPDATE sweeps SET state='running', updated=?, name=? WHERE id=? AND workspace=?",
                      (now, name, sweep_id, workspace))

    def set_state(self, sweep_id: str, workspace: str, state: str) -> None:
        with self._conn() as c:
            c.execute("UPDATE sweeps SET state=?, updated=? WHERE id=? AND workspace=?",
                      (state, time.time(), sweep_id, workspace))

    def sweeps(self, workspace: str) -> list[dict]:
        with self._conn() as c:
            rows = c.execute("SELECT id, name, spec, created, updated, state FROM sweeps WHERE workspace=? "
                             "ORDER BY updated DESC", (workspace,)).fetchall()
        return [{"id": r[0], "name": r[1], "spec": json.loads(r[2]), "created": r[3], "updated": r[4],
                 "state": r[5]} for r in rows]

    # --------------------------------------------------------------------- trials

    def record(self, sweep_id: str, workspace: str, trial: dict, status: str, *, recipe=None, error: str = "",
               variant_id: str = "", seconds: dict | None = None, worker: str = "") -> None:
        with self._conn() as c:
            c.execute("INSERT OR REPLACE INTO sweep_trials VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                      (sweep_id, workspace, trial["key"], trial["index"], trial["label"], json.dumps(trial["choices"]),
                       status, json.dumps(recipe if recipe is not None else trial.get("recipe", [])), error,
                       variant_id, json.dumps(seconds or {}), worker, time.time()))

    def trials(self, sweep_id: str, workspace: str) -> list[dict]:
        with self._conn() as c:
            rows = c.execute("SELECT key, idx, label, choices, status, recipe, error, variant_id, seconds, worker, "
                             "finished FROM sweep_trials WHERE sweep_id=? AND workspace=? ORDER BY idx",
                             (sweep_id, workspace)).fetchall()
        return [{"key": r[0], "index": r[1], "label": r[2], "choices": json.loads(r[3]), "status": r[4],
                 "recipe": json.loads(r[5]), "error": r[6], "variant_id": r[7], "seconds": json.loads(r[8]),
                 "worker": r[9], "finished": r[10]} for r in rows]

"""The Pareto front over several objectives, and the point chosen on validation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from axlab.sweep.spec import OBJECTIVES

__all__ = ["pareto_mask", "choose"]


def _signed(df: pd.DataFrame, objectives: list[str]) -> np.ndarray:
    """(rows, objectives), every column turned into 'smaller is better'."""
    cols = []
    for name in objectives:
        col, direction = OBJECTIVES[name]
        x = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float) if col in df else np.full(len(df), np.nan)
        cols.append(-x if direction == "max" else x)
    return np.stack(cols, axis=1) if cols else np.zeros((len(df), 0))


def pareto_mask(df: pd.DataFrame, objectives: list[str]) -> np.ndarray:
    """True for rows no other row dominates (no worse on every objective, better on one).

    Rows with a missing objective are never on the front.
    """
    x = _signed(df, objectives)
    ok = ~np.isnan(x).any(axis=1)
    front = np.zeros(len(df), dtype=bool)
    for i in np.flatnonzero(ok):
        others = x[ok]
        dominated = (others <= x[i]).all(axis=1) & (others < x[i]).any(axis=1)
        front[i] = not dominated.any()
    return front


def choose(df: pd.DataFrame, objectives: list[str], base_accuracy: float | None, max_drop: float):
    """Index of the chosen row, decided on validation only (never test).

    Among front rows whose validation accuracy is within ``max_drop`` of the base's, the
    one best on the cost objectives, in their order (e.g. latency, then size). Without
    such a row: the most accurate on validation. None when no row was measured.
    """
    if df.empty or "val_accuracy" not in df:
        return None
    acc = pd.to_numeric(df["val_accuracy"], errors="coerce")
    front = pd.Series(pareto_mask(df, objectives), index=df.index) & acc.notna()
    if not front.any():
        return None
    cand = df[front]
    if base_accuracy is not None:
        within = cand[acc[front] >= base_accuracy - max_drop - 1e-12]
        costs = [OBJECTIVES[o][0] for o in objectives if OBJECTIVES[o][1] == "min" and OBJECTIVES[o][0] in df]
        if len(within) and costs:
            return within.sort_values(costs + ["val_accuracy"], ascending=[True] * len(costs) + [False]).index[0]
    return acc[front].idxmax()

"""The Pareto front over several objectives, and the point chosen on validation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from axlab.sweep.spec import OBJECTIVES

__all__ = ["pareto_mask", "choose", "front_figure"]


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


def front_figure(df: pd.DataFrame, x: str = "latency_b1_ms", y: str = "val_accuracy", title: str | None = None):
    """The trials as a plotly scatter: ``y`` against ``x``, colour = size (MB); filled markers are on
    the Pareto front (over all objectives), the chosen point is a star, the base a diamond."""
    import plotly.graph_objects as go

    names = {"latency_b1_ms": "latency, batch 1 (ms, median)", "val_accuracy": "validation accuracy",
             "accuracy": "test accuracy", "size_mb": "size (MB)", "latency_b32_ms": "latency, batch 32 (ms)"}
    fig = go.Figure()
    ok = df[(df.status == "ok") & df[x].notna() & df[y].notna()] if len(df) else df
    if ok.empty:
        fig.update_layout(title=title or "no trial measured yet", template="plotly_white")
        return fig
    front = ok[ok.pareto].sort_values(x)
    if len(front):
        fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines", line=dict(color="#999", dash="dash", shape="hv"),
                                 name="Pareto front", hoverinfo="skip"))
    symbol = np.where(ok.chosen, "star", np.where(ok.label == "base", "diamond",
                                                  np.where(ok.pareto, "circle", "circle-open")))
    fig.add_trace(go.Scatter(
        x=ok[x], y=ok[y], mode="markers+text", text=ok.label, textposition="top center", name="trials",
        marker=dict(size=np.where(ok.chosen, 20, 12), symbol=symbol, color=ok.size_mb, colorscale="Viridis",
                    showscale=True, colorbar=dict(title="MB"), line=dict(width=1.5, color="#333")),
        customdata=np.stack([ok.recipe, ok.accuracy.round(4), ok.size_mb.round(1)], axis=-1),
        hovertemplate="<b>%{text}</b><br>" + names.get(y, y) + ": %{y:.4f}<br>" + names.get(x, x)
                      + ": %{x:.3g}<br>test accuracy: %{customdata[1]}<br>size: %{customdata[2]} MB"
                      "<br>%{customdata[0]}<extra></extra>"))
    short = {"latency_b1_ms": "latency b1", "val_accuracy": "validation accuracy", "size_mb": "size",
             "accuracy": "test accuracy", "latency_b32_ms": "latency b32"}
    fig.update_layout(title=title or f"{short.get(y, y)} vs {short.get(x, x)} ({int(ok.pareto.sum())} on the front)",
                      xaxis_title=names.get(x, x), yaxis_title=names.get(y, y), template="plotly_white",
                      showlegend=False, margin=dict(l=60, r=20, t=60, b=50))
    return fig

"""Compare variants: one table, ratios to the base, the Pareto front, trade-off figures.

Used by the app's Compare page, the report and the benchmark. A *variant* here is an
``axlab.variants.Variant`` or a plain dict with the same fields (``name``, ``recipe``,
``measurements``, optionally ``id``, ``base``).

Each variant gives one row per runtime it was measured on: ``pytorch`` from its
measurements, ``onnxruntime`` / ``onnxruntime-int8`` from ``measurements["onnx"]`` /
``measurements["onnx_int8"]`` (written by the export). An fp32 ONNX row without its own
accuracy inherits the PyTorch accuracy: the export checked that its logits match to 1e-4.

Ratios compare every row to the *base row*: the PyTorch row of the variant with an
empty recipe (or the one named by ``base=``). ``speedup`` = base latency / latency,
``compression`` = base size / size, ``accuracy_delta`` = accuracy - base accuracy.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

__all__ = ["RUNTIMES", "COLUMNS", "LABELS", "as_record", "variants_table", "pareto_front", "tradeoff_figure",
           "figures", "display_table", "confusion_figure", "per_class_table"]

RUNTIMES = {"pytorch": None, "onnxruntime": "onnx", "onnxruntime-int8": "onnx_int8"}
COLUMNS = ["name", "runtime", "accuracy", "macro_f1", "latency_b1_ms", "latency_b32_ms", "size_mb", "size_bytes",
           "params", "accuracy_delta", "speedup_b1", "speedup_b32", "compression", "is_base", "steps", "id", "n",
           "variant", "recipe", "speedup_b1_range", "latency_noise"]
LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "latency_b1_ms": "latency, batch 1 (ms, median)",
          "latency_b32_ms": "latency, batch 32 (ms, median)", "size_mb": "size (MB)",
          "size_bytes": "size (bytes)", "params": "parameters",
          "accuracy_delta": "accuracy - base", "speedup_b1": "speed-up b1 (x)", "speedup_b32": "speed-up b32 (x)",
          "compression": "compression (x)", "speedup_b1_range": "speed-up b1 range (x)",
          "latency_noise": "latency vs base"}


def as_record(v) -> dict:
    """A variant (Variant or dict) as a plain dict with name, id, base, recipe, measurements."""
    d = v.to_dict() if hasattr(v, "to_dict") else dict(v)
    d.setdefault("name", d.get("id") or "variant")
    d.setdefault("id", d["name"])
    d.setdefault("recipe", [])
    d.setdefault("measurements", {})
    return d


def _num(x) -> float:
    try:
        return float(x) if x is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _row(rec: dict, runtime: str, m: dict, fallback: dict) -> dict:
    acc = m.get("accuracy", fallback.get("accuracy") if runtime == "onnxruntime" else None)
    f1 = m.get("macro_f1", fallback.get("macro_f1") if runtime == "onnxruntime" else None)
    size = _num(m.get("size_bytes"))
    label = rec["name"] if runtime == "pytorch" else f"{rec['name']} [{runtime}]"
    return {"name": label, "variant": rec["name"], "runtime": runtime, "accuracy": _num(acc), "macro_f1": _num(f1),
            "latency_b1_ms": _num(m.get("latency_b1_ms")), "latency_b32_ms": _num(m.get("latency_b32_ms")),
            "size_mb": size / 1e6, "size_bytes": size,
            "params": _num(m.get("params") if runtime == "pytorch" else None),
            "steps": ", ".join(s.get("op", "?") for s in rec["recipe"]) or "(base)",
            "recipe": json.dumps(rec["recipe"]), "id": rec["id"], "n": _num(m.get("n", fallback.get("n"))),
            "is_base": False, "speedup_b1_range": None, "latency_noise": None,
            "_vs": m.get("latency_vs_base") if runtime == "pytorch" else None}


def variants_table(variants, base: str | None = None, runtimes: bool = True) -> pd.DataFrame:
    """One row per variant and runtime, with ratios to the base row. Columns: ``COLUMNS`` + variant, recipe."""
    rows = []
    for v in variants:
        rec = as_record(v)
        m = rec["measurements"] or {}
        rows.append(_row(rec, "pytorch", m, m))
        if runtimes:
            for runtime, key in RUNTIMES.items():
                if key and isinstance(m.get(key), dict):
                    rows.append(_row(rec, runtime, m[key], m))
    vs = [r.pop("_vs") for r in rows]
    df = pd.DataFrame(rows, columns=COLUMNS)
    if df.empty:
        return df
    torch_rows = df[df.runtime == "pytorch"]
    if base is not None:
        pick = torch_rows[(torch_rows.id == base) | (torch_rows.variant == base)]
    else:
        pick = torch_rows[torch_rows.steps == "(base)"]
    if len(pick):
        b = df.loc[pick.index[0]]
        df.loc[pick.index[0], "is_base"] = True
        df["accuracy_delta"] = df.accuracy - b.accuracy
        df["speedup_b1"] = b.latency_b1_ms / df.latency_b1_ms
        df["speedup_b32"] = b.latency_b32_ms / df.latency_b32_ms
        df["compression"] = b.size_mb / df.size_mb
    # a speed-up measured interleaved with the base (same rounds) replaces the ratio of two separate runs
    for i, v in enumerate(vs):
        if v and v.get("b1"):
            df.loc[i, "speedup_b1"] = v["b1"]["speedup"]
            if v.get("b32"):
                df.loc[i, "speedup_b32"] = v["b32"]["speedup"]
            rng = v["b1"].get("speedup_range")
            df.loc[i, "speedup_b1_range"] = f"{rng[0]:.2f}-{rng[1]:.2f}" if rng else None
            df.loc[i, "latency_noise"] = ("within noise" if v["b1"].get("within_noise")
                                          else "interleaved" if v["b1"].get("within_noise") is False else None)
    df["is_base"] = df["is_base"].astype(bool)
    return df.reset_index(drop=True)


def pareto_front(df: pd.DataFrame, x: str = "latency_b1_ms", y: str = "accuracy", minimize_x: bool = True,
                 maximize_y: bool = True) -> pd.Series:
    """Boolean Series: rows no other row beats (x no worse, y no worse, one strictly better). NaN rows are False."""
    xs = df[x].to_numpy(dtype=float) * (1 if minimize_x else -1)
    ys = df[y].to_numpy(dtype=float) * (1 if maximize_y else -1)
    ok = ~(np.isnan(xs) | np.isnan(ys))
    front = np.zeros(len(df), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok.copy()
        others[i] = False
        dominated = others & (xs <= xs[i]) & (ys >= ys[i]) & ((xs < xs[i]) | (ys > ys[i]))
        front[i] = not dominated.any()
    return pd.Series(front, index=df.index, name="pareto")


_COLORS = {"pytorch": "#1f77b4", "onnxruntime": "#2ca02c", "onnxruntime-int8": "#d62728"}


def tradeoff_figure(df: pd.DataFrame, x: str = "latency_b1_ms", y: str = "accuracy", title: str | None = None):
    """Scatter of ``y`` against ``x`` per runtime, the Pareto front as a step line, the base as a star."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if df.empty or x not in df or y not in df:
        fig.update_layout(title=title or "no measurements yet")
        return fig
    data = df[np.isfinite(df[x].astype(float)) & np.isfinite(df[y].astype(float))]
    front = pareto_front(data, x, y) if len(data) else pd.Series(dtype=bool)
    if front.any():
        f = data[front].sort_values(x)
        fig.add_trace(go.Scatter(x=f[x], y=f[y], mode="lines", line=dict(color="#999", dash="dash", shape="hv"),
                                 name="Pareto front", hoverinfo="skip"))
    for runtime, part in data.groupby("runtime", sort=False):
        on_front = front.reindex(part.index).fillna(False).to_numpy(dtype=bool)
        symbols = np.where(part.is_base.to_numpy(dtype=bool), "star", np.where(on_front, "circle", "circle-open"))
        fig.add_trace(go.Scatter(
            x=part[x], y=part[y], mode="markers+text", text=part.variant, textposition="top center",
            cliponaxis=False,                                    # labels at the plot's edge stay whole
            marker=dict(size=np.where(part.is_base.to_numpy(dtype=bool), 16, 11), symbol=symbols,
                        color=_COLORS.get(runtime, "#7f7f7f"), line=dict(width=1.5)),
            name=runtime, customdata=np.stack([part.steps, part[y].round(4)], axis=-1),
            hovertemplate="<b>%{text}</b><br>" + LABELS.get(x, x) + ": %{x:.3g}<br>" + LABELS.get(y, y)
                          + ": %{customdata[1]}<br>steps: %{customdata[0]}<extra>" + runtime + "</extra>"))
    fig.update_layout(title=title or f"{LABELS.get(y, y)} vs {LABELS.get(x, x)}", xaxis_title=LABELS.get(x, x),
                      yaxis_title=LABELS.get(y, y), template="plotly_white", legend_title="runtime",
                      margin=dict(l=80, r=80, t=70, b=50))
    if len(data):                                                # room for the labels above and beside the points
        for axis, col in (("xaxis", x), ("yaxis", y)):
            vals = pd.to_numeric(data[col], errors="coerce").dropna()
            if len(vals):
                lo, hi = float(vals.min()), float(vals.max())
                pad = (hi - lo) * 0.12 or abs(hi) * 0.05 or 1.0
                fig.update_layout({axis: dict(range=[lo - pad, hi + pad * (1.6 if axis == "yaxis" else 1.0)])})
    return fig


def figures(df: pd.DataFrame) -> dict:
    """The standard trade-off figures: accuracy vs latency (b1, b32) and vs size."""
    return {"accuracy_vs_latency_b1": tradeoff_figure(df, "latency_b1_ms"),
            "accuracy_vs_latency_b32": tradeoff_figure(df, "latency_b32_ms"),
            "accuracy_vs_size": tradeoff_figure(df, "size_mb")}


def display_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table with readable columns and rounding, for display (app, Markdown, HTML)."""
    cols = ["name", "runtime", "accuracy", "macro_f1", "latency_b1_ms", "latency_b32_ms", "size_mb",
            "accuracy_delta", "speedup_b1", "speedup_b1_range", "latency_noise", "speedup_b32", "compression", "steps"]
    out = df[[c for c in cols if c in df]].copy()
    for c, nd in (("accuracy", 4), ("macro_f1", 4), ("accuracy_delta", 4), ("latency_b1_ms", 2),
                  ("latency_b32_ms", 1), ("size_mb", 1), ("speedup_b1", 2), ("speedup_b32", 2), ("compression", 2)):
        if c in out:
            out[c] = out[c].astype(float).round(nd)
    return out.rename(columns={c: LABELS.get(c, c) for c in out.columns})


def per_class_table(measurements: dict) -> pd.DataFrame:
    """Precision / recall / F1 / support per class from a variant's measurements (empty if not measured)."""
    pc = (measurements or {}).get("per_class") or {}
    rows = [{"class": k, **v} for k, v in pc.items()]
    return pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "support", "predicted"])


def confusion_figure(measurements: dict, title: str | None = None):
    """A plotly heatmap of the confusion matrix (rows: true class, columns: predicted; model label order)."""
    import plotly.graph_objects as go

    conf = (measurements or {}).get("confusion")
    names = (measurements or {}).get("labels") or [str(i) for i in range(len(conf or []))]
    fig = go.Figure()
    if not conf:
        fig.update_layout(title=title or "no confusion matrix recorded (measure the variant again)")
        return fig
    z = np.asarray(conf, dtype=float)
    share = z / np.maximum(z.sum(1, keepdims=True), 1)
    fig.add_trace(go.Heatmap(z=share, x=names, y=names, colorscale="Blues", zmin=0, zmax=1,
                             text=z.astype(int), texttemplate="%{text}", colorbar=dict(title="share of row"),
                             hovertemplate="true %{y}, predicted %{x}: %{text} (%{z:.1%} of the row)<extra></extra>"))
    fig.update_layout(title=title or "confusion matrix (rows: true class)", xaxis_title="predicted",
                      yaxis_title="true", yaxis_autorange="reversed", template="plotly_white",
                      margin=dict(l=60, r=20, t=60, b=50), height=max(320, 60 * len(names) + 120))
    return fig

"""Plotly figures (and one HTML snippet) for the "look inside" analyses.

Every function returns a ``plotly.graph_objects.Figure`` (or an HTML string for coloured
tokens) and draws only real tokens (padding was cut by :mod:`axlab.attention_maps`).
Nothing loads from a CDN: :func:`save_html` writes a self-contained file with plotly.js
inlined, and the app renders figures with its own bundled plotly.

Token axes use positions (0..T-1) with the token strings as tick labels, because plotly
merges repeated category labels (a sentence with two "the" would lose a row).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from axlab.analysis.attention_maps import AttentionResult, rollout

__all__ = ["head_heatmap", "model_view", "head_picker", "sentence_entropy", "rollout_figure", "layer_head_heatmap", "importance_figure",
           "statistics_figures", "agreement_figure", "attribution_html", "attribution_compare_html", "attribution_legend", "save_html"]

_BLUES = "Blues"


def _token_axis(tokens: list[str]) -> dict:
    """Token tick labels; the font shrinks as tokens grow so neighbouring labels do not overlap."""
    size = max(7, min(12, int(700 / max(1, len(tokens)))))
    return dict(tickmode="array", tickvals=list(range(len(tokens))), ticktext=tokens, tickfont=dict(size=size))


def head_heatmap(result: AttentionResult, layer: int, head: int, index: int = 0) -> go.Figure:
    """One head's token-to-token map: row = query token, column = the token it attends to."""
    w = result.head(layer, head, index)                                 # (T, T)
    tokens = result.tokens[index]
    t = len(tokens)
    fig = go.Figure(go.Heatmap(
        z=w, x=list(range(t)), y=list(range(t)), colorscale=_BLUES, zmin=0, zmax=float(np.nanmax(w)) or 1.0,
        customdata=np.array([[[tokens[i], tokens[j]] for j in range(t)] for i in range(t)], dtype=object),
        hovertemplate="%{customdata[0]} → %{customdata[1]}<br>weight %{z:.3f}<extra></extra>",
        colorbar=dict(title="weight")))
    size = max(320, min(900, 28 * t + 160))
    fig.update_layout(title=f"Layer {layer}, head {head}", width=size, height=size,
                      xaxis=dict(title="attended token (key)", tickangle=-60, **_token_axis(tokens)),
                      yaxis=dict(title="query token", autorange="reversed", **_token_axis(tokens)),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def model_view(result: AttentionResult, index: int = 0, *, cell_px: int = 70) -> go.Figure:
    """Every head at once: a layers x heads grid of small maps (removed heads blank).

    Hover shows "layer l, head h" and the two tokens; the caller opens one cell with
    :func:`head_heatmap` (the app lets the user pick the layer and head).
    """
    stack = result.stack(index)                                         # (L, H, T, T)
    n_layers, n_heads = stack.shape[:2]
    tokens = result.tokens[index]
    t = len(tokens)
    fig = make_subplots(rows=n_layers, cols=n_heads, horizontal_spacing=0.006, vertical_spacing=0.01,
                        row_titles=[f"L{i}" for i in range(n_layers)],
                        column_titles=[f"H{h}" for h in range(n_heads)])
    pairs = np.array([[f"{tokens[i]} → {tokens[j]}" for j in range(t)] for i in range(t)], dtype=object)
    for layer in range(n_layers):
        for head in range(n_heads):
            if head not in result.head_ids[layer]:
                continue
            fig.add_trace(go.Heatmap(
                z=stack[layer, head], colorscale=_BLUES, zmin=0, zmax=1, showscale=False, text=pairs,
                hovertemplate=f"layer {layer}, head {head}<br>%{{text}}<br>%{{z:.3f}}<extra></extra>"),
                row=layer + 1, col=head + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    fig.update_layout(title="Model view: every layer (rows) and head (columns)", height=cell_px * n_layers + 80,
                      width=cell_px * n_heads + 80, margin=dict(l=10, r=30, t=70, b=10))
    return fig


def head_picker(matrix, title: str = "Pick a head", *, zlabel: str = "", colorscale: str = "Viridis") -> go.Figure:
    """A layers x heads grid of clickable squares (a scatter, so Streamlit's ``on_select`` works).

    Each point carries ``customdata = [layer, head]``; with
    ``event = st.plotly_chart(fig, on_select="rerun")`` the chosen head is
    ``event.selection.points[0]["customdata"]``. Removed heads (NaN) are left out.
    """
    z = matrix.detach().cpu().numpy() if hasattr(matrix, "detach") else np.asarray(matrix, dtype=float)
    layer, head = np.nonzero(np.isfinite(z))
    fig = go.Figure(go.Scatter(
        x=head, y=layer, mode="markers", customdata=np.stack([layer, head], axis=1),
        marker=dict(symbol="square", size=26, color=z[layer, head], colorscale=colorscale, showscale=True,
                    colorbar=dict(title=zlabel)),
        hovertemplate="layer %{customdata[0]}, head %{customdata[1]}<br>%{marker.color:.3f}<extra></extra>"))
    fig.update_layout(title=title, clickmode="event+select", height=80 + 34 * z.shape[0] + 60,
                      xaxis=dict(title="head", dtick=1, range=[-0.6, z.shape[1] - 0.4]),
                      yaxis=dict(title="layer", dtick=1, autorange="reversed"), margin=dict(l=10, r=10, t=50, b=10))
    return fig


def sentence_entropy(result: AttentionResult, index: int = 0) -> np.ndarray:
    """(n_layers, n_heads) mean attention entropy for one text: a colour for :func:`head_picker`."""
    w = result.stack(index).astype(np.float64)                          # (L, H, T, T)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -(w * np.where(w > 0, np.log(w), 0.0)).sum(-1)           # (L, H, T)
    return ent.mean(-1)                                                 # NaN stays NaN for removed heads


def rollout_figure(result: AttentionResult, index: int = 0, *, kind: str = "bar", row: int = 0,
                   matrix: np.ndarray | None = None) -> go.Figure:
    """Attention rollout onto the input tokens.

    ``kind="bar"``: how much each input token flows into position ``row`` at the top
    (row 0 = [CLS], what the classifier reads). ``kind="heatmap"``: the whole (T, T) matrix.
    """
    if kind not in ("bar", "heatmap"):
        raise ValueError(f"kind must be 'bar' or 'heatmap', got {kind!r}")
    r = rollout(result, index) if matrix is None else np.asarray(matrix)
    tokens = result.tokens[index]
    if kind == "heatmap":
        fig = go.Figure(go.Heatmap(z=r, colorscale=_BLUES, zmin=0, colorbar=dict(title="share")))
        fig.update_layout(title="Attention rollout (rows: top-layer positions, columns: input tokens)",
                          xaxis=dict(tickangle=-60, **_token_axis(tokens)),
                          yaxis=dict(autorange="reversed", **_token_axis(tokens)), height=max(320, 26 * len(tokens) + 150))
        return fig
    fig = go.Figure(go.Bar(x=list(range(len(tokens))), y=r[row], marker_color="#3b6fb6",
                           customdata=tokens, hovertemplate="%{customdata}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title=f"Attention rollout into '{tokens[row]}' across all layers",
                      xaxis=dict(tickangle=-60, **_token_axis(tokens)), yaxis=dict(title="share of attention flow"),
                      height=360, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def layer_head_heatmap(matrix, title: str, *, colorscale: str = "Viridis", zlabel: str = "",
                       fmt: str = ".2f") -> go.Figure:
    """An (n_layers, n_heads) grid as a heatmap with the values written in the cells (NaN blank)."""
    z = matrix.detach().cpu().numpy() if hasattr(matrix, "detach") else np.asarray(matrix, dtype=float)
    if z.ndim != 2:
        raise ValueError(f"matrix must be (n_layers, n_heads), got shape {z.shape}")
    text = [["" if np.isnan(v) else format(v, fmt) for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(z.shape[1])), y=list(range(z.shape[0])), colorscale=colorscale, text=text,
        texttemplate="%{text}", textfont=dict(size=9), colorbar=dict(title=zlabel),
        hovertemplate="layer %{y}, head %{x}<br>%{z:" + fmt + "}<extra></extra>"))
    fig.update_layout(title=title, xaxis=dict(title="head", dtick=1), yaxis=dict(title="layer", dtick=1,
                      autorange="reversed"), height=70 + 34 * z.shape[0] + 60, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def importance_figure(imp, title: str = "Head importance", *, method: str | None = None) -> go.Figure:
    """Head importance as a layers x heads heatmap (higher = more important)."""
    z = imp.detach().cpu().numpy() if hasattr(imp, "detach") else np.asarray(imp, dtype=float)
    finite = z[np.isfinite(z)]
    fmt = ".2g" if finite.size and np.abs(finite).max() < 0.01 else ".3f"
    full = f"{title} ({method})" if method else title
    return layer_head_heatmap(z, full, colorscale="YlOrRd", zlabel="importance", fmt=fmt)


def statistics_figures(stats: dict) -> dict[str, go.Figure]:
    """One layers x heads heatmap per head statistic (see :data:`axlab.head_stats.STATISTICS`)."""
    from axlab.analysis.head_stats import STATISTICS
    figs = {}
    for name, matrix in stats.items():
        title = STATISTICS.get(name, (name, ""))[0]
        figs[name] = layer_head_heatmap(matrix, title, colorscale="Viridis" if "share" not in name else "Blues",
                                        zlabel=name)
    return figs


def agreement_figure(table) -> go.Figure:
    """The Spearman matrix from :func:`axlab.importance.agreement` as a heatmap."""
    names = list(table.columns)
    z = table.to_numpy(dtype=float)
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu",
                               text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}",
                               colorbar=dict(title="Spearman ρ")))
    fig.update_layout(title="Rank agreement between importance methods", height=120 + 60 * len(names),
                      yaxis=dict(autorange="reversed"))
    return fig


def _display_token(tok: str) -> tuple[str, bool]:
    """(text to show, glued to the previous token?) for WordPiece / BPE / SentencePiece pieces."""
    if tok.startswith("##"):
        return tok[2:], True
    if tok.startswith(("\u0120", "\u2581")):
        return tok[1:], False
    return tok, False


_SWATCH = ('<span style="display:inline-block;width:14px;height:14px;border-radius:3px;vertical-align:middle;'
           'background:rgba({rgb},{a})"></span>')


def attribution_legend(label: str | None = None) -> str:
    """The key to :func:`attribution_html`'s colours."""
    target = f"<b>{html.escape(str(label))}</b>" if label is not None else "the predicted class"
    green = "".join(_SWATCH.format(rgb="22,150,60", a=a) for a in (0.2, 0.5, 0.85))
    red = "".join(_SWATCH.format(rgb="210,40,40", a=a) for a in (0.2, 0.5, 0.85))
    return ('<div style="font-family:sans-serif;font-size:13px;color:#555;margin-top:6px">'
            f'{green} pushes toward {target} &nbsp;&nbsp; {red} pushes away from it &nbsp;&nbsp; '
            'stronger colour = larger share; hover a word for its score</div>')


def attribution_html(tokens: list[str], scores, *, scale: float | None = None, title: str | None = None,
                     legend: bool | str = True) -> str:
    """Tokens as coloured spans: green pushes toward the target class, red away; hover shows the score.

    ``scale`` fixes the score that gets full colour (pass the same value to compare views).
    ``legend``: append the colour key (a string names the target class in it).
    """
    s = np.asarray(scores, dtype=float)
    if len(tokens) != len(s):
        raise ValueError(f"{len(tokens)} tokens but {len(s)} scores")
    scale = float(scale) if scale else (float(np.abs(s).max()) or 1.0)
    parts = []
    for tok, v in zip(tokens, s):
        text, glued = _display_token(tok)
        a = min(1.0, abs(v) / scale)
        rgb = "22,150,60" if v >= 0 else "210,40,40"
        span = (f'<span title="{html.escape(tok)}: {v:+.4f}" style="background:rgba({rgb},{a * 0.85:.3f});'
                f'padding:2px 3px;margin:1px 0;border-radius:3px;line-height:2">{html.escape(text)}</span>')
        parts.append(span if glued or not parts else " " + span)
    head = f'<div style="font-weight:600;margin-bottom:4px">{html.escape(title)}</div>' if title else ""
    key = attribution_legend(legend if isinstance(legend, str) else None) if legend else ""
    return f'<div style="font-family:sans-serif;font-size:15px">{head}{"".join(parts)}{key}</div>'


def attribution_compare_html(attributions: dict) -> str:
    """Before/after: one coloured line per variant (``{name: Attribution}``), on one colour scale."""
    if not attributions:
        raise ValueError("no attributions to show")
    scale = max(float(np.abs(a.scores).max()) for a in attributions.values()) or 1.0
    rows = []
    for name, a in attributions.items():
        label = a.label if a.label is not None else str(a.target)
        title = f"{name}: p({label}) = {a.output:.3f} [{a.method}]"
        rows.append(attribution_html(a.tokens, a.scores, scale=scale, title=title, legend=False))
    return ('<div style="display:flex;flex-direction:column;gap:10px">' + "".join(rows) + attribution_legend()
            + "</div>")


def save_html(fig: go.Figure, path: str | Path) -> Path:
    """Write a self-contained HTML file (plotly.js inlined; renders with no network)."""
    path = Path(path)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path

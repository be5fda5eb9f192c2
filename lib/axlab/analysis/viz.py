"""Plotly figures (and one HTML snippet) for the "look inside" analyses.

Every function returns a ``plotly.graph_objects.Figure`` (or an HTML string for coloured
tokens) and draws only real tokens (padding was cut by :mod:`axlab.attention_maps`).
Nothing loads from a CDN: :func:`save_html` writes a self-contained file with plotly.js
inlined, and the app renders figures with its own bundled plotly.

Token axes use positions (0..T-1) with the token strings as tick labels, because plotly
merges repeated category labels (a sentence with two "the" would lose a row).

Images: every overlay is the picture (a ``go.Image`` trace) with a semi-transparent
``go.Heatmap`` on top whose cells cover the matching pixels (a patch map's cell covers its
patch), with a colour bar. :func:`head_heatmap` and :func:`rollout_figure` draw overlays
when given an :class:`~axlab.analysis.attention_maps.ImageAttentionResult`, so a page
calls the same functions for both modalities.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from axlab.analysis import vision
from axlab.analysis.attention_maps import AttentionResult, ImageAttentionResult, rollout, rollout_map

__all__ = ["head_heatmap", "model_view", "head_picker", "sentence_entropy", "rollout_figure", "layer_head_heatmap", "importance_figure",
           "statistics_figures", "agreement_figure", "attribution_html", "attribution_compare_html", "attribution_legend", "save_html",
           "image_overlay", "patch_attention_figure", "layer_heads_figure", "rollout_overlay", "attention_distance_figure",
           "pixel_attribution_figure", "pixel_attribution_compare"]

_BLUES = "Blues"


def _token_axis(tokens: list[str]) -> dict:
    """Token tick labels; the font shrinks as tokens grow so neighbouring labels do not overlap."""
    size = max(7, min(12, int(700 / max(1, len(tokens)))))
    return dict(tickmode="array", tickvals=list(range(len(tokens))), ticktext=tokens, tickfont=dict(size=size))


def head_heatmap(result: AttentionResult, layer: int, head: int, index: int = 0) -> go.Figure:
    """One head's token-to-token map: row = query token, column = the token it attends to.

    For an image result: the head's [CLS] row over the image (:func:`patch_attention_figure`).
    """
    if isinstance(result, ImageAttentionResult):
        return patch_attention_figure(result, layer, head, index)
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
    For an image result with ``kind="bar"``: the overlay of row ``row`` on the image
    (:func:`rollout_overlay`).
    """
    if kind not in ("bar", "heatmap"):
        raise ValueError(f"kind must be 'bar' or 'heatmap', got {kind!r}")
    if isinstance(result, ImageAttentionResult) and kind == "bar":
        return rollout_overlay(result, index, query=row, matrix=matrix)
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
    """One layers x heads heatmap per head statistic (see :data:`axlab.head_stats.STATISTICS`).

    Image statistics (they have ``prefix_share``) get their own titles (distance in pixels)
    and one more figure, ``"distance_by_depth"`` (:func:`attention_distance_figure`).
    """
    from axlab.analysis.head_stats import IMAGE_STATISTICS, STATISTICS
    images = "prefix_share" in stats
    titles = IMAGE_STATISTICS if images else STATISTICS
    figs = {}
    for name, matrix in stats.items():
        title = titles.get(name, (name, ""))[0]
        figs[name] = layer_head_heatmap(matrix, title, colorscale="Viridis" if "share" not in name else "Blues",
                                        zlabel=name)
    if images and "mean_distance" in stats:
        figs["distance_by_depth"] = attention_distance_figure(stats)
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


# ---------------------------------------------------------------------------------------
# images: overlays on the picture (attention patch maps, rollout, pixel attributions)
# ---------------------------------------------------------------------------------------

# semi-transparent scales: low values let the image show through
HEAT_SCALE = [[0.0, "rgba(255,235,59,0.0)"], [0.35, "rgba(255,167,38,0.4)"], [1.0, "rgba(213,0,0,0.72)"]]
SIGNED_SCALE = [[0.0, "rgba(33,102,172,0.9)"], [0.5, "rgba(247,247,247,0.0)"], [1.0, "rgba(178,24,43,0.9)"]]


def _image_trace(image) -> go.Image:
    rgb = vision.to_rgb(image)
    return go.Image(z=rgb, hoverinfo="skip", name="image")


def _heat_trace(image, heat, *, signed: bool, zmax: float | None, colorbar_title: str, coloraxis: str | None = None,
                smooth: bool = False, hover: str | None = None, showscale: bool = True) -> go.Heatmap:
    """A map over ``image``: cell (i, j) of an (h, w) map covers the matching block of the image's pixels."""
    z = np.asarray(heat, dtype=float)
    h0, w0 = np.asarray(image).shape[:2]
    dy, dx = h0 / z.shape[0], w0 / z.shape[1]
    finite = z[np.isfinite(z)]
    top = float(zmax) if zmax else (float(np.abs(finite).max()) if finite.size else 1.0) or 1.0
    kw = dict(z=z, x0=dx / 2 - 0.5, dx=dx, y0=dy / 2 - 0.5, dy=dy, zsmooth="best" if smooth else False,
              hovertemplate=hover or "row %{y:.0f}, col %{x:.0f}<br>%{z:.4f}<extra></extra>", name="map")
    if coloraxis:
        return go.Heatmap(coloraxis=coloraxis, **kw)
    return go.Heatmap(colorscale=SIGNED_SCALE if signed else HEAT_SCALE, zmin=-top if signed else 0.0, zmax=top,
                      zmid=0.0 if signed else None, showscale=showscale,
                      colorbar=dict(title=colorbar_title), **kw)


def image_overlay(image, heat, *, title: str = "", signed: bool = False, zmax: float | None = None,
                  colorbar_title: str = "", smooth: bool = False, size: int = 420) -> go.Figure:
    """``image`` (uint8 (H, W) or (H, W, 3)) with a semi-transparent map on top, and a colour bar.

    ``heat``: any (h, w) map (a patch grid or a per-pixel map), stretched over the image.
    ``signed``: a diverging scale centred on 0 (red positive, blue negative), else a heat
    scale from transparent (0) to red (``zmax``, default the largest value).
    """
    fig = go.Figure([_image_trace(image), _heat_trace(image, heat, signed=signed, zmax=zmax,
                                                      colorbar_title=colorbar_title, smooth=smooth)])
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, scaleanchor="x", autorange="reversed")
    fig.update_layout(title=dict(text=title, font=dict(size=14)), width=size + 130, height=size + 80,
                      margin=dict(l=10, r=10, t=70, b=10))
    return fig


def _query_label(result: ImageAttentionResult, query) -> str:
    t = result.query_row(query)
    return result.tokens[0][t] if result.tokens else str(t)


def _mark_query(fig: go.Figure, result: ImageAttentionResult, index: int, query, **where) -> None:
    t = result.query_row(query)
    if t < result.n_prefix:
        return
    r, c = divmod(t - result.n_prefix, result.grid[1])
    h0, w0 = np.asarray(result.images[index]).shape[:2]
    dy, dx = h0 / result.grid[0], w0 / result.grid[1]
    fig.add_shape(type="rect", x0=c * dx - 0.5, x1=(c + 1) * dx - 0.5, y0=r * dy - 0.5, y1=(r + 1) * dy - 0.5,
                  line=dict(color="#00e5ff", width=2), **where)


def patch_attention_figure(result: ImageAttentionResult, layer: int, head: int, index: int = 0, query=None, *,
                           smooth: bool = False) -> go.Figure:
    """One head's attention from [CLS] (or the ``query`` patch, outlined) to every patch, over the image."""
    m = result.patch_map(layer, head, index, query)
    src = _query_label(result, query)
    rest = result.prefix_share(layer, head, index, query)
    fig = image_overlay(result.images[index], m, title=f"Layer {layer}, head {head}: attention from {src}"
                        f"<br><sup>{rest:.2f} of it on prefix tokens (not drawn)</sup>", colorbar_title="weight", smooth=smooth)
    fig.data[1].hovertemplate = "patch (%{customdata[0]}, %{customdata[1]})<br>weight %{z:.4f}<extra></extra>"
    fig.data[1].customdata = np.stack(np.meshgrid(np.arange(m.shape[0]), np.arange(m.shape[1]), indexing="ij"), -1)
    _mark_query(fig, result, index, query)
    return fig


def layer_heads_figure(result: ImageAttentionResult, layer: int, index: int = 0, query=None, *, cols: int | None = None,
                       cell_px: int = 170, shared_scale: bool = False) -> go.Figure:
    """Every head of one layer as facets: the image with each head's patch map (removed heads say so).

    Each facet is scaled to its own maximum unless ``shared_scale`` (then one colour bar for all).
    """
    maps = result.layer_maps(layer, index, query)                      # (H, rows, cols)
    n = maps.shape[0]
    cols = cols or min(n, 6)
    rows = -(-n // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"H{h}" for h in range(n)],
                        horizontal_spacing=0.02, vertical_spacing=0.06)
    top = (float(np.nanmax(maps)) or 1.0) if shared_scale and np.isfinite(maps).any() else 1.0
    fig.update_layout(coloraxis=dict(colorscale=HEAT_SCALE, cmin=0.0, cmax=top,
                                     colorbar=dict(title="weight" if shared_scale else "weight /<br>head max")))
    for h in range(n):
        r, c = h // cols + 1, h % cols + 1
        fig.add_trace(_image_trace(result.images[index]), row=r, col=c)
        if h in result.head_ids[layer]:
            z = maps[h] if shared_scale else maps[h] / (float(np.nanmax(maps[h])) or 1.0)
            tr = _heat_trace(result.images[index], z, signed=False, zmax=None, colorbar_title="",
                             coloraxis="coloraxis",
                             hover=f"head {h}<br>%{{z:.3f}}<extra></extra>")
            fig.add_trace(tr, row=r, col=c)
            _mark_query(fig, result, index, query, row=r, col=c)
        else:
            fig.layout.annotations[h].text = f"H{h} (removed)"
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    for i in range(1, rows * cols + 1):
        suffix = "" if i == 1 else str(i)
        fig.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"
    scale_note = "one scale" if shared_scale else "each head scaled to its own maximum"
    fig.update_layout(title=f"Layer {layer}: every head's attention from {_query_label(result, query)} ({scale_note})",
                      width=cell_px * cols + 120, height=cell_px * rows + 90, margin=dict(l=10, r=10, t=70, b=10))
    return fig


def rollout_overlay(result: ImageAttentionResult, index: int = 0, *, head_reduce: str = "mean", query=None,
                    matrix: np.ndarray | None = None, smooth: bool = False) -> go.Figure:
    """Attention rollout's [CLS] row over the patches, on the image (Abnar & Zuidema 2020)."""
    m = rollout_map(result, index, query=query, head_reduce=head_reduce, matrix=matrix)
    rest = 1.0 - float(np.nansum(m))
    fig = image_overlay(result.images[index], m, colorbar_title="share", smooth=smooth,
                        title=f"Attention rollout into {_query_label(result, query)}<br><sup>{head_reduce} over "
                              f"heads; {rest:.2f} stays on prefix tokens (not drawn)</sup>")
    _mark_query(fig, result, index, query)
    return fig


def attention_distance_figure(stats, *, title: str = "Mean attention distance by depth") -> go.Figure:
    """Mean attention distance (pixels) per head against depth: one dot per head (ViT paper, Fig. 7).

    ``stats``: the dict from :func:`axlab.analysis.head_stats.head_statistics` on an image
    split, or its (n_layers, n_heads) ``"mean_distance"`` array. Removed heads are left out.
    """
    z = stats["mean_distance"] if isinstance(stats, dict) else stats
    z = z.detach().cpu().numpy() if hasattr(z, "detach") else np.asarray(z, dtype=float)
    layer, head = np.nonzero(np.isfinite(z))
    fig = go.Figure(go.Scatter(
        x=layer, y=z[layer, head], mode="markers", customdata=np.stack([layer, head], axis=1),
        marker=dict(size=9, color=head, colorscale="Turbo", showscale=True, colorbar=dict(title="head"),
                    line=dict(width=0.5, color="#333")),
        hovertemplate="layer %{customdata[0]}, head %{customdata[1]}<br>%{y:.2f} px<extra></extra>"))
    fig.update_layout(title=title, xaxis=dict(title="network depth (layer)", dtick=1),
                      yaxis=dict(title="mean attention distance (pixels)", rangemode="tozero"),
                      height=400, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def pixel_attribution_figure(attr, *, scale: float | None = None, title: str | None = None,
                             smooth: bool = False) -> go.Figure:
    """Pixel saliency (a :class:`axlab.analysis.attributions.PixelAttribution`) over the image.

    Diverging colours centred on 0: red pushes toward the target class, blue away from it;
    ``scale`` fixes the score that gets full colour (pass one value to compare views).
    """
    label = attr.label if attr.label is not None else str(attr.target)
    what = "integrated gradients" if attr.method == "integrated_gradients" else f"occlusion {attr.window}"
    title = title or (f"{what} for p({label}) = {attr.output:.3f}<br><sup>baseline: {attr.baseline} image, "
                      f"p = {attr.baseline_output:.3f}; red pushes toward {label}, blue away</sup>")
    return image_overlay(attr.image, attr.saliency, signed=True, zmax=scale, smooth=smooth, title=title,
                         colorbar_title="toward ↑ / away ↓")


def pixel_attribution_compare(attributions: dict, *, cell_px: int = 260) -> go.Figure:
    """Before/after: one overlay per variant (``{name: PixelAttribution}``) on one diverging scale."""
    if not attributions:
        raise ValueError("no attributions to show")
    scale = max(float(np.abs(a.saliency).max()) for a in attributions.values()) or 1.0
    names = list(attributions)
    titles = [f"{n}: p({a.label if a.label is not None else a.target}) = {a.output:.3f} [{a.method}]"
              for n, a in attributions.items()]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.03)
    fig.update_layout(coloraxis=dict(colorscale=SIGNED_SCALE, cmin=-scale, cmax=scale, cmid=0.0,
                                     colorbar=dict(title="toward ↑ / away ↓")))
    for i, name in enumerate(names):
        a = attributions[name]
        fig.add_trace(_image_trace(a.image), row=1, col=i + 1)
        fig.add_trace(_heat_trace(a.image, a.saliency, signed=True, zmax=scale, colorbar_title="",
                                  coloraxis="coloraxis"), row=1, col=i + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    fig.update_layout(width=cell_px * len(names) + 120, height=cell_px + 90, margin=dict(l=10, r=10, t=70, b=10))
    return fig


def save_html(fig: go.Figure, path: str | Path) -> Path:
    """Write a self-contained HTML file (plotly.js inlined; renders with no network)."""
    path = Path(path)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path

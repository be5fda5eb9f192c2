"""The comparison report: one self-contained HTML file, plus JSON and Markdown.

``write_report(variants, folder)`` writes::

    report.html   the variants table, trade-off figures with the Pareto front, each
                  variant's recipe, hardware, library versions and data split hashes;
                  plotly.js is inlined once, so the file opens offline (no CDN)
    report.json   the same facts, machine-readable
    report.md     the table, the Pareto front and the provenance, as Markdown

Everything a reader needs to reproduce the numbers is in it: the recipes replay on the
base model (``axlab.variants.apply_recipe``), the data split is fixed by the dataset
file's hash and the seed, and the per-split hashes show the split is the same one.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import platform
import time
import uuid
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from axlab.core.errors import ExportError
from axlab.core.recipe import describe_recipe
from axlab.deploy.compare import (LABELS, as_record, confusion_figure, display_table, figures, pareto_front,
                                  per_class_table, variants_table)

__all__ = ["write_report", "report_data", "library_versions", "split_hashes", "external_references", "render_html",
           "render_markdown"]

FILES = {"html": "report.html", "json": "report.json", "md": "report.md"}
_PACKAGES = ("axlab", "torch", "transformers", "tokenizers", "safetensors", "onnx", "onnxruntime", "onnxscript",
             "numpy", "pandas", "plotly")


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _hash_split(split) -> str:
    """sha256 of the (input, label) pairs: texts as UTF-8, images as their shape and bytes."""
    h = hashlib.sha256()
    for item, label in zip(split.inputs, split.labels):
        if isinstance(item, str):
            h.update(item.encode("utf-8"))
        else:
            a = np.ascontiguousarray(item)
            h.update(f"img{a.shape}{a.dtype}:".encode())
            h.update(a.tobytes())
        h.update(b"\t%d\n" % int(label))
    return h.hexdigest()


def split_hashes(splits) -> dict:
    """Dataset provenance: file hash, seed, sizes, and a sha256 of each split's (text, label) pairs."""
    if splits is None:
        return {}
    return {"name": splits.name, "key": splits.key, "file_sha256": splits.file_hash, "seed": splits.seed,
            "source_file": os.path.basename(splits.source_file), "label_names": list(splits.label_names),
            "sizes": splits.sizes,
            "split_sha256": {k: _hash_split(splits[k]) for k in ("train", "validation", "test")}}


def report_data(variants, *, splits=None, hardware: dict | None = None, base: str | None = None,
                title: str = "axlab comparison") -> dict:
    """Everything the report shows, as JSON-serialisable data."""
    from axlab import __version__
    from axlab.core.measure import hardware_info

    records = [as_record(v) for v in variants]
    df = variants_table(records, base=base)
    fronts = {}
    for x in ("latency_b1_ms", "latency_b32_ms", "size_mb"):
        fronts[x] = df.name[pareto_front(df, x, "accuracy")].tolist() if len(df) else []
    hw = hardware or next((r.get("hardware") for r in records if r.get("hardware")), None) or hardware_info()
    table = json.loads(df.drop(columns=["recipe"]).to_json(orient="records")) if len(df) else []
    notes = []
    if len(df) and not df.is_base.any():
        notes.append("No base-model row: ratios (accuracy - base, speed-up, compression) need the base model measured "
                     "in the same workspace (app: 'Measure the base model'; CLI: `axlab prune/quantize ... --save`).")
    for r in records:
        for n in (r.get("measurements") or {}).get("notes") or []:
            if n not in notes:
                notes.append(n)
    return {"title": title, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "axlab_version": __version__,
            "variants": [{**{k: r.get(k) for k in ("id", "name", "base", "dataset", "recipe", "measurements", "notes")},
                          "summary": describe_recipe(r.get("recipe") or [])} for r in records],
            "notes": notes,
            "table": table, "pareto_front_accuracy_vs": fronts, "hardware": hw, "versions": library_versions(),
            "data": split_hashes(splits),
            "reproduce": ["pip install -e . (axlab " + __version__ + ", versions listed above)",
                          "axlab prepare   # the default model (fixed seed, cached)",
                          "for each variant: axlab.variants.apply_recipe(base_model, recipe, tokenizer=..., "
                          "splits=...)",
                          "then axlab.measure.measure(model, tokenizer, splits.test)"]}


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
tr.pareto td:first-child { font-weight: 600; }
pre { background: #f7f7f7; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
.note { color: #666; font-size: 0.85rem; }
"""


def _kv_table(d: dict) -> str:
    def cell(v) -> str:
        return html.escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in d.items())
    return f"<table>{rows}</table>"


def _frame_html(df: pd.DataFrame) -> str:
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return "–"
        return html.escape(str(round(v, 4) if isinstance(v, float) else v))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _table_html(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p>No variants.</p>"
    shown = display_table(df)
    front = pareto_front(df, "latency_b1_ms", "accuracy")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    body = []
    for i, row in shown.iterrows():
        cells = "".join(f"<td>{'–' if pd.isna(v) else html.escape(str(v))}</td>" for v in row)
        body.append(f"<tr class='{'pareto' if front[i] else ''}'>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(data: dict, df: pd.DataFrame) -> str:
    """The report page. plotly.js is inlined once (with the first figure); nothing is fetched."""
    parts = [f"<h1>{html.escape(data['title'])}</h1>",
             f"<p class='note'>Generated {html.escape(data['created'])} by axlab {html.escape(data['axlab_version'])}. "
             "Latencies are medians on the hardware below; on a shared machine they are noisy.</p>",
             "<h2>Variants</h2>", _table_html(df),
             "<p class='note'>Bold names are on the Pareto front of accuracy vs batch-1 latency. Ratios compare "
             "with the base row (the model before any step): speed-up = base latency / latency, compression = "
             "base size / size. A speed-up with a range was measured interleaved with the base in the same "
             "rounds; 'within noise' means the two swap order in some round, so it is not a result.</p>"]
    parts += [f"<p class='note'><b>Note:</b> {html.escape(n)}</p>" for n in data.get("notes") or []]
    parts.append("<h2>Trade-offs</h2>")
    first = True
    for name, fig in figures(df).items():
        fig.update_layout(height=460)
        parts.append(fig.to_html(full_html=False, include_plotlyjs=first, div_id=f"fig-{name}",
                                 config={"displaylogo": False, "responsive": True}))
        first = False
    parts.append("<h2>Pareto fronts (accuracy vs ...)</h2><ul>")
    for x, names in data["pareto_front_accuracy_vs"].items():
        parts.append(f"<li>{html.escape(LABELS.get(x, x))}: {html.escape(', '.join(names) or '–')}</li>")
    parts.append("</ul><h2>Recipes</h2><ul>")
    for v in data["variants"]:
        parts.append(f"<li><b>{html.escape(str(v['name']))}</b>: {html.escape(v['summary'])} "
                     f"<details><summary class='note'>recipe JSON (id {html.escape(str(v['id']))}, base "
                     f"{html.escape(str(v.get('base')))})</summary>"
                     f"<pre>{html.escape(json.dumps(v['recipe'], indent=2))}</pre></details></li>")
    parts.append("</ul>")
    with_classes = [v for v in data["variants"] if (v.get("measurements") or {}).get("per_class")]
    if with_classes:
        parts.append("<h2>Per class</h2><p class='note'>Precision, recall and F1 per class on the measured split; "
                     "the confusion matrix counts true classes (rows) against predictions (columns), in the "
                     "model's label order. Macro-F1 averages over the classes present in the data.</p>")
        for v in with_classes:
            m = v["measurements"]
            pc = per_class_table(m)
            parts.append(f"<h3>{html.escape(str(v['name']))}</h3>" + _frame_html(pc))
            fig = confusion_figure(m, title=f"{v['name']}: confusion matrix")
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first,
                                     div_id=f"conf-{html.escape(str(v['id']))}",
                                     config={"displaylogo": False, "responsive": True}))
            first = False
    parts += ["<h2>Hardware</h2>", _kv_table(data["hardware"] or {}),
              "<h2>Library versions</h2>", _kv_table(data["versions"]),
              "<h2>Data</h2>", _kv_table(data["data"]) if data["data"] else "<p>No dataset recorded.</p>",
              "<h2>Reproduce</h2><pre>" + html.escape("\n".join(data["reproduce"])) + "</pre>"]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(data['title'])}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>")


class _RefFinder(HTMLParser):
    """Collects resource references of the document's own tags (not strings inside inline scripts)."""

    ATTRS = {"src", "href", "data", "poster", "srcset", "action", "formaction", "background"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.refs: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self._in_style = tag == "style"
        for k, v in attrs:
            if k in self.ATTRS and v:
                self.refs.append(v)
            if k == "style" and v and "url(" in v:
                self.refs.append(v)

    def handle_data(self, data):
        if self._in_style and ("url(" in data or "@import" in data):
            self.refs.append(data)

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False


def external_references(page: str) -> list[str]:
    """Resource references in ``page`` that would need the network (http(s), protocol-relative, @import)."""
    finder = _RefFinder()
    finder.feed(page)
    bad = []
    for ref in finder.refs:
        r = ref.strip().lower()
        if r.startswith(("http:", "https:", "//", "ftp:")) or "url(http" in r or "url(//" in r or "@import" in r:
            bad.append(ref)
    return bad


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------

def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_No variants._"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = ["–" if pd.isna(v) else str(v).replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(data: dict, df: pd.DataFrame) -> str:
    out = [f"# {data['title']}", "", f"Generated {data['created']} by axlab {data['axlab_version']}. "
           "Latencies are medians (ms) on the hardware below; noisy on a shared machine.", "",
           "## Variants", "", _md_table(display_table(df)) if len(df) else "_No variants._", ""]
    out += [f"> Note: {n}" for n in data.get("notes") or []] + ([""] if data.get("notes") else [])
    out += ["## Pareto fronts (accuracy vs ...)", ""]
    out += [f"- {LABELS.get(x, x)}: {', '.join(n) or '–'}" for x, n in data["pareto_front_accuracy_vs"].items()]
    out += ["", "## Recipes", ""]
    for v in data["variants"]:
        out += [f"- **{v['name']}** (id {v['id']}): {v['summary']}", "", "  <details><summary>recipe JSON</summary>",
                "", "  ```json", *["  " + line for line in json.dumps(v["recipe"], indent=2).splitlines()], "  ```",
                "", "  </details>", ""]
    for v in data["variants"]:
        pc = per_class_table(v.get("measurements") or {})
        if len(pc):
            out += [f"### Per class: {v['name']}", "", _md_table(pc), ""]
    for title, d in (("Hardware", data["hardware"] or {}), ("Library versions", data["versions"]),
                     ("Data", data["data"])):
        out += [f"## {title}", ""] + [f"- {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}"
                                      for k, v in d.items()] + [""]
    out += ["## Reproduce", "", "```", *data["reproduce"], "```", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# write
# ---------------------------------------------------------------------------------------------

def write_report(variants, folder: str | Path, *, splits=None, hardware: dict | None = None, base: str | None = None,
                 title: str = "axlab comparison", overwrite: bool = False) -> dict:
    """Write report.html / report.json / report.md into ``folder``; return {"html", "json", "md"} paths.

    Existing report files are replaced only with ``overwrite=True``. Each file is written
    to a temporary name and renamed, so a crash never leaves a truncated report.
    """
    records = [as_record(v) for v in variants]
    if not records:
        raise ExportError("No variants to report.", "Measure at least the base model (Compare page or `axlab eval`).")
    folder = Path(folder).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"'{folder}' is a file, not a folder.", "Choose another output folder.")
    paths = {k: folder / name for k, name in FILES.items()}
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise ExportError(f"'{folder}' already holds {', '.join(existing)}.",
                          "Choose another folder, or replace them explicitly with overwrite=True (CLI: --overwrite).")
    folder.mkdir(parents=True, exist_ok=True)
    data = report_data(records, splits=splits, hardware=hardware, base=base, title=title)
    df = variants_table(records, base=base)
    page = render_html(data, df)
    bad = external_references(page)
    if bad:  # a bug, not user input: the page must open offline
        raise RuntimeError(f"report would reference external resources: {bad[:3]}")
    texts = {"html": page, "json": json.dumps(data, indent=2, default=str), "md": render_markdown(data, df)}
    tag = uuid.uuid4().hex[:8]
    for key, text in texts.items():
        tmp = paths[key].with_name(f".{paths[key].name}.tmp-{tag}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, paths[key])
    return paths

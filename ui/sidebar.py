"""The sidebar every page shows: current model and dataset, workspace, saved variants."""

from __future__ import annotations

import re

import streamlit as st

from . import jobs
from .modality import data_modality, modality_of
from .nav import nav
from .state import current, current_splits, dataset_label, init_state, load_base, workspace_variants

# job slot -> the page that shows it in full (its result appears there)
JOB_PAGES = {"importance": "pages/3_Heads.py", "search": "pages/4_Prune.py", "head_stats": "pages/2_Attention.py",
             "export": "pages/7_Export.py", "layer_errors": "pages/5_Quantize.py"}

__all__ = ["sidebar", "refresh_variants"]


def _workspace_box() -> None:
    ss = st.session_state
    with st.sidebar.expander(f"Workspace: `{ss.workspace}`"):
        st.caption("Your variants are saved under this workspace name (kept in the page address, so a refresh "
                   "keeps them). Another browser session sees them only if it uses the same name.")
        name = st.text_input("Use a shared workspace name", value="", key="ws_input", placeholder="e.g. team-demo")
        if st.button("Switch workspace", key="ws_switch"):
            if re.match(r"^[A-Za-z0-9_.-]{1,40}$", name or ""):
                ss.workspace = name
                st.query_params["ws"] = name
                st.rerun()
            else:
                st.error("Use 1-40 letters, digits, '-', '_' or '.'.")


def refresh_variants() -> None:
    """(Re)draw the sidebar's list of saved variants, e.g. right after a page saved one."""
    box = st.session_state.get("_variants_box")
    if box is None:
        return
    variants = workspace_variants()
    with box.container():
        st.markdown(f"**Saved variants** ({len(variants)})")
        if variants:
            st.dataframe(
                [{"name": v.name, "acc": round(v.measurements.get("accuracy", float("nan")), 3),
                  "ms": round(v.measurements.get("latency_b1_ms") or float("nan"), 1),
                  "MB": round((v.measurements.get("size_bytes") or float("nan")) / 1e6, 1)} for v in variants],
                hide_index=True, width="stretch")
        else:
            st.caption("None yet: prune or quantize to make one.")


def sidebar(quick: bool = False) -> bool:
    """Initialise session state (pages can be opened directly) and draw the shared sidebar.

    ``quick`` (the home page): describe the model from its config.json and load it in the
    background instead of waiting for torch and the weights. Returns whether the model line
    came from the quick path (the caller then has not checked that the model loads).
    """
    init_state()
    source, dataset, ws = current()
    sb = st.sidebar
    nav()
    sb.markdown("### axlab workbench")
    from .quick import describe, describe_data, warm
    line = describe(source) if quick else None
    data_line = describe_data(source, dataset) if line is not None and st.session_state.data_columns == (None, None) \
        else None
    if line is not None:
        sb.markdown(f"**Model:** `{source}`  \n{line}")
    else:
        _model_line(source)
    if data_line is not None:
        sb.markdown(f"**Data:** `{dataset_label(dataset)}`  \n{data_line}")
    else:
        _data_line(dataset)
    if line is not None:
        warm(source, st.session_state.allow_pickle, dataset if data_line is not None else None)
    _workspace_box()
    st.session_state["_variants_box"] = sb.empty()
    import sys
    if line is not None and "axlab.store.variants" not in sys.modules:
        # the variant store imports torch (seconds on a cold start): the home page lists them on its next run
        st.session_state["_variants_box"].caption("Saved variants are listed here once the model has loaded "
                                                  "(open any page).")
    else:
        refresh_variants()
    running_jobs(ws)
    return line is not None


def _model_line(source: str) -> None:
    sb = st.sidebar
    try:
        bundle = load_base(source, st.session_state.allow_pickle)
        reads = "images" if modality_of(bundle) == "image" else "text"
        sb.markdown(f"**Model:** `{source}`  \n{bundle.arch}, {bundle.n_layers} layers x {bundle.n_heads} heads, "
                    f"{len(bundle.labels)} labels, reads {reads}")
    except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
        sb.markdown(f"**Model:** `{source}`")
        sb.warning(getattr(e, "message", str(e)), icon=":material/warning:")


def _data_line(dataset: str) -> None:
    sb = st.sidebar
    try:
        splits = current_splits()
        sizes = splits.sizes
        kind = " images" if data_modality(splits) == "image" else ""
        sb.markdown(f"**Data:** `{dataset_label(dataset)}`  \n{sizes['train']:,} train / {sizes['validation']:,} val / "
                    f"{sizes['test']:,} test{kind}")
    except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
        sb.markdown(f"**Data:** `{dataset}`")
        sb.warning(getattr(e, "message", str(e)), icon=":material/warning:")


def running_jobs(ws: str) -> None:
    """Jobs still running in this workspace (e.g. after the header's Stop or a page change): progress + Stop."""
    for job in jobs.running(ws):
        box = st.sidebar.container(border=True, key=f"sb-job-{job.uid}")
        box.markdown(f":material/hourglass_top: **Still running:** {jobs.status_text(job)}")
        box.progress(job.fraction)
        c1, c2 = box.columns(2)
        if job.stop_requested:
            c1.caption("Stopping...")
        elif c1.button("Stop", key=f"sb-stop-{job.uid}", icon=":material/stop_circle:"):
            job.stop_requested = True
            c1.caption("Stopping...")
        target = JOB_PAGES.get(job.key)
        if target:
            try:
                c2.page_link(target, label="Open", icon=":material/open_in_new:")
            except Exception:  # noqa: BLE001  (a page run on its own has no links)
                pass

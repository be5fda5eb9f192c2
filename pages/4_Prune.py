"""Prune: remove heads by hand, by budget, or by the AxFormer search."""

import json

import streamlit as st

from axlab.analysis import importance as imp_mod
from axlab.analysis import viz
from axlab.compress import axformer as ax
from axlab.compress import Step, prune
from axlab.core.progress import Stopped

from ui import estimate, jobs
from ui.common import create_variant, ensure_base, intro, measure_settings
from ui.guards import degenerate
from ui.modality import modality_of, processor_of
from ui.names import budget_name, hand_name, name_box
from ui.sidebar import sidebar
from ui.state import analysis_results, bundle_and_splits, current, show_error, workspace_variants

st.set_page_config(page_title="Prune - axlab", page_icon=":material/content_cut:", layout="wide")
sidebar()
intro("Prune",
      "Pruning **physically removes** parts of the model the task does not need: whole attention heads, FFN "
      "neurons, whole blocks. The matrices get smaller, so the model gets smaller and faster on any hardware. "
      "Every pruned model is saved as a recipe of removals applied to the unchanged base model.",
      "- **Heads by budget** removes the given fraction of heads with the lowest importance (Heads page).\n"
      "- **AxFormer** (Nagarajan et al.) goes from the top layer down and tries, in order, removing the whole FFN "
      "block, groups of FFN neurons, the whole attention block and single heads; a change is kept only if the "
      "validation loss does not get worse. Removing what hurts the task can *raise* accuracy. It can also switch "
      "layers to top-k hard attention. The log shows every decision.\n"
      "- **Why unstructured sparsity does not speed up dense kernels.** Zeroing individual weights leaves the "
      "matrix shapes unchanged: a dense matrix multiply still reads and multiplies every zero, and the saved "
      "file still stores them. Only structured removal (rows/columns, heads, neurons), or sparse kernels and "
      "compressed formats built for a given sparsity pattern, turn zeros into speed or size.")

bundle, splits = bundle_and_splits()
if bundle is None:
    st.stop()
source, dataset, ws = current()
unit = "images" if modality_of(bundle) == "image" else "examples"
proc = processor_of(bundle)

measure_settings()
n_layers, n_heads = bundle.n_layers, bundle.n_heads
store = analysis_results()
imps = {k[3:]: v for k, v in store.items() if k[:3] == ("importance", source, dataset)}


def importance_grid():
    """(L, H) importance from the Heads page (the first computed), or zeros."""
    import numpy as np
    if not imps:
        return np.zeros((n_layers, n_heads))
    first = next(iter(imps.values()))                                       # (L, H) tensor
    return first.detach().numpy().astype(float) if hasattr(first, "detach") else np.asarray(first, float)


def head_grid_figure(selected: dict, title: str):
    """Importance heatmap (if any) with the heads to remove marked."""
    fig = viz.layer_head_heatmap(importance_grid(), title)
    xs = [h for layer, hs in selected.items() for h in hs]
    ys = [int(layer) for layer, hs in selected.items() for _ in hs]
    if xs:
        fig.add_scatter(x=xs, y=ys, mode="markers", marker=dict(symbol="x", size=14, color="black"),
                        name="remove", showlegend=False)
    return fig


def measuring_estimate() -> float | None:
    try:
        return estimate.measuring(bundle, splits)
    except Exception:  # noqa: BLE001  (an estimate is a nicety)
        return None


def save_button(recipe: list, default_name: str, key: str, notes: str = "", model=None):
    """The name box (following the settings), a warning before a degenerate model, and Create variant."""
    taken = {v.name for v in workspace_variants()}
    name = name_box(default_name, f"{key}_name", taken)
    why = degenerate(recipe, n_layers, n_heads, modality_of(bundle))
    confirmed = True
    if why:
        st.warning(why, icon=":material/warning:")
        confirmed = st.checkbox("I understand: create this variant anyway", key=f"{key}_confirm")
    sec = measuring_estimate()
    if sec is not None:
        estimate.caption("building and measuring it", sec + (0 if model is not None else 1.0),
                         f"{int(st.session_state.measure_n)} test examples; fewer under Measurement settings")
    if st.button("Create variant", type="primary", key=f"{key}_go", disabled=not confirmed):
        try:
            create_variant(bundle, splits, recipe, name, model=model, notes=notes)
        except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
            show_error(e)


def baseline_note(key: str) -> None:
    """Removing nothing is the base model itself: explain, and offer to measure it."""
    st.info("Removing nothing gives the base model itself, which is already the 0-removal baseline: it is "
            "measured and saved as **base** with your first variant, and every ratio on the Compare page is "
            "relative to it. No separate variant is needed.", icon=":material/info:")
    if not any(not v.recipe for v in workspace_variants()):
        if st.button("Measure the base model now", key=f"{key}_base"):
            try:
                ensure_base(bundle, splits)
                st.success("The base model is measured and saved as **base**.", icon=":material/check_circle:")
            except Exception as e:  # noqa: BLE001
                show_error(e)


t_budget, t_hand, t_search, t_unstr = st.tabs(["Heads by budget", "Heads by hand", "AxFormer search",
                                               "Unstructured sparsity"])

with t_budget:
    if not imps:
        st.caption("No importance computed yet for this model and data: compute the gradient score on 200 "
                   f"validation {unit} here, or choose a method on the Heads page.")
        if st.button(f"Compute importance (gradient, 200 {unit})", key="prune_imp"):
            n = min(200, len(splits.validation))
            key = ("importance", source, dataset, "gradient", n)
            jobs.start(ws, "importance", "Importance (gradient)",
                       lambda p: store.__setitem__(key, imp_mod.head_importance(
                           bundle.model, proc, splits.validation.head(n), progress=p)))
        try:
            jobs.collect(ws, "importance")
        except Exception as e:  # noqa: BLE001
            show_error(e)
        imps = {k[3:]: v for k, v in store.items() if k[:3] == ("importance", source, dataset)}
    if imps:
        labels = {f"{m} ({n} {unit})": (m, n) for (m, n) in imps}
        which = st.selectbox("Importance", list(labels), key="budget_imp")
        fraction = st.slider("Fraction of heads to remove", 0.0, 1.0, 0.25, step=0.05, key="budget_frac")
        heads = prune.heads_by_budget(imps[labels[which]], fraction) if fraction > 0 else {}
        heads = {layer: hs for layer, hs in heads.items() if hs}
        n_removed = sum(len(h) for h in heads.values())
        if n_removed == 0:
            baseline_note("budget")
        else:
            st.markdown(f"Removes **{n_removed}** of {n_layers * n_heads} heads: "
                        + ", ".join(f"layer {layer}: {hs}" for layer, hs in heads.items()))
            fig = head_grid_figure(heads, "importance (x = removed)")
            if fig is not None:
                st.plotly_chart(fig, key="budget_fig")
            recipe = [Step("prune_heads", heads={str(k): v for k, v in heads.items()})]
            save_button(recipe, budget_name(fraction, n_removed, n_layers * n_heads), "budget",
                        notes=f"heads by budget {fraction:.2f} on {which}")

with t_hand:
    options = [f"L{layer}.H{head}" for layer in range(n_layers) for head in range(n_heads)]
    st.caption("Click heads in the grid (shift-click or box-select for several) or pick them in the list; "
               "colour = importance, if computed (darker = less important).")
    # merge the grid's last selection first (it arrives in session state), so the marks drawn are current;
    # the picker is a scatter with x = head, y = layer
    prev = st.session_state.get("hand_picker")
    points = prev.get("selection", {}).get("points", []) if hasattr(prev, "get") else []
    clicked = sorted({f"L{int(p['y'])}.H{int(p['x'])}" for p in points if "x" in p and "y" in p})
    if clicked and clicked != st.session_state.get("hand_last_click"):
        st.session_state.hand_last_click = clicked
        st.session_state.hand_heads = sorted(set(st.session_state.get("hand_heads", [])) | set(clicked),
                                             key=options.index)
    already = [p for p in st.session_state.get("hand_heads", []) if p in options]
    marked = [(int(p[1:].split(".H")[0]), int(p.split(".H")[1])) for p in already]
    picker = viz.head_picker(importance_grid(), "Heads: click to select (x = picked for removal)")
    if marked:
        picker.add_scatter(x=[h for _, h in marked], y=[layer for layer, _ in marked], mode="markers",
                           marker=dict(symbol="x-thin", size=18, line=dict(width=3, color="crimson")),
                           name="picked", hoverinfo="skip", showlegend=False)
    st.plotly_chart(picker, key="hand_picker", on_select="rerun", selection_mode=("points", "box", "lasso"))
    picked = st.multiselect("Heads to remove", options, key="hand_heads")
    heads = {}
    for p in picked:
        layer, head = p[1:].split(".H")
        heads.setdefault(int(layer), []).append(int(head))
    if heads:
        st.markdown(f"Removes **{len(picked)}** of {n_layers * n_heads} heads.")
        save_button([Step("prune_heads", heads={str(k): sorted(v) for k, v in sorted(heads.items())})],
                    hand_name(len(picked), n_layers * n_heads), "hand")
    else:
        baseline_note("hand")

with t_search:
    n_all = len(splits.validation)
    quick_n = min(300, n_all)
    mode = st.radio("Search pass", ["Quick", "Thorough", "Custom"], horizontal=True, key="ax_mode",
                    captions=[f"{quick_n} validation {unit}: a first look", f"all {n_all} validation {unit}: "
                              "steadier decisions", f"choose the number of {unit}"],
                    help=f"Every candidate change is scored on the validation {unit}. Fewer is faster but the "
                         "search then overfits them more: confirm a quick result with a thorough pass.")
    c1, c2, c3 = st.columns(3)
    if mode == "Custom":
        n_val = c1.slider(f"Validation {unit}", min(100, n_all), n_all, quick_n, step=100 if n_all >= 200 else 1,
                          key="ax_nval")
    else:
        n_val = quick_n if mode == "Quick" else n_all
        c1.metric(f"Validation {unit}", n_val)
    tol = c2.number_input("Tolerance (allowed validation-loss increase)", 0.0, 0.5, 0.0, step=0.01,
                          key="ax_tol")
    hard = c3.checkbox("Also try top-k hard attention", value=True, key="ax_hard")
    with st.expander("Acceptance rule"):
        r1, r2, r3 = st.columns(3)
        sig = r1.number_input("Significance (standard errors)", 0.0, 5.0, 1.0, step=0.5, key="ax_sig",
                              help="Keep a change only if the validation loss drops by more than this many "
                                   "paired standard errors. 0 = the paper's rule (any drop). Larger values "
                                   "overfit the validation split less.")
        crit = r2.selectbox("Score", ["loss", "calibrated_loss"], key="ax_crit",
                            help="calibrated_loss: the loss at the best temperature, so softening an "
                                 "over-confident model does not count as an improvement.")
        guard = r3.checkbox("Validation accuracy must not drop", value=False, key="ax_guard")
    # the command line's (and the benchmark's) settings: FFN in 4 groups, top-k 8
    search_cfg = dict(n_val=n_val, tolerance=tol, significance=sig, criterion=crit, accuracy_guard=guard,
                      ffn_groups=4, topk_values=(8,))
    steps = estimate.axformer_steps(n_layers, n_heads, 4, (8,), hard)
    try:
        known = estimate.search_cached(bundle, splits, ax.SearchConfig(**search_cfg), hard)
        cost = estimate.costs(bundle, splits)
        if known:
            st.caption(":material/timer: These settings were searched before on this model and data: the result "
                       "comes back **at once**.")
        else:
            estimate.caption(f"the search ({steps} candidate changes x {n_val} {unit})",
                             estimate.axformer_s(steps, estimate.forward_s(cost, bundle, splits, "validation", n_val),
                                                 n_layers),
                             "the search stops early if you press Stop and keeps what it found")
    except Exception:  # noqa: BLE001  (an estimate is a nicety)
        pass
    if st.button("Run the search", type="primary", key="ax_go"):
        config = ax.SearchConfig(**search_cfg)
        # the search cache keys data by Splits.key (text splits); image splits are searched afresh
        run = getattr(ax, "cached_search", None) if hasattr(splits, "key") else None

        def work(progress):
            if run is not None:
                return run(bundle.model, proc, splits, config=config, hard_attention=hard,
                           progress=progress)
            return ax.search(bundle.model, proc, splits, progress=progress, hard_attention=hard,
                             config=config)
        jobs.start(ws, "search", "AxFormer search", work)
    try:
        res = jobs.collect(ws, "search")
        if res is not None:
            import dataclasses
            st.session_state.search_result = {
                "recipe": res.recipe, "source": source, "dataset": dataset, "tol": tol, "n_val": res.n_val,
                "log": [dataclasses.asdict(d) if dataclasses.is_dataclass(d) else d for d in res.log],
                "summary": (res.base_accuracy, res.final_accuracy, res.base_loss, res.final_loss, res.stopped)}
            st.session_state.search_model = res.model
            if hasattr(ax, "decisions_frame") and hasattr(ax, "loss_trace_figure"):
                st.session_state.search_result["frame"] = ax.decisions_frame(res)
                st.session_state.search_result["figure"] = ax.loss_trace_figure(res)
    except Stopped:
        st.warning("The search was stopped.", icon=":material/stop_circle:")
    except Exception as e:  # noqa: BLE001
        show_error(e)
    res = st.session_state.get("search_result")
    if res and res["source"] == source and res["dataset"] == dataset:
        acc0, acc1, loss0, loss1, stopped = res["summary"]
        c = st.columns(3)
        c[0].metric("Validation accuracy", f"{acc1:.3f}", f"{acc1 - acc0:+.3f}")
        c[1].metric("Validation loss", f"{loss1:.4f}", f"{loss1 - loss0:+.4f}", delta_color="inverse")
        c[2].metric("Changes kept", f"{sum(1 for d in res['log'] if d.get('kept'))} of {len(res['log'])}")
        if stopped:
            st.caption("The search was stopped early: this is what it had found by then.")
        st.subheader("Decision log")
        if res.get("figure") is not None:
            st.plotly_chart(res["figure"], key="ax_trace")
        log = res.get("frame")
        if log is None:
            import pandas as pd
            log = pd.DataFrame(res["log"])
            if "target" in log:
                log["target"] = log["target"].astype(str)
        st.dataframe(log, hide_index=True, key="ax_log")
        with st.expander("Recipe found"):
            st.code(json.dumps(res["recipe"], indent=1), language="json")
        from axlab.core.recipe import describe_recipe
        st.markdown(f"**Found:** {describe_recipe(res['recipe'])}")
        save_button(res["recipe"], f"axformer-{res['n_val']}val", "search",
                    notes=f"AxFormer search, tolerance {res['tol']}, {res['n_val']} validation {unit}",
                    model=st.session_state.get("search_model"))

with t_unstr:
    c1, c2, c3 = st.columns(3)
    sparsity = c1.slider("Sparsity", 0.1, 0.95, 0.5, step=0.05, key="un_sparsity")
    criterion = c2.selectbox("Score", ["magnitude", "data"], key="un_crit",
                             help="data: |weight| x input norm on validation data (AdaptCL-style)")
    scope = c3.selectbox("Scope", ["global", "layer"], key="un_scope")
    st.caption("The zeros shrink neither the file nor the latency of a dense model: compare the size and latency "
               "columns on the Compare page.")
    save_button([Step("unstructured", sparsity=sparsity, criterion=criterion, scope=scope)],
                f"sparse-{int(round(sparsity * 100))}%-{criterion}-{scope}", "unstr")

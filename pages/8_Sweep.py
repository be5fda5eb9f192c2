"""Sweep: many recipes at once (Ray tasks), and the Pareto front of accuracy, latency and size."""

import json
import os

import streamlit as st

from axlab.sweep import SweepSpec, load, run
from axlab.sweep.pareto import front_figure

from ui import jobs
from ui.common import intro
from ui.modality import modality_of
from ui.sidebar import sidebar
from ui.state import bundle_and_splits, current, show_error, variant_store

st.set_page_config(page_title="Sweep - axlab", page_icon=":material/grid_view:", layout="wide")
sidebar()
intro("Sweep",
      "Instead of building one variant at a time, describe a **space of recipes** (how many heads and FFN neurons "
      "to remove, which quantizer at how many bits, distillation on or off) and let axlab build and measure them "
      "all, in parallel on Ray. The **Pareto front** holds the trials no other trial beats on validation accuracy, "
      "latency and size at once; the **chosen** point is picked on validation only, and test is reported.",
      "- Each trial replays a concrete recipe on the base model (head and FFN choices come from the importance "
      "computed once), measures the **validation** split (used to choose) and the **test** split (reported).\n"
      "- Trials run as **Ray tasks** with one torch thread each, so N workers use N cores without fighting over "
      "them. The base model goes to Ray's object store once. Leave the address empty for a local Ray on this "
      "machine, or give a cluster's address (`ray://head:10001`); see the README's *Sweeps on a cluster*.\n"
      "- Every finished trial is saved at once as an ordinary variant (see Compare / Export). **Stop** keeps "
      "them; starting the same spec again skips them and runs only the rest. A trial that fails is listed with "
      "its error; the others go on.\n"
      "- Latency is measured while other trials run on the other cores: compare points of one sweep with each "
      "other, and re-measure the one you pick on the Compare page before relying on its absolute speed.")

bundle, splits = bundle_and_splits()
if bundle is None:
    st.stop()
source, dataset, ws = current()
ss = st.session_state
image_mode = modality_of(bundle) == "image"

# ----------------------------------------------------------------------------- the spec
st.subheader("Space of recipes")
c1, c2, c3 = st.columns(3)
head_fraction = c1.multiselect("Heads removed (share)", [0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75], default=[0.25, 0.5],
                               key="sw_heads", help="0 keeps every head. Heads are ranked by the importance below.")
importance = c1.multiselect("Head importance", ["gradient", "ablation", "captum", "random"], default=["gradient"],
                            key="sw_importance", help="Computed once on validation; 'random' is the baseline.")
ffn_fraction = c2.multiselect("FFN neurons removed (share per layer)", [0.0, 0.1, 0.25, 0.5], default=[0.0],
                              key="sw_ffn", help="Ranked by weight magnitude.")
axformer = c2.multiselect("AxFormer search (loss tolerance)", ["off", 0.0, 0.01, 0.02], default=["off"],
                          key="sw_axformer", help="A search inside each trial: slow on a real model.")
distill = c2.multiselect("Distillation from the base", ["off", "on"], default=["off"], key="sw_distill")
quantizer = c3.multiselect("Quantizer", ["none", "int8", "rtn", "gpfq"], default=["none", "int8"], key="sw_quant")
bits = c3.multiselect("Bits (RTN, GPFQ)", [2, 3, 4, 8], default=[4], key="sw_bits")
n_cal = c3.multiselect(f"GPFQ calibration {'images' if image_mode else 'texts'}", [32, 64, 128, 256], default=[128], key="sw_ncal")

c1, c2, c3, c4 = st.columns(4)
sampling = c1.radio("Sampling", ["grid", "random"], horizontal=True, key="sw_sampling",
                    help="grid: in order; random: shuffled with the seed. Either way at most 'Trials' of them.")
budget = c2.number_input("Trials (budget)", 1, 500, 8, key="sw_budget")
seed = c3.number_input("Seed", 0, 10_000, 0, key="sw_seed")
max_drop = c4.number_input("Allowed validation accuracy drop", 0.0, 0.5, 0.01, step=0.005, format="%.3f",
                           key="sw_drop", help="The chosen point: the fastest (then smallest) front point whose "
                           "validation accuracy is within this of the base's.")
with st.expander("Measurement and workers"):
    c1, c2, c3 = st.columns(3)
    n_val = c1.number_input(f"Validation {'images' if image_mode else 'examples'}", 10, 100_000, min(500, len(splits.validation)), key="sw_nval")
    n_test = c2.number_input(f"Test {'images' if image_mode else 'examples'}", 10, 100_000, min(1000, len(splits.test)), key="sw_ntest")
    latency_runs = c3.number_input("Batch-1 latency runs", 2, 500, 30, key="sw_lat")
    c1, c2 = st.columns(2)
    backend = c1.radio("Run on", ["Ray", "this process (no Ray)"], horizontal=True, key="sw_backend")
    workers = c1.number_input("Local Ray workers", 1, 256, os.cpu_count() or 1, key="sw_workers",
                              help="One trial per worker at a time, one torch thread each.")
    address = c2.text_input("Ray cluster address (empty: a local Ray on this machine)",
                            os.environ.get("RAY_ADDRESS", ""), key="sw_address")

spec, spec_error = None, None
try:
    spec = SweepSpec(model=source, dataset=dataset, space={
        "head_fraction": head_fraction or [0.0], "importance": importance or ["gradient"],
        "ffn_fraction": ffn_fraction or [0.0], "axformer_tolerance": [None if a == "off" else a for a in axformer]
        or [None], "distill": [d == "on" for d in distill] or [False], "quantizer": quantizer or ["none"],
        "bits": bits or [4], "n_calibration": n_cal or [128]},
        sampling=sampling, budget=int(budget), sample_seed=int(seed), n_val=int(n_val), n_test=int(n_test),
        latency_runs=int(latency_runs), max_accuracy_drop=float(max_drop))
except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
    spec_error = e
    show_error(e)

job = jobs.get(ws, "sweep")
running = job is not None and not job.finished
if spec is not None:
    n_trials = len(spec.trials())
    st.caption(f"{n_trials} trials ({len(spec.space.points())} distinct recipes in the space"
               f"{', base included' if spec.include_base else ''}); sweep id `{spec.sweep_id}`.")
    with st.expander("The spec as JSON (rerun it with `axlab sweep spec.json`)"):
        st.code(spec.to_json(), language="json")
        st.download_button("Download spec.json", spec.to_json(), "spec.json", "application/json", key="sw_dl")

c1, c2 = st.columns([1, 5])
if c1.button("Start sweep", type="primary", key="sw_start", disabled=spec is None or running,
             icon=":material/play_arrow:"):
    store = variant_store()
    use_ray = backend == "Ray"
    run_spec = spec
    addr = address.strip() or None

    def work(progress):
        return run(run_spec, backend="ray" if use_ray else "sequential", address=addr,
                   workers=None if addr else int(workers), workspace=ws, store=store, bundle=bundle,
                   splits=splits, progress=progress)
    ss.sweep_spec = spec.to_dict()
    job = jobs.start(ws, "sweep", f"Sweep {spec.sweep_id[:6]}", work)
    running = True

shown = SweepSpec.from_dict(ss.sweep_spec) if running and ss.get("sweep_spec") else spec


@st.fragment(run_every=1.5 if running else None)
def live() -> None:
    """Re-drawn every 1.5 s while the sweep runs: progress, Stop, the front and the trials so far."""
    j = jobs.get(ws, "sweep")
    if j is not None and not j.finished:
        st.progress(j.fraction, text=jobs.status_text(j))
        if st.button("Stop", key=f"sw_stop_{j.uid}", icon=":material/stop_circle:",
                     help="Stops the sweep; every finished trial is kept, and starting the same spec resumes."):
            j.stop_requested = True
        if j.stop_requested:
            st.caption("Stopping (finished trials are kept)...")
    elif running:                         # it finished since the page was drawn: redraw the whole page
        st.rerun()
    elif j is not None:
        if j.error is not None and type(j.error).__name__ != "Stopped":
            show_error(j.error)
        elif j.result is not None and j.result.stopped or j.stop_requested:
            st.info("The sweep was stopped. Its finished trials are kept; start it again to run the rest.",
                    icon=":material/pause_circle:")
    if shown is None:
        return
    res = load(shown, workspace=ws, store=variant_store())
    df = res.table()
    counts = res.counts
    st.markdown(f"**{counts['ok']}** of {counts['total']} trials measured, **{counts['failed']}** failed, "
                f"**{int(df.pareto.sum()) if len(df) else 0}** on the Pareto front.")
    if df.empty:
        st.info("No trial of this spec is measured yet: press **Start sweep**.", icon=":material/info:")
        return
    c1, c2 = st.columns(2)
    c1.plotly_chart(front_figure(df, "latency_b1_ms", "val_accuracy"), key="sw_front_latency")
    c2.plotly_chart(front_figure(df, "size_mb", "val_accuracy"), key="sw_front_size")
    pick = res.chosen()
    if pick:
        st.success(f"**Chosen on validation: {pick['label']}**: {pick['recipe']}. Validation accuracy "
                   f"{pick['val_accuracy']:.4f}, test accuracy {pick['accuracy']:.4f} (reported, not used to "
                   f"choose), batch-1 latency {pick['latency_b1_ms']:.2f} ms, {pick['size_mb']:.1f} MB. "
                   "It is saved as a variant: see Compare and Export.", icon=":material/star:")
    st.subheader("Every trial")
    cols = ["label", "status", "recipe", "val_accuracy", "accuracy", "latency_b1_ms", "size_mb", "pareto", "chosen",
            "seconds", "error"]
    st.dataframe(df[cols].round({"val_accuracy": 4, "accuracy": 4, "latency_b1_ms": 2, "size_mb": 1, "seconds": 1}),
                 hide_index=True, key="sw_table",
                 column_config={"val_accuracy": "validation accuracy", "accuracy": "test accuracy",
                                "latency_b1_ms": "latency b1 (ms)", "size_mb": "size (MB)", "pareto": "on front",
                                "recipe": st.column_config.TextColumn("recipe", width="large")})
    with st.expander("Recipes as JSON"):
        st.code(json.dumps({r.label: r.steps for r in df.itertuples()}, indent=1), language="json")


live()

"""Pieces several pages share: the page intro, measurement settings, making a variant."""

from __future__ import annotations

import logging

import streamlit as st

from . import jobs
from .modality import processor_of
from .state import current, model_cache, recipe_key, remember_model, variant_model, variant_store, workspace_variants

__all__ = ["intro", "measure_settings", "pick_start", "pick_model", "create_variant", "ensure_base", "fmt_bytes",
           "speedup_text"]

log = logging.getLogger(__name__)


def intro(title: str, text: str, learn_more: str) -> None:
    """Page heading, two or three sentences on the concept, and a 'learn more' expander."""
    st.title(title)
    st.markdown(text)
    with st.expander("Learn more"):
        st.markdown(learn_more)


def measure_settings() -> None:
    """How variants are measured (shared by every page that creates one)."""
    ss = st.session_state
    with st.expander("Measurement settings"):
        ss.measure_n = st.number_input("Test examples for accuracy", 50, 100_000, int(ss.measure_n), step=50,
                                       help="Every variant is measured on the first N test examples. Keep N the "
                                       "same across variants you want to compare.")
        ss.latency_runs = st.number_input("Batch-1 latency runs", 5, 500, int(ss.latency_runs), step=5)


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB"


def pick_start(splits, label: str = "Start from", key: str = "start_from"):
    """Select the base or a saved variant to build on; returns (recipe, name)."""
    options = [("base model", [])] + [(f"{v.name} ({len(v.recipe)} steps)", v.recipe) for v in workspace_variants()
                                       if v.recipe]
    names = [o[0] for o in options]
    choice = st.selectbox(label, names, key=key,
                          help="New steps are appended to this variant's recipe; the base model is never changed.")
    return dict(options)[choice], choice


def pick_model(bundle, splits, label: str = "Model", key: str = "pick_model"):
    """Select the base or a saved variant to look at; returns (model, name). Variants are rebuilt once."""
    variants = [v for v in workspace_variants() if v.recipe]
    names = ["base model"] + [v.name for v in variants]
    choice = st.selectbox(label, names, key=key)
    if choice == "base model":
        return bundle.model, choice
    recipe = next(v.recipe for v in variants if v.name == choice)
    with st.spinner(f"Rebuilding '{choice}' from its recipe..."):
        return variant_model(bundle, splits, recipe), choice


def _measurer(bundle, splits):
    """A function measuring a model with this session's settings (read now: jobs run outside the session)."""
    from axlab.core.measure import measure
    split = splits.test.head(int(st.session_state.measure_n))
    runs = int(st.session_state.latency_runs)

    def run(model, progress, compare_to=None):
        # with compare_to (the base model) both run interleaved in the same latency rounds
        return measure(model, processor_of(bundle), split, split_name="test", latency_runs=(runs, 5), progress=progress,
                       compare_to=compare_to)
    return run


def ensure_base(bundle, splits) -> None:
    """Measure and save the base model once per workspace (the reference for every ratio)."""
    source, dataset, ws = current()
    if any(not v.recipe for v in workspace_variants()):
        return
    from axlab.core.measure import hardware_info
    from axlab.store.variants import Variant

    measure, store = _measurer(bundle, splits), variant_store()

    def work(progress):
        m = measure(bundle.model, progress)
        return store.add(Variant(name="base", base=source, dataset=dataset, recipe=[],
                                           measurements=m.to_dict(), hardware=hardware_info(), workspace=ws))
    jobs.run_with_progress(ws, "variant", "Measuring the base model", work)


def create_variant(bundle, splits, recipe: list, name: str, model=None, notes: str = ""):
    """Build (unless ``model`` is given), measure on test and save a variant. Returns the Variant."""
    from axlab.compress import validate_recipe
    from axlab.core.measure import hardware_info
    from axlab.store.variants import Variant

    source, dataset, ws = current()
    validate_recipe(recipe)
    ensure_base(bundle, splits)
    existing = {v.name for v in workspace_variants()}
    base_name, i = name.strip() or f"variant-{recipe_key(recipe)[:6]}", 2
    name = base_name
    while name in existing:
        name, i = f"{base_name}-{i}", i + 1

    measure, store, cache = _measurer(bundle, splits), variant_store(), model_cache()

    def work(progress):
        m = model
        if m is None:
            m = variant_model(bundle, splits, recipe, progress=progress, cache=cache)
        else:
            remember_model(bundle, splits, recipe, m, cache=cache)
        meas = measure(m, progress, compare_to=bundle.model)
        return store.add(Variant(name=name, base=source, dataset=dataset, recipe=recipe,
                                           measurements=meas.to_dict(), hardware=hardware_info(), workspace=ws,
                                           notes=notes))
    v = jobs.run_with_progress(ws, "variant", f"Building and measuring '{name}'", work)
    from .sidebar import refresh_variants
    refresh_variants()
    st.success(f"Saved variant **{v.name}**: accuracy {v.measurements['accuracy']:.3f}, "
               f"batch-1 latency {v.measurements.get('latency_b1_ms') or 0:.1f} ms, "
               f"size {fmt_bytes(v.measurements.get('size_bytes'))}. {speedup_text(v.measurements)} "
               "See it on the Compare page.", icon=":material/check_circle:")
    return v


def speedup_text(measurements: dict) -> str:
    """The batch-1 speed-up over the base, measured interleaved with it, with its spread and a noise label."""
    from axlab.core.measure import describe_speedup
    vs = (measurements or {}).get("latency_vs_base") or {}
    r = vs.get("b1")
    if not r:
        return ""
    lo, hi = r["base_spread_ms"]
    return (f"Speed-up at batch 1: **{describe_speedup(r)}**, measured interleaved with the base in {r['rounds']} "
            f"rounds (base {r['base_ms']:.1f} ms, {lo:.1f}-{hi:.1f}; variant {r['ms']:.1f} ms, "
            f"{r['spread_ms'][0]:.1f}-{r['spread_ms'][1]:.1f})"
            + (": the two swap order in some round, so this is not a real difference." if r.get("within_noise")
               else "."))

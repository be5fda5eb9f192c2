"""Compare: every variant's accuracy, latency and size; the Pareto front; before/after views."""

import streamlit as st

from axlab.analysis import attention_maps as maps
from axlab.analysis import attributions as attr
from axlab.analysis import viz
from axlab.deploy import compare

from ui.common import intro
from ui.modality import modality_of, processor_of
from ui.picker import pick_image
from ui.sidebar import sidebar
from ui.state import bundle_and_splits, show_error, variant_model, variant_store, workspace_variants

st.set_page_config(page_title="Compare - axlab", page_icon=":material/compare:", layout="wide")
sidebar()
intro("Compare",
      "Every variant was measured on the same test examples: accuracy, macro-F1, latency at batch 1 and 32, and "
      "the size of the file an export would write. The **Pareto front** holds the variants that no other variant "
      "beats on both accuracy and cost: the only ones worth choosing from.",
      "- **Ratios** are to the base model: speed-up = base latency / variant latency, compression = base size / "
      "variant size.\n- **Latency** is the median of many single-sentence runs on this machine's CPU threads; it "
      "is noisy when other programs run. Re-measure before drawing conclusions from small differences.\n"
      "- **Before/after** shows where two variants look and which words drive their prediction for the same "
      "sentence: a good variant keeps the important words. For an image model: the attention rollout over the "
      "same image, and pixel saliency (integrated gradients, or occlusion for int8 variants, which have no "
      "gradients): a good variant still looks at the strokes that make the class.")

bundle, splits = bundle_and_splits()
if bundle is None:
    st.stop()
variants = workspace_variants()
if not variants:
    st.info("No variants yet. Create one on the Prune or Quantize page; the base model is measured with it.",
            icon=":material/info:")
    st.stop()
st.subheader(f"{len(variants)} variants")

df = compare.variants_table(variants)
shown = compare.display_table(df) if hasattr(compare, "display_table") else df
st.dataframe(shown, hide_index=True, key="cmp_table")
size_col = "size_mb" if "size_mb" in df else "size_bytes"
c1, c2 = st.columns(2)
with c1:
    st.plotly_chart(compare.tradeoff_figure(df, x="latency_b1_ms"), key="cmp_latency")
with c2:
    st.plotly_chart(compare.tradeoff_figure(df, x=size_col), key="cmp_size")

st.subheader("Per class")
st.caption("Precision, recall and F1 of each class on the measured test examples, and the confusion matrix "
           "(rows: true class, columns: predicted, in the model's label order). Macro-F1 averages over the classes "
           "present in the data.")
pc_name = st.selectbox("Variant", [v.name for v in variants], key="cmp_pc_pick")
pc_m = next(v.measurements for v in variants if v.name == pc_name)
for note in pc_m.get("notes") or []:
    st.info(note, icon=":material/info:")
if pc_m.get("confusion"):
    c1, c2 = st.columns([2, 3])
    c1.dataframe(compare.per_class_table(pc_m), hide_index=True, key="cmp_pc_table")
    with c2:
        st.plotly_chart(compare.confusion_figure(pc_m, title=f"{pc_name}: confusion matrix"), key="cmp_confusion")
else:
    st.caption("This variant was measured before per-class figures were recorded; measure it again to see them.")

with st.expander("Delete a variant"):
    victim = st.selectbox("Variant", [v.name for v in variants if v.recipe] or ["-"], key="cmp_del_pick")
    if st.button("Delete", key="cmp_del") and victim != "-":
        variant_store().delete(next(v.id for v in variants if v.name == victim))
        st.rerun()

st.subheader("Before / after")
names = [v.name for v in variants]
c1, c2 = st.columns(2)
a_name = c1.selectbox("Before", names, index=0, key="cmp_a")
b_name = c2.selectbox("After", names, index=len(names) - 1, key="cmp_b")
image_mode = modality_of(bundle) == "image"
proc = processor_of(bundle)
if image_mode:
    try:
        shown_input, desc = pick_image(splits, "cmp_img", default_split="test")
    except Exception as e:  # noqa: BLE001  (an unreadable upload: shown with its fix)
        show_error(e)
        st.stop()
    if shown_input is None:
        st.stop()
    st.caption(f"Both variants look at {desc}.")
else:
    shown_input = st.text_input("Sentence", value=splits.test.texts[0], key="cmp_text")
by_name = {v.name: v for v in variants}
models = {}
with st.spinner("Rebuilding the two variants from their recipes..."):
    for n in (a_name, b_name):
        models[n] = variant_model(bundle, splits, by_name[n].recipe)
t_attn, t_attr = st.tabs(["Attention", "Attribution"])
with t_attn:
    if image_mode:
        st.caption("Attention rollout into [CLS] over the image (mean over heads, residual included).")
    cols = st.columns(2)
    for col, n in zip(cols, (a_name, b_name)):
        with col:
            st.markdown(f"**{n}**")
            try:
                result = maps.attention_for(models[n], proc, [shown_input] if image_mode else shown_input)
                fig = viz.rollout_overlay(result, 0) if image_mode else viz.model_view(result)
                st.plotly_chart(fig, key=f"cmp_attn_{n}_{col is cols[0]}")
            except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
                show_error(e)
with t_attr:
    if image_mode:
        how = st.radio("Method", ["auto", "integrated_gradients", "occlusion"], horizontal=True, key="cmp_attr_method",
                       help="auto: integrated gradients, or occlusion (patch-sized windows) for a variant with int8 "
                            "kernels, which have no gradients.")
    if st.button("Explain both", key="cmp_explain"):
        try:
            kw = {"method": how} if image_mode else {}
            res = attr.compare_attributions({a_name: models[a_name], b_name: models[b_name]}, proc, shown_input,
                                            **kw)
        except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
            show_error(e)
        else:
            if image_mode:
                st.caption("Red pixels push toward the explained class (the first variant's prediction), blue away "
                           "from it; both on one scale.")
                st.plotly_chart(viz.pixel_attribution_compare(res), key="cmp_pixel_attr")
            else:
                cols = st.columns(2)
                for col, (n, a) in zip(cols, res.items()):
                    with col:
                        st.markdown(f"**{n}**: p({a.label or a.target}) = {a.output:.3f} ({a.method})")
                        st.html(viz.attribution_html(a.tokens, a.scores))

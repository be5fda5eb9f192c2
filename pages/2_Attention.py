"""Attention: what each head looks at, rollout, and per-head statistics."""

import streamlit as st

from axlab.analysis import attention_maps as maps
from axlab.analysis import head_stats as hs
from axlab.analysis import viz

from ui import jobs
from ui.common import intro, pick_model
from ui.modality import dataset_modality, modality_of, processor_of
from ui.picker import pick_image
from ui.sidebar import sidebar
from ui.state import analysis_results, bundle_and_splits, current, show_error

st.set_page_config(page_title="Attention - axlab", page_icon=":material/visibility:", layout="wide")
sidebar()
LEARN_MORE = (
    "- **What a head is.** In each layer the hidden vectors are projected into several small query/key/value "
    "spaces. Each of these is a head: it computes its own attention pattern and its own output, and the outputs "
    "are concatenated and mixed by the output projection. MiniLM-L6 has 6 layers x 12 heads of size 32.\n"
    "- **Model view.** One small map per (layer, head), rows = the token that looks, columns = where it looks.\n"
    "- **Rollout** (Abnar & Zuidema 2020) multiplies the head-averaged attention of every layer, plus the "
    "residual connection, to estimate how much each input token flows into each position at the top.\n"
    "- **Statistics** over many sentences: entropy (spread), mean distance (local vs global), and the share of "
    "attention on [CLS], [SEP] and punctuation. Heads that mostly attend to [SEP] often act as a 'no-op' and "
    "are good pruning candidates (SG-Trans observes lower layers are more local, higher more global).\n"
    "- **Images** (ViT, DeiT, DINOv2): the tokens are the image's **patches** (plus [CLS]). A head's map is drawn "
    "over the image: how much [CLS] (or a patch you pick) attends to each patch. The statistics add the ViT "
    "paper's **mean attention distance** in pixels per head against depth: low layers mix near and far "
    "patches, high layers look globally.")
if dataset_modality(st.session_state.dataset) == "image":   # the data's kind (cheap; the model's is checked below)
    intro("Attention",
          "Each layer of the model has several **attention heads**. A vision transformer cuts the image into "
          "**patches** and reads them as tokens, after a [CLS] token whose output is classified. A head's weights "
          "(a row per token, summing to 1) show where it looks: drawn over the image, they show which patches [CLS] "
          "(or a patch you pick) gathers from. Heads specialise: some look at neighbouring patches, some at the "
          "strokes, some spread over the whole image.", LEARN_MORE)
else:
    intro("Attention",
          "Each layer of the model has several **attention heads**. A head lets every token gather information from "
          "other tokens; its weights (a row per token, summing to 1) show where it looks. Heads specialise: some look "
          "at the next or previous word, some at [CLS] or [SEP], some spread over the whole sentence.", LEARN_MORE)

bundle, splits = bundle_and_splits()
if bundle is None:
    st.stop()
source, dataset, ws = current()

model, model_name = pick_model(bundle, splits, key="attn_model")


def statistics_tab(unit: str) -> None:
    """Head statistics over validation examples, computed as a job (shared by text and image mode)."""
    n = st.slider(f"Validation {unit}", 20, len(splits.validation), min(200, len(splits.validation)), step=20,
                  key="stats_n")
    key = ("head_stats", source, dataset, model_name, n)
    store = analysis_results()
    if key not in store and st.button("Compute statistics", key="stats_go", type="primary"):
        proc = processor_of(bundle)
        jobs.start(ws, "head_stats", "Head statistics",
                   lambda p: store.__setitem__(key, hs.head_statistics(model, proc, splits.validation,
                                                                       n=n, progress=p)))
    try:
        jobs.collect(ws, "head_stats")
    except Exception as e:  # noqa: BLE001
        show_error(e)
    if key in store:
        if hasattr(viz, "statistics_figures"):
            figs = viz.statistics_figures(store[key])
        else:
            figs = {n: viz.layer_head_heatmap(m, n.replace("_", " ")) for n, m in store[key].items()}
        cols = st.columns(2)
        for i, (name, fig) in enumerate(figs.items()):
            cols[i % 2].plotly_chart(fig, key=f"stat-{name}")


if modality_of(bundle) == "image":
    # ------------------------------------------------------------------ image mode: patches over the image
    try:
        image, desc = pick_image(splits, "attn_img")
    except Exception as e:  # noqa: BLE001  (an unreadable upload: shown with its fix)
        show_error(e)
        st.stop()
    if image is None:
        st.stop()
    try:
        full = maps.attention_for(model, processor_of(bundle), [image])
        from axlab.core.measure import predict_logits
        probs = predict_logits(model, processor_of(bundle), [image]).softmax(-1)[0]
    except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
        show_error(e)
        st.stop()
    top = int(probs.argmax())
    label = model.config.id2label.get(top, str(top)) if hasattr(model, "config") else str(top)
    rows, cols_ = full.grid
    st.caption(f"Looking at {desc}. The model predicts **{label}** (p = {float(probs[top]):.3f}); it reads "
               f"{rows} x {cols_} patches of {full.patch[0]} x {full.patch[1]} pixels plus {full.n_prefix} prefix "
               f"token{'s' if full.n_prefix != 1 else ''} ([CLS]).")
    c1, c2, c3 = st.columns([2, 1, 1])
    src = c1.radio("Attention from", ["[CLS] (what the classifier reads)", "A patch"], horizontal=True,
                   key="attn_query_kind", help="Whose attention row to draw: [CLS], or one patch (outlined).")
    query = None
    if src == "A patch":
        qr = c2.number_input(f"Patch row (0-{rows - 1})", 0, rows - 1, rows // 2, key="attn_query_row")
        qc = c3.number_input(f"Patch column (0-{cols_ - 1})", 0, cols_ - 1, cols_ // 2, key="attn_query_col")
        query = (int(qr), int(qc))
    t_layer, t_head, t_roll, t_stats = st.tabs(["Heads of a layer", "Single head", "Rollout", "Statistics"])
    with t_layer:
        layer = st.slider("Layer", 0, full.n_layers - 1, 0, key="attn_img_layer")
        st.caption("Every head of this layer over the image (each scaled to its own maximum); removed heads say so.")
        try:
            st.plotly_chart(viz.layer_heads_figure(full, layer, query=query), key="layer_heads")
        except Exception as e:  # noqa: BLE001
            show_error(e)
    with t_head:
        c1, c2 = st.columns(2)
        layer = c1.slider("Layer", 0, full.n_layers - 1, 0, key="attn_layer")
        head = c2.slider("Head", 0, full.n_heads - 1, 0, key="attn_head")
        try:
            st.plotly_chart(viz.patch_attention_figure(full, layer, head, query=query), key="head_heatmap")
        except Exception as e:  # noqa: BLE001  (e.g. a removed head: shown with st.error)
            show_error(e)
    with t_roll:
        reduce = st.radio("Heads combined by", ["mean", "max"], horizontal=True, key="attn_rollout_reduce",
                          help="mean: the paper's rollout; max: the strongest head of each layer.")
        st.caption("Attention rollout (Abnar & Zuidema 2020): how much each patch flows into "
                   f"{'[CLS]' if query is None else f'patch {query}'} after all layers, residual included.")
        try:
            st.plotly_chart(viz.rollout_overlay(full, 0, head_reduce=reduce, query=query), key="rollout")
        except Exception as e:  # noqa: BLE001
            show_error(e)
    with t_stats:
        statistics_tab("images")
    st.stop()

text = st.text_input("Sentence", value=splits.validation.texts[0], key="attn_text",
                     help="Any text; long texts are cut to the model's first tokens, as when measuring.")
try:
    full = maps.attention_for(model, bundle.tokenizer, text)
except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
    show_error(e)
    st.stop()

kept = len(full.tokens[0])
if full.truncated(0):
    st.warning(f"This text has **{full.n_input_tokens[0]:,} tokens**; the model reads at most {kept}, so only the "
               f"**first {kept} tokens were kept** (the rest, from \"{full.tokens[0][-2]}...\" on, does not reach "
               "the model, here or when it classifies). Paste a shorter passage to look at another part.",
               icon=":material/content_cut:")
SHOW_DEFAULT = 40
if kept > SHOW_DEFAULT:
    shown = st.slider("Tokens to show", 8, kept, SHOW_DEFAULT, key="attn_first_n",
                      help="The maps show the first N tokens (rows and columns) so their labels stay readable; "
                           "the model still read all the tokens it kept.")
    st.caption(f"Showing tokens 1-{shown} of the {kept} the model read.")
    result = full.first_tokens(shown)
else:
    result = full

t_model, t_head, t_roll, t_stats = st.tabs(["Model view", "Single head", "Rollout", "Statistics"])
with t_model:
    st.caption("Every head of every layer for this sentence; removed heads are blank.")
    st.plotly_chart(viz.model_view(result), key="model_view")
with t_head:
    c1, c2 = st.columns(2)
    layer = c1.slider("Layer", 0, result.n_layers - 1, 0, key="attn_layer")
    head = c2.slider("Head", 0, result.n_heads - 1, 0, key="attn_head")
    try:
        st.plotly_chart(viz.head_heatmap(result, layer, head), key="head_heatmap")
    except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
        show_error(e)
with t_roll:
    st.caption("How much each input token (columns) flows into each position (rows) after all layers.")
    st.plotly_chart(viz.rollout_figure(result, matrix=maps.rollout(full)[:len(result.tokens[0]), :len(result.tokens[0])]),
                    key="rollout")
with t_stats:
    statistics_tab("sentences")

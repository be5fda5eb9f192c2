"""Model & data: pick the model to work on and the labelled data that defines the task."""

import streamlit as st

from ui.common import ensure_base, intro, measure_settings
from ui.sidebar import sidebar
from ui.state import DEFAULT_SOURCE, current_splits, load_base, load_splits, save_upload, show_error

st.set_page_config(page_title="Model & data - axlab", page_icon=":material/database:", layout="wide")
sidebar()
intro("Model & data",
      "axlab works on a **fine-tuned classifier** and the **labelled data of its task**: the data decides which "
      "parts of the model the task needs. Validation examples guide every decision; test examples are only "
      "used to report the final numbers.",
      "- **Model sources.** `default` is MiniLM-L6 fine-tuned on Rotten Tomatoes, built on this machine. A hub "
      "id (`org/name`) needs a network. A local folder is what `save_pretrained` writes (config.json, "
      "model.safetensors, tokenizer files). BERT, RoBERTa, DistilBERT and ELECTRA classifiers are supported.\n"
      "- **Safety.** Only safetensors weights are loaded unless you allow pickle files, because unpickling can run "
      "code.\n- **Your own data.** A CSV/TSV with a header row, a text column and a label column (named `text` and "
      "`label`, or choose the names below). It is split with a fixed seed into train / validation / test.")

ss = st.session_state
left, right = st.columns(2)

with left:
    st.subheader("Model")
    kind = st.radio("Source", ["Default model", "Hub id", "Local folder"], horizontal=True, key="model_kind")
    if kind == "Default model":
        new_source = DEFAULT_SOURCE
        st.caption("MiniLM-L6 (6 layers x 12 heads) fine-tuned on Rotten Tomatoes reviews.")
    elif kind == "Hub id":
        new_source = st.text_input("Hub id", key="hub_id", placeholder="textattack/bert-base-uncased-SST-2").strip()
    else:
        new_source = st.text_input("Folder", key="model_folder", placeholder="/path/to/saved/model").strip()
    allow_pickle = st.checkbox("Allow pickle checkpoints (only for files you trust)", key="allow_pickle_box")
    if st.button("Load model", type="primary", key="load_model"):
        try:
            bundle = load_base(new_source, allow_pickle)
        except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
            show_error(e)
        else:
            ss.source, ss.allow_pickle = new_source, allow_pickle
            st.query_params["model"] = new_source
            st.success(f"Loaded `{new_source}`.", icon=":material/check_circle:")
            st.rerun()

with right:
    st.subheader("Data")
    from axlab.core.data import DATASETS
    names = list(DATASETS) + ["Upload a CSV/TSV"]
    current_idx = names.index(ss.dataset) if ss.dataset in DATASETS else len(names) - 1
    choice = st.selectbox("Dataset", names, index=current_idx, key="dataset_choice",
                          format_func=lambda n: f"{n}: {DATASETS[n][1]}" if n in DATASETS else n)
    new_dataset = choice if choice in DATASETS else None
    if choice not in DATASETS:
        up = st.file_uploader("Labelled texts", type=["csv", "tsv"], key="upload")
        c1, c2 = st.columns(2)
        text_col = c1.text_input("Text column (blank: auto)", key="text_col").strip() or None
        label_col = c2.text_input("Label column (blank: auto)", key="label_col").strip() or None
        if up is not None:
            new_dataset = str(save_upload(up))
    if st.button("Use this data", type="primary", key="load_data", disabled=new_dataset is None):
        cols = (None, None) if choice in DATASETS else (text_col, label_col)
        try:
            load_splits(new_dataset, *cols)
        except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
            show_error(e)
        else:
            ss.dataset, ss.data_columns = new_dataset, cols
            st.query_params["data"] = new_dataset
            st.rerun()

st.divider()
st.subheader("Current model on current data")
try:
    bundle = load_base(ss.source, ss.allow_pickle)
    splits = current_splits()
except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
    show_error(e)
    st.stop()

c = st.columns(4)
c[0].metric("Architecture", bundle.arch)
c[1].metric("Layers x heads", f"{bundle.n_layers} x {bundle.n_heads}")
c[2].metric("Parameters", f"{sum(p.numel() for p in bundle.model.parameters()) / 1e6:.1f} M")
c[3].metric("Labels", ", ".join(bundle.labels))
if len(bundle.labels) != len(splits.label_names):
    st.error(f"The model predicts {len(bundle.labels)} labels but the data has {len(splits.label_names)} "
             f"({', '.join(splits.label_names)}).\n\nHow to fix: pick data of the model's task, or a model "
             "fine-tuned on this data.", icon=":material/error:")
if bundle.info:
    with st.expander("Model card"):
        st.json(bundle.info)
with st.expander("A few examples"):
    st.dataframe({"text": splits.validation.texts[:8],
                  "label": [splits.label_names[i] for i in splits.validation.labels[:8]]}, hide_index=True)

measure_settings()
if st.button("Measure the base model", key="measure_base"):
    try:
        ensure_base(bundle, splits)
        st.success("The base model is measured; see the Compare page.", icon=":material/check_circle:")
    except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
        show_error(e)

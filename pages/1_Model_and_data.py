"""Model & data: pick the model to work on and the labelled data that defines the task; or fine-tune one."""

import hashlib
import json
from pathlib import Path

import streamlit as st

from ui import jobs
from ui.common import ensure_base, intro, measure_settings
from ui.modality import (DEFAULT_DATASETS, DEFAULT_SOURCES, data_modality, dataset_modality, mismatch_message,
                         modality_of, split_notes, words)
from ui.sidebar import sidebar
from ui.state import current_splits, dataset_label, load_base, load_splits, save_upload, show_error

st.set_page_config(page_title="Model & data - axlab", page_icon=":material/database:", layout="wide")
sidebar()
intro("Model & data",
      "axlab works on a **fine-tuned classifier** and the **labelled data of its task**: the data decides which "
      "parts of the model the task needs. Validation examples guide every decision; test examples are only "
      "used to report the final numbers. No classifier yet? **Fine-tune** one below on the data you choose.",
      "- **Model sources.** `default` is MiniLM-L6 fine-tuned on Rotten Tomatoes, built on this machine; "
      "`default-vision` is a small ViT trained from scratch on MNIST digits, also built here. A hub "
      "id (`org/name`) needs a network. A local folder is what `save_pretrained` writes (config.json, "
      "model.safetensors, tokenizer or image-processor files). BERT, RoBERTa, DistilBERT and ELECTRA text "
      "classifiers and ViT, DeiT and DINOv2 image classifiers are supported.\n"
      "- **Safety.** Only safetensors weights are loaded unless you allow pickle files, because unpickling can run "
      "code.\n- **Your own data.** A CSV/TSV with a header row, a text column and a label column (named `text` and "
      "`label`, or choose the names below). Give your own train / validation / test files, or one file with a "
      "split column, so that test examples are really held out; otherwise axlab splits the file with a fixed "
      "seed and says so. For an image model: a zip of a folder with one subfolder per class (`digits/3/a.png`), "
      "or a folder, zip or CSV of image paths and labels on this machine.\n- **Labels are matched by name** to the model's labels (`id2label`), whatever their "
      "order; a model with generic names (`LABEL_0`...) or integer labels is matched by position, with a note.")

ss = st.session_state
for key in ("data_msg", "model_msg"):           # confirmations that survive the rerun after a change
    if ss.get(key):
        st.success(ss.pop(key), icon=":material/check_circle:")

DATA_CONTROLS = {
    "split_column": 'Type the name of the split column in the "Split column" box (its values: train, '
                    "validation or dev, test).",
}


def _manifest(spec: dict) -> str:
    """A small JSON manifest naming the split files (what load_dataset reads); saved by content."""
    from axlab.core.paths import data_dir
    raw = json.dumps(spec, sort_keys=True)
    path = data_dir("uploads") / f"splits-{hashlib.sha256(raw.encode()).hexdigest()[:16]}.json"
    if not path.exists():
        path.write_text(raw)
    return str(path)


VISION_KIND = "Default vision model (MNIST ViT)"
UPLOAD_TEXT, UPLOAD_ZIP, IMAGE_PATH = "Upload a CSV/TSV", "Upload a zip of class folders", \
    "A folder, zip or CSV of images on this machine"


def _model_modality() -> str:
    """What the current model reads; if it does not load, what the current data hold (the page shows the error)."""
    try:
        return modality_of(load_base(ss.source, ss.allow_pickle))
    except Exception:  # noqa: BLE001  (shown below, under 'Current model on current data')
        return dataset_modality(ss.dataset)


left, right = st.columns(2)

with left:
    st.subheader("Model")
    kind = st.radio("Source", ["Default model", VISION_KIND, "Hub id", "Local folder"], horizontal=True,
                    key="model_kind", index=1 if ss.source == DEFAULT_SOURCES["image"] else 0)
    if kind == "Default model":
        new_source = DEFAULT_SOURCES["text"]
        st.caption("MiniLM-L6 (6 layers x 12 heads) fine-tuned on Rotten Tomatoes reviews.")
    elif kind == VISION_KIND:
        new_source = DEFAULT_SOURCES["image"]
        st.caption("A small ViT (28 x 28 grey digits in 7 x 7 patches) trained from scratch on MNIST; "
                   "`axlab prepare` builds it once.")
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
            m = modality_of(bundle)
            ss.model_msg = f"Loaded `{new_source}` ({bundle.arch}, {words(m)['reads']}, labels: {', '.join(bundle.labels)})."
            if dataset_modality(ss.dataset) != m:      # the data of the other kind would not fit: switch to a default
                old = dataset_label(ss.dataset)
                ss.dataset, ss.data_columns = DEFAULT_DATASETS[m], (None, None)
                st.query_params["data"] = ss.dataset
                ss.model_msg += (f" It reads {words(m)['examples']}, so the data switched from `{old}` to "
                                 f"`{ss.dataset}`; choose other {words(m)['examples']} under Data.")
            st.rerun()

with right:
    st.subheader("Data")
    model_kind = _model_modality()
    if model_kind == "image":
        from axlab.core.images import IMAGE_DATASETS as DATASETS
        names = list(DATASETS) + [UPLOAD_ZIP, IMAGE_PATH]
        other = UPLOAD_ZIP if str(ss.dataset).lower().endswith(".zip") else IMAGE_PATH
    else:
        from axlab.core.data import DATASETS
        names = list(DATASETS) + [UPLOAD_TEXT]
        other = UPLOAD_TEXT
    st.caption(f"The current model **{words(model_kind)['reads']}**, so these are the {words(model_kind)['kind']} "
               f"datasets (load a {'text' if model_kind == 'image' else 'vision'} model to see the "
               f"{'text' if model_kind == 'image' else 'image'} ones).")
    current_idx = names.index(ss.dataset) if ss.dataset in DATASETS else names.index(other)

    def _describe(n):
        if n in DATASETS:
            d = DATASETS[n]
            return f"{n}: {d if isinstance(d, str) else d[1]}"
        return n
    choice = st.selectbox("Dataset", names, index=current_idx, key=f"dataset_choice{'_image' if model_kind == 'image' else ''}",
                          format_func=_describe)
    new_dataset = choice if choice in DATASETS else None
    text_col = label_col = None
    if choice == UPLOAD_ZIP:
        up = st.file_uploader("Zip of class folders", type=["zip"], key="upload_zip",
                              help="A zip of one folder with a subfolder per class (`digits/3/a.png`), or with "
                                   "train / validation / test subfolders that each hold the class folders.")
        if up is not None:
            new_dataset = str(save_upload(up))
            st.caption(f"Uploaded **{up.name}**.")
    elif choice == IMAGE_PATH:
        typed = st.text_input("Folder, zip or CSV", key="image_path",
                              placeholder="/path/to/images (one subfolder per class) or images.csv").strip()
        if typed.lower().endswith((".csv", ".tsv")):
            c1, c2 = st.columns(2)
            text_col = c1.text_input("Image-path column (blank: auto)", key="image_col").strip() or None
            label_col = c2.text_input("Label column (blank: auto)", key="image_label_col").strip() or None
        new_dataset = typed or None
    elif choice not in DATASETS:
        how = st.radio("Splits", ["One file (axlab splits it)", "One file with a split column",
                                  "Separate train / validation / test files"], key="split_mode",
                       help="Give your own splits when the model was trained on part of your data: only then are "
                            "the test figures on held-out examples.")
        c1, c2 = st.columns(2)
        text_col = c1.text_input("Text column (blank: auto)", key="text_col").strip() or None
        label_col = c2.text_input("Label column (blank: auto)", key="label_col").strip() or None
        if how == "Separate train / validation / test files":
            files = {}
            for part, required in (("train", False), ("validation", False), ("test", True)):
                up = st.file_uploader(f"{part.capitalize()} file" + ("" if required else " (optional)"),
                                      type=["csv", "tsv"], key=f"upload_{part}")
                if up is not None:
                    files[part] = str(save_upload(up))
            if "test" in files and ("train" in files or "validation" in files):
                new_dataset = _manifest(files)
            else:
                st.caption("Give at least a test file and a train (or validation) file; a missing validation "
                           "split is carved out of train.")
        else:
            up = st.file_uploader("Labelled texts", type=["csv", "tsv"], key="upload")
            split_col = None
            if how == "One file with a split column":
                split_col = st.text_input("Split column", value="split", key="split_col").strip() or None
            if up is not None:
                path = str(save_upload(up))
                new_dataset = _manifest({"file": path, "split_column": split_col}) if split_col else path
    if st.button("Use this data", type="primary", key="load_data", disabled=new_dataset is None):
        cols = (None, None) if choice in DATASETS else (text_col, label_col)
        try:
            if choice == IMAGE_PATH and not Path(new_dataset).expanduser().exists():
                from axlab.core.errors import DataError
                raise DataError(f"'{new_dataset}' does not exist on the machine that runs the workbench.",
                                "Type the path of a folder with one subfolder per class, a .zip of one, or a CSV "
                                "of image paths and labels (paths relative to the CSV).")
            splits_new = load_splits(new_dataset, *cols)
            if data_modality(splits_new) != model_kind:
                from axlab.core.errors import DataError
                raise DataError(*mismatch_message(model_kind, data_modality(splits_new)))
        except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
            show_error(e, DATA_CONTROLS)
        else:
            ss.dataset, ss.data_columns = new_dataset, cols
            st.query_params["data"] = new_dataset
            sz = splits_new.sizes
            unit = words(data_modality(splits_new))["examples"] if data_modality(splits_new) == "image" else "examples"
            ss.data_msg = (f"Now using **{dataset_label(new_dataset)}**: {sz['train']} train / {sz['validation']} "
                           f"validation / {sz['test']} test {unit}, {len(splits_new.label_names)} labels "
                           f"({', '.join(splits_new.label_names[:12])}). " + " ".join(split_notes(splits_new)))
            st.rerun()

st.divider()
st.subheader("Current model on current data")
bundle = splits = None
try:
    splits = current_splits()
    bundle = load_base(ss.source, ss.allow_pickle)
except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working; fine-tuning needs no model)
    show_error(e, DATA_CONTROLS)
if bundle is not None and modality_of(bundle) != data_modality(splits):
    st.error("**{}**\n\nHow to fix: {}".format(*mismatch_message(modality_of(bundle), data_modality(splits))),
             icon=":material/error:")
    bundle = None

if bundle is not None:
    from axlab.core.data import align_labels
    c = st.columns(4)
    c[0].metric("Architecture", bundle.arch)
    c[1].metric("Layers x heads", f"{bundle.n_layers} x {bundle.n_heads}")
    c[2].metric("Parameters", f"{sum(p.numel() for p in bundle.model.parameters()) / 1e6:.1f} M")
    c[3].metric("Labels", ", ".join(bundle.labels))
    try:
        aligned = align_labels(splits, bundle.model)
    except Exception as e:  # noqa: BLE001  (a label mismatch: shown with its fix)
        show_error(e)
        aligned = None
    sz = splits.sizes
    st.caption(f"Data **{dataset_label(ss.dataset)}**: {sz['train']} train / {sz['validation']} validation / "
               f"{sz['test']} test.")
    for note in split_notes(aligned or splits):
        st.info(note, icon=":material/info:")
    if bundle.info:
        with st.expander("Model card"):
            st.json(bundle.info)
    with st.expander("A few examples"):
        if data_modality(splits) == "image":
            val = splits.validation
            cols = st.columns(8)
            for i in range(min(8, len(val))):
                cols[i].image(val.images[i], caption=f"{splits.label_names[val.labels[i]]}", width=72, clamp=True)
        else:
            st.dataframe({"text": splits.validation.texts[:8],
                          "label": [splits.label_names[i] for i in splits.validation.labels[:8]]}, hide_index=True)

    measure_settings()
    if st.button("Measure the base model", key="measure_base", disabled=aligned is None):
        try:
            ensure_base(bundle, splits)
            st.success("The base model is measured; see the Compare page.", icon=":material/check_circle:")
        except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
            show_error(e)

# ----------------------------------------------------------------------------- fine-tune

st.divider()
st.subheader("Fine-tune")
st.markdown("Train a classifier on the current data: a base encoder (the packaged MiniLM by default, or the current "
            "model) gets a classification head for the data's labels and is fine-tuned on the train split, with "
            "early stopping on validation. The result is saved as a model folder with a model card (cached: the "
            "same settings on the same data return at once) and becomes the current model.")
if splits is not None and data_modality(splits) == "image":
    st.info("Fine-tuning here trains text classifiers. For images, the default vision model (a ViT trained on "
            "MNIST) is built by `axlab prepare`; or train a ViT / DeiT / DINOv2 classifier elsewhere and load its "
            "folder above.", icon=":material/info:")
elif splits is not None:
    from axlab.core.train import TRAIN_DEFAULTS, TrainConfig, train
    enc_choice = st.radio("Start from", ["Packaged MiniLM encoder", "The current model"], horizontal=True,
                          key="ft_encoder")
    c = st.columns(4)
    epochs = c[0].number_input("Max epochs", 1, 50, TRAIN_DEFAULTS["epochs"], key="ft_epochs")
    patience = c[1].number_input("Patience (epochs)", 0, 10, TRAIN_DEFAULTS["patience"], key="ft_patience",
                                 help="Stop after this many epochs without a better validation score (0: never).")
    max_train = c[2].number_input("Training examples (0: all)", 0, 10_000_000, 0, step=500, key="ft_max_train")
    max_length = c[3].number_input("Max tokens", 8, 512, TRAIN_DEFAULTS["max_length"], step=8, key="ft_max_length")
    ws = ss.workspace
    if st.button("Fine-tune", type="primary", key="ft_start"):
        try:
            cfg = TrainConfig(dataset=splits.name, epochs=int(epochs), patience=int(patience) or None,
                              max_train=int(max_train) or None, max_length=int(max_length),
                              encoder="minilm" if enc_choice.startswith("Packaged") else
                              (bundle.path if bundle is not None else ss.source))
        except Exception as e:  # noqa: BLE001
            show_error(e)
        else:
            data = splits
            jobs.start(ws, "finetune", f"Fine-tuning on {splits.name}",
                       lambda progress: train(cfg, splits=data, progress=progress))
    try:
        card = jobs.collect(ws, "finetune")
    except Exception as e:  # noqa: BLE001  (Stopped or a bad input: shown, the app keeps working)
        show_error(e)
        card = None
    if card is not None:
        folder = card["folder"]
        ss.source = folder
        st.query_params["model"] = folder
        test = card.get("test") or {}
        ss.model_msg = (f"Fine-tuned {'(from the cache) ' if card.get('cached') else ''}and loaded `{folder}`: "
                        f"test accuracy {test.get('accuracy', float('nan')):.3f}, macro-F1 "
                        f"{test.get('macro_f1', float('nan')):.3f} on {test.get('n', 0)} test examples"
                        f" (trained in {card['train_seconds']:.0f} s). It is now the current model.")
        st.rerun()

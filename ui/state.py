"""Session state, workspaces and cached loaders shared by every page.

What is shared between browser sessions (``st.cache_resource``): base models, datasets and
rebuilt variant models. They are never mutated: every change goes through a recipe, and
``axlab.compress.apply_recipe`` works on a private copy. What is private to a session:
``st.session_state`` (current model source, dataset, workspace name). The workspace name
lives in the URL (``?ws=...``), so a browser refresh keeps the same variant list; two
sessions see each other's variants only if they pick the same workspace name on purpose.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

import streamlit as st

from .modality import processor_of, split_key

__all__ = ["init_state", "current", "load_base", "load_splits", "current_splits", "bundle_and_splits", "check_modalities", "analysis_results", "variant_store", "variant_model", "model_cache", "remember_model",
           "save_upload", "show_error", "DEFAULT_SOURCE", "DEFAULT_DATASET", "workspace_variants",
           "recipe_key", "page_hint", "control_of", "dataset_label", "CONTROL_HINTS"]

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "default"
DEFAULT_DATASET = "rotten_tomatoes"
_WS_OK = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")

# session_state key -> URL query parameter (kept in the URL so a refresh restores it)
_URL_KEYS = {"workspace": "ws", "source": "model", "dataset": "data"}


def init_state() -> None:
    """Fill session state from the URL (or defaults) and write it back to the URL.

    Every page calls this first (through the sidebar), because a page opened directly
    does not run app.py.
    """
    ss = st.session_state
    qp = st.query_params
    if "workspace" not in ss:
        ws = qp.get("ws", "")
        ss.workspace = ws if _WS_OK.match(ws or "") else secrets.token_hex(4)
    if "source" not in ss:
        ss.source = qp.get("model", DEFAULT_SOURCE) or DEFAULT_SOURCE
    if "dataset" not in ss:
        ss.dataset = qp.get("data", DEFAULT_DATASET) or DEFAULT_DATASET
    ss.setdefault("allow_pickle", False)
    ss.setdefault("data_columns", (None, None))   # (text, label) column names of a user file
    ss.setdefault("measure_n", 2000)          # test examples used when measuring a variant
    ss.setdefault("latency_runs", 30)         # batch-1 latency runs per variant
    for key, param in _URL_KEYS.items():
        if qp.get(param) != ss[key]:
            qp[param] = ss[key]


def current() -> tuple[str, str, str]:
    """(model source, dataset, workspace) of this session."""
    ss = st.session_state
    return ss.source, ss.dataset, ss.workspace


# --- cached, shared, never mutated ----------------------------------------------------

@st.cache_resource(show_spinner="Loading the model (once per source)...", max_entries=4)
def load_base(source: str, allow_pickle: bool = False):
    """The base model bundle for ``source``; shared by all sessions, never mutated."""
    from axlab.core.loading import load_model
    return load_model(source, allow_pickle=allow_pickle)


@st.cache_resource(show_spinner="Loading the dataset...", max_entries=4)
def load_splits(dataset: str, text_column: str | None = None, label_column: str | None = None):
    """Text data (built-in name, CSV/TSV, manifest) or image data (mnist, a folder or zip of class folders, a
    CSV of image paths: ``text_column`` then names the image-path column)."""
    from .modality import dataset_modality
    if dataset_modality(dataset) == "image":
        from axlab.core.images import load_image_dataset
        return load_image_dataset(dataset, image_column=text_column, label_column=label_column)
    from axlab.core.data import load_dataset
    return load_dataset(dataset, text_column=text_column, label_column=label_column)


def current_splits():
    """The current session's splits (raises AxlabError)."""
    ss = st.session_state
    return load_splits(ss.dataset, *ss.data_columns)


def bundle_and_splits():
    """The current base bundle and splits, or (None, None) after showing the error."""
    source, dataset, _ = current()
    try:
        bundle = load_base(source, st.session_state.allow_pickle)
        splits = current_splits()
        check_modalities(bundle, splits)
    except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
        show_error(e)
        st.page_link("pages/1_Model_and_data.py", label="Choose another model or dataset", icon=":material/tune:")
        return None, None
    return bundle, splits


def check_modalities(bundle, splits) -> None:
    """Raise a DataError when the model reads text and the data hold images, or the other way round."""
    from axlab.core.errors import DataError

    from .modality import data_modality, mismatch_message, modality_of
    m, d = modality_of(bundle), data_modality(splits)
    if m != d:
        raise DataError(*mismatch_message(m, d))


@st.cache_resource
def analysis_results() -> dict:
    """Analysis results (importance, statistics) shared by sessions, keyed by what they depend on."""
    return {}


@st.cache_resource
def variant_store():
    """One store (SQLite under the user's data dir; AXLAB_DATA overrides) for all sessions."""
    from axlab.store.variants import VariantStore
    return VariantStore()


def workspace_variants(all_bases: bool = False):
    source, dataset, ws = current()
    store = variant_store()
    if all_bases:
        return store.list(workspace=ws)
    return store.list(workspace=ws, base=source, dataset=dataset)


def recipe_key(recipe: list) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


class _ModelCache:
    """A small LRU of rebuilt variant models keyed by (base, dataset, recipe JSON)."""

    def __init__(self, size: int = 6):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, model):
        with self.lock:
            self.items[key] = model
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


@st.cache_resource
def _model_cache() -> _ModelCache:
    return _ModelCache()


def model_cache() -> _ModelCache:
    """The shared cache of rebuilt variants. Jobs get it from the page (their threads have no session)."""
    return _model_cache()


def variant_model(bundle, splits, recipe: list, progress=False, cache: _ModelCache | None = None):
    """The model for ``recipe`` applied to ``bundle`` (rebuilt once, then cached; never mutated)."""
    if not recipe:
        return bundle.model
    from axlab.compress import apply_recipe
    cache = cache or _model_cache()
    key = (bundle.source, split_key(splits), json.dumps(recipe, sort_keys=True))
    model = cache.get(key)
    if model is None:
        model = apply_recipe(bundle.model, recipe, tokenizer=processor_of(bundle), splits=splits, progress=progress)
        cache.put(key, model)
    return model


def remember_model(bundle, splits, recipe: list, model, cache: _ModelCache | None = None) -> None:
    """Put an already built variant model (e.g. the result of a search) into the cache."""
    (cache or _model_cache()).put((bundle.source, split_key(splits), json.dumps(recipe, sort_keys=True)), model)


# --- uploads and errors ---------------------------------------------------------------



def save_upload(uploaded) -> Path:
    """Save an uploaded file under the data dir by content hash; returns its path."""
    from axlab.core.paths import data_dir
    raw = uploaded.getvalue()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    suffix = Path(uploaded.name).suffix.lower() or ".csv"
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(uploaded.name).stem)[:40] or "upload"
    path = data_dir("uploads") / f"{stem}-{digest}{suffix}"
    if not path.exists():
        path.write_bytes(raw)
    try:
        st.session_state.setdefault("upload_names", {})[str(path)] = uploaded.name
    except Exception:  # noqa: BLE001  (outside a session: only the file matters)
        pass
    return path


# What a fix means on the page: the control an AxlabError names (``e.control``, or recognised
# from an API/CLI hint) -> the hint in the words of the app's boxes and checkboxes.
CONTROL_HINTS = {
    "label_column": 'Type the name of the label column in the "Label column" box beside the uploader '
                    "(or rename that column to `label` in the file).",
    "text_column": 'Type the name of the text column in the "Text column" box beside the uploader '
                   "(or rename that column to `text` in the file).",
    "overwrite": 'Tick the "Overwrite" checkbox to replace it, or type another folder in the "Folder" box.',
    "allow_pickle": 'Tick "Allow pickle checkpoints" under the model source, only if you trust the file.',
}
_HINT_PATTERNS = [(re.compile(r"\blabel_column=|--label-column"), "label_column"),
                  (re.compile(r"\btext_column=|--text-column"), "text_column"),
                  (re.compile(r"\boverwrite=True|--overwrite"), "overwrite"),
                  (re.compile(r"\ballow_pickle=True|--allow-pickle"), "allow_pickle")]


def control_of(e: Exception) -> str | None:
    """The app control an error's fix is about: ``e.control``, else recognised in an API/CLI hint."""
    control = getattr(e, "control", None)
    if control:
        return control
    hint = getattr(e, "hint", "") or ""
    return next((c for pat, c in _HINT_PATTERNS if pat.search(hint)), None)


def page_hint(e: Exception, controls: dict | None = None) -> str:
    """The hint to show in the app: the page's own control when the error names one, else the error's hint."""
    control = control_of(e)
    table = {**CONTROL_HINTS, **(controls or {})}
    if control in table:
        return table[control]
    return getattr(e, "hint", "") or ""


def show_error(e: Exception, controls: dict | None = None) -> None:
    """An AxlabError as st.error: what is wrong and how to fix it, in terms of this page's controls.

    ``controls`` adds or overrides page-specific wording (``{control: hint}``).
    """
    from axlab.core.errors import AxlabError
    if type(e).__name__ == "Stopped":
        st.warning("Stopped. Nothing was saved from the unfinished job; start it again to redo it.",
                   icon=":material/stop_circle:")
        return
    if isinstance(e, AxlabError):
        hint = page_hint(e, controls)
        st.error(f"**{e.message}**\n\nHow to fix: {hint}" if hint else f"**{e.message}**", icon=":material/error:")
    else:
        log.exception("unexpected error in the app")
        st.error(f"**Something went wrong:** {type(e).__name__}: {e}\n\nThe rest of the workbench still works; "
                 "please report this with the steps that led to it.", icon=":material/error:")


_UPLOAD_NAME = re.compile(r"^(?P<stem>.+)-[0-9a-f]{16}(?P<suffix>\.[A-Za-z0-9]+)$")


def dataset_label(dataset: str) -> str:
    """How to show a dataset: its name, or an upload's original file name (not the hashed copy's)."""
    p = Path(str(dataset))
    if p.suffix:
        m = _UPLOAD_NAME.match(p.name)
        original = st.session_state.get("upload_names", {}).get(str(p)) if hasattr(st, "session_state") else None
        if original:
            return original
        return f"{m['stem']}{m['suffix']}" if m else p.name
    return str(dataset)

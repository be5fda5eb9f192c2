"""Text or images: what the current model reads, what the data hold, and the words the pages use for them.

Read-only helpers over the library (no streamlit): the pages ask ``modality_of(bundle)`` and
``data_modality(splits)`` and name the unit with ``words(modality)`` ("texts"/"images",
"tokens"/"patches"). ``dataset_modality(name)`` tells a dataset's kind without loading it
(a built-in name, a folder, a zip, or a CSV whose path column names image files), so the
Model & data page can switch the data when a model of the other kind is loaded.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["modality_of", "processor_of", "data_modality", "dataset_modality", "words", "split_key",
           "split_notes", "DEFAULT_SOURCES", "DEFAULT_DATASETS", "mismatch_message", "image_array"]

DEFAULT_SOURCES = {"text": "default", "image": "default-vision"}
DEFAULT_DATASETS = {"text": "rotten_tomatoes", "image": "mnist"}

_WORDS = {
    "text": {"example": "text", "examples": "texts", "Examples": "Texts", "token": "token", "tokens": "tokens",
             "reads": "reads text", "kind": "text"},
    "image": {"example": "image", "examples": "images", "Examples": "Images", "token": "patch",
              "tokens": "patches", "reads": "reads images", "kind": "image"},
}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_PATH_COLUMNS = ("image", "path", "file", "filename")


def modality_of(bundle) -> str:
    """``"text"`` or ``"image"``: the bundle's own field when it has one, else the architecture registry's."""
    m = getattr(bundle, "modality", None)
    if m in _WORDS:
        return m
    from axlab.core import registry
    try:
        return registry.modality(bundle.model)
    except Exception:  # noqa: BLE001  (an unknown architecture: loading refuses it anyway)
        return "text"


def processor_of(bundle):
    """The tokenizer (text) or image processor (images) that turns inputs into a batch."""
    p = getattr(bundle, "processor", None)
    return p if p is not None else bundle.tokenizer


def data_modality(splits) -> str:
    """``"image"`` for image splits (they hold ``images``), else ``"text"``."""
    return "image" if hasattr(splits.validation, "images") else "text"


def _csv_holds_image_paths(path: Path) -> bool:
    try:
        import pandas as pd
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        head = pd.read_csv(path, sep=sep, nrows=20)
    except Exception:  # noqa: BLE001  (the loader reports what is wrong with the file)
        return False
    for col in head.columns:
        if str(col).strip().lower() in _PATH_COLUMNS:
            values = head[col].dropna().astype(str)
            if len(values) and values.str.lower().str.endswith(_IMAGE_SUFFIXES).all():
                return True
    return False


def dataset_modality(dataset: str | None) -> str:
    """The kind of data ``dataset`` names, without loading it: a built-in image set, a folder or a zip of
    class folders, or a CSV of image paths is ``"image"``; everything else ``"text"``."""
    if not dataset:
        return "text"
    from axlab.core.images import IMAGE_DATASETS
    if dataset in IMAGE_DATASETS:
        return "image"
    p = Path(str(dataset)).expanduser()
    if p.is_dir() or p.suffix.lower() == ".zip":
        return "image"
    if p.suffix.lower() in (".csv", ".tsv") and p.exists():
        return "image" if _csv_holds_image_paths(p) else "text"
    return "text"


def words(modality: str) -> dict:
    """The unit's names for a modality: ``words(m)["examples"]`` is "texts" or "images", ``["tokens"]`` "tokens"
    or "patches"."""
    return _WORDS.get(modality, _WORDS["text"])


def split_key(splits) -> str:
    """Identifies data + split for the app's caches (``splits.key``, text and image splits alike)."""
    return str(splits.key)


def split_notes(splits) -> list[str]:
    """What a reader should know about the data (who split it, how labels were matched)."""
    return list(splits.notes)


def mismatch_message(model_modality: str, data_modality_: str) -> tuple[str, str]:
    """(what is wrong, how to fix it) when the model reads one kind of input and the data hold the other."""
    reads = "images" if model_modality == "image" else "text"
    holds = "images" if data_modality_ == "image" else "texts"
    fit = "an image dataset (mnist, or a zip of class folders)" if model_modality == "image" else \
        "a text dataset (rotten_tomatoes, or a CSV of texts and labels)"
    other = "an image classifier (the default vision model)" if data_modality_ == "image" else \
        "a text classifier (the default model)"
    return (f"The current model reads {reads}, but the current data hold {holds}.",
            f"On the Model & data page, choose {fit} under Data, or load {other} under Model.")


def image_array(raw: bytes):
    """An uploaded image file as a uint8 array: (H, W) grey or (H, W, 3) colour."""
    import io

    import numpy as np
    from PIL import Image

    from axlab.core.errors import DataError
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except Exception as e:  # noqa: BLE001  (any unreadable file)
        raise DataError(f"Cannot read the uploaded file as an image ({type(e).__name__}).",
                        "Upload a PNG, JPEG, BMP, GIF or WebP image.") from None
    img = img.convert("L") if img.mode in ("1", "L", "LA", "I", "I;16", "F") else img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)

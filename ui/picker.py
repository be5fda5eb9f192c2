"""The image picker: where a text page has its sentence box, an image page picks a validation / test image by
index (shown as a thumbnail with its label) or takes an uploaded image."""

from __future__ import annotations

import streamlit as st

from .modality import image_array

__all__ = ["pick_image"]

UPLOAD = "Upload an image"


def pick_image(splits, key: str, default_split: str = "validation"):
    """Returns ``(image, description)``: a uint8 (H, W) or (H, W, 3) array and words for it; None if no image yet."""
    sources = ["Validation set", "Test set", UPLOAD]
    if default_split == "test":
        sources = ["Test set", "Validation set", UPLOAD]
    c1, c2, c3 = st.columns([2, 2, 1])
    where = c1.radio("Image from", sources, horizontal=True, key=f"{key}_from")
    if where == UPLOAD:
        up = c2.file_uploader("One image", type=["png", "jpg", "jpeg", "bmp", "gif", "webp"], key=f"{key}_upload")
        if up is None:
            st.info("Upload an image (PNG, JPEG, ...) to look at it; it is resized as the model's image processor "
                    "says.", icon=":material/upload:")
            return None, ""
        image = image_array(up.getvalue())          # raises DataError for an unreadable file
        desc = f"uploaded **{up.name}** ({image.shape[1]} x {image.shape[0]} px)"
    else:
        split = splits.validation if where.startswith("Validation") else splits.test
        name = "validation" if where.startswith("Validation") else "test"
        i = int(c2.number_input(f"Image number (0-{len(split) - 1})", 0, max(0, len(split) - 1), 0, step=1,
                                key=f"{key}_{name}_index"))
        image = split.images[i]
        label = splits.label_names[split.labels[i]] if split.labels is not None else "?"
        desc = f"{name} image **{i}**, labelled **{label}**"
    c3.image(image, caption=None, width=96, clamp=True)
    return image, desc

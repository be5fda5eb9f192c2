"""Patch geometry of vision transformers, shared by the image views of every analysis.

A ViT cuts its input (``pixel_values``, (B, C, H, W) after the image processor) into a
(H / p) x (W / p) grid of p x p patches and puts a few *prefix* tokens before them:
[CLS] (all three supported families), DeiT's distillation token, DINOv2-with-registers'
register tokens. Token t >= n_prefix is patch ``t - n_prefix`` in row-major order.

* :func:`prefix_tokens` reads the prefix from the model's embedding parameters
  (``cls_token``, ``distillation_token``, ``register_tokens``), never from its type name;
  :func:`check_tokens` checks it against the token count the model actually produced.
* :func:`patch_grid`, :func:`patch_centres` and :func:`patch_distances` work in pixels of
  the model input (the processor's output size, e.g. 28 for the MNIST ViT, 224 for
  ``google/vit-base-patch16-224``).
* :func:`upsample` stretches a (gh, gw) patch map to an image's size for overlays.
* :func:`as_images` turns one image or a batch into a list of uint8 arrays.
"""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from axlab.core import registry
from axlab.core.errors import AxlabError

__all__ = ["patch_size", "prefix_tokens", "check_tokens", "patch_grid", "patch_centres", "patch_distances",
           "upsample", "as_images", "to_rgb", "token_names", "is_image_model"]

_PREFIX_PARAMS = (("cls_token", "[CLS]"), ("distillation_token", "[DIST]"), ("register_tokens", "[REG]"))


def is_image_model(model: nn.Module) -> bool:
    """Whether the model reads pixels (the registry's modality)."""
    return registry.modality(model) == "image"


def patch_size(model: nn.Module) -> tuple[int, int]:
    """(height, width) of one patch in model-input pixels, from ``config.patch_size``."""
    p = model.config.patch_size
    return (int(p[0]), int(p[1])) if isinstance(p, (list, tuple)) else (int(p), int(p))


def prefix_tokens(model: nn.Module) -> list[str]:
    """Names of the tokens before the patches, in order (e.g. ``["[CLS]", "[DIST]"]`` for DeiT).

    Read from the embeddings' parameters: each of ``cls_token``, ``distillation_token`` and
    ``register_tokens`` (shape (1, n, hidden)) adds its n tokens.
    """
    emb = registry.base_model(model).embeddings
    names = []
    for attr, name in _PREFIX_PARAMS:
        p = getattr(emb, attr, None)
        if isinstance(p, torch.Tensor) and p.dim() == 3:
            n = int(p.shape[1])
            names += [name] if n == 1 and attr != "register_tokens" else [f"{name[:-1]}{i}]" for i in range(n)]
    if not names:
        raise AxlabError(f"Cannot find the [CLS] token of this {model.config.model_type} model.",
                         "Use a ViT, DeiT or DINOv2 image classifier.")
    return names


def patch_grid(model: nn.Module, pixel_shape) -> tuple[int, int]:
    """(rows, columns) of patches for model input of shape (..., H, W)."""
    ph, pw = patch_size(model)
    h, w = int(pixel_shape[-2]), int(pixel_shape[-1])
    return h // ph, w // pw


def check_tokens(model: nn.Module, n_tokens: int, grid: tuple[int, int]) -> int:
    """The number of prefix tokens, checked against the sequence length the model produced."""
    n_prefix = len(prefix_tokens(model))
    if n_prefix + grid[0] * grid[1] != n_tokens:
        raise AxlabError(f"The model produced {n_tokens} tokens, but {n_prefix} prefix token(s) and a "
                         f"{grid[0]} x {grid[1]} patch grid make {n_prefix + grid[0] * grid[1]}.",
                         "This model's embeddings are laid out in a way axlab does not know yet.")
    return n_prefix


def token_names(model: nn.Module, grid: tuple[int, int]) -> list[str]:
    """One label per token: the prefix names, then ``"p(row,col)"`` for each patch."""
    return prefix_tokens(model) + [f"p({r},{c})" for r in range(grid[0]) for c in range(grid[1])]


def patch_centres(grid: tuple[int, int], patch: tuple[int, int]) -> np.ndarray:
    """(n_patches, 2) centres (y, x) in pixels, patches in row-major order."""
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    return np.stack([(rows.ravel() + 0.5) * patch[0], (cols.ravel() + 0.5) * patch[1]], axis=1).astype(np.float64)


def patch_distances(grid: tuple[int, int], patch: tuple[int, int]) -> np.ndarray:
    """(n_patches, n_patches) Euclidean distance between patch centres, in pixels."""
    c = patch_centres(grid, patch)
    return np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1))


def upsample(grid_map, size: tuple[int, int], mode: str = "nearest") -> np.ndarray:
    """A (gh, gw) map stretched to ``size`` = (H, W). ``mode``: "nearest" (patch blocks) or "bilinear".

    NaN cells stay NaN with "nearest"; "bilinear" treats them as 0.
    """
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    z = torch.as_tensor(np.asarray(grid_map, dtype=np.float64))
    if z.dim() != 2:
        raise ValueError(f"expected a 2-D map, got shape {tuple(z.shape)}")
    if mode == "bilinear":
        z = torch.nan_to_num(z)
    kw = {"align_corners": False} if mode == "bilinear" else {}
    out = nn.functional.interpolate(z[None, None], size=tuple(int(s) for s in size), mode=mode, **kw)
    return out[0, 0].numpy()


def _one_image(a: np.ndarray) -> bool:
    return a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3) and a.shape[0] > 4 and a.shape[1] > 4)


def as_images(images) -> list[np.ndarray]:
    """A list of uint8 images from one image ((H, W) or (H, W, 3)), a batch (N, H, W[, 3]), or a list."""
    if hasattr(images, "getbands"):                                   # one PIL image
        images = [np.asarray(images)]
    elif isinstance(images, np.ndarray):
        images = [images] if _one_image(images) else list(images)
    out = []
    for im in images:
        a = np.asarray(im)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[:, :, 0]
        if a.ndim not in (2, 3):
            raise AxlabError(f"An image must be (H, W) or (H, W, 3), got shape {a.shape}.",
                             "Pass a grey or colour image as a uint8 array.")
        if a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
                a = a * 255.0
            a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        out.append(a)
    if not out:
        raise AxlabError("No image to look at.", "Pick or upload an image.")
    return out


def to_rgb(image) -> np.ndarray:
    """(H, W, 3) uint8 for display (grey images repeated over three channels)."""
    a = as_images(image)[0]
    return np.repeat(a[:, :, None], 3, axis=-1) if a.ndim == 2 else a

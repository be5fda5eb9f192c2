"""Which input tokens drive a prediction: captum attributions for one sentence.

``token_attributions(model, tokenizer, text, target=None)`` explains the probability of
``target`` (default: the predicted class) with captum's LayerIntegratedGradients on the
word-embedding layer. The baseline replaces every non-special token by the padding
token ([CLS]/[SEP] stay), so a token's score says how much its embedding, compared
with "no word here", moves the probability. Completeness: the scores sum to
``output - baseline_output`` up to ``delta`` (small with enough ``n_steps``).

Models without a gradient path (e.g. torch's dynamic int8 kernels) fall back to
occlusion (captum FeatureAblation: each token in turn replaced by padding); the result's
``method`` says which was used. ``compare_attributions`` explains one sentence with
several variants for the same target, for a before/after view.

Images. For an image classifier the same calls take an image (uint8 (H, W) or (H, W, 3))
and the image processor and return a :class:`PixelAttribution` (``pixel_attributions``):
captum IntegratedGradients or Occlusion on ``pixel_values``, explaining p(target).

* Baseline ``"black"`` (default): the all-black image (uint8 zeros) through the image
  processor, so for MNIST-like data a score says how much the ink at a pixel, compared
  with no ink, moves the probability. ``"zero"``: ``pixel_values`` = 0, the processor's
  normalised zero, i.e. the image at the normalisation mean (mid grey for mean 0.5).
* Integrated gradients: ``scores`` (C, H, W) per input value; ``saliency`` (H, W) is
  their sum over channels, so ``saliency.sum() = output - baseline_output`` up to ``delta``.
* Occlusion: windows of one patch (``window``, default the model's patch size, stride =
  window) replaced by the baseline; each pixel gets p(image) - p(image with its window
  occluded); channels carry the same value, so ``saliency`` is their mean. Not complete:
  ``delta`` is NaN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from axlab.analysis import vision
from axlab.analysis.importance import uses_int8_kernels
from axlab.core import registry
from axlab.core.errors import AxlabError
from axlab.core.measure import MAX_LENGTH, encode, require_cpu, tokenize

__all__ = ["Attribution", "PixelAttribution", "token_attributions", "pixel_attributions", "compare_attributions",
           "BASELINES"]

log = logging.getLogger(__name__)

ATTR_METHODS = ("auto", "integrated_gradients", "occlusion")
BASELINES = ("black", "zero")


@dataclass
class Attribution:
    """Per-token scores for one sentence and one target class."""

    tokens: list[str]
    scores: np.ndarray                 # (T,) contribution of each token to the target probability
    target: int
    delta: float                       # completeness error: sum(scores) - (output - baseline_output);
                                       # near 0 for integrated gradients, not promised by occlusion
    output: float = float("nan")       # p(target | text)
    baseline_output: float = float("nan")  # p(target | baseline)
    probs: np.ndarray = field(default_factory=lambda: np.zeros(0))   # (C,) class probabilities
    label: str | None = None           # name of the target class, when the model has one
    method: str = "integrated_gradients"
    special: list[bool] = field(default_factory=list)

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probs)) if len(self.probs) else -1

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "scores": [float(s) for s in self.scores], "target": self.target,
                "label": self.label, "delta": self.delta, "output": self.output,
                "baseline_output": self.baseline_output, "probs": [float(p) for p in self.probs],
                "method": self.method}


@dataclass
class PixelAttribution:
    """Per-pixel scores for one image and one target class (pixels of the model input)."""

    image: np.ndarray                  # the image as given, uint8 (H0, W0) or (H0, W0, 3)
    scores: np.ndarray                 # (C, H, W) attribution of each pixel_values entry
    saliency: np.ndarray               # (H, W) reduced over channels (IG: sum; occlusion: mean); signed
    target: int
    delta: float                       # IG completeness error; NaN for occlusion
    output: float = float("nan")       # p(target | image)
    baseline_output: float = float("nan")   # p(target | baseline image)
    probs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    label: str | None = None
    method: str = "integrated_gradients"
    baseline: str = "black"
    window: tuple[int, int] | None = None   # occlusion window (height, width)

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probs)) if len(self.probs) else -1

    def overlay(self, mode: str = "bilinear") -> np.ndarray:
        """The saliency at the size of ``image`` (the model input may have been resized)."""
        size = self.image.shape[:2]
        if tuple(size) == tuple(self.saliency.shape):
            return self.saliency.copy()
        return vision.upsample(self.saliency, size, mode=mode)

    def to_dict(self) -> dict:
        return {"saliency": self.saliency.tolist(), "target": self.target, "label": self.label, "delta": self.delta,
                "output": self.output, "baseline_output": self.baseline_output,
                "probs": [float(p) for p in self.probs], "method": self.method, "baseline": self.baseline,
                "window": list(self.window) if self.window else None}


def _baseline_pixels(processor, image: np.ndarray, pixels: torch.Tensor, baseline: str) -> torch.Tensor:
    if baseline == "zero":
        return torch.zeros_like(pixels)
    return encode(processor, [np.zeros_like(image)])["pixel_values"].to(pixels.dtype)


def _window(model: nn.Module, window) -> tuple[int, int]:
    if window is None:
        return vision.patch_size(model)
    return (int(window), int(window)) if isinstance(window, int) else tuple(int(w) for w in window)


def _resolve_target(probs: torch.Tensor, target: int | None) -> int:
    """The class to explain: ``target``, or the prediction when None; a class the model lacks is an error."""
    n_classes = probs.shape[-1]
    if target is None:
        return int(probs.argmax())
    if not 0 <= int(target) < n_classes:
        raise AxlabError(f"Class {target} does not exist; the model has {n_classes} classes.",
                         f"Pick a class from 0 to {n_classes - 1}, or leave it empty for the prediction.")
    return int(target)


def _check_gradients(model: nn.Module, method: str) -> None:
    if method == "integrated_gradients" and uses_int8_kernels(model):
        raise AxlabError("Integrated gradients need gradients, and this model runs torch int8 kernels "
                         "that have none.", "Use method='occlusion' (or 'auto', which picks it).")


def _gradients_failed(e: RuntimeError, method: str) -> None:
    """Integrated gradients raised: an error when asked for, a log line when 'auto' falls back to occlusion."""
    if method != "auto":
        raise AxlabError(f"Integrated gradients failed on this model: {str(e).splitlines()[0]}",
                         "This variant has no gradient path (e.g. int8 kernels); use method='occlusion'.") from None
    log.info("no gradient path (%s); using occlusion", str(e).splitlines()[0])


def pixel_attributions(model: nn.Module, processor, image, target: int | None = None, *, method: str = "auto",
                       baseline: str = "black", n_steps: int = 50, window: int | tuple[int, int] | None = None,
                       internal_batch_size: int = 16) -> PixelAttribution:
    """Attribution of p(target | image) to each pixel (see module doc); ``target`` None = the prediction."""
    require_cpu(model, "Pixel attribution")
    from captum.attr import IntegratedGradients, Occlusion

    if method not in ATTR_METHODS:
        raise AxlabError(f"Unknown attribution method '{method}'.", f"Choose one of: {', '.join(ATTR_METHODS)}.")
    if baseline not in BASELINES:
        raise AxlabError(f"Unknown baseline '{baseline}'.", f"Choose one of: {', '.join(BASELINES)}.")
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2, got {n_steps}")
    images = vision.as_images(image)
    if len(images) != 1:
        raise AxlabError(f"Explain one image at a time ({len(images)} were given).", "Pass a single image.")
    image = images[0]
    pixels = encode(processor, [image])["pixel_values"].float()               # (1, C, H, W)
    base = _baseline_pixels(processor, image, pixels, baseline)

    def forward(x):                                                           # (S, C, H, W) -> (S, classes)
        return torch.softmax(model(pixel_values=x).logits, dim=-1)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probs = forward(pixels)[0]
            target = _resolve_target(probs, target)
            base_p = float(forward(base)[0, target])
        _check_gradients(model, method)
        scores, used, delta = None, method, float("nan")
        if method == "integrated_gradients" or (method == "auto" and not uses_int8_kernels(model)):
            try:
                attr, d = IntegratedGradients(forward).attribute(
                    pixels, baselines=base, target=target, n_steps=n_steps, internal_batch_size=internal_batch_size,
                    return_convergence_delta=True)
                scores, used, delta = attr[0].detach().double().numpy(), "integrated_gradients", float(d[0])
            except RuntimeError as e:
                _gradients_failed(e, method)
        win = _window(model, window)
        if scores is None:
            c = pixels.shape[1]
            with torch.no_grad():
                attr = Occlusion(forward).attribute(pixels, sliding_window_shapes=(c, *win), strides=(c, *win),
                                                    baselines=base, target=target,
                                                    perturbations_per_eval=internal_batch_size)
            scores, used, delta = attr[0].double().numpy(), "occlusion", float("nan")
    finally:
        model.train(was_training)
    saliency = scores.sum(0) if used == "integrated_gradients" else scores.mean(0)
    return PixelAttribution(image=image, scores=scores, saliency=saliency, target=target, delta=delta,
                            output=float(probs[target]), baseline_output=base_p, probs=probs.double().numpy(),
                            label=_label(model, target), method=used, baseline=baseline,
                            window=None if used == "integrated_gradients" else win)


def _baseline_ids(tokenizer, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    special = [int(i) in special_ids for i in input_ids[0]]
    base = input_ids.clone()
    base[0, [i for i, s in enumerate(special) if not s]] = pad
    return base, special


def _label(model: nn.Module, target: int) -> str | None:
    id2label = getattr(model.config, "id2label", None) or {}
    return str(id2label.get(target, id2label.get(str(target)))) if id2label else None


def _integrated_gradients(model, input_ids, mask, base_ids, target: int, n_steps: int):
    from captum.attr import LayerIntegratedGradients

    def forward(ids, attention_mask):                         # (S, T), (S, T) -> (S, C) probabilities
        return torch.softmax(model(input_ids=ids, attention_mask=attention_mask).logits, dim=-1)

    emb = registry.word_embeddings(model)
    lig = LayerIntegratedGradients(forward, emb)
    attr = lig.attribute(input_ids, baselines=base_ids, target=target, additional_forward_args=(mask,),
                         n_steps=n_steps)
    # The path starts at the baseline's word embeddings with everything else (position ids,
    # which RoBERTa derives from padding) taken from the real input; evaluate f there too,
    # so completeness is checked against the path's true end points.
    with torch.no_grad():
        base_emb = emb(base_ids)
        handle = emb.register_forward_hook(lambda mod, inp, out: base_emb)   # returning replaces the output
        try:
            base_p = float(forward(input_ids, mask)[0, target])
        finally:
            handle.remove()
    # attr: (1, T, hidden) -> one score per token
    return attr[0].sum(-1).detach().double().numpy(), base_p


@torch.no_grad()
def _occlusion(model, input_ids, mask, base_ids, target: int, special: list[bool]):
    from captum.attr import FeatureAblation

    def forward(ids, attention_mask):
        return torch.softmax(model(input_ids=ids, attention_mask=attention_mask).logits, dim=-1)

    feature_mask = torch.arange(input_ids.shape[1])[None, :]   # (1, T): each token its own feature
    attr = FeatureAblation(forward).attribute(input_ids, baselines=base_ids, target=target,
                                              additional_forward_args=(mask,), feature_mask=feature_mask)
    scores = attr[0].double().numpy()
    scores[np.asarray(special)] = 0.0
    return scores


def token_attributions(model: nn.Module, tokenizer, text: str, target: int | None = None, *, n_steps: int = 50,
                       method: str = "auto", max_length: int = MAX_LENGTH, **image_kw) -> Attribution:
    """Attribution of p(target | text) to each token (see module doc).

    For an image classifier, ``tokenizer`` is its image processor and ``text`` an image:
    this is :func:`pixel_attributions` (``baseline``, ``window`` go there).
    """
    require_cpu(model, "Token attribution")
    if vision.is_image_model(model):
        return pixel_attributions(model, tokenizer, text, target, method=method, n_steps=n_steps, **image_kw)
    if image_kw:
        raise TypeError(f"unexpected arguments for a text model: {sorted(image_kw)}")
    if method not in ATTR_METHODS:
        raise AxlabError(f"Unknown attribution method '{method}'.", f"Choose one of: {', '.join(ATTR_METHODS)}.")
    if not isinstance(text, str) or not text.strip():
        raise AxlabError("No text to explain (an empty sentence was given).", "Type a sentence of a few words.")
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2, got {n_steps}")
    batch = tokenize(tokenizer, [text], max_length)
    input_ids, mask = batch["input_ids"], batch["attention_mask"]            # (1, T)
    base_ids, special = _baseline_ids(tokenizer, input_ids)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=input_ids, attention_mask=mask).logits, -1)[0]
            target = _resolve_target(probs, target)
            base_p = float(torch.softmax(model(input_ids=base_ids, attention_mask=mask).logits, -1)[0, target])
        used = method
        scores = None
        _check_gradients(model, method)
        if method == "integrated_gradients" or (method == "auto" and not uses_int8_kernels(model)):
            try:
                scores, base_p = _integrated_gradients(model, input_ids, mask, base_ids, target, n_steps)
                used = "integrated_gradients"
            except RuntimeError as e:
                _gradients_failed(e, method)
        if scores is None:
            scores = _occlusion(model, input_ids, mask, base_ids, target, special)
            used = "occlusion"
    finally:
        model.train(was_training)
    delta = float(scores.sum() - (float(probs[target]) - base_p))
    tokens = tokenizer.convert_ids_to_tokens(input_ids[0].tolist())
    return Attribution(tokens=tokens, scores=scores, target=target, delta=delta, output=float(probs[target]),
                       baseline_output=base_p, probs=probs.double().numpy(), label=_label(model, target),
                       method=used, special=special)


def compare_attributions(models: dict[str, nn.Module], tokenizer, text: str, target: int | None = None,
                         **kw) -> dict[str, Attribution]:
    """The same sentence (or image) explained by several models (e.g. base and a variant) for one target.

    With ``target=None`` the target is the first model's prediction, so every view
    explains the same class.
    """
    if not models:
        raise AxlabError("No models to compare.", "Pass a dict such as {'base': model, 'pruned': variant}.")
    out: dict[str, Attribution] = {}
    for name, model in models.items():
        out[name] = token_attributions(model, tokenizer, text, target, **kw)
        if target is None:
            target = out[name].target
    return out

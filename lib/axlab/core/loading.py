"""Load a sequence-classification model: a hub id, a local folder, or ``"default"``.

The hub path is the real transformers path (``from_pretrained``); tests exercise it with
local folders and with ``HF_HUB_OFFLINE=1``. Loading is safe by default: safetensors
only (pickle checkpoints are refused unless ``allow_pickle=True``) and never
``trust_remote_code`` unless asked.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from axlab.core import registry
from axlab.core.attention import use_axlab_attention
from axlab.core.errors import AxlabError, ModelLoadError, UnsupportedModelError

__all__ = ["ModelBundle", "load_model", "resolve_source"]

log = logging.getLogger(__name__)

_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
_SAFE_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass(init=False)
class ModelBundle:
    """A loaded model with what it needs to be used: its processor, label names, provenance.

    ``processor`` is the tokenizer of a text model or the image processor of an image model
    (:func:`axlab.core.measure.encode` turns inputs into a batch with either); ``tokenizer`` is
    the same object under its older name. ``modality`` is ``"text"`` or ``"image"`` (from the
    architecture registry).
    """

    model: nn.Module
    processor: object
    labels: list[str]
    source: str                      # what the user asked for ("default", a hub id, a folder)
    path: str                        # where it was loaded from (folder or hub id)
    info: dict = field(default_factory=dict)   # model card etc.

    def __init__(self, model: nn.Module, processor: object = None, labels: list[str] | None = None,
                 source: str = "", path: str = "", info: dict | None = None, *, tokenizer: object = None):
        if processor is not None and tokenizer is not None and processor is not tokenizer:
            raise TypeError("pass the processor once (processor= or its older name tokenizer=)")
        self.model = model
        self.processor = processor if processor is not None else tokenizer
        self.labels = list(labels) if labels is not None else []
        self.source, self.path = source, path
        self.info = dict(info or {})

    @property
    def tokenizer(self):
        """The processor (a tokenizer for text models): the older name, kept for existing code."""
        return self.processor

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self.processor = value

    @property
    def modality(self) -> str:
        return registry.modality(self.model)

    @property
    def arch(self) -> str:
        return self.model.config.model_type

    @property
    def n_layers(self) -> int:
        return len(registry.layers(self.model))

    @property
    def n_heads(self) -> int:
        return registry.n_heads_config(self.model)


DEFAULT_SOURCES = ("default", "default-vision")


def resolve_source(source: str) -> tuple[str, str]:
    """Return (kind, location): kind is "default" (also for "default-vision"), "folder" or "hub"."""
    source = str(source).strip()
    if not source:
        raise ModelLoadError("No model given.", "Pass 'default', 'default-vision', a local folder, or a hub id such as "
                             "'textattack/bert-base-uncased-SST-2' or 'google/vit-base-patch16-224'.")
    if source == "default":
        from axlab.core.train import default_model_dir
        folder = default_model_dir()
        if not (folder / "config.json").exists():
            raise ModelLoadError("The default model has not been built yet.",
                                 "Run `axlab prepare` once (about 10 minutes on 2 cores); it is cached afterwards.")
        return "default", str(folder)
    if source == "default-vision":
        from axlab.core.train_vision import default_vision_dir
        folder = default_vision_dir()
        if not (folder / "config.json").exists():
            raise ModelLoadError("The default vision model has not been built yet.",
                                 "Run `axlab prepare` once (or only this model: `axlab prepare --only vision`, "
                                 "about 5 minutes on 2 cores); it is cached afterwards.")
        return "default", str(folder)
    p = Path(source).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"'{source}' is a file, not a model folder.",
                                 "Pass the folder that holds config.json and the weights.")
        if _LEFTOVER.match(p.resolve().name):
            raise ModelLoadError(f"'{source}' is a temporary folder left by an interrupted export, not an export.",
                                 "Export again to the same place (that removes it), or delete it.")
        return "folder", str(p.resolve())
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
    if looks_like_path:
        raise ModelLoadError(f"Folder '{source}' does not exist.",
                             "Check the path, or give a hub id as shown on its model page (e.g. 'org/name', or a "
                             "legacy one-part id such as 'distilbert-base-uncased-finetuned-sst-2-english').")
    return "hub", source


_LEFTOVER = re.compile(r"^\..+\.axlab-(tmp|old)-[0-9a-z-]+$")


def _check_safetensors(path: Path) -> None:
    """Refuse a damaged (e.g. truncated) safetensors file from its header alone, before the slow load."""
    size = path.stat().st_size
    fix = ("The weights file is damaged or incomplete (an interrupted copy or download?). Copy or save it "
           "again (`model.save_pretrained(folder)`).")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or 8 + n > size:
                raise ModelLoadError(f"'{path.name}' in '{path.parent}' is not a valid safetensors file "
                                     f"({size} bytes; its header is cut off).", fix)
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelLoadError(f"'{path.name}' in '{path.parent}' has an unreadable safetensors header.", fix) from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        raise ModelLoadError(f"'{path.name}' in '{path.parent}' is truncated: it has {size:,} bytes, its header "
                             f"describes {8 + n + end:,}.", fix)


def _check_folder(folder: Path, allow_pickle: bool) -> None:
    if not (folder / "config.json").exists():
        if (folder / "axlab_variant.json").exists():
            return
        raise ModelLoadError(f"Folder '{folder}' has no config.json, so it is not a transformers model folder.",
                             "Point at the folder written by `save_pretrained` (it holds config.json and weights).")
    files = {f.name for f in folder.iterdir()}
    shards = sorted(f for f in files
                    if f == "model.safetensors" or (f.startswith("model-") and f.endswith(".safetensors")))
    if shards or "model.safetensors.index.json" in files:
        for f in shards:
            _check_safetensors(folder / f)
        return
    pickles = [f for f in _PICKLE_FILES if f in files]
    if pickles:
        if allow_pickle:
            return
        raise ModelLoadError(
            f"Folder '{folder}' only has a pickle checkpoint ({pickles[0]}); axlab loads safetensors by default "
            "because unpickling can execute code.",
            "If you trust the file, pass allow_pickle=True (CLI: --allow-pickle; app: 'allow pickle' box), "
            "or convert it once with `model.save_pretrained(folder, safe_serialization=True)`.")
    raise ModelLoadError(f"Folder '{folder}' has a config.json but no weights (no model.safetensors).",
                         "Copy the weights file into the folder, or save the model with `save_pretrained`.")


_HEADS = {"text": "ForSequenceClassification", "image": "ForImageClassification"}


def _check_config(config, where: str) -> str:
    """The model's modality; a clear error for an unsupported architecture or a model without a classifier head."""
    modality = registry.spec_for(config.model_type).modality  # raises UnsupportedModelError
    archs = list(getattr(config, "architectures", None) or [])
    head = _HEADS[modality]
    if not any(a.endswith(head) for a in archs):
        if modality == "image":
            raise ModelLoadError(
                f"{where} has no image-classification head (architectures: {archs or 'none listed'}).",
                "axlab works on trained classifiers. Pick a *ForImageClassification checkpoint (for example "
                "'google/vit-base-patch16-224'), or train one first (see `axlab prepare --only vision` for how the "
                "default vision model is built).")
        raise ModelLoadError(
            f"{where} has no sequence-classification head (architectures: {archs or 'none listed'}).",
            "axlab works on fine-tuned classifiers. Pick a *ForSequenceClassification checkpoint, or fine-tune "
            "this encoder first (see `axlab prepare` for how the default model is built).")
    return modality


def _auto_classes(modality: str):
    """(model class, processor class) for a modality: the only place loading picks text or image classes."""
    if modality == "image":
        from transformers import AutoImageProcessor, AutoModelForImageClassification
        return AutoModelForImageClassification, AutoImageProcessor
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    return AutoModelForSequenceClassification, AutoTokenizer


def load_model(source: str = "default", *, allow_pickle: bool = False, trust_remote_code: bool = False,
               revision: str | None = None) -> ModelBundle:
    """Load a fine-tuned classifier and its processor, routed through axlab attention.

    Text: a ``*ForSequenceClassification`` and its tokenizer. Images: a ``*ForImageClassification``
    (ViT, DeiT, DINOv2) and its image processor. ``source``: ``"default"`` (the text default),
    ``"default-vision"`` (the MNIST ViT), a local folder or a hub id.
    """
    from transformers import AutoConfig

    kind, location = resolve_source(source)
    if kind in ("default", "folder"):
        folder = Path(location)
        _check_folder(folder, allow_pickle)
        if (folder / "axlab_variant.json").exists():
            return load_variant(folder)
    common = dict(trust_remote_code=trust_remote_code, revision=revision)
    try:
        config = AutoConfig.from_pretrained(location, **common)
    except UnsupportedModelError:
        raise
    except Exception as e:  # noqa: BLE001
        if trust_remote_code and not isinstance(e, (OSError, ValueError)):
            raise _load_failure(source, "config", e, True) from None
        if not isinstance(e, (OSError, ValueError)):
            raise ModelLoadError(f"Could not read the config of '{source}': {type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}",
                                 "Check that config.json is a valid transformers config.") from None
        config = None
        error = e
    if config is None:
        e = error
        if kind == "hub":
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise ModelLoadError(
                f"Could not load '{source}' from the Hugging Face hub"
                + (" (offline mode: HF_HUB_OFFLINE=1)." if offline else f": {str(e).splitlines()[0]}"),
                "Check the id (copy it from the model's hub page: 'org/name', or a legacy one-part id) and your network. Without a network, download the "
                "model elsewhere, copy the folder here and pass its path.") from None
        if "trust_remote_code" in str(e):
            raise ModelLoadError(f"'{source}' needs custom code to load.",
                                 "Only if you trust its author, pass trust_remote_code=True.") from None
        raise ModelLoadError(f"Could not read the config in '{location}': {str(e).splitlines()[0]}",
                             "Check that config.json is a valid transformers config.") from None
    auto_map = getattr(config, "auto_map", None)
    if auto_map and not trust_remote_code:
        raise ModelLoadError(
            f"'{source}' declares its own code (auto_map: {', '.join(sorted(auto_map))}). axlab does not run it, and "
            f"loading it with the stock {config.model_type} classes instead could give different outputs.",
            "Only if you trust its author, pass trust_remote_code=True (CLI: --trust-remote-code). If the stock "
            "class is right for it, remove the 'auto_map' entry from its config.json.")
    modality = _check_config(config, f"Model '{source}'")
    model_cls, processor_cls = _auto_classes(modality)
    try:
        model = model_cls.from_pretrained(
            location, attn_implementation="eager", use_safetensors=None if allow_pickle else True, **common)
    except AxlabError:
        raise
    except OSError as e:
        msg = str(e).splitlines()[0]
        if "safetensors" in msg.lower() and not allow_pickle:
            raise ModelLoadError(f"'{source}' has no safetensors weights: {msg}",
                                 "If you trust the checkpoint, pass allow_pickle=True (CLI: --allow-pickle).") from None
        raise ModelLoadError(f"Could not load the weights of '{source}': {msg}",
                             "Check the id or folder; without a network, pass a local folder.") from None
    except Exception as e:  # noqa: BLE001  (damaged weights, shapes that do not fit the config, remote code)
        raise _load_failure(source, "weights", e, trust_remote_code) from None
    what = "image processor" if modality == "image" else "tokenizer"
    try:
        processor = processor_cls.from_pretrained(location, **common)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"'{source}' has weights but no usable {what}: {str(e).splitlines()[0]}",
                             f"Save the {what} into the same folder (`{'image_processor' if modality == 'image' else 'tokenizer'}"
                             ".save_pretrained(folder)`).") from None
    except Exception as e:  # noqa: BLE001
        raise _load_failure(source, what, e, trust_remote_code) from None
    model.eval()
    use_axlab_attention(model)
    labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    info = {}
    card = Path(location) / "axlab_card.json"
    if kind != "hub" and card.exists():
        info = json.loads(card.read_text())
    log.info("loaded %s (%s, %d layers x %d heads)", source, config.model_type,
             len(registry.layers(model)), registry.n_heads_config(model))
    return ModelBundle(model=model, processor=processor, labels=labels, source=str(source), path=location, info=info)


def _load_failure(source: str, part: str, e: Exception, remote: bool) -> ModelLoadError:
    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if remote:
        return ModelLoadError(f"The model's own code (trust_remote_code) failed while loading the {part} of "
                              f"'{source}': {msg}",
                              "This is a problem in the model repository's code or its requirements: check its "
                              "README for the packages and versions it needs, or ask its author. axlab's supported "
                              "architectures load without --trust-remote-code.")
    hint = ("The weights file is damaged or incomplete, or does not fit config.json; save the model again with "
            "`save_pretrained`." if part == "weights" else f"Save the {part} again with `save_pretrained`.")
    return ModelLoadError(f"Could not load the {part} of '{source}': {msg}", hint)


def load_variant(folder: str | Path, *, verify: bool = True):
    """Rebuild an exported variant: same shapes, same modules, same weights -> same logits.

    Returns a :class:`ModelBundle`. With ``verify`` the stored probe logits
    are recomputed and compared (tolerance 1e-4).
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from axlab.core.folder import PROBE_ATOL, WEIGHTS_FILE, probe_logits, read_sidecar
    from axlab.core.qmodules import apply_quant_layout
    from axlab.core.surgery import apply_layout

    folder = Path(folder).expanduser().resolve()
    sidecar = read_sidecar(folder)
    if not (folder / WEIGHTS_FILE).exists():
        raise ModelLoadError(f"'{folder}' has no {WEIGHTS_FILE}.",
                             "The export is incomplete; export the variant again.")
    _check_safetensors(folder / WEIGHTS_FILE)
    config = AutoConfig.from_pretrained(folder)
    model_cls, processor_cls = _auto_classes(registry.modality(config.model_type))
    model = model_cls.from_config(config, attn_implementation="eager")
    model.eval()
    use_axlab_attention(model)
    apply_layout(model, sidecar.get("layout") or {})
    if sidecar.get("quant_layout"):
        model = apply_quant_layout(model, sidecar["quant_layout"]) or model
    state = load_file(str(folder / WEIGHTS_FILE))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"The weights in '{folder}' do not fit the rebuilt model: {str(e).splitlines()[0]}",
                             "The export is damaged or was made by another axlab version; export it again.") from None
    model.eval()
    use_axlab_attention(model)
    model.axlab_recipe = list(sidecar.get("recipe") or [])
    processor = processor_cls.from_pretrained(folder)
    probe = sidecar.get("probe")
    if verify and probe:
        got = probe_logits(model, processor)
        want = torch.tensor(probe["logits"])
        diff = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
        if diff > PROBE_ATOL:
            raise ModelLoadError(f"The reloaded model in '{folder}' gives different logits than when it was "
                                 f"exported (max difference {diff:.2e}).",
                                 "The weights or the layout record are damaged, or this axlab version rebuilds "
                                 "the variant differently; export it again.")
    labels = list(sidecar.get("labels") or [str(config.id2label[i]) for i in range(config.num_labels)])
    log.info("loaded variant %s (%d steps)", folder, len(model.axlab_recipe))
    return ModelBundle(model=model, processor=processor, labels=labels, source=str(folder), path=str(folder),
                       info=sidecar)

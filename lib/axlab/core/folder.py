"""The variant folder format: what an exported variant folder holds, written atomically.

The folder is a Hugging Face-style model folder plus one sidecar::

    config.json            the model config (architecture, labels)
    model.safetensors      the weights, exactly the variant's state_dict
    tokenizer files        from tokenizer.save_pretrained (text models), or
    preprocessor_config.json  from image_processor.save_pretrained (image models)
    axlab_variant.json     recipe, shape layout, quantization layout, measurements, base,
                           labels, axlab version, and probe logits for a self-check
    README.md              what the folder is and how to load it
    onnx/                  optional: model.onnx (+ model_int8.onnx), see axlab.deploy.onnx_export
    report/                optional: report.html/.json/.md, see axlab.deploy.report

transformers 5 ignores ``config.pruned_heads``, so a variant with uneven heads per
layer, narrower FFNs, hard attention or quantized layers is rebuilt by
:func:`axlab.core.loading.load_variant`: build the architecture from the config,
reshape it with ``axlab.core.surgery.apply_layout``, swap in quantized modules with
``axlab.core.qmodules.apply_quant_layout``, then load the weights with ``strict=True``.
A variant whose shapes equal the config's (no pruning, no quantization, no hard
attention) is marked ``plain``: it also loads with
``AutoModelForSequenceClassification.from_pretrained(folder)`` (image models:
``AutoModelForImageClassification``).

Writes are atomic: everything goes into a hidden temporary sibling folder
(``.NAME.axlab-tmp-PID-TAG``) which is renamed into place at the very end, so a crash never
leaves a folder at the target path that looks complete. An existing target is replaced
only with ``overwrite=True``. Hidden folders left by a killed export (their process is
gone) are removed by the next export to the same place; ``load_model`` refuses them.

This module sits in ``axlab.core`` because both sides need it: ``axlab.deploy.export``
writes folders and ``axlab.core.loading`` reads them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import torch
from torch import nn

from axlab.core.errors import ExportError, ModelLoadError

__all__ = ["VARIANT_FILE", "WEIGHTS_FILE", "FORMAT_VERSION", "PROBE_TEXTS", "PROBE_ATOL", "probe_images",
           "probe_inputs", "write_variant_files",
           "read_sidecar", "probe_logits", "is_plain", "quant_layout_of", "weight_names", "eval_mode",
           "atomic_folder", "check_target", "clean_leftovers"]

log = logging.getLogger(__name__)

VARIANT_FILE = "axlab_variant.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
# Probe inputs of several lengths; their logits are stored so a reload can check itself.
PROBE_TEXTS = [
    "fine",
    "A quiet, well acted film that never quite finds its story.",
    "The plot is thin and the jokes land rarely, but the two leads are so warm and so funny together that "
    "for most of its running time you simply stop caring about what happens next and enjoy their company.",
]
PROBE_ATOL = 1e-4


# ---------------------------------------------------------------------------------------------
# atomic folder writes
# ---------------------------------------------------------------------------------------------

def check_target(folder: str | Path, overwrite: bool) -> Path:
    """Resolve ``folder`` and refuse to replace an existing one unless ``overwrite``."""
    folder = Path(folder).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise _control(ExportError(f"'{folder}' exists and is a file, not a folder.", "Choose another output folder."),
                       "export_folder")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise _control(ExportError(f"'{folder}' already exists and is not empty.",
                                   "Choose a new folder, or replace it explicitly with overwrite=True "
                                   "(CLI: --overwrite)."), "overwrite")
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _control(ExportError(f"Cannot create '{parent}': {e.strerror}.", "Choose a folder you can write to."),
                       "export_folder") from None
    if not os.access(parent, os.W_OK):
        raise _control(ExportError(f"'{parent}' is not writable.", "Choose a folder you can write to."),
                       "export_folder")
    return folder


def _control(err, control: str):
    """Name the setting the fix is about (``AxlabError.control``, read by the app)."""
    err.control = control
    return err


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(target: str | Path) -> list[Path]:
    """Remove ``.NAME.axlab-tmp-*`` / ``.NAME.axlab-old-*`` siblings of ``target`` left by a killed export.

    A folder whose writing process is still alive is kept. An ``-old-`` folder is a complete
    earlier export moved aside just before the new one took its place: if the target is
    missing (killed between the two renames) it is put back instead. Returns what was removed.
    """
    target = Path(target).expanduser().resolve()
    parent = target.parent
    if not parent.is_dir():
        return []
    removed = []
    for p in sorted(parent.glob(f".{target.name}.axlab-*")):
        kind, _, rest = p.name[len(target.name) + 8:].partition("-")     # "tmp" / "old", "PID-TAG" or "TAG"
        if kind not in ("tmp", "old") or not p.is_dir():
            continue
        pid = rest.split("-")[0] if "-" in rest else ""
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        if kind == "old" and not target.exists() and (p / VARIANT_FILE).exists():
            os.replace(p, target)
            log.warning("restored %s from %s (an export was interrupted while replacing it)", target, p.name)
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
        log.info("removed %s, left by an interrupted export", p)
    return removed


class atomic_folder:  # noqa: N801  (used as a context manager, reads like a function)
    """``with atomic_folder(target, overwrite) as tmp:`` write into ``tmp``; on success it becomes ``target``.

    On an exception the temporary folder is removed and ``target`` is untouched. The
    temporary folder is a hidden sibling (same file system, so the final rename is atomic).
    """

    def __init__(self, target: str | Path, overwrite: bool = False):
        clean_leftovers(target)
        self.target = check_target(target, overwrite)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp = self.target.parent / f".{self.target.name}.axlab-tmp-{tag}"
        self.old = self.target.parent / f".{self.target.name}.axlab-old-{tag}"

    def __enter__(self) -> Path:
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.target.exists():
            os.replace(self.target, self.old)        # keep the old one until the new one is in place
        os.replace(self.tmp, self.target)
        shutil.rmtree(self.old, ignore_errors=True)
        return False


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run the block with ``model`` in eval mode, then restore every module's training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


# ---------------------------------------------------------------------------------------------
# what must be recorded to rebuild the variant
# ---------------------------------------------------------------------------------------------

def quant_layout_of(model: nn.Module) -> dict | None:
    """The quantization layout (``axlab.core.qmodules.quant_layout``), or None if nothing is quantized."""
    from axlab.core.qmodules import quant_layout
    lay = quant_layout(model)
    return lay if lay and lay.get("modules") else None


def _reference_shapes(config) -> dict[str, tuple]:
    """State-dict shapes of a model built straight from ``config`` (on the meta device: no memory)."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    from axlab.core.registry import modality
    auto = AutoModelForImageClassification if modality(config.model_type) == "image" else \
        AutoModelForSequenceClassification
    with torch.device("meta"):
        ref = auto.from_config(config)
    return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def is_plain(model: nn.Module) -> bool:
    """True if ``from_pretrained`` alone rebuilds the model: config shapes, no hard attention, no quantization."""
    from axlab.core.attention import get_topk
    if get_topk(model) or quant_layout_of(model):
        return False
    state = model.state_dict()
    have = {k: tuple(state[k].shape) for k in weight_names(model)}
    return have == _reference_shapes(model.config)


def weight_names(model: nn.Module) -> list[str]:
    """State-dict keys of the model's parameters and persistent buffers.

    Other state-dict entries (e.g. a cached int8 kernel's packed parameters, which a
    module may register lazily after its first forward) are derived state: they are
    not exported, and the rebuilt module recreates them.
    """
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for bname, buf in mod._buffers.items():
            if buf is not None and bname not in mod._non_persistent_buffers_set:
                names.add(f"{mname}.{bname}" if mname else bname)
    return [k for k in model.state_dict() if k in names]


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers as contiguous CPU tensors.

    Tensors sharing storage are cloned: safetensors refuses shared tensors.
    """
    state = model.state_dict()
    out, seen = {}, set()
    for k in weight_names(model):
        t = state[k].detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            t = t.clone()
        if key is not None:
            seen.add(key)
        out[k] = t
    return out


def _export_config(model: nn.Module, labels: list[str] | None):
    cfg = copy.deepcopy(model.config)
    cfg.architectures = [type(model).__name__]
    if labels:
        if len(labels) != cfg.num_labels:
            raise ExportError(f"{len(labels)} label names for a model with {cfg.num_labels} outputs.",
                              "Pass one label name per output of the classifier.")
        cfg.id2label = {i: str(n) for i, n in enumerate(labels)}
        cfg.label2id = {str(n): i for i, n in enumerate(labels)}
    return cfg


def probe_images(config) -> list:
    """Three fixed uint8 images at the model's size (black, seeded noise, a gradient): the image models' probe.

    Built from numpy's PCG64 with seed 0, which numpy keeps stable across versions, so they
    need not be stored. Grey (H, W) for a one-channel model, (H, W, 3) otherwise.
    """
    import numpy as np
    size = getattr(config, "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    shape = (h, w) if getattr(config, "num_channels", 3) == 1 else (h, w, 3)
    noise = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    ramp = np.linspace(0, 255, h * w).reshape(h, w).astype(np.uint8)
    ramp = ramp if len(shape) == 2 else np.stack([ramp, ramp.T if h == w else ramp, 255 - ramp], -1)
    return [np.zeros(shape, np.uint8), noise, ramp]


def probe_inputs(model: nn.Module) -> list:
    """What the stored probe logits are computed on: :data:`PROBE_TEXTS` or :func:`probe_images`."""
    from axlab.core.registry import modality
    return probe_images(model.config) if modality(model) == "image" else PROBE_TEXTS


def probe_logits(model: nn.Module, processor) -> torch.Tensor:
    """Logits of the probe inputs, read through the model's processor (tokenizer or image processor)."""
    from axlab.core.measure import encode, forward
    batch = encode(processor, probe_inputs(model))
    with torch.inference_mode():
        return forward(model, batch).logits.float()


def _readme(sidecar: dict) -> str:
    plain = sidecar["plain"]
    steps = ", ".join(s["op"] for s in sidecar["recipe"]) or "none (the base model)"
    from axlab.core.registry import SUPPORTED
    spec = SUPPORTED.get(sidecar.get("model_type"))
    auto = "AutoModelForImageClassification" if spec is not None and spec.modality == "image" else \
        "AutoModelForSequenceClassification"
    how = ("It also loads with plain transformers:\n\n```python\nfrom transformers import "
           f"{auto}\n"
           f"model = {auto}.from_pretrained(folder)\n```\n"
           if plain else
           "Its shapes differ from what config.json alone describes (pruned heads or FFN neurons, hard attention "
           "or quantized layers), so load it with axlab, which rebuilds them from axlab_variant.json.\n")
    lines = [f"# {sidecar.get('name') or 'axlab variant'}", "",
             f"An axlab variant of `{sidecar['base']}` exported on {sidecar['created']}.", "",
             f"Recipe steps: {steps}.", "",
             "```python\nimport axlab\n"
             "bundle = axlab.load_variant(folder)   # model, processor (tokenizer or image processor), labels\n```",
             "", how]
    m = sidecar.get("measurements") or {}
    if isinstance(m.get("onnx"), dict):
        lines += ["`onnx/model.onnx` runs in ONNX Runtime (inputs `input_ids`, `attention_mask`; output `logits`); "
                  f"its logits matched PyTorch to {m['onnx'].get('parity_max_abs_diff', float('nan')):.1e}"
                  + (" and `onnx/model_int8.onnx` is its dynamic int8 version." if "onnx_int8" in m else "."), ""]
    if m.get("accuracy") is not None:
        lines.append(f"Measured accuracy: {m['accuracy']:.4f} on {m.get('n', '?')} examples "
                     f"({m.get('split', '?')} split).")
    return "\n".join(lines) + "\n"


def _probe_record(model: nn.Module, processor) -> dict:
    from axlab.core.registry import modality
    logits = probe_logits(model, processor).tolist()
    if modality(model) == "text":
        return {"texts": PROBE_TEXTS, "logits": logits}
    return {"images": "axlab.core.folder.probe_images(config): black, noise (PCG64 seed 0), gradient",
            "logits": logits}


def write_variant_files(model: nn.Module, tokenizer, folder: Path, *, recipe, measurements, base, labels,
                   name: str | None, dataset: str | None, extra: dict | None) -> dict:
    """Write the variant files into an existing (temporary) folder; return the sidecar."""
    from safetensors.torch import save_file

    from axlab import __version__
    from axlab.core.surgery import layout

    cfg = _export_config(model, labels)
    cfg.save_pretrained(folder)
    save_file(_state_tensors(model), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    labels = [str(cfg.id2label[i]) for i in range(cfg.num_labels)]
    sidecar = {
        "format_version": FORMAT_VERSION,
        "axlab_version": __version__,
        "name": name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "base": str(base),
        "dataset": dataset,
        "labels": labels,
        "recipe": list(recipe or []),
        "measurements": dict(measurements or {}),
        "layout": layout(model),
        "quant_layout": quant_layout_of(model),
        "plain": is_plain(model),
        "model_type": model.config.model_type,
        "probe": _probe_record(model, tokenizer) if tokenizer is not None else None,
        **(extra or {}),
    }
    (folder / "README.md").write_text(_readme(sidecar))
    # the sidecar is written last: a folder without it is not a complete export
    (folder / VARIANT_FILE).write_text(json.dumps(sidecar, indent=2, default=str))
    return sidecar


def read_sidecar(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / VARIANT_FILE
    if not path.exists():
        raise ModelLoadError(f"'{folder}' has no {VARIANT_FILE}, so it is not an axlab export.",
                             "Load plain model folders with axlab.load_model(folder).")
    try:
        sidecar = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}).",
                             "The export is damaged; export the variant again.") from None
    version = sidecar.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelLoadError(f"{path} has format version {version!r}; this axlab reads up to {FORMAT_VERSION}.",
                             "Upgrade axlab to load this export.")
    return sidecar

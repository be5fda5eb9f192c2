"""Export a variant as a folder that reloads anywhere, and load it back.

The folder is a Hugging Face-style model folder plus one sidecar::

    config.json            the model config (architecture, labels)
    model.safetensors      the weights, exactly the variant's state_dict
    tokenizer files        from tokenizer.save_pretrained
    axlab_variant.json     recipe, shape layout, quantization layout, measurements, base,
                           labels, axlab version, and probe logits for a self-check
    README.md              what the folder is and how to load it
    onnx/                  optional: model.onnx (+ model_int8.onnx), see axlab.onnx_export
    report/                optional: report.html/.json/.md, see axlab.report

transformers 5 ignores ``config.pruned_heads``, so a variant with uneven heads per
layer, narrower FFNs, hard attention or quantized layers is rebuilt by
``load_variant``: build the architecture from the config, reshape it with
``axlab.surgery.apply_layout``, swap in quantized modules with
``axlab.quantize.apply_quant_layout``, then load the weights with ``strict=True``.
A variant whose shapes equal the config's (no pruning, no quantization, no hard
attention) is marked ``plain``: it also loads with
``AutoModelForSequenceClassification.from_pretrained(folder)``.

Writes are atomic: everything goes into a hidden temporary sibling folder which is
renamed into place at the very end, so a crash never leaves a folder at the target
path that looks complete. An existing target is replaced only with ``overwrite=True``.
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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import registry
from .errors import ExportError, ModelLoadError
from .progress import Progress, as_progress

__all__ = ["VARIANT_FILE", "FORMAT_VERSION", "PROBE_TEXTS", "export_variant", "load_variant", "read_sidecar",
           "is_plain", "quant_layout_of", "weight_names", "eval_mode", "ExportResult", "export_all", "atomic_folder", "check_target"]

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
        raise ExportError(f"'{folder}' exists and is a file, not a folder.", "Choose another output folder.")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ExportError(f"'{folder}' already exists and is not empty.",
                          "Choose a new folder, or replace it explicitly with overwrite=True (CLI: --overwrite).")
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"Cannot create '{parent}': {e.strerror}.", "Choose a folder you can write to.") from None
    if not os.access(parent, os.W_OK):
        raise ExportError(f"'{parent}' is not writable.", "Choose a folder you can write to.")
    return folder


class atomic_folder:  # noqa: N801  (used as a context manager, reads like a function)
    """``with atomic_folder(target, overwrite) as tmp:`` write into ``tmp``; on success it becomes ``target``.

    On an exception the temporary folder is removed and ``target`` is untouched. The
    temporary folder is a hidden sibling (same file system, so the final rename is atomic).
    """

    def __init__(self, target: str | Path, overwrite: bool = False):
        self.target = check_target(target, overwrite)
        tag = uuid.uuid4().hex[:8]
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
    """The quantization layout (``axlab.quantize.quant_layout``), or None if nothing is quantized."""
    try:
        from . import quantize
    except ModuleNotFoundError as e:
        if e.name != "axlab.quantize":
            raise
        return None
    if not hasattr(quantize, "quant_layout"):
        return None
    lay = quantize.quant_layout(model)
    return lay if lay and lay.get("modules") else None


def _reference_shapes(config) -> dict[str, tuple]:
    """State-dict shapes of a model built straight from ``config`` (on the meta device: no memory)."""
    from transformers import AutoModelForSequenceClassification
    with torch.device("meta"):
        ref = AutoModelForSequenceClassification.from_config(config)
    return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def is_plain(model: nn.Module) -> bool:
    """True if ``from_pretrained`` alone rebuilds the model: config shapes, no hard attention, no quantization."""
    from .attention import get_topk
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


def _probe_logits(model: nn.Module, tokenizer) -> torch.Tensor:
    from .measure import tokenize
    batch = tokenize(tokenizer, PROBE_TEXTS)
    with torch.inference_mode():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def _readme(sidecar: dict) -> str:
    plain = sidecar["plain"]
    steps = ", ".join(s["op"] for s in sidecar["recipe"]) or "none (the base model)"
    how = ("It also loads with plain transformers:\n\n```python\nfrom transformers import "
           "AutoModelForSequenceClassification\n"
           "model = AutoModelForSequenceClassification.from_pretrained(folder)\n```\n"
           if plain else
           "Its shapes differ from what config.json alone describes (pruned heads or FFN neurons, hard attention "
           "or quantized layers), so load it with axlab, which rebuilds them from axlab_variant.json.\n")
    lines = [f"# {sidecar.get('name') or 'axlab variant'}", "",
             f"An axlab variant of `{sidecar['base']}` exported on {sidecar['created']}.", "",
             f"Recipe steps: {steps}.", "",
             "```python\nimport axlab.export\n"
             "bundle = axlab.export.load_variant(folder)   # model, tokenizer, labels\n```",
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


# ---------------------------------------------------------------------------------------------
# export / load
# ---------------------------------------------------------------------------------------------

def _write_variant(model: nn.Module, tokenizer, folder: Path, *, recipe, measurements, base, labels,
                   name: str | None, dataset: str | None, extra: dict | None) -> dict:
    """Write the variant files into an existing (temporary) folder; return the sidecar."""
    from safetensors.torch import save_file

    from . import __version__
    from .surgery import layout

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
        "probe": {"texts": PROBE_TEXTS, "logits": _probe_logits(model, tokenizer).tolist()} if tokenizer else None,
        **(extra or {}),
    }
    (folder / "README.md").write_text(_readme(sidecar))
    # the sidecar is written last: a folder without it is not a complete export
    (folder / VARIANT_FILE).write_text(json.dumps(sidecar, indent=2, default=str))
    return sidecar


def export_variant(model: nn.Module, tokenizer, folder: str | Path, *, recipe: list | None = None,
                   measurements: dict | None = None, base: str = "", labels: list[str] | None = None,
                   overwrite: bool = False, name: str | None = None, dataset: str | None = None,
                   extra: dict | None = None, verify: bool = True) -> Path:
    """Write ``model`` (a variant) to ``folder`` atomically; return the folder.

    ``verify`` reloads the written folder before it is moved into place and checks
    that the reloaded model gives the same logits on the probe texts.
    ``model`` is not modified.
    """
    if tokenizer is None and verify:
        raise ExportError("No tokenizer given.", "Pass the variant's tokenizer: the folder must be usable on its own.")
    recipe = recipe if recipe is not None else list(getattr(model, "axlab_recipe", []) or [])
    with atomic_folder(folder, overwrite) as tmp, eval_mode(model):
        _write_variant(model, tokenizer, tmp, recipe=recipe, measurements=measurements, base=base, labels=labels,
                       name=name, dataset=dataset, extra=extra)
        if verify:
            load_variant(tmp, verify=True)       # rebuild + probe check, raises on a mismatch
    target = Path(folder).expanduser().resolve()
    log.info("exported variant to %s", target)
    return target


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


def load_variant(folder: str | Path, *, verify: bool = True):
    """Rebuild an exported variant: same shapes, same modules, same weights -> same logits.

    Returns a :class:`axlab.loading.ModelBundle`. With ``verify`` the stored probe logits
    are recomputed and compared (tolerance 1e-4).
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from .attention import use_axlab_attention
    from .loading import ModelBundle
    from .surgery import apply_layout

    folder = Path(folder).expanduser().resolve()
    sidecar = read_sidecar(folder)
    if not (folder / WEIGHTS_FILE).exists():
        raise ModelLoadError(f"'{folder}' has no {WEIGHTS_FILE}.",
                             "The export is incomplete; export the variant again.")
    config = AutoConfig.from_pretrained(folder)
    registry.spec_for(config.model_type)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    model.eval()
    use_axlab_attention(model)
    apply_layout(model, sidecar.get("layout") or {})
    if sidecar.get("quant_layout"):
        try:
            from .quantize import apply_quant_layout
        except ImportError:
            raise ModelLoadError(f"'{folder}' holds quantized layers but this axlab has no quantization module.",
                                 "Upgrade axlab to a version with axlab.quantize.") from None
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
    tokenizer = AutoTokenizer.from_pretrained(folder)
    probe = sidecar.get("probe")
    if verify and probe:
        got = _probe_logits(model, tokenizer)
        want = torch.tensor(probe["logits"])
        diff = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
        if diff > PROBE_ATOL:
            raise ModelLoadError(f"The reloaded model in '{folder}' gives different logits than when it was "
                                 f"exported (max difference {diff:.2e}).",
                                 "The weights or the layout record are damaged, or this axlab version rebuilds "
                                 "the variant differently; export it again.")
    labels = list(sidecar.get("labels") or [str(config.id2label[i]) for i in range(config.num_labels)])
    log.info("loaded variant %s (%d steps)", folder, len(model.axlab_recipe))
    return ModelBundle(model=model, tokenizer=tokenizer, labels=labels, source=str(folder), path=str(folder),
                       info=sidecar)


# ---------------------------------------------------------------------------------------------
# the three outputs at once (CLI `axlab export`, the app's Export page)
# ---------------------------------------------------------------------------------------------

@dataclass
class ExportResult:
    folder: Path
    measurements: dict                              # the variant's measurements incl. onnx/onnx_int8 entries
    onnx: object | None = None                      # axlab.onnx_export.OnnxResult
    report: dict | None = None                      # {"html", "json", "md"} paths
    files: dict = field(default_factory=dict)       # relative path -> bytes


def export_all(model: nn.Module, tokenizer, folder: str | Path, *, recipe: list | None = None,
               measurements: dict | None = None, base: str = "", labels: list[str] | None = None,
               name: str | None = None, dataset: str | None = None, overwrite: bool = False,
               onnx: bool = True, int8: bool = False, splits=None, measure_split: str = "test",
               limit: int | None = None, report_variants: list | None = None, report: bool = True,
               progress: Progress = None, int8_per_channel: bool = True) -> ExportResult:
    """Variant folder + ONNX (+ int8) + comparison report, in one atomic folder.

    The int8 file uses per-channel weight scales by default (``int8_per_channel``): on the
    benchmark's pruned model they kept 0.8325 test accuracy where per-tensor scales gave 0.821.

    ``splits`` (axlab.data.Splits) lets the ONNX files be measured (accuracy on
    ``measure_split``, first ``limit`` examples, and ONNX Runtime latency); their
    size and latency join the measurements under ``"onnx"`` / ``"onnx_int8"``.
    ``report_variants`` are the other variants (axlab.variants.Variant or dicts) to
    compare against; the exported one is added to them.
    """
    from .onnx_export import export_onnx, measure_onnx

    steps = 1 + int(onnx) + int(onnx and int8) + int(report)
    prog = as_progress(progress, total=steps, desc="export")
    recipe = recipe if recipe is not None else list(getattr(model, "axlab_recipe", []) or [])
    measurements = dict(measurements or {})
    result_onnx = None
    with atomic_folder(folder, overwrite) as tmp, eval_mode(model):
        if onnx:
            result_onnx = export_onnx(model, tokenizer, tmp / "onnx" / "model.onnx", int8=int8,
                                      int8_per_channel=int8_per_channel)
            prog.update(1, "ONNX export and parity check")
            measurements["onnx"] = {"size_bytes": result_onnx.size_bytes,
                                    "parity_max_abs_diff": result_onnx.parity_max_abs_diff,
                                    "variant_max_abs_diff": result_onnx.variant_max_abs_diff}
            if int8:
                measurements["onnx_int8"] = {"size_bytes": result_onnx.int8_size_bytes,
                                             "max_abs_diff_vs_pytorch": result_onnx.int8_max_abs_diff}
            if splits is not None:
                split = splits[measure_split].head(limit)
                measurements["onnx"].update(measure_onnx(result_onnx.predictor, tokenizer, split, measure_split))
                if int8:
                    measurements["onnx_int8"].update(
                        measure_onnx(result_onnx.int8_predictor, tokenizer, split, measure_split))
            if int8:
                prog.update(1, "ONNX int8 written" + (" and measured" if splits is not None else ""))
        _write_variant(model, tokenizer, tmp, recipe=recipe, measurements=measurements, base=base, labels=labels,
                       name=name, dataset=dataset, extra=None)
        load_variant(tmp, verify=True)
        prog.update(1, "variant folder written and verified")
        report_paths = None
        if report:
            from .report import write_report
            from .variants import Variant
            this = Variant(name=name or "exported", base=str(base), dataset=dataset or "", recipe=list(recipe),
                           measurements=measurements)
            from .compare import as_record
            key = (this.name, json.dumps(this.recipe, sort_keys=True))
            others = [v for v in (report_variants or [])     # the exported variant itself is replaced by `this`
                      if (as_record(v)["name"], json.dumps(as_record(v)["recipe"], sort_keys=True)) != key]
            report_paths = write_report(others + [this], tmp / "report", splits=splits,
                                        title=f"axlab comparison: {name or 'exported variant'}")
            prog.update(1, "report written")
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    prog.close()
    target = Path(folder).expanduser().resolve()

    def moved(p):
        return target / Path(p).relative_to(tmp) if p is not None else None

    if result_onnx is not None:
        result_onnx = result_onnx.moved_to(target / "onnx")
    if report_paths:
        report_paths = {k: moved(v) for k, v in report_paths.items()}
    return ExportResult(folder=target, measurements=measurements, onnx=result_onnx, report=report_paths, files=files)

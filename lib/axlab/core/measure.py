"""Measure a model: accuracy and macro-F1, latency on real lengths, serialised size.

The model's *inputs* are texts (a list of str, read with a tokenizer) or images (uint8 arrays
(H, W) or (H, W, 3), read with an image processor); :func:`encode` is the one place that
turns either into a batch. A *predictor* is anything that maps such a batch (``input_ids``
and ``attention_mask``, or ``pixel_values``, as torch tensors) to logits. A torch model is
wrapped by :func:`as_predictor`; the ONNX export supplies its own. ``measure`` returns one record.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from axlab.core.data import Split, align_labels
from axlab.core.progress import Progress, as_progress

__all__ = ["Predictor", "as_predictor", "paired_speedup", "predict_logits", "evaluate", "scores", "fidelity",
           "latency", "size_report", "hardware_info", "measure", "Measurement", "tokenize", "encode", "forward",
           "token_mask", "is_images", "iter_batches", "compare_latency", "describe_speedup", "per_class"]

log = logging.getLogger(__name__)

Predictor = Callable[[dict], torch.Tensor]
MAX_LENGTH = 128


def tokenize(tokenizer, texts: list[str], max_length: int = MAX_LENGTH) -> dict:
    return dict(tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"))


def is_images(inputs) -> bool:
    """True for images (an array (N, H, W[, C]) or a sequence of (H, W[, C]) arrays / PIL images)."""
    if isinstance(inputs, np.ndarray):
        return inputs.ndim >= 3
    if isinstance(inputs, (list, tuple)) and len(inputs):
        first = inputs[0]
        return isinstance(first, np.ndarray) or hasattr(first, "getbands")        # array or PIL image
    return False


def _processor_channels(processor) -> int | None:
    mean = getattr(processor, "image_mean", None)
    return len(mean) if isinstance(mean, (list, tuple)) else None


def encode(processor, inputs, max_length: int = MAX_LENGTH) -> dict:
    """One model batch from texts (tokenizer) or images (image processor): the only place that knows both.

    Images are uint8 (H, W) grey or (H, W, 3) colour. A grey image given to a colour model is
    repeated over the 3 channels; a colour image given to a grey model is reduced to luminance
    (the processor's ``image_mean`` says how many channels the model reads).
    """
    if not is_images(inputs):
        return tokenize(processor, inputs, max_length)
    arrays = [np.asarray(im) for im in inputs]
    channels = _processor_channels(processor)
    batch = []
    for a in arrays:
        if a.ndim == 2:
            a = a[:, :, None]
        if channels == 3 and a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        elif channels == 1 and a.shape[-1] == 3:
            a = np.rint(a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).clip(0, 255)
            a = a.astype(np.uint8)[:, :, None]
        batch.append(a)
    out = processor(images=batch, return_tensors="pt", input_data_format="channels_last")
    return {"pixel_values": out["pixel_values"]}


def model_device(model) -> torch.device:
    """Where ``model``'s weights are (its first parameter's device; CPU for a model without any)."""
    p = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


def require_cpu(model, what: str) -> None:
    """Raise a clear error when ``model`` is not on the CPU: ``what`` runs there only."""
    dev = model_device(model)
    if dev.type != "cpu":
        from axlab.core.errors import AxlabError
        raise AxlabError(f"{what} runs on the CPU, and this model is on {dev}.",
                         "Move it back with model.cpu() first. On a GPU, axlab evaluates, prunes by given "
                         "heads / neurons / layers, fine-tunes and distils.")


def to_device(batch: dict, device: torch.device) -> dict:
    """``batch``'s tensors on ``device`` (the same dict when they are there already)."""
    if all(not isinstance(v, torch.Tensor) or v.device == device for v in batch.values()):
        return batch
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def forward(model: nn.Module, batch: dict, **kwargs):
    """``model``'s output on a batch from :func:`encode` (text: ids + mask; images: pixel values),
    computed where the model is (a model moved to a GPU gets its batch there)."""
    batch = to_device(batch, model_device(model))
    if "pixel_values" in batch:
        return model(pixel_values=batch["pixel_values"], **kwargs)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)


def token_mask(batch: dict, hidden: torch.Tensor) -> torch.Tensor:
    """Which positions of ``hidden`` (B, T, ...) are real tokens: the attention mask for text, all for images."""
    if "attention_mask" in batch:
        return batch["attention_mask"].bool()
    return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)


def as_predictor(model) -> Predictor:
    if isinstance(model, nn.Module):
        def predict(batch: dict) -> torch.Tensor:
            with torch.inference_mode():
                return forward(model, batch).logits
        return predict
    return model


def _pick(inputs, ix) -> list:
    return [inputs[int(i)] for i in ix]


def iter_batches(processor, inputs, batch_size: int, max_length: int = MAX_LENGTH):
    """Yield (indices, batch); texts are grouped by length so padding is small, images keep their order."""
    if is_images(inputs):
        order = np.arange(len(inputs))
    else:
        order = np.argsort([len(t) for t in inputs], kind="stable")
    for start in range(0, len(order), batch_size):
        ix = order[start:start + batch_size]
        yield ix, encode(processor, _pick(inputs, ix), max_length)


def predict_logits(model, processor, inputs, batch_size: int = 64, progress: Progress = None,
                   max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Logits for ``inputs`` (texts or images) in their original order, shape (N, n_labels)."""
    predict = as_predictor(model)
    out: list[tuple[np.ndarray, torch.Tensor]] = []
    prog = as_progress(progress, total=len(inputs), desc="predict")
    for ix, batch in iter_batches(processor, inputs, batch_size, max_length):
        lg = predict(batch)
        lg = lg.detach().float().cpu() if isinstance(lg, torch.Tensor) else torch.as_tensor(np.asarray(lg)).float()
        out.append((ix, lg))
        prog.update(len(ix))
    prog.close()
    logits = torch.empty(len(inputs), out[0][1].shape[-1]) if out else torch.empty(0, 0)
    for ix, lg in out:
        logits[torch.as_tensor(ix)] = lg
    return logits


def per_class(y: np.ndarray, p: np.ndarray, n_classes: int, names: list[str] | None = None) -> dict:
    """Precision / recall / F1 / support per class, the confusion matrix and macro-F1 over the classes present.

    ``confusion[i][j]`` counts examples of true class i predicted as j, in the model's output
    order. Macro-F1 averages over the classes that occur in ``y`` (a class the data does not
    have has no recall to average); ``note`` says so when that is fewer than the model's classes.
    """
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=int)
    names = list(names) if names is not None and len(names) == n_classes else [str(i) for i in range(n_classes)]
    conf = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(conf, (y, p), 1)
    rows, f1s = {}, []
    for c in range(n_classes):
        tp, fp, fn = int(conf[c, c]), int(conf[:, c].sum() - conf[c, c]), int(conf[c, :].sum() - conf[c, c])
        support = tp + fn
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / support if support else None
        f1 = 2 * tp / (2 * tp + fp + fn) if support else None
        rows[names[c]] = {"precision": round(prec, 6), "recall": None if rec is None else round(rec, 6),
                          "f1": None if f1 is None else round(f1, 6), "support": support, "predicted": tp + fp}
        if support:
            f1s.append(f1)
    present = len(f1s)
    note = None
    if present < n_classes:
        absent = [names[c] for c in range(n_classes) if not conf[c, :].sum()]
        note = (f"Macro-F1 is over the {present} of the model's {n_classes} classes present in the data "
                f"(absent: {', '.join(absent[:10])}).")
    return {"macro_f1": float(np.mean(f1s)) if f1s else 0.0, "per_class": rows, "confusion": conf.tolist(),
            "labels": names, "classes_present": present, "note": note}


def _macro_f1(y: np.ndarray, p: np.ndarray, n_classes: int) -> float:
    return per_class(y, p, n_classes)["macro_f1"]


def evaluate(model, processor, split: Split, batch_size: int = 64, progress: Progress = None) -> dict:
    """Accuracy, macro-F1, mean cross-entropy loss, per-class figures and the confusion matrix on a split.

    The split's labels are matched to the model's ``id2label`` by name first
    (:func:`axlab.core.data.align_labels`; raises DataError for labels the model does not know).
    """
    split = align_labels(split, model)
    logits = predict_logits(model, processor, split.inputs, batch_size, progress)
    return scores(logits, split.labels, label_names=split.label_names)


def scores(logits: torch.Tensor, labels, label_names: list[str] | None = None) -> dict:
    """Accuracy, macro-F1 (over the classes present), loss, per-class figures and confusion of ``logits`` (N, C)."""
    from axlab.core.errors import DataError
    y = torch.as_tensor(labels, dtype=torch.long)
    n_classes = logits.shape[-1]
    if len(y) and (int(y.max()) >= n_classes or int(y.min()) < 0):
        raise DataError(f"Label index {int(y.max())} is out of range for a model with {n_classes} outputs.",
                        "Give the split its label names (Split(texts, labels, label_names)) so they can be matched "
                        "to the model's labels, or use data of the model's task.")
    loss = float(nn.functional.cross_entropy(logits, y)) if len(y) else float("nan")
    p = logits.argmax(-1).numpy()
    pc = per_class(y.numpy(), p, n_classes, label_names)
    out = {"accuracy": float((p == y.numpy()).mean()) if len(y) else float("nan"), "macro_f1": pc["macro_f1"],
           "loss": loss, "n": len(y), "per_class": pc["per_class"], "confusion": pc["confusion"],
           "labels": pc["labels"]}
    if pc["note"]:
        out["note"] = pc["note"]
    return out


def fidelity(logits: torch.Tensor, reference: torch.Tensor) -> dict:
    """How closely a compressed model follows its reference on the same inputs.

    ``agreement``: share of examples with the same predicted class; ``kl``: mean
    KL(reference || model) of the output distributions. Both move smoothly where accuracy
    on a few thousand examples jumps by chance (two near-lossless variants tie on accuracy
    but not here).
    """
    ref, lp = reference.float().log_softmax(-1), logits.float().log_softmax(-1)
    return {"agreement": float((lp.argmax(-1) == ref.argmax(-1)).float().mean()),
            "kl": float((ref.exp() * (ref - lp)).sum(-1).mean())}


def latency(model, processor, inputs, batch_size: int = 1, n_runs: int = 50, warmup: int = 5,
            seed: int = 0, threads: int | None = None) -> dict:
    """Median and p90 latency (ms) on batches drawn from ``inputs`` (texts at their real lengths, or images)."""
    predict = as_predictor(model)
    rng = np.random.default_rng(seed)
    batches = [encode(processor, _pick(inputs, rng.choice(len(inputs), batch_size, replace=len(inputs) < batch_size)))
               for _ in range(n_runs + warmup)]
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        times = []
        for i, b in enumerate(batches):
            t0 = time.perf_counter()
            predict(b)
            dt = (time.perf_counter() - t0) * 1000
            if i >= warmup:
                times.append(dt)
    finally:
        torch.set_num_threads(old)
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)),
            "batch_size": batch_size, "runs": n_runs, "threads": threads or old}


def compare_latency(models: dict, processor, inputs, batch_size: int = 1, rounds: int = 5,
                    runs_per_round: int = 10, warmup: int = 3, seed: int = 0, threads: int | None = None,
                    base: str | None = None) -> dict:
    """Latency of several models measured **interleaved** in one call, so machine load hits them all alike.

    Each round runs every model on the same ``runs_per_round`` batches (drawn from ``inputs``:
    texts at their real lengths, or images), alternating the order between rounds. Per model: the per-round medians,
    their median (``median_ms``) and range (``spread_ms`` = [min, max]). Per model other than
    ``base`` (default: the first): ``speedup`` = the median over rounds of base / model in the same
    round, its range over the rounds (``speedup_range``), and ``within_noise`` = that range
    includes 1x, i.e. the two models swap order in some round (then the ratio is not a result:
    re-measure on a quieter machine or with more rounds). The rounds are paired (both models
    timed back to back on the same batches), so drift across rounds does not count as noise;
    with 5 rounds, "the same order in every round" by chance alone has probability 2/32. The
    unpaired rule (the two models' per-round ranges overlap) is ``overlap_within_noise``.
    """
    if not models:
        return {"models": {}, "ratios": {}, "base": None}
    names = list(models)
    base = base or names[0]
    predictors = {n: as_predictor(m) for n, m in models.items()}
    rounds, runs_per_round = max(1, int(rounds)), max(1, int(runs_per_round))
    rng = np.random.default_rng(seed)

    def draw(k):
        return [encode(processor, _pick(inputs, rng.choice(len(inputs), batch_size, replace=len(inputs) < batch_size)))
                for _ in range(k)]
    warm = draw(warmup)
    batches = draw(rounds * runs_per_round)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    times: dict[str, list[float]] = {n: [] for n in names}
    per_round: dict[str, list[float]] = {n: [] for n in names}
    try:
        for n in names:
            for b in warm:
                predictors[n](b)
        for r in range(rounds):
            chunk = batches[r * runs_per_round:(r + 1) * runs_per_round]
            for n in (names if r % 2 == 0 else names[::-1]):
                ts = []
                for b in chunk:
                    t0 = time.perf_counter()
                    predictors[n](b)
                    ts.append((time.perf_counter() - t0) * 1000)
                times[n] += ts
                per_round[n].append(statistics.median(ts))
    finally:
        torch.set_num_threads(old)
    # the median of the per-round medians: one noisy round (another program's burst) does not move it
    out_models = {n: {"median_ms": statistics.median(per_round[n]), "p90_ms": float(np.percentile(times[n], 90)),
                      "round_medians_ms": [round(x, 4) for x in per_round[n]],
                      "spread_ms": [min(per_round[n]), max(per_round[n])]} for n in names}
    ratios = {}
    b = out_models[base]
    for n in names:
        if n == base:
            continue
        ps = paired_speedup(per_round[base], per_round[n])
        lo_b, hi_b = b["spread_ms"]
        lo_n, hi_n = out_models[n]["spread_ms"]
        ratios[n] = {"speedup": statistics.median(ps["speedups"]) if ps["speedups"]
                     else b["median_ms"] / out_models[n]["median_ms"],
                     "speedup_range": ps["range"], "within_noise": ps["within_noise"] if rounds > 1 else None,
                     "overlap_within_noise": bool(max(lo_b, lo_n) <= min(hi_b, hi_n)) if rounds > 1 else None}
    return {"models": out_models, "ratios": ratios, "base": base, "batch_size": batch_size, "rounds": rounds,
            "runs_per_round": runs_per_round, "threads": threads or old}


def paired_speedup(base_rounds, other_rounds, min_rounds_for_interval: int = 5) -> dict:
    """How many times faster ``other`` is than ``base``, round by round (rounds paired by index:
    each timed both back to back), and whether that is within noise.

    ``range``: the lowest and highest per-round speed-up; ``within_noise``: the range includes
    1x, i.e. the two swap order in some round (with 7 rounds, all on one side by chance alone
    has probability 2 / 2**7 = 1.6%); None with fewer than two rounds. ``speedups``: the
    per-round values (rounds where ``other`` took no time are left out).
    ``median``: the median per-round speed-up; ``interval``: a 95% bootstrap interval of that
    median (rounds resampled with replacement, 2,000 times, fixed seed), None with fewer than
    ``min_rounds_for_interval`` rounds. The range only widens as rounds are added (one burst of
    load in 45 rounds makes a ratio "within noise"); the interval narrows, and says how far the
    typical round's ratio is known.
    """
    sp = [b / o for b, o in zip(base_rounds, other_rounds) if o > 0]
    interval = None
    if len(sp) >= min_rounds_for_interval:
        arr = np.asarray(sp)
        boot = np.median(np.random.default_rng(0).choice(arr, (2000, len(arr))), axis=1)
        interval = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    return {"speedups": sp, "range": [min(sp), max(sp)] if sp else None,
            "within_noise": bool(min(sp) <= 1.0 <= max(sp)) if len(sp) > 1 else None,
            "median": float(np.median(sp)) if sp else None, "interval": interval}


def describe_speedup(ratio: dict | None) -> str:
    """'1.23x (1.10-1.31 over the rounds)' or '... within noise' for a ``compare_latency`` ratio."""
    if not ratio:
        return "-"
    text = f"{ratio['speedup']:.2f}x"
    if ratio.get("speedup_range"):
        lo, hi = ratio["speedup_range"]
        text += f" ({lo:.2f}-{hi:.2f} over the rounds)"
    if ratio.get("within_noise"):
        text += ", within noise"
    return text


def _module_nbytes(module: nn.Module) -> tuple[int, dict]:
    """Bytes this module contributes to an export. Modules may define ``axlab_export_nbytes()``."""
    if hasattr(module, "axlab_export_nbytes"):
        return int(module.axlab_export_nbytes()), {}
    tensors = {}
    for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        if t is not None and name not in getattr(module, "_non_persistent_buffers_set", set()):
            tensors[name] = t
    return 0, tensors


def size_report(model: nn.Module) -> dict:
    """Serialised size (safetensors bytes as an export would write), parameters, non-zeros.

    Unstructured zeros are still written by a dense export, so they do not shrink ``size_bytes``.
    """
    from safetensors.torch import save

    extra = 0
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for mname, mod in model.named_modules():
        nb, ts = _module_nbytes(mod)
        extra += nb
        if nb:
            # skip children of a module that reports its own size
            seen.update(id(t) for t in mod.parameters())
            seen.update(id(t) for t in mod.buffers())
            continue
        for n, t in ts.items():
            if id(t) in seen:
                continue
            seen.add(id(t))
            tensors[f"{mname}.{n}" if mname else n] = t.detach().contiguous()
    size = len(save(tensors)) + extra if tensors else extra
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return {"size_bytes": int(size), "params": int(params), "nonzero": int(nonzero)}


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict:
    import transformers
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform()}
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


@dataclass
class Measurement:
    accuracy: float
    macro_f1: float
    loss: float
    n: int
    split: str
    latency_b1_ms: float | None = None
    latency_b1_p90_ms: float | None = None
    latency_b32_ms: float | None = None
    latency_b32_p90_ms: float | None = None
    size_bytes: int | None = None
    params: int | None = None
    nonzero: int | None = None
    threads: int | None = None
    latency_b1_spread_ms: list | None = None      # [min, max] of the per-round medians
    latency_b32_spread_ms: list | None = None
    latency_vs_base: dict | None = None          # {"b1": {...}, "b32": {...}}: interleaved with the base model
    per_class: dict | None = None                # label -> precision, recall, f1, support, predicted
    confusion: list | None = None                # [true][predicted] counts, model output order
    labels: list | None = None                   # the model's label names (output order)
    notes: list | None = None                    # what a reader must know (label matching, classes present)

    def to_dict(self) -> dict:
        return asdict(self)


def measure(model, processor, split: Split, *, split_name: str = "test", with_latency: bool = True,
            latency_runs: tuple[int, int] = (50, 10), threads: int | None = None, progress: Progress = None,
            size_of: nn.Module | None = None, compare_to=None, latency_rounds: int = 5) -> Measurement:
    """Accuracy/F1 (+ per class, confusion) on ``split``, latency at batch 1 and 32 on its inputs, and size.

    ``processor`` is the tokenizer (text) or image processor (images) the model was loaded with.

    Latency runs in ``latency_rounds`` rounds (``latency_runs`` runs in all per batch size); with
    ``compare_to`` (the base model) both are measured interleaved in the same rounds and
    ``latency_vs_base`` holds the speed-up, its range and whether it is within noise.
    ``model`` may be a torch model or a predictor; for a predictor pass ``size_of`` or the
    size fields stay None (the ONNX export fills them from the file).
    """
    ev = evaluate(model, processor, split, progress=progress)
    notes = [n for n in (ev.get("note"),) if n]
    m = Measurement(accuracy=ev["accuracy"], macro_f1=ev["macro_f1"], loss=ev["loss"], n=ev["n"], split=split_name,
                    per_class=ev["per_class"], confusion=ev["confusion"], labels=ev["labels"], notes=notes or None)
    if with_latency and len(split):
        models = {"variant": model} if compare_to is None else {"base": compare_to, "variant": model}
        rounds = max(1, int(latency_rounds))
        res = {}
        for key, bs, runs in (("b1", 1, latency_runs[0]), ("b32", 32, latency_runs[1])):
            r = min(rounds, max(1, runs))
            res[key] = compare_latency(models, processor, split.inputs, bs, rounds=r, runs_per_round=max(1, runs // r),
                                       warmup=3 if bs == 1 else 1, threads=threads)
        v1, v32 = res["b1"]["models"]["variant"], res["b32"]["models"]["variant"]
        m.latency_b1_ms, m.latency_b1_p90_ms, m.latency_b1_spread_ms = v1["median_ms"], v1["p90_ms"], v1["spread_ms"]
        m.latency_b32_ms, m.latency_b32_p90_ms, m.latency_b32_spread_ms = (v32["median_ms"], v32["p90_ms"],
                                                                             v32["spread_ms"])
        m.threads = res["b1"]["threads"]
        if compare_to is not None:
            m.latency_vs_base = {k: {**res[k]["ratios"]["variant"], "base_ms": res[k]["models"]["base"]["median_ms"],
                                     "base_spread_ms": res[k]["models"]["base"]["spread_ms"],
                                     "ms": res[k]["models"]["variant"]["median_ms"],
                                     "spread_ms": res[k]["models"]["variant"]["spread_ms"], "rounds": res[k]["rounds"]}
                                 for k in ("b1", "b32")}
    target = size_of if size_of is not None else (model if isinstance(model, nn.Module) else None)
    if target is not None:
        s = size_report(target)
        m.size_bytes, m.params, m.nonzero = s["size_bytes"], s["params"], s["nonzero"]
    return m

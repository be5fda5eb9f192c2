"""Measure a model: accuracy and macro-F1, latency on real lengths, serialised size.

A *predictor* is anything that maps a tokenised batch (dict with ``input_ids`` and
``attention_mask`` as int64 torch tensors) to logits. A torch model is wrapped by
:func:`as_predictor`; the ONNX export supplies its own. ``measure`` returns one record.
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

from axlab.core.data import Split
from axlab.core.progress import Progress, as_progress

__all__ = ["Predictor", "as_predictor", "predict_logits", "evaluate", "scores", "fidelity", "latency", "size_report", "hardware_info",
           "measure", "Measurement", "tokenize", "iter_batches"]

log = logging.getLogger(__name__)

Predictor = Callable[[dict], torch.Tensor]
MAX_LENGTH = 128


def tokenize(tokenizer, texts: list[str], max_length: int = MAX_LENGTH) -> dict:
    return dict(tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"))


def as_predictor(model) -> Predictor:
    if isinstance(model, nn.Module):
        def predict(batch: dict) -> torch.Tensor:
            with torch.inference_mode():
                return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return predict
    return model


def iter_batches(tokenizer, texts: list[str], batch_size: int, max_length: int = MAX_LENGTH):
    """Yield (indices, batch) with texts grouped by length so padding is small."""
    lengths = [len(t) for t in texts]
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        ix = order[start:start + batch_size]
        yield ix, tokenize(tokenizer, [texts[i] for i in ix], max_length)


def predict_logits(model, tokenizer, texts: list[str], batch_size: int = 64, progress: Progress = None,
                   max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Logits for ``texts`` in their original order, shape (N, n_labels)."""
    predict = as_predictor(model)
    out: list[tuple[np.ndarray, torch.Tensor]] = []
    prog = as_progress(progress, total=len(texts), desc="predict")
    for ix, batch in iter_batches(tokenizer, texts, batch_size, max_length):
        out.append((ix, torch.as_tensor(np.asarray(predict(batch))).float()))
        prog.update(len(ix))
    prog.close()
    logits = torch.empty(len(texts), out[0][1].shape[-1]) if out else torch.empty(0, 0)
    for ix, lg in out:
        logits[torch.as_tensor(ix)] = lg
    return logits


def _macro_f1(y: np.ndarray, p: np.ndarray, n_classes: int) -> float:
    f1s = []
    for c in range(n_classes):
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def evaluate(model, tokenizer, split: Split, batch_size: int = 64, progress: Progress = None) -> dict:
    """Accuracy, macro-F1 and mean cross-entropy loss on a split."""
    return scores(predict_logits(model, tokenizer, split.texts, batch_size, progress), split.labels)


def scores(logits: torch.Tensor, labels) -> dict:
    """Accuracy, macro-F1 and mean cross-entropy loss of ``logits`` (N, classes) against ``labels``."""
    y = torch.as_tensor(labels)
    loss = float(nn.functional.cross_entropy(logits, y))
    p = logits.argmax(-1).numpy()
    return {"accuracy": float((p == y.numpy()).mean()), "macro_f1": _macro_f1(y.numpy(), p, logits.shape[-1]),
            "loss": loss, "n": len(y)}


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


def latency(model, tokenizer, texts: list[str], batch_size: int = 1, n_runs: int = 50, warmup: int = 5,
            seed: int = 0, threads: int | None = None) -> dict:
    """Median and p90 latency (ms) on batches drawn from ``texts`` (their real lengths)."""
    predict = as_predictor(model)
    rng = np.random.default_rng(seed)
    batches = [tokenize(tokenizer, [texts[i] for i in rng.choice(len(texts), batch_size, replace=len(texts) < batch_size)])
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

    def to_dict(self) -> dict:
        return asdict(self)


def measure(model, tokenizer, split: Split, *, split_name: str = "test", with_latency: bool = True,
            latency_runs: tuple[int, int] = (50, 10), threads: int | None = None, progress: Progress = None,
            size_of: nn.Module | None = None) -> Measurement:
    """Accuracy/F1 on ``split``, latency at batch 1 and 32 on its texts, and size.

    ``model`` may be a torch model or a predictor; for a predictor pass ``size_of`` or the
    size fields stay None (the ONNX export fills them from the file).
    """
    ev = evaluate(model, tokenizer, split, progress=progress)
    m = Measurement(accuracy=ev["accuracy"], macro_f1=ev["macro_f1"], loss=ev["loss"], n=ev["n"], split=split_name)
    if with_latency:
        b1 = latency(model, tokenizer, split.texts, 1, n_runs=latency_runs[0], threads=threads)
        b32 = latency(model, tokenizer, split.texts, 32, n_runs=latency_runs[1], warmup=2, threads=threads)
        m.latency_b1_ms, m.latency_b1_p90_ms = b1["median_ms"], b1["p90_ms"]
        m.latency_b32_ms, m.latency_b32_p90_ms = b32["median_ms"], b32["p90_ms"]
        m.threads = b1["threads"]
    target = size_of if size_of is not None else (model if isinstance(model, nn.Module) else None)
    if target is not None:
        s = size_report(target)
        m.size_bytes, m.params, m.nonzero = s["size_bytes"], s["params"], s["nonzero"]
    return m

"""How long will it take? Up-front estimates for the long jobs, from costs measured on this machine.

``costs(bundle, splits)`` times the base model once per (model, data) and caches it:
seconds per token in batches of 64 on a sample spread over the validation split
(``per_token``) and one batch-1 forward (``batch1``). A pass over the examples a job uses
costs their token count times ``per_token`` (``forward_s``: long reviews cost more than
short ones; an image counts as its patches plus the prefix tokens, the same for every image); every estimate below is a count of such passes (a backward pass counted as
two forwards). Jobs whose cost is not a plain count of
forwards (GPFQ, export) learn it: each finished job records its seconds per unit of work
(``learn``) and the next estimate of that kind uses the record; before the first run the
page says the figure is a first guess. Estimates are rough (they move with whatever else
the machine runs) and say so.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import streamlit as st

from .jobs import fmt_seconds
from .modality import processor_of, split_key

__all__ = ["search_cached", "measuring", "costs", "forward_s", "measure_s", "importance_s", "axformer_steps", "axformer_s", "learn", "learned", "about",
           "caption"]

log = logging.getLogger(__name__)
_lock = threading.Lock()


@st.cache_resource(show_spinner=False, max_entries=8)
def _costs(source: str, data_key: str, _bundle, _splits) -> dict:
    from axlab.core.measure import predict_logits
    model, tok = _bundle.model, processor_of(_bundle)
    inputs = _splits.validation.inputs
    val = list(inputs) if len(inputs) else ["a short sentence"]
    sample = val[::max(1, len(val) // 128)][:128]                           # spread over the split
    predict_logits(model, tok, sample[:8], batch_size=64)                  # warm-up
    t0 = time.perf_counter()
    predict_logits(model, tok, sample, batch_size=64)
    per_token = (time.perf_counter() - t0) / max(1, _count(tok, sample, model))
    t0 = time.perf_counter()
    for t in sample[:3]:
        predict_logits(model, tok, [t], batch_size=1)
    batch1 = (time.perf_counter() - t0) / min(3, len(sample))
    return {"per_token": per_token, "batch1": batch1, "when": time.time()}


def _count(tokenizer, inputs, model=None) -> int:
    """Tokens the model reads for ``inputs``: texts as tokenized, images as patches + prefix tokens each."""
    from axlab.core.measure import MAX_LENGTH, is_images
    if is_images(inputs):
        return len(inputs) * _image_tokens(model)
    return sum(len(ids) for ids in tokenizer(list(inputs), truncation=True, max_length=MAX_LENGTH)["input_ids"])


def _image_tokens(model) -> int:
    """Sequence length of an image classifier: (image size / patch size)^2 patches + 1 ([CLS]); 1 if unknown."""
    cfg = getattr(model, "config", None)
    try:
        size, patch = cfg.image_size, cfg.patch_size
        size = size if isinstance(size, (list, tuple)) else (size, size)
        patch = patch if isinstance(patch, (list, tuple)) else (patch, patch)
        return (int(size[0]) // int(patch[0])) * (int(size[1]) // int(patch[1])) + 1
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return 1


@st.cache_resource(show_spinner=False, max_entries=64)
def _tokens(source: str, data_key: str, split: str, n: int, _bundle, _splits) -> int:
    return _count(processor_of(_bundle), getattr(_splits, split).inputs[:n], _bundle.model)


def costs(bundle, splits) -> dict:
    """Measured once per model and data (a second or two): seconds per token in batches of 64 (``per_token``)
    and per batch-1 call (``batch1``)."""
    return _costs(str(bundle.source), split_key(splits), bundle, splits)


def forward_s(c: dict, bundle, splits, split: str, n: int) -> float:
    """One forward pass over the first ``n`` examples of ``split``: its tokens times the cost per token."""
    return c["per_token"] * _tokens(str(bundle.source), split_key(splits), split, int(n),
                                    bundle, splits)


def measure_s(c: dict, one_pass: float, latency_runs: int) -> float:
    """Measuring a variant: one pass over its test examples, batch-1 runs, 5 batch-32 runs (+ warm-ups)."""
    return one_pass + (latency_runs + 5) * c["batch1"] + 7 * 32 * c["batch1"] / 8


def importance_s(method: str, one_pass: float, n_heads_total: int, captum_steps: int = 8) -> float:
    """gradient: a forward and a backward pass; ablation: one pass per head (+1); captum: per step."""
    if method == "ablation":
        return (n_heads_total + 1) * one_pass
    if method == "captum":
        return captum_steps * 3 * one_pass
    return 3 * one_pass


def axformer_steps(n_layers: int, n_heads: int, ffn_groups: int, topk_values, hard: bool) -> int:
    """Candidate changes the search tries (each one scored on the validation examples)."""
    per_layer = 1 + ffn_groups + 1 + n_heads + (len(tuple(topk_values)) if hard else 0)
    return per_layer * n_layers + 1


def axformer_s(steps: int, one_pass: float, n_layers: int) -> float:
    """Each trial re-runs the layers from the one being changed upward (on average about half the model)."""
    return steps * one_pass * (n_layers + 1) / (2 * n_layers)


# --------------------------------------------------------------------------- learned per-unit costs

def _path():
    from axlab.core.paths import data_dir
    return data_dir() / "job_costs.json"


def learned(kind: str) -> float | None:
    """Seconds per unit of work of ``kind`` from the last finished job of that kind on this machine."""
    try:
        return json.loads(_path().read_text()).get(kind)
    except (OSError, ValueError):
        return None


def learn(kind: str, seconds: float, units: float) -> None:
    """Record a finished job's cost (called from the job's thread)."""
    if units <= 0 or seconds <= 0:
        return
    with _lock:
        try:
            path = _path()
            data = json.loads(path.read_text()) if path.exists() else {}
            data[kind] = seconds / units
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(path)
        except (OSError, ValueError):
            log.warning("could not record the cost of %s", kind)


def about(seconds: float) -> str:
    """A rough duration in words: ``under 10 s``, ``about 40 s``, ``about 3 min``, ``about 1 h 10 min``."""
    if seconds < 10:
        return "under 10 s"
    if seconds < 90:
        return f"about {int(round(seconds, -1))} s"
    if seconds < 3600:
        return f"about {int(round(seconds / 60))} min"
    return f"about {fmt_seconds(seconds)}"


def caption(what: str, seconds: float | None, note: str = "") -> None:
    """``⏱ Estimated time for <what> on this machine: about 3 min`` (as a caption above the button)."""
    if seconds is None:
        text = f":material/timer: **{what}**: no estimate yet" + (f" ({note})" if note else "")
    else:
        text = f":material/timer: Estimated time for {what} on this machine: **{about(seconds)}**" + (
            f" ({note})" if note else "")
    st.caption(text)


@st.cache_resource(show_spinner=False, max_entries=8)
def _fingerprint(source: str, _model) -> str:
    from axlab.compress.axformer import model_fingerprint
    return model_fingerprint(_model)


def search_cached(bundle, splits, config, hard_attention: bool) -> bool:
    """Whether ``axlab.compress.axformer.cached_search`` already holds this search (it then returns at once).

    Mirrors cached_search's key (model weights + data + options); a mismatch only costs a wrong estimate.
    """
    import hashlib

    from axlab.compress import axformer as ax
    from axlab.core.paths import cache_dir
    cfg = ax._resolve_config(config, None, hard_attention)
    opts = {k: v for k, v in cfg.to_dict().items() if k != "time_budget_s"}
    data_key = split_key(splits)
    if not data_key:
        return False
    key = hashlib.sha256(json.dumps([_fingerprint(str(bundle.source), bundle.model), data_key, opts],
                                    sort_keys=True).encode()).hexdigest()[:20]
    return (cache_dir("axformer") / f"{key}.json").exists()


def measuring(bundle, splits) -> float:
    """Measuring one variant with this session's settings (test examples, latency runs)."""
    c = costs(bundle, splits)
    n = min(int(st.session_state.measure_n), len(splits.test))
    return measure_s(c, forward_s(c, bundle, splits, "test", n), int(st.session_state.latency_runs))

"""Head importance over a data split, three ways behind one call.

``head_importance(model, tokenizer, split, method=...)`` returns an (n_layers, n_heads)
tensor on the original head grid (higher = more important; removed heads are NaN).

* ``"gradient"`` (Michel et al. 2019): mean |d loss / d gate| per head, gates at 1.
  One forward + backward pass over the split.
* ``"ablation"`` (AxFormer's accuracy-driven view): gate each head alone to 0 and
  measure the validation loss; importance = loss(without head) - loss(full model).
  :func:`head_ablation` also returns the accuracy change. One forward pass per head.
* ``"captum"``: captum's IntegratedGradients over the gate tensor, from all heads off
  (gates 0) to all heads on (gates 1), attributing the mean log-probability of the true
  label. Importance = attribution (how much log-probability the head adds along the
  path); the attributions sum to f(all on) - f(all off) (completeness).

All accept ``progress`` and are cached on disk (model + data + method + settings) unless
``cache_results=False``. :func:`rank_heads` lists heads best first; :func:`agreement`
gives the Spearman rank correlation between methods.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from axlab.core import registry
from axlab.core.attention import AttentionControl
from axlab.core.data import Split, align_labels
from axlab.core.errors import AxlabError, DataError
from axlab.core.measure import MAX_LENGTH, iter_batches, require_cpu
from axlab.core.progress import Progress, as_progress
from axlab.store import cache

__all__ = ["head_importance", "gradient_importance", "ablation_importance", "captum_importance", "head_ablation",
           "AblationResult", "rank_heads", "agreement", "uses_int8_kernels", "METHODS"]

log = logging.getLogger(__name__)


def _grid(model: nn.Module) -> tuple[int, int]:
    return len(registry.layers(model)), registry.n_heads_config(model)


def _present_mask(model: nn.Module) -> torch.Tensor:
    n_layers, n_heads = _grid(model)
    present = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for i in range(n_layers):
        present[i, list(registry.attention_module(model, i).axlab_head_ids)] = True
    return present


def uses_int8_kernels(model: nn.Module) -> bool:
    """Does the model run torch's quantized kernels, which have no (correct) backward?"""
    return any(type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))
               for m in model.modules())


def _check_differentiable(model: nn.Module, method: str) -> None:
    if uses_int8_kernels(model):
        raise AxlabError(f"The '{method}' importance needs gradients, and this model runs torch int8 kernels "
                         "that have none.", "Use method='ablation' for this variant, or measure the fp32 model.")


def _check_split(split: Split, model: nn.Module) -> Split:
    """The split with its labels matched to the model's by name (raises DataError on a mismatch)."""
    if len(split) == 0:
        raise DataError("The split is empty, so head importance cannot be measured.",
                        "Pass a split with labelled texts (e.g. splits.validation.head(500)).")
    return align_labels(split, model)


def _batches(tokenizer, split: Split, batch_size: int, max_length: int = MAX_LENGTH):
    """Tokenised batches with their labels, built once and reused."""
    labels = np.asarray(split.labels)
    return [(batch, torch.as_tensor(labels[ix], dtype=torch.long))
            for ix, batch in iter_batches(tokenizer, split.inputs, batch_size, max_length)]


# ---------------------------------------------------------------------------------------
# gradient (Michel et al.)
# ---------------------------------------------------------------------------------------

def gradient_importance(model: nn.Module, tokenizer, split: Split, *, batch_size: int = 32,
                        progress: Progress = None) -> torch.Tensor:
    """Michel et al.: E_x |d L(x) / d gate_h|, gates = 1.

    The absolute value is taken per batch of ``batch_size`` examples (as the authors'
    released bertology code does), then averaged over examples.
    """
    require_cpu(model, "Gradient head importance")
    split = _check_split(split, model)
    _check_differentiable(model, "gradient")
    n_layers, n_heads = _grid(model)
    gates = torch.ones(n_layers, n_heads, requires_grad=True)
    total = torch.zeros(n_layers, n_heads)
    prog = as_progress(progress, total=len(split), desc="gradient importance")
    was_training = model.training
    model.eval()
    try:
        for batch, y in _batches(tokenizer, split, batch_size):
            ctrl = AttentionControl(gates=gates)
            out = model(**batch, axlab=ctrl)
            ctrl.require_reached("Gradient head importance")
            loss = nn.functional.cross_entropy(out.logits, y, reduction="sum")
            (g,) = torch.autograd.grad(loss, gates)
            total += g.abs()
            prog.update(len(y))
    finally:
        prog.close()
        model.train(was_training)
    imp = total / len(split)
    imp[~_present_mask(model)] = float("nan")
    return imp


# ---------------------------------------------------------------------------------------
# ablation (one head off at a time)
# ---------------------------------------------------------------------------------------

@dataclass
class AblationResult:
    """Validation loss/accuracy with each head alone removed, on the original (L, H) grid."""

    loss: torch.Tensor              # (L, H) loss with that head gated to 0 (NaN: head absent)
    accuracy: torch.Tensor          # (L, H) accuracy with that head gated to 0
    base_loss: float
    base_accuracy: float
    n: int

    @property
    def loss_increase(self) -> torch.Tensor:
        """Importance: how much the loss rises without the head (negative: removing it helps)."""
        return self.loss - self.base_loss

    @property
    def accuracy_drop(self) -> torch.Tensor:
        return self.base_accuracy - self.accuracy

    def table(self) -> pd.DataFrame:
        rows = []
        for layer in range(self.loss.shape[0]):
            for head in range(self.loss.shape[1]):
                if torch.isnan(self.loss[layer, head]):
                    continue
                rows.append({"layer": layer, "head": head, "loss": float(self.loss[layer, head]),
                             "loss_increase": float(self.loss_increase[layer, head]),
                             "accuracy": float(self.accuracy[layer, head]),
                             "accuracy_drop": float(self.accuracy_drop[layer, head])})
        return pd.DataFrame(rows).sort_values("loss_increase", ascending=False, ignore_index=True)


class _Replay(nn.Module):
    """Stands in for the layers below the one being ablated: the last of them hands back the
    cached hidden states entering that layer, the others pass their input through."""

    def __init__(self, feed: dict | None):
        super().__init__()
        self.feed = feed

    def forward(self, hidden_states, *args, **kwargs):
        if self.feed is None:
            return hidden_states
        return self.feed["states"][self.feed["batch"]]                  # (B, T, D)


@torch.no_grad()
def _loss_acc(model: nn.Module, batches, gates: torch.Tensor | None, feed: dict | None = None) -> tuple[float, float]:
    loss, correct, n = 0.0, 0, 0
    for k, (batch, y) in enumerate(batches):
        if feed is not None:
            feed["batch"] = k
        kw = {"axlab": AttentionControl(gates=gates)} if gates is not None else {}
        logits = model(**batch, **kw).logits
        if kw:
            kw["axlab"].require_reached("Head ablation")
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        n += len(y)
    return loss / n, correct / n


def _ablation_arrays(model: nn.Module, tokenizer, split: Split, batch_size: int,
                     progress: Progress, heads=None) -> dict[str, np.ndarray]:
    """Gate each head alone to 0. A head in layer l cannot change layers below l, so the
    hidden states entering l are computed once (in the full-model pass) and each ablation
    of a head in l reruns only layers l..top: about 40% less work than full passes.

    ``heads``: only these (layer, head) pairs (the others stay NaN); axlab.sweep.ablation
    hands each Ray task a share of the heads."""
    n_layers, n_heads = _grid(model)
    present = _present_mask(model)
    if heads is not None:
        wanted = torch.zeros_like(present)
        for layer, head in heads:
            wanted[layer, head] = True
        present = present & wanted
    work = copy.deepcopy(model).eval()                 # layers get swapped below; never touch the caller's
    layers = registry.layers(work)
    batches = _batches(tokenizer, split, batch_size)
    todo = [layer for layer in range(n_layers) if present[layer].any()]
    states: dict[int, list[torch.Tensor]] = {layer: [] for layer in todo if layer > 0}
    hooks = [layers[layer].register_forward_pre_hook(
        lambda mod, args, store=store: store.append(args[0].detach())) for layer, store in states.items()]
    loss = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
    acc = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
    prog = as_progress(progress, total=int(present.sum()) + 1, desc="head ablation")
    try:
        try:
            base_loss, base_acc = _loss_acc(work, batches, None)       # also fills ``states``
        finally:
            for h in hooks:
                h.remove()
        prog.update(1, "full model")
        originals = list(layers)
        for layer in todo:
            feed = {"states": states.pop(layer), "batch": 0} if layer > 0 else None
            for j in range(layer):
                layers[j] = _Replay(feed if j == layer - 1 else None)
            try:
                for head in np.flatnonzero(present[layer].numpy()):
                    gates = torch.ones(n_layers, n_heads)
                    gates[layer, head] = 0.0
                    loss[layer, head], acc[layer, head] = _loss_acc(work, batches, gates, feed)
                    prog.update(1, f"layer {layer} head {head}")
            finally:
                for j in range(layer):
                    layers[j] = originals[j]
    finally:
        prog.close()
    return {"loss": loss.numpy(), "accuracy": acc.numpy(), "base": np.array([base_loss, base_acc]),
            "n": np.array(len(split))}


def head_ablation(model: nn.Module, tokenizer, split: Split, *, batch_size: int = 64, progress: Progress = None,
                  cache_results: bool = True, model_key: str | None = None) -> AblationResult:
    """Loss and accuracy on ``split`` with each present head alone gated to 0."""
    require_cpu(model, "Head ablation")
    split = _check_split(split, model)
    arrays = cache.cached("importance", lambda: _ablation_arrays(model, tokenizer, split, batch_size, progress),
                          model=model, split=split, params={"method": "ablation_full"},
                          enabled=cache_results, key=model_key)
    return AblationResult(loss=torch.as_tensor(arrays["loss"]).float(),
                          accuracy=torch.as_tensor(arrays["accuracy"]).float(),
                          base_loss=float(arrays["base"][0]), base_accuracy=float(arrays["base"][1]),
                          n=int(arrays["n"]))


def ablation_importance(model: nn.Module, tokenizer, split: Split, *, batch_size: int = 64,
                        progress: Progress = None) -> torch.Tensor:
    """Loss increase when each head alone is removed (see :func:`head_ablation` for accuracy too)."""
    return head_ablation(model, tokenizer, split, batch_size=batch_size, progress=progress,
                         cache_results=False).loss_increase


# ---------------------------------------------------------------------------------------
# captum: integrated gradients over the gates
# ---------------------------------------------------------------------------------------

def captum_importance(model: nn.Module, tokenizer, split: Split, *, batch_size: int = 32, n_steps: int = 8,
                      progress: Progress = None, return_delta: bool = False):
    """Integrated gradients (captum) of the mean true-label log-probability w.r.t. the gates.

    Path: gates 0 (all heads off) -> gates 1. With ``return_delta=True`` also returns the
    summed completeness error |sum(attr) - (f(1) - f(0))| over the batches.
    """
    require_cpu(model, "Captum head importance")
    from captum.attr import IntegratedGradients

    split = _check_split(split, model)
    _check_differentiable(model, "captum")
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2, got {n_steps}")
    n_layers, n_heads = _grid(model)
    present = _present_mask(model)
    total = torch.zeros(n_layers * n_heads, dtype=torch.float64)
    delta_total = 0.0
    prog = as_progress(progress, total=len(split), desc="integrated gradients over heads")
    was_training = model.training
    model.eval()
    try:
        for batch, y in _batches(tokenizer, split, batch_size):
            def forward(gate_rows: torch.Tensor) -> torch.Tensor:
                # gate_rows: (S, L*H), one row per interpolation step -> (S,) summed log-prob of y
                outs = []
                for row in gate_rows:
                    ctrl = AttentionControl(gates=row.view(n_layers, n_heads))
                    logits = model(**batch, axlab=ctrl).logits
                    ctrl.require_reached("Captum head importance")
                    outs.append(torch.log_softmax(logits, -1).gather(1, y[:, None]).sum())
                return torch.stack(outs)

            ig = IntegratedGradients(forward)
            ones = present.float().view(1, -1)
            attr, delta = ig.attribute(ones, baselines=torch.zeros_like(ones), n_steps=n_steps,
                                       internal_batch_size=1, return_convergence_delta=True)
            total += attr[0].double()
            delta_total += float(delta.abs().sum())
            prog.update(len(y))
    finally:
        prog.close()
        model.train(was_training)
    imp = (total / len(split)).float().view(n_layers, n_heads)
    imp[~present] = float("nan")
    return (imp, delta_total / len(split)) if return_delta else imp


# ---------------------------------------------------------------------------------------
# one entry point, ranking, agreement
# ---------------------------------------------------------------------------------------

METHODS = {"gradient": gradient_importance, "ablation": ablation_importance, "captum": captum_importance}


def head_importance(model: nn.Module, tokenizer, split: Split, method: str = "gradient", *,
                    progress: Progress = None, cache_results: bool = True, model_key: str | None = None,
                    **kw) -> torch.Tensor:
    """(n_layers, n_heads) importance on the original grid; NaN for heads already removed.

    ``kw`` goes to the method (``batch_size``; ``n_steps`` for captum). Results are cached
    on disk keyed by the model's content hash (or ``model_key``), the split's texts and
    labels, the method and ``kw``.
    """
    if method not in METHODS:
        raise AxlabError(f"Unknown importance method '{method}'.", f"Choose one of: {', '.join(METHODS)}.")
    require_cpu(model, f"Head importance ({method})")           # before the cache hashes the weights
    split = _check_split(split, model)
    if method == "ablation":
        return head_ablation(model, tokenizer, split, progress=progress, cache_results=cache_results,
                             model_key=model_key, **kw).loss_increase
    fn = METHODS[method]
    arrays = cache.cached("importance", lambda: {"importance": fn(model, tokenizer, split, progress=progress,
                                                                  **kw).numpy()},
                          model=model, split=split, params={"method": method, **kw}, enabled=cache_results,
                          key=model_key)
    return torch.as_tensor(arrays["importance"]).float()


def _as_numpy(imp) -> np.ndarray:
    arr = imp.detach().cpu().numpy() if isinstance(imp, torch.Tensor) else np.asarray(imp)
    if arr.ndim != 2:
        raise ValueError(f"importance must be an (n_layers, n_heads) array, got shape {arr.shape}")
    return arr.astype(np.float64)


def rank_heads(imp) -> pd.DataFrame:
    """Heads from most to least important: columns rank (1 = most), layer, head, importance.

    Removed heads (NaN) are left out.
    """
    arr = _as_numpy(imp)
    layer, head = np.nonzero(~np.isnan(arr))
    scores = arr[layer, head]
    order = np.argsort(-scores, kind="stable")
    return pd.DataFrame({"rank": np.arange(1, len(order) + 1), "layer": layer[order], "head": head[order],
                         "importance": scores[order]})


def agreement(imps: dict) -> pd.DataFrame:
    """Spearman rank correlation between importance methods (methods x methods).

    ``imps`` maps a method name to its (n_layers, n_heads) importance; heads that are NaN
    in either are left out of that pair.
    """
    if len(imps) < 1:
        raise ValueError("agreement needs at least one importance map")
    cols = {name: _as_numpy(v).ravel() for name, v in imps.items()}
    shapes = {len(v) for v in cols.values()}
    if len(shapes) != 1:
        raise ValueError("all importance maps must have the same (n_layers, n_heads) shape")
    return pd.DataFrame(cols).corr(method="spearman")

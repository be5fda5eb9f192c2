"""Head importance over a data split.

``head_importance(model, tokenizer, split, method=...)`` returns an (n_layers, n_heads)
tensor on the original head grid (higher = more important; removed heads are NaN).

* ``"gradient"`` (Michel et al. 2019): mean |d loss / d gate| per head, gates at 1.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from . import registry
from .attention import AttentionControl
from .data import Split
from .measure import iter_batches
from .progress import Progress, as_progress

__all__ = ["head_importance", "gradient_importance", "METHODS"]

log = logging.getLogger(__name__)


def _grid(model: nn.Module) -> tuple[int, int]:
    return len(registry.layers(model)), registry.n_heads_config(model)


def _present_mask(model: nn.Module) -> torch.Tensor:
    n_layers, n_heads = _grid(model)
    present = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for i in range(n_layers):
        present[i, list(registry.attention_module(model, i).axlab_head_ids)] = True
    return present


def gradient_importance(model: nn.Module, tokenizer, split: Split, *, batch_size: int = 32,
                        progress: Progress = None) -> torch.Tensor:
    """Michel et al.: E_x |d L(x) / d gate_h|, gates = 1, accumulated per example batch."""
    n_layers, n_heads = _grid(model)
    gates = torch.ones(n_layers, n_heads, requires_grad=True)
    total = torch.zeros(n_layers, n_heads)
    prog = as_progress(progress, total=len(split), desc="gradient importance")
    labels = np.asarray(split.labels)
    was_training = model.training
    model.eval()
    try:
        for ix, batch in iter_batches(tokenizer, split.texts, batch_size):
            out = model(**batch, axlab=AttentionControl(gates=gates))
            loss = nn.functional.cross_entropy(out.logits, torch.as_tensor(labels[ix]), reduction="sum")
            (g,) = torch.autograd.grad(loss, gates)
            total += g.abs()
            prog.update(len(ix))
    finally:
        prog.close()
        model.train(was_training)
    imp = total / max(1, len(split))
    imp[~_present_mask(model)] = float("nan")
    return imp


METHODS = {"gradient": gradient_importance}


def head_importance(model: nn.Module, tokenizer, split: Split, method: str = "gradient", **kw) -> torch.Tensor:
    """(n_layers, n_heads) importance on the original grid; NaN for heads already removed."""
    try:
        fn = METHODS[method]
    except KeyError:
        raise ValueError(f"Unknown importance method '{method}'; choose from {sorted(METHODS)}.") from None
    return fn(model, tokenizer, split, **kw)

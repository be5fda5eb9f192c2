"""Early exits: how well every block of a model classifies through the model's own head.

Block ``l``'s exit is :func:`axlab.core.registry.head_logits` applied to that block's output:
the model's final norm (vision transformers), pooler / pre-classifier and classifier, no new
parameters. The last block's exit is the model's own prediction. A model whose intermediate
blocks already read well through the head can be cut after them (``drop_layers`` of the
blocks after ``k``: its logits are then exactly block ``k``'s exit); self-distillation
(:func:`axlab.compress.distill.self_distill`) trains for exactly that.

``early_exit_accuracy(model, processor, split)`` runs one forward per batch, reads every
block's output through forward hooks on the registry's layers (a dropped layer's slot
passes its input on, so its exit repeats the previous block's), and scores each exit
against the split's labels, matched to the model's by name.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from axlab.core import registry
from axlab.core.data import align_labels
from axlab.core.errors import DataError
from axlab.core.measure import MAX_LENGTH, forward, iter_batches, scores
from axlab.core.progress import Progress, as_progress

__all__ = ["block_outputs", "exit_logits", "early_exit_accuracy"]

log = logging.getLogger(__name__)


class block_outputs:  # noqa: N801  (a context manager used like a function)
    """``with block_outputs(model) as outs:`` collects each layer's output (B, T, D), in order, per forward."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.outputs: list[torch.Tensor] = []
        self._handles: list = []

    def _hook(self, mod, args, out):
        self.outputs.append(out[0] if isinstance(out, tuple) else out)

    def __enter__(self) -> list[torch.Tensor]:
        self._handles = [lay.register_forward_hook(self._hook) for lay in registry.layers(self.model)]
        return self.outputs

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False


def exit_logits(model: nn.Module, batch: dict) -> list[torch.Tensor]:
    """Logits of every block's exit on one batch (a list of (B, C), first block first; no gradients)."""
    with torch.inference_mode(), block_outputs(model) as outs:
        forward(model, batch)
        return [registry.head_logits(model, h) for h in outs]


def early_exit_accuracy(model: nn.Module, processor, split, *, batch_size: int = 64, max_length: int = MAX_LENGTH,
                        progress: Progress = None) -> dict:
    """Accuracy, macro-F1 and loss of every block's early exit on ``split``.

    Returns ``{"blocks": [1, ..., L], "accuracy": [...], "macro_f1": [...], "loss": [...], "n": N,
    "final_accuracy": ...}``; entry ``l - 1`` is the exit after block ``l`` (the last is the
    model's own prediction). ``skipped`` lists the blocks a ``drop_layers`` removed (their
    exit equals the block before).
    """
    split = align_labels(split, model)
    if len(split) == 0:
        raise DataError("Early-exit accuracy needs labelled examples.", "Pass a non-empty split.")
    was_training = model.training
    model.eval()
    n_layers = len(registry.layers(model))
    per_block: list[list[tuple[np.ndarray, torch.Tensor]]] = [[] for _ in range(n_layers)]
    prog = as_progress(progress, total=len(split), desc="early exits")
    try:
        for ix, batch in iter_batches(processor, split.inputs, batch_size, max_length):
            for b, lg in enumerate(exit_logits(model, batch)):
                per_block[b].append((ix, lg.float()))
            prog.update(len(ix))
    finally:
        prog.close()
        model.train(was_training)
    out = {"blocks": list(range(1, n_layers + 1)), "accuracy": [], "macro_f1": [], "loss": [], "n": len(split),
           "skipped": [i + 1 for i, lay in enumerate(registry.layers(model)) if getattr(lay, "axlab_skipped", False)]}
    for chunks in per_block:
        logits = torch.empty(len(split), chunks[0][1].shape[-1])
        for ix, lg in chunks:
            logits[torch.as_tensor(ix)] = lg
        s = scores(logits, split.labels, label_names=split.label_names)
        out["accuracy"].append(s["accuracy"])
        out["macro_f1"].append(s["macro_f1"])
        out["loss"].append(s["loss"])
    out["final_accuracy"] = out["accuracy"][-1]
    log.info("early exits on %d examples: %s", len(split), ", ".join(f"{a:.3f}" for a in out["accuracy"]))
    return out

"""Distillation to recover accuracy after pruning: a pruned student learns from its unpruned teacher.

Loss per batch (B examples, T tokens):

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))       # logit KD (Hinton et al.)
  + (1 - alpha) * cross_entropy(student, labels)
  + hidden_weight * mean_layers MSE(student layer output, teacher layer output)  # on real tokens

Training is bounded (``steps`` batches drawn from the split, AdamW with a linear schedule via
:func:`axlab.default_model.train_classifier`), so it stays affordable on 2 CPU cores. Weights
that an unstructured pruning set to zero stay zero (their gradients are masked).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from axlab.core import registry
from axlab.core.data import Split, align_labels
from axlab.core.errors import AxlabError
from axlab.core.progress import Progress
from axlab.core.recipe import RecipeContext, Step, register_transform

__all__ = ["DistillConfig", "distill", "kd_loss"]

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    """Options of :func:`distill`; ``to_dict`` gives the recipe step's params."""

    steps: int = 200
    temperature: float = 2.0
    alpha: float = 0.5                 # weight of the KD term; 1 - alpha on the labels
    hidden_weight: float = 0.0         # > 0 adds hidden-state matching
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if not 0 <= self.alpha <= 1:
            raise ValueError("alpha must be in [0, 1]")
        if self.hidden_weight < 0:
            raise ValueError("hidden_weight must be >= 0")
        if self.lr <= 0 or self.batch_size < 1 or self.max_length < 8:
            raise ValueError("lr must be > 0, batch_size >= 1, max_length >= 8")

    def to_dict(self) -> dict:
        return asdict(self)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
            alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels); logits (B, C)."""
    t = temperature
    kl = nn.functional.kl_div(nn.functional.log_softmax(student_logits / t, -1),
                              nn.functional.log_softmax(teacher_logits / t, -1), reduction="batchmean", log_target=True)
    ce = nn.functional.cross_entropy(student_logits, labels)
    return alpha * t * t * kl + (1 - alpha) * ce


def _layer_outputs(model: nn.Module, store: list) -> list:
    """Forward hooks that append each layer's output (B, T, D) to ``store``; returns the handles."""
    def hook(mod, args, out):
        store.append(out[0] if isinstance(out, tuple) else out)
        return None
    return [lay.register_forward_hook(hook) for lay in registry.layers(model)]


def _keep_zeros(model: nn.Module) -> list:
    """Mask the gradients of weights that unstructured pruning zeroed, so they stay zero."""
    from axlab.compress.prune import encoder_linears
    handles = []
    for _, lin in encoder_linears(model):
        zero = lin.weight.detach() == 0
        if zero.float().mean() > 0.01:
            keep = (~zero).to(lin.weight.dtype)
            handles.append(lin.weight.register_hook(lambda g, keep=keep: g * keep))
    return handles


def _bounded_subset(split: Split, n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    reps = -(-n // len(split))
    idx = np.concatenate([rng.permutation(len(split)) for _ in range(reps)])[:n]
    return split.take(idx)


def _distill_(student: nn.Module, teacher: nn.Module, tokenizer, split: Split, cfg: DistillConfig,
              progress: Progress = None) -> dict:
    from axlab.core.train import train_classifier

    if len(split) == 0:
        raise AxlabError("Distillation needs training examples.", "Pass the training split (splits.train).")
    split = align_labels(split, teacher)        # labels matched to the model's by name
    if student.config.num_labels != teacher.config.num_labels:
        raise AxlabError("Student and teacher predict different numbers of labels.",
                         "Distil a variant of the same fine-tuned model.")
    if cfg.hidden_weight > 0 and len(registry.layers(student)) != len(registry.layers(teacher)):
        raise AxlabError("Hidden-state matching needs the same number of layers in student and teacher.",
                         "Set hidden_weight=0, or drop layers with drop_layers (it keeps the layer slots).")
    teacher = teacher.eval()
    s_states: list = []
    t_states: list = []
    handles = []
    if cfg.hidden_weight > 0:
        handles += _layer_outputs(student, s_states) + _layer_outputs(teacher, t_states)
    handles += _keep_zeros(student)
    for p in student.parameters():
        p.requires_grad_(True)

    def loss_fn(model, batch, labels):
        s_states.clear()
        t_states.clear()
        with torch.no_grad():
            t_logits = teacher(**batch).logits
        s_logits = model(**batch).logits
        loss = kd_loss(s_logits, t_logits, labels, cfg.temperature, cfg.alpha)
        if cfg.hidden_weight > 0:
            m = batch["attention_mask"].unsqueeze(-1).to(s_logits.dtype)       # (B, T, 1)
            mse = sum(((s - t) ** 2 * m).sum() / (m.sum() * s.shape[-1]) for s, t in zip(s_states, t_states))
            loss = loss + cfg.hidden_weight * mse / max(1, len(s_states))
        return loss

    try:
        stats = train_classifier(student, tokenizer, _bounded_subset(split, cfg.steps * cfg.batch_size, cfg.seed),
                                 epochs=1, batch_size=cfg.batch_size, lr=cfg.lr, max_length=cfg.max_length,
                                 seed=cfg.seed, progress=progress, loss_fn=loss_fn)
    finally:
        for h in handles:
            h.remove()
    student.eval()
    log.info("distilled %d steps, final loss %.4f", stats["steps"], stats["final_loss"] or float("nan"))
    return stats


def distill(student: nn.Module, teacher: nn.Module, tokenizer, split: Split, *, steps: int = 200,
            temperature: float = 2.0, alpha: float = 0.5, hidden_weight: float = 0.0, lr: float = 5e-5,
            batch_size: int = 32, max_length: int = 64, seed: int = 0, teacher_source: str = "base",
            progress: Progress = None) -> nn.Module:
    """A copy of ``student`` fine-tuned for ``steps`` batches of ``split`` to match ``teacher``.

    ``teacher_source`` is what the recipe step records to find the teacher on replay:
    ``"base"`` (the model the recipe starts from) or a model source for ``load_model``.
    """
    cfg = DistillConfig(steps, temperature, alpha, hidden_weight, lr, batch_size, max_length, seed)
    out = copy.deepcopy(student)
    out.axlab_distill_stats = _distill_(out, teacher, tokenizer, split, cfg, progress)
    out.axlab_recipe = list(getattr(student, "axlab_recipe", [])) + [
        Step("distill", teacher=teacher_source, **cfg.to_dict())]
    return out


@register_transform("distill")
def _op_distill(model, ctx: RecipeContext, teacher: str = "base", **params):
    cfg = DistillConfig(**params)
    splits = ctx.require_splits("distill")
    if teacher == "base":
        t_model = getattr(ctx, "base", None)
        if t_model is None:
            raise AxlabError("Step 'distill' needs its teacher, the recipe's base model, which this context lacks.",
                             "Replay with a RecipeContext that carries the base model, or record the teacher as a "
                             "model source (distill(..., teacher_source='default')).")
    else:
        from axlab.core.loading import load_model
        t_model = load_model(teacher).model
    if ctx.tokenizer is None:
        raise AxlabError("Step 'distill' needs the tokenizer.", "Pass tokenizer= to apply_recipe.")
    _distill_(model, t_model, ctx.tokenizer, splits.train, cfg, ctx.progress)
    return model

"""Distillation to recover accuracy after pruning: a pruned student learns from its unpruned teacher.

Loss per batch (B examples, T tokens):

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))       # logit KD (Hinton et al.)
  + (1 - alpha) * cross_entropy(student, labels)
  + hidden_weight * mean_layers MSE(student layer output, teacher layer output)  # on real tokens

Hidden states are matched at the student's own layers only: a layer slot that ``drop_layers``
emptied passes its input through, so the student's next layer is the one asked to produce
the teacher's output at its depth (as in patient KD, Sun et al. 2019).

``augment=k`` adds k perturbed copies of every training text (word dropout, spans) to the
transfer set; they have no label, so their loss is T^2 * KL alone.

``soup=k`` distils k students from the same start with seeds ``seed .. seed+k-1`` (each its own
batch order, perturbed copies and dropout) and returns their uniform weight average, a "model
soup" (Wortsman et al. 2022): students fine-tuned from one initialisation stay in one basin, so
the average is a working model that costs nothing more to run and forgets the luck of any one
seed. :func:`soup` averages students distilled apart (e.g. cached one by one).

Classes are matched by name: the teacher's logit columns are put in the student's class order
(``config.id2label``), and the labels in the student's. A teacher with its own tokenizer
(``teacher_tokenizer``, e.g. a fine-tuned Llama-style classifier teaching a BERT student) reads
each text of the transfer set through it, up to where the student's truncation stops reading;
its logits are computed once and looked up by the student's tokens of the same text. Only the
logits travel across tokenizers: hidden-state matching needs one tokenization.

Training is bounded (``steps`` batches drawn from the split, AdamW with a linear schedule via
:func:`axlab.default_model.train_classifier`), so it stays affordable on 2 CPU cores. Weights
that an unstructured pruning set to zero stay zero (their gradients are masked).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from axlab.core import registry
from axlab.core.data import Split, _is_generic, align_labels, model_label_names
from axlab.core.measure import forward, is_images, iter_batches
from axlab.core.errors import AxlabError
from axlab.core.progress import Progress
from axlab.core.recipe import RecipeContext, Step, register_transform
from axlab.core.train import linear_warmup_decay, optimizer_step
from axlab.compress.qat import fake_quantized

__all__ = ["DistillConfig", "distill", "kd_loss", "augment_texts", "IGNORE_LABEL", "SelfDistillConfig", "self_distill",
           "self_distill_loss", "soup"]

log = logging.getLogger(__name__)

IGNORE_LABEL = -100                    # label of an augmented text: learnt from the teacher only
TEACHER_LENGTH_FACTOR = 4              # a foreign teacher reads at most this many times max_length of its tokens


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
    augment: int = 0                   # perturbed copies per training text, learnt from the teacher only
    quant_aware: bool = False          # train through the int8 deployment's rounding (axlab.compress.qat)
    quant_embedding_bits: int = 8      # ... with the word table at this many bits per code
    soup: int = 1                      # students (seeds seed .. seed+soup-1) whose weights are averaged

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
        if self.augment < 0:
            raise ValueError("augment must be >= 0")
        if self.quant_embedding_bits not in (4, 8):
            raise ValueError("quant_embedding_bits must be 4 or 8 (the widths the runtimes gather)")
        if self.soup < 1:
            raise ValueError("soup must be >= 1 (the number of students averaged)")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["soup"] == 1:              # one student: the step reads as before soups existed (recipes, cache keys)
            d.pop("soup")
        return d

    def step(self, teacher: str = "base") -> dict:
        """The recipe step that replays this distillation (``teacher``: see :func:`distill`)."""
        return Step("distill", teacher=teacher, **self.to_dict())


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
            alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels); logits (B, C).

    Rows labelled ``IGNORE_LABEL`` (augmented texts) have no label term: their loss is
    T^2 * KL alone. The mean is over rows.
    """
    t = temperature
    kl = nn.functional.kl_div(nn.functional.log_softmax(student_logits / t, -1),
                              nn.functional.log_softmax(teacher_logits / t, -1), reduction="none",
                              log_target=True).sum(-1)                                  # (B,)
    labelled = labels != IGNORE_LABEL
    ce = nn.functional.cross_entropy(student_logits, labels.clamp_min(0), reduction="none")
    w_kd = torch.where(labelled, torch.full_like(kl, alpha), torch.ones_like(kl))
    return (w_kd * t * t * kl + (1 - alpha) * ce * labelled).mean()


def _layer_outputs(model: nn.Module, store: list) -> list:
    """Forward hooks that append each layer's output (B, T, D) to ``store``; returns the handles."""
    def hook(mod, args, out):
        store.append(out[0] if isinstance(out, tuple) else out)
        return None
    return [lay.register_forward_hook(hook) for lay in registry.layers(model)]


def hidden_slots(student: nn.Module, teacher: nn.Module) -> list[int]:
    """The layer slots whose outputs hidden-state matching compares: those where neither model
    has an emptied (dropped) layer."""
    from axlab.core.surgery import is_skipped
    return [i for i in range(len(registry.layers(student)))
            if not is_skipped(student, i) and not is_skipped(teacher, i)]


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


def augment_texts(texts: list[str], copies: int, seed: int = 0) -> list[str]:
    """``copies`` perturbed versions of every text, for the distillation transfer set.

    Task-specific distillation learns more from the teacher on more in-domain inputs than
    the labelled set holds (Tang et al. 2019, "Distilling task-specific knowledge from BERT
    into simple neural networks"; TinyBERT). Each copy is, with equal chance, the text with
    every word dropped with probability 0.15, or a contiguous span of 50-90% of its words.
    The teacher's soft labels, not the original label, are the target for these texts.
    Seeded: the same texts and seed give the same copies.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(copies):
        for text in texts:
            words = text.split()
            if len(words) < 4:
                out.append(text)
                continue
            if rng.random() < 0.5:
                kept = [w for w in words if rng.random() >= 0.15] or words[:1]
            else:
                n = max(2, int(round(len(words) * rng.uniform(0.5, 0.9))))
                start = int(rng.integers(0, len(words) - n + 1))
                kept = words[start:start + n]
            out.append(" ".join(kept))
    return out


def _transfer_set(split: Split, cfg: "DistillConfig") -> Split:
    """``split`` (labels aligned to the model) plus ``cfg.augment`` unlabelled perturbed copies of each text."""
    if not cfg.augment or is_images(split.inputs):
        return split
    extra = augment_texts(list(split.texts), cfg.augment, cfg.seed)
    return Split(list(split.texts) + extra, [int(y) for y in split.labels] + [IGNORE_LABEL] * len(extra), None)


def _bounded_subset(split: Split, n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    reps = -(-n // len(split))
    idx = np.concatenate([rng.permutation(len(split)) for _ in range(reps)])[:n]
    return split.take(idx)


def _row_key(ids: torch.Tensor, mask: torch.Tensor) -> bytes:
    return ids[mask.bool()].cpu().numpy().astype(np.int64).tobytes()


def _teacher_cache(teacher: nn.Module, tokenizer, split: Split, cfg: "DistillConfig",
                   columns: list[int] | None = None) -> dict | None:
    """The teacher's logits for every distinct text of ``split``, keyed by its token ids.

    Training walks the split for several epochs; the teacher is frozen, so its logits are
    computed once (one pass, in eval mode) instead of at every step. Text only (image
    batches call the teacher as they come); the logits do not depend on the padding.
    ``columns``: the teacher's logit column of each student class (None: the same order).
    """
    if is_images(split.inputs):
        return None
    texts = list(dict.fromkeys(split.texts))
    cache: dict = {}
    with torch.no_grad():
        for _, batch in iter_batches(tokenizer, texts, 64, cfg.max_length):
            logits = forward(teacher, batch).logits                                   # (B, C)
            if columns is not None:
                logits = logits[:, columns]
            for ids, mask, lg in zip(batch["input_ids"], batch["attention_mask"], logits):
                cache[_row_key(ids, mask)] = lg.clone()
    return cache


def _visible_texts(tokenizer, texts: list[str], max_length: int) -> list[str]:
    """Each text as far as the student reads it: cut after its last token when truncation at
    ``max_length`` drops words, whole otherwise (and whole for a tokenizer without offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        log.info("the student's tokenizer gives no character offsets: the teacher reads every text whole")
        return list(texts)
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    out = []
    for text, offsets, special in zip(texts, enc["offset_mapping"], enc["special_tokens_mask"]):
        end = max((int(e) for (_, e), sp in zip(offsets, special) if not sp), default=0)
        out.append(text if not text[end:].strip() else text[:end])
    return out


def _teacher_reader(teacher_tokenizer, teacher: nn.Module):
    """``teacher_tokenizer`` ready to pad batches for ``teacher``: a copy padding with the token
    the teacher's config names (else its end-of-text token) when it has no padding token."""
    tok, borrowed = teacher_tokenizer, None
    pad_id = getattr(teacher.config, "pad_token_id", None)
    if tok.pad_token is None:
        borrowed = (tok.convert_ids_to_tokens(int(pad_id)) if pad_id is not None else None) or tok.eos_token
        if borrowed is None:
            raise AxlabError("The teacher's tokenizer has no padding token and no end-of-text token to pad with.",
                             "Give it one before distilling: teacher_tokenizer.pad_token = <a token of its "
                             "vocabulary>, and set teacher.config.pad_token_id to that token's id.")
        tok = copy.deepcopy(tok)                 # the caller's tokenizer is not changed
        tok.pad_token = borrowed
        log.info("the teacher's tokenizer has no padding token; a copy pads with %r", borrowed)
    if pad_id is None:
        raise AxlabError("The teacher's config has no pad_token_id, so a decoder classifier (Llama, SmolLM2, ...) "
                         "cannot find each text's last token in a padded batch.",
                         f"Set teacher.config.pad_token_id = {tok.pad_token_id} (the id its tokenizer pads with"
                         + (", its end-of-text token, as it has no padding token" if borrowed else "")
                         + ") before distilling.")
    if int(pad_id) != tok.pad_token_id:
        log.warning("the teacher's config.pad_token_id (%s) is not the id its tokenizer pads with (%s); a classifier "
                    "that reads the last token by the pad id will read the wrong one", pad_id, tok.pad_token_id)
    return tok


def _same_tokens(tokenizer, teacher_tokenizer, texts: list[str], max_length: int) -> bool:
    """True when the teacher's tokenizer turns every text into the student's token ids."""
    if teacher_tokenizer is tokenizer:
        return True
    a = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    b = teacher_tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [list(x) for x in a] == [list(x) for x in b]


def _foreign_teacher_cache(teacher: nn.Module, tokenizer, teacher_tokenizer, split: Split, cfg: "DistillConfig",
                           columns: list[int] | None = None) -> dict:
    """A teacher with its own tokenizer: its logits for every distinct text of ``split``, read
    through ``teacher_tokenizer`` (as far as the student reads the text: :func:`_visible_texts`),
    keyed by the student's token ids of that text, so :func:`_cached_logits` finds every batch row.

    Texts that the student's tokenizer cannot tell apart (one key) get the mean of their logits.
    """
    texts = list(dict.fromkeys(split.texts))
    keys: list = [None] * len(texts)
    for ix, batch in iter_batches(tokenizer, texts, 64, cfg.max_length):
        for i, ids, mask in zip(ix, batch["input_ids"], batch["attention_mask"]):
            keys[int(i)] = _row_key(ids, mask)
    limit = int(min(TEACHER_LENGTH_FACTOR * cfg.max_length,
                    getattr(teacher_tokenizer, "model_max_length", None) or 1 << 30,
                    getattr(teacher.config, "max_position_embeddings", None) or 1 << 30))
    sums: dict = {}
    counts: dict = {}
    full, dtype = 0, torch.float32
    with torch.no_grad():
        for ix, batch in iter_batches(teacher_tokenizer, _visible_texts(tokenizer, texts, cfg.max_length), 64, limit):
            logits = forward(teacher, batch).logits                                   # (B, C)
            dtype = logits.dtype
            if columns is not None:
                logits = logits[:, columns]
            full += int((batch["attention_mask"].sum(-1) >= limit).sum())
            for i, lg in zip(ix, logits):
                k = keys[int(i)]
                sums[k] = sums[k] + lg.float() if k in sums else lg.float()
                counts[k] = counts.get(k, 0) + 1
    if full:
        log.warning("the teacher's tokenizer cut %d of %d texts at %d tokens", full, len(texts), limit)
    shared = sum(c > 1 for c in counts.values())
    if shared:
        log.info("%d token rows of the student stand for several texts; their teacher logits are averaged", shared)
    return {k: (s / counts[k]).to(dtype) for k, s in sums.items()}


def _cached_logits(cache: dict, batch: dict) -> torch.Tensor | None:
    """The batch's teacher logits from ``cache``; None if any row is missing (then the teacher runs)."""
    if "input_ids" not in batch:
        return None
    rows = [cache.get(_row_key(i, m)) for i, m in zip(batch["input_ids"], batch["attention_mask"])]
    return None if any(r is None for r in rows) else torch.stack(rows)


def _teacher_columns(student: nn.Module, teacher: nn.Module, own_tokenizer: bool = False) -> list[int] | None:
    """The teacher's logit column of each student class, matched by label name (``config.id2label``,
    ignoring case and spaces); None when they are already in the student's order.

    Generic names (``LABEL_0``, ...) on either side: the same order is assumed (a warning, unless
    both sides have the very same names and one tokenizer, as a pruned copy of its teacher has).
    Different names raise :class:`AxlabError`.
    """
    s_names, t_names = model_label_names(student), model_label_names(teacher)
    if s_names is None or t_names is None or _is_generic(s_names) or _is_generic(t_names):
        if s_names != t_names or own_tokenizer:
            log.warning("the student's labels (%s) or the teacher's (%s) have no names: their classes are taken to "
                        "be in the same order", s_names, t_names)
        return None
    s_keys, t_keys = [n.strip().casefold() for n in s_names], [n.strip().casefold() for n in t_names]
    if len(set(s_keys)) < len(s_keys) or len(set(t_keys)) < len(t_keys):
        log.warning("repeated label names (student %s, teacher %s): their classes are taken to be in the same order",
                    s_names, t_names)
        return None
    if set(s_keys) != set(t_keys):
        only_s = [n for n, k in zip(s_names, s_keys) if k not in t_keys]
        only_t = [n for n, k in zip(t_names, t_keys) if k not in s_keys]
        raise AxlabError(f"The student and the teacher predict different labels: the student's {only_s} are not the "
                         f"teacher's, the teacher's {only_t} are not the student's (student: {s_names}, teacher: "
                         f"{t_names}).",
                         "Distil from a teacher fine-tuned on the same labels (their order may differ: classes are "
                         "matched by name). If the names only differ in spelling, set one model's config.id2label "
                         "to the other's names.")
    columns = [t_keys.index(k) for k in s_keys]
    if columns == list(range(len(columns))):
        return None
    log.info("the teacher's classes %s are put in the student's order %s", t_names, s_names)
    return columns


def _distill_(student: nn.Module, teacher: nn.Module, tokenizer, split: Split, cfg: DistillConfig,
              progress: Progress = None, teacher_tokenizer=None) -> dict:
    from axlab.core.train import train_classifier

    if len(split) == 0:
        raise AxlabError("Distillation needs training examples.", "Pass the training split (splits.train).")
    if student.config.num_labels != teacher.config.num_labels:
        raise AxlabError("Student and teacher predict different numbers of labels.",
                         "Distil a variant of the same fine-tuned model.")
    if teacher_tokenizer is not None and is_images(split.inputs):
        raise AxlabError("teacher_tokenizer is for text; this distillation reads images.",
                         "Leave teacher_tokenizer out: an image teacher reads the student's pixel batches.")
    columns = _teacher_columns(student, teacher, teacher_tokenizer is not None)
    split = align_labels(split, student)        # labels matched to the student's classes by name (the CE term)
    split = _transfer_set(split, cfg)
    subset = _bounded_subset(split, cfg.steps * cfg.batch_size, cfg.seed)
    if teacher_tokenizer is not None and _same_tokens(tokenizer, teacher_tokenizer, list(dict.fromkeys(subset.texts)),
                                                      cfg.max_length):
        log.info("the teacher's tokenizer reads the texts as the student's: the teacher reads the student's batches")
        teacher_tokenizer = None
    if teacher_tokenizer is not None and cfg.hidden_weight > 0:
        raise AxlabError("Hidden-state matching needs the teacher to read the student's tokens, but the teacher's "
                         "tokenizer splits the texts differently.",
                         "Set hidden_weight=0: the logits are distilled across tokenizers.")
    if cfg.hidden_weight > 0 and len(registry.layers(student)) != len(registry.layers(teacher)):
        raise AxlabError("Hidden-state matching needs the same number of layers in student and teacher.",
                         "Set hidden_weight=0, or drop layers with drop_layers (it keeps the layer slots).")
    teacher = teacher.eval()
    if teacher_tokenizer is not None:
        cached = _foreign_teacher_cache(teacher, tokenizer, _teacher_reader(teacher_tokenizer, teacher), subset, cfg,
                                        columns)
    else:
        cached = _teacher_cache(teacher, tokenizer, subset, cfg, columns) if cfg.hidden_weight == 0 else None
    own_tokens = teacher_tokenizer is not None
    s_states: list = []
    t_states: list = []
    handles = []
    slots = hidden_slots(student, teacher) if cfg.hidden_weight > 0 else []
    if cfg.hidden_weight > 0:
        handles += _layer_outputs(student, s_states) + _layer_outputs(teacher, t_states)
    handles += _keep_zeros(student)
    for p in student.parameters():
        p.requires_grad_(True)

    def loss_fn(model, batch, labels):
        s_states.clear()
        t_states.clear()
        t_logits = _cached_logits(cached, batch) if cached is not None else None
        if t_logits is None:
            if own_tokens:                      # never feed the student's token ids to a teacher of other tokens
                raise RuntimeError("A training batch holds a text whose teacher logits were not computed.")
            with torch.no_grad():
                t_logits = forward(teacher, batch).logits
            if columns is not None:
                t_logits = t_logits[:, columns]
        s_logits = model(**batch).logits
        t_logits = t_logits.to(s_logits.device)        # the teacher may sit on another device
        loss = kd_loss(s_logits, t_logits, labels, cfg.temperature, cfg.alpha)
        if cfg.hidden_weight > 0:
            from axlab.core.measure import token_mask
            m = token_mask(batch, s_states[0]).unsqueeze(-1).to(s_logits.dtype)   # (B, T, 1); images: all ones
            pairs = [(s_states[i], t_states[i].to(s_states[i].device)) for i in slots]
            mse = sum(((s - t) ** 2 * m).sum() / (m.sum() * s.shape[-1]) for s, t in pairs)
            loss = loss + cfg.hidden_weight * mse / max(1, len(pairs))
        return loss

    rounding = (fake_quantized(student, embedding_bits=cfg.quant_embedding_bits) if cfg.quant_aware
                else contextlib.nullcontext())
    try:
        with rounding:
            stats = train_classifier(student, tokenizer, subset,
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
            batch_size: int = 32, max_length: int = 64, seed: int = 0, augment: int = 0,
            quant_aware: bool = False, quant_embedding_bits: int = 8, soup: int = 1,
            teacher_source: str = "base", teacher_tokenizer=None, progress: Progress = None) -> nn.Module:
    """A copy of ``student`` fine-tuned for ``steps`` batches of ``split`` to match ``teacher``.

    ``augment``: perturbed copies of every training text (see :func:`augment_texts`) added
    to the transfer set; the student matches the teacher on them (no label term).
    ``quant_aware``: the student trains through the rounding of its int8 deployment (int8
    weights per channel, uint8 activations, the word table at ``quant_embedding_bits``, the
    position table at 8 bits; see :mod:`axlab.compress.qat`), so ``quantize_rest`` or the
    fused ONNX export afterwards costs it little; the weights stay fp32.
    ``soup``: distil this many students, with seeds ``seed`` .. ``seed + soup - 1``, and return
    their uniform weight average (:func:`soup`); ``soup`` times the training time.
    ``teacher_source`` is what the recipe step records to find the teacher on replay:
    ``"base"`` (the model the recipe starts from) or a model source for ``load_model``.
    ``teacher_tokenizer``: the teacher's own tokenizer, where it splits texts unlike the student's
    (e.g. a fine-tuned SmolLM2 classifier teaching a MiniLM student): the teacher reads each text
    through it once, before training (as far as the student reads the text, at most
    ``4 * max_length`` of its tokens); only logits are distilled (``hidden_weight=0``) and
    ``teacher.config.pad_token_id`` must be set. Classes are matched by label name either way.
    A replay loads a teacher source with its own tokenizer; ``"base"`` reads the student's.
    """
    cfg = DistillConfig(steps, temperature, alpha, hidden_weight, lr, batch_size, max_length, seed, augment,
                        quant_aware, quant_embedding_bits, soup)
    if teacher_tokenizer is not None and teacher_tokenizer is not tokenizer and teacher_source == "base":
        log.warning("the recipe step records the teacher as 'base', which a replay reads with the student's "
                    "tokenizer; if the teacher is not the recipe's base model, pass teacher_source")
    out = copy.deepcopy(student)
    out.axlab_distill_stats = _distill_soup_(out, teacher, tokenizer, split, cfg, progress, teacher_tokenizer)
    out.axlab_recipe = list(getattr(student, "axlab_recipe", [])) + [cfg.step(teacher_source)]
    return out


@register_transform("distill")
def _op_distill(model, ctx: RecipeContext, teacher: str = "base", **params):
    cfg = DistillConfig(**params)
    splits = ctx.require_splits("distill")
    t_tokenizer = None
    if teacher == "base":
        t_model = getattr(ctx, "base", None)
        if t_model is None:
            raise AxlabError("Step 'distill' needs its teacher, the recipe's base model, which this context lacks.",
                             "Replay with a RecipeContext that carries the base model, or record the teacher as a "
                             "model source (distill(..., teacher_source='default')).")
    else:                                       # a model source: the teacher reads the texts with its own tokenizer
        from axlab.core.loading import load_model
        bundle = load_model(teacher)
        t_model = bundle.model
        if not is_images(splits.train.inputs):
            t_tokenizer = bundle.tokenizer
    if ctx.tokenizer is None:
        raise AxlabError("Step 'distill' needs the tokenizer.", "Pass tokenizer= to apply_recipe.")
    _distill_soup_(model, t_model, ctx.tokenizer, splits.train, cfg, ctx.progress, t_tokenizer)
    return model


def _distill_soup_(student: nn.Module, teacher: nn.Module, tokenizer, split: Split, cfg: DistillConfig,
                   progress: Progress = None, teacher_tokenizer=None) -> dict:
    """:func:`_distill_` (in place); with ``cfg.soup > 1``, that many students from ``student``'s
    weights, seeds ``cfg.seed + i``, averaged into ``student``. Returns the stats (a soup's: per member)."""
    if cfg.soup == 1:
        return _distill_(student, teacher, tokenizer, split, cfg, progress, teacher_tokenizer)
    members, stats = [], []
    for i in range(cfg.soup):
        m = copy.deepcopy(student)
        stats.append(_distill_(m, teacher, tokenizer, split, replace(cfg, seed=cfg.seed + i, soup=1), progress,
                               teacher_tokenizer))
        members.append(m)
    student.load_state_dict(_mean_state(members))
    student.eval()
    log.info("averaged the weights of %d students (seeds %d..%d)", cfg.soup, cfg.seed, cfg.seed + cfg.soup - 1)
    return _soup_stats(cfg.steps, stats)


def _soup_stats(steps: int, members: list) -> dict:
    """A soup's distillation stats: its members' (None for a member without them, e.g. loaded
    from a cache) and their mean final loss."""
    losses = [(s or {}).get("final_loss") for s in members]
    return {"steps": steps, "final_loss": float(np.mean([np.nan if x is None else x for x in losses])),
            "members": members}


def _mean_state(models: list) -> dict:
    """The uniform mean of the models' floating-point weights; other entries (integer buffers) must agree."""
    states = [m.state_dict() for m in models]
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            out[k] = torch.stack([s[k].to(torch.float32) for s in states]).mean(0).to(v.dtype)
        else:
            if any(not torch.equal(s[k], v) for s in states[1:]):
                raise AxlabError(f"The models differ in {k}, which cannot be averaged.",
                                 "Average students distilled from one start model.")
            out[k] = v
    return out


def soup(models: list[nn.Module]) -> nn.Module:
    """The uniform weight average ("model soup", Wortsman et al. 2022) of students distilled apart
    from one start with consecutive seeds: ``distill(start, teacher, ..., seed=s + i)`` for
    i = 0 .. k-1, otherwise alike. Equal to ``distill(start, teacher, ..., seed=s, soup=k)``,
    and recorded as that step, so the recipe replays it. Inputs are not changed.
    """
    models = list(models)
    if not models:
        raise AxlabError("soup() needs at least one model.", "Pass the distilled students.")
    recipes = [list(getattr(m, "axlab_recipe", []) or []) for m in models]
    last = [r[-1] if r else None for r in recipes]
    hint = ("Distil each from the same start with the same options and consecutive seeds "
            "(distill(..., seed=s + i)), or call distill(..., soup=k).")
    if any(s is None or s["op"] != "distill" for s in last):
        raise AxlabError("soup() averages distilled students; a model's last recipe step is not 'distill'.", hint)
    params = [dict(s.get("params") or {}) for s in last]
    if any(p.get("soup", 1) != 1 for p in params):
        raise AxlabError("soup() averages single students; one of them already is a soup.", hint)
    same = [{k: v for k, v in p.items() if k != "seed"} for p in params]
    if any(r[:-1] != recipes[0][:-1] for r in recipes) or any(p != same[0] for p in same):
        raise AxlabError("The students were not distilled from the same start with the same options.", hint)
    seeds = [p.get("seed", 0) for p in params]
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise AxlabError(f"The students' seeds are {seeds}; a soup's recipe needs consecutive seeds in order.", hint)
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in models]
    if any(s != shapes[0] for s in shapes):
        raise AxlabError("The students differ in structure, so their weights cannot be averaged.", hint)
    teacher = params[0].pop("teacher", "base")
    cfg = replace(DistillConfig(**params[0]), soup=len(models))
    out = copy.deepcopy(models[0])
    out.load_state_dict(_mean_state(models))
    out.eval()
    out.axlab_distill_stats = _soup_stats(cfg.steps, [getattr(m, "axlab_distill_stats", None) for m in models])
    out.axlab_recipe = recipes[0][:-1] + [cfg.step(teacher)]
    return out


# ----------------------------------------------------------------------------- self-distillation (SDViT)
#
# The model is its own teacher: each step one intermediate block, drawn uniformly at random,
# is read through the model's own head path (final norm, pooler / classifier:
# axlab.core.registry.head_logits) and trained toward the final block's softened prediction in
# the same forward (detached), while the final output keeps its cross-entropy on the labels:
#
#     CE(final, labels) + alpha * T^2 * KL(softmax(final / T) || softmax(exit_b / T))
#                       + exit_ce * CE(exit_b, labels)                              (exit_ce = 0 by default)
#
# No parameter is added. alpha = 0 (and exit_ce = 0) is plain fine-tuning of the final output
# with the same data, schedule and seed: the control a fair comparison needs.


@dataclass
class SelfDistillConfig:
    """Options of :func:`self_distill`; ``to_dict`` gives the recipe step's params."""

    steps: int = 200
    lr: float = 1e-4
    temperature: float = 2.0
    alpha: float = 1.0                 # weight of the exit's KL toward the final block (0: plain fine-tuning)
    exit_ce: float = 0.0               # weight of the exit's own cross-entropy on the labels
    batch_size: int = 32
    max_length: int = 64
    weight_decay: float = 0.01
    warmup: float = 0.06
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.alpha < 0 or self.exit_ce < 0:
            raise ValueError("alpha and exit_ce must be >= 0")
        if self.lr <= 0 or self.batch_size < 1 or self.max_length < 8:
            raise ValueError("lr must be > 0, batch_size >= 1, max_length >= 8")
        if not 0 <= self.warmup < 1:
            raise ValueError("warmup must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


def self_distill_loss(final_logits: torch.Tensor, exit_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float, exit_ce: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The SDViT loss of one step (see the module notes); returns (loss, its parts as floats)."""
    t = temperature
    ce = nn.functional.cross_entropy(final_logits, labels)
    kl = nn.functional.kl_div(nn.functional.log_softmax(exit_logits / t, -1),
                              nn.functional.log_softmax(final_logits.detach() / t, -1), reduction="batchmean",
                              log_target=True)
    loss = ce + alpha * t * t * kl
    parts = {"ce": ce.item(), "kl": kl.item()}
    if exit_ce > 0:
        ece = nn.functional.cross_entropy(exit_logits, labels)
        loss = loss + exit_ce * ece
        parts["exit_ce"] = ece.item()
    return loss, parts


def _intermediate_blocks(model: nn.Module) -> list[int]:
    """Indices of the blocks an exit may be drawn from: every kept block but the last kept one."""
    kept = [i for i, lay in enumerate(registry.layers(model)) if not getattr(lay, "axlab_skipped", False)]
    return kept[:-1]


def _self_distill_(model: nn.Module, processor, split, cfg: SelfDistillConfig, progress: Progress = None) -> dict:
    from axlab.analysis.early_exit import block_outputs
    from axlab.core.measure import encode
    from axlab.core.progress import as_progress

    if len(split) == 0:
        raise AxlabError("Self-distillation needs training examples.", "Pass the training split (splits.train).")
    split = align_labels(split, model)
    blocks = _intermediate_blocks(model)
    if cfg.alpha + cfg.exit_ce > 0 and not blocks:
        raise AxlabError("Self-distillation needs at least two kept blocks (an intermediate block and the final one).",
                         "Keep more layers, or fine-tune without the exit term (alpha=0, exit_ce=0).")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data = _bounded_subset(split, cfg.steps * cfg.batch_size, cfg.seed)
    handles = _keep_zeros(model)
    for p in model.parameters():
        p.requires_grad_(True)
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "norm" in n.lower()]
    decay = [p for p in model.parameters() if not any(p is q for q in no_decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = linear_warmup_decay(opt, cfg.steps, cfg.warmup)
    prog = as_progress(progress, total=cfg.steps, desc="self-distil")
    hist: list[dict] = []
    drawn = np.zeros(len(registry.layers(model)), dtype=int)
    model.train()
    try:
        for step in range(cfg.steps):
            ix = range(step * cfg.batch_size, (step + 1) * cfg.batch_size)
            batch = encode(processor, [data.inputs[i] for i in ix], cfg.max_length)
            labels = torch.as_tensor([data.labels[i] for i in ix])
            with block_outputs(model) as outs:
                final = forward(model, batch).logits
            if blocks and cfg.alpha + cfg.exit_ce > 0:
                b = int(blocks[rng.integers(len(blocks))])
                drawn[b] += 1
                loss, parts = self_distill_loss(final, registry.head_logits(model, outs[b]), labels,
                                                cfg.temperature, cfg.alpha, cfg.exit_ce)
                parts["block"] = b + 1
            else:
                loss = nn.functional.cross_entropy(final, labels)
                parts = {"ce": loss.item()}
            outs.clear()
            optimizer_step(model, loss, opt, sched)
            parts["loss"] = loss.item()
            hist.append(parts)
            prog.update(1, f"loss {np.mean([h['loss'] for h in hist[-20:]]):.3f}")
            if (step + 1) % max(1, cfg.steps // 10) == 0:
                log.info("self-distil step %d/%d loss %.4f", step + 1, cfg.steps,
                         np.mean([h["loss"] for h in hist[-20:]]))
    finally:
        prog.close()
        for h in handles:
            h.remove()
        model.eval()
    tail = hist[-max(1, len(hist) // 10):]
    stats = {"steps": cfg.steps, "final_loss": float(np.mean([h["loss"] for h in tail])),
             "final_ce": float(np.mean([h["ce"] for h in tail])),
             "final_kl": float(np.mean([h["kl"] for h in tail])) if "kl" in tail[-1] else None,
             "blocks_drawn": {int(i + 1): int(c) for i, c in enumerate(drawn) if c}, "log": hist}
    log.info("self-distilled %d steps, final loss %.4f", cfg.steps, stats["final_loss"])
    return stats


def self_distill(model: nn.Module, processor, split, *, steps: int = 200, lr: float = 1e-4, temperature: float = 2.0,
                 alpha: float = 1.0, exit_ce: float = 0.0, batch_size: int = 32, max_length: int = 64,
                 weight_decay: float = 0.01, warmup: float = 0.06, seed: int = 0,
                 progress: Progress = None) -> nn.Module:
    """A copy of ``model`` self-distilled (SDViT) for ``steps`` batches of ``split`` (text or images).

    Each step draws one intermediate block uniformly at random; its output goes through the
    model's own head path (:func:`axlab.core.registry.head_logits`: final norm, pooler,
    classifier) and is trained toward the final block's softened prediction from the same
    forward (KL at ``temperature``, weight ``alpha``, teacher detached), plus cross-entropy on the
    labels for the final output (and ``exit_ce`` times the exit's own cross-entropy). No new
    parameters; ``model`` is not changed. Blocks removed by ``drop_layers`` are never drawn.
    The per-step log is in ``out.axlab_self_distill_stats["log"]``.
    """
    cfg = SelfDistillConfig(steps, lr, temperature, alpha, exit_ce, batch_size, max_length, weight_decay, warmup, seed)
    out = copy.deepcopy(model)
    out.axlab_self_distill_stats = _self_distill_(out, processor, split, cfg, progress)
    out.axlab_recipe = list(getattr(model, "axlab_recipe", [])) + [Step("self_distill", **cfg.to_dict())]
    return out


@register_transform("self_distill")
def _op_self_distill(model, ctx: RecipeContext, **params):
    cfg = SelfDistillConfig(**params)
    splits = ctx.require_splits("self_distill")
    if ctx.tokenizer is None:
        raise AxlabError("Step 'self_distill' needs the tokenizer or image processor.",
                         "Pass tokenizer= (the model's tokenizer or image processor) to apply_recipe.")
    _self_distill_(model, ctx.tokenizer, splits.train, cfg, ctx.progress)
    return model

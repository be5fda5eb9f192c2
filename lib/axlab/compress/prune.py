"""Structured and unstructured pruning, each a transform that returns a new model.

Structured pruning really shrinks the model (and the export):

* ``prune_heads(model, {layer: [heads]})``: remove attention heads (original head ids;
  layers may keep different numbers of heads; all heads gone = empty attention block);
* ``prune_ffn(model, {layer: [neurons]})``: remove FFN neurons (current indices; all gone
  = empty FFN block, whose output is the down-projection bias);
* ``drop_layers(model, [layers])``: skip whole layers (identity);
* ``prune_vocab(model, tok, texts)``: keep the embedding rows of the tokens the task's
  texts use; every other id maps to the kept token with the most similar embedding row
  (``oov="nearest"``, default) or to [UNK] (``oov="unk"``); the report gives the
  out-of-vocabulary rate.

Budgets choose what to remove: ``heads_by_budget(importance, 0.4)`` (lowest importance
first), ``random_heads(model, 0.4, seed)`` (the baseline), ``ffn_by_budget(model, 0.3,
"magnitude" | "activation" | "gradient")``.

Unstructured pruning (``unstructured``) zeroes single weights by magnitude or by
|W_ij| * ||X_j|| (weight times input-activation norm, AdaptCL's parameter-level data-driven
criterion). The zeros stay in dense tensors: dense kernels do not get faster and a dense
export is no smaller; ``sparsity_report`` says so and counts the non-zeros.

Every public function copies its input and appends a step (``model.axlab_recipe``) so
the variant can be replayed by :func:`axlab.variants.apply_recipe`.
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch
from torch import nn

from axlab.core import registry, surgery
from axlab.core.data import Split, align_labels
from axlab.core.errors import AxlabError
from axlab.core.measure import iter_batches, require_cpu, size_report, token_mask
from axlab.core.progress import Progress, as_progress
from axlab.core.recipe import RecipeContext, Step, register_transform

__all__ = ["prune_heads", "heads_by_budget", "random_heads", "prune_ffn", "ffn_importance", "ffn_by_budget",
           "drop_layers", "prune_vocab", "vocab_step", "vocab_ids", "unstructured", "sparsity_report", "encoder_linears",
           "FFN_CRITERIA", "UNSTRUCTURED_NOTE"]

log = logging.getLogger(__name__)

FFN_CRITERIA = ("magnitude", "activation", "gradient")
UNSTRUCTURED_NOTE = ("Unstructured sparsity zeroes single weights inside dense tensors: dense CPU/GPU kernels "
                     "do not run faster and a dense export is no smaller. size_bytes counts what an export "
                     "really writes; 'nonzero' counts the surviving weights.")


# ----------------------------------------------------------------------------- helpers

def _record(new: nn.Module, old: nn.Module, step: dict) -> nn.Module:
    new.axlab_recipe = list(getattr(old, "axlab_recipe", [])) + [step]
    return new


def _n_layers(model: nn.Module) -> int:
    return len(registry.layers(model))


def _check_layer(model: nn.Module, layer, what: str) -> int:
    n = _n_layers(model)
    try:
        i = int(layer)
    except (TypeError, ValueError):
        raise AxlabError(f"{what}: layer {layer!r} is not an integer.", f"Use layer indices 0..{n - 1}.") from None
    if not 0 <= i < n:
        raise AxlabError(f"{what}: layer {i} does not exist (the model has {n} layers).", f"Use layer indices 0..{n - 1}.")
    return i


def _check_fraction(fraction: float, what: str) -> float:
    if not isinstance(fraction, (int, float)) or not 0.0 <= float(fraction) <= 1.0:
        raise AxlabError(f"{what}: fraction {fraction!r} is not between 0 and 1.", "Pass e.g. 0.4 to remove 40%.")
    return float(fraction)


def _norm_map(mapping: dict, model: nn.Module, what: str) -> dict[int, list[int]]:
    if not isinstance(mapping, dict):
        raise AxlabError(f"{what} needs a mapping {{layer: [indices]}}, got {type(mapping).__name__}.",
                         "Pass e.g. {0: [1, 3], 5: [0]}.")
    return {_check_layer(model, k, what): sorted(set(int(i) for i in v)) for k, v in mapping.items() if len(v)}


# ----------------------------------------------------------------------------- heads

def _prune_heads_(model: nn.Module, heads: dict[int, list[int]]) -> None:
    n_heads = registry.n_heads_config(model)
    for layer, hs in heads.items():
        bad = [h for h in hs if not 0 <= h < n_heads]
        if bad:
            raise AxlabError(f"prune_heads: layer {layer} has no head {bad[0]} (heads are 0..{n_heads - 1}).",
                             "Use original head ids.")
        surgery.remove_heads_(model, layer, hs)


def prune_heads(model: nn.Module, heads: dict) -> nn.Module:
    """A copy of ``model`` without the given heads ({layer: [original head ids]})."""
    heads = _norm_map(heads, model, "prune_heads")
    out = copy.deepcopy(model)
    _prune_heads_(out, heads)
    return _record(out, model, Step("prune_heads", heads={str(k): v for k, v in heads.items()}))


@register_transform("prune_heads")
def _op_prune_heads(model, ctx: RecipeContext, heads: dict):
    _prune_heads_(model, _norm_map(heads, model, "prune_heads"))
    return model


def heads_by_budget(importance: torch.Tensor, fraction: float) -> dict[int, list[int]]:
    """The ``fraction`` of present heads (non-NaN in ``importance`` (L, H)) with the lowest scores."""
    fraction = _check_fraction(fraction, "heads_by_budget")
    imp = torch.as_tensor(importance, dtype=torch.float64)
    present = ~torch.isnan(imp)
    n_remove = int(round(fraction * int(present.sum())))
    flat = imp.masked_fill(~present, float("inf")).flatten()
    order = torch.argsort(flat, stable=True)[:n_remove]
    out: dict[int, list[int]] = {}
    for idx in order.tolist():
        out.setdefault(idx // imp.shape[1], []).append(idx % imp.shape[1])
    return {k: sorted(v) for k, v in sorted(out.items())}


def random_heads(model: nn.Module, fraction: float, seed: int = 0) -> dict[int, list[int]]:
    """A random ``fraction`` of the present heads: the baseline an importance score must beat."""
    from axlab.core.attention import head_layout
    present = torch.zeros(_n_layers(model), registry.n_heads_config(model))
    for i, kept in enumerate(head_layout(model)):
        present[i, kept] = 1.0
    scores = torch.rand(present.shape, generator=torch.Generator().manual_seed(seed))
    return heads_by_budget(scores.masked_fill(present == 0, float("nan")), fraction)


# ----------------------------------------------------------------------------- FFN

def _prune_ffn_(model: nn.Module, neurons: dict[int, list[int]]) -> None:
    for layer, idx in neurons.items():
        if surgery.is_skipped(model, layer):
            continue
        width = registry.ffn_parts(model, layer).up.out_features
        bad = [i for i in idx if not 0 <= i < width]
        if bad:
            raise AxlabError(f"prune_ffn: layer {layer} has no neuron {bad[0]} (its FFN has {width}).",
                             "Neuron indices are current indices, 0..width-1.")
        surgery.remove_ffn_neurons_(model, layer, idx)


def prune_ffn(model: nn.Module, neurons: dict) -> nn.Module:
    """A copy of ``model`` without the given FFN neurons ({layer: [current neuron indices]})."""
    neurons = _norm_map(neurons, model, "prune_ffn")
    out = copy.deepcopy(model)
    _prune_ffn_(out, neurons)
    return _record(out, model, Step("prune_ffn", neurons={str(k): v for k, v in neurons.items()}))


@register_transform("prune_ffn")
def _op_prune_ffn(model, ctx: RecipeContext, neurons: dict):
    _prune_ffn_(model, _norm_map(neurons, model, "prune_ffn"))
    return model


def _live_ffn_layers(model: nn.Module) -> list[int]:
    return [i for i in range(_n_layers(model))
            if not surgery.is_skipped(model, i) and registry.ffn_parts(model, i).up.out_features > 0]


def ffn_importance(model: nn.Module, criterion: str = "magnitude", tokenizer=None, split: Split | None = None, *,
                   batch_size: int = 32, progress: Progress = None) -> dict[int, torch.Tensor]:
    """Per-layer neuron scores {layer: (width,)}; higher = more important.

    * ``magnitude``: ||W_up[j, :]|| * ||W_down[:, j]||;
    * ``activation``: mean |a_j| over real tokens times ||W_down[:, j]|| (its output contribution);
    * ``gradient``: mean over batches of |sum_tokens a_j * dL/da_j| (first-order Taylor,
      the gradient of a neuron gate at 1, as Michel et al. do for heads).
    """
    require_cpu(model, "FFN importance")
    if criterion not in FFN_CRITERIA:
        raise AxlabError(f"Unknown FFN criterion '{criterion}'.", f"Choose one of {', '.join(FFN_CRITERIA)}.")
    live = _live_ffn_layers(model)
    down_norm = {i: registry.ffn_parts(model, i).down.weight.detach().norm(dim=0) for i in live}
    if criterion == "magnitude":
        return {i: registry.ffn_parts(model, i).up.weight.detach().norm(dim=1) * down_norm[i] for i in live}
    if tokenizer is None or split is None or len(split) == 0:
        raise AxlabError(f"The '{criterion}' FFN criterion needs data.", "Pass tokenizer= and split= (a few hundred examples).")
    gates = {i: torch.ones(registry.ffn_parts(model, i).up.out_features, requires_grad=criterion == "gradient") for i in live}
    acc = {i: torch.zeros_like(gates[i], requires_grad=False) for i in live}
    n_tokens = 0
    state: dict = {}

    def make_hook(i):
        def hook(mod, args):
            a = args[0]                                         # (B, T, width) activations entering down
            if criterion == "activation":
                m = token_mask(state["batch"], a).unsqueeze(-1).to(a.dtype)     # (B, T, 1); images: all ones
                state["n_tokens"] = int(m.sum())
                acc[i] += (a.detach().abs() * m).sum(dim=(0, 1))
                return None
            return (a * gates[i],)
        return hook

    handles = [registry.ffn_parts(model, i).down.register_forward_pre_hook(make_hook(i)) for i in live]
    labels = np.asarray(align_labels(split, model).labels)     # matched to the model's labels by name
    prog = as_progress(progress, total=len(split), desc=f"FFN {criterion} importance")
    was_training = model.training
    model.eval()
    try:
        for ix, batch in iter_batches(tokenizer, split.inputs, batch_size):
            state["batch"], state["n_tokens"] = batch, 0
            if criterion == "activation":
                with torch.no_grad():
                    model(**batch)
                n_tokens += state["n_tokens"]
            else:
                loss = nn.functional.cross_entropy(model(**batch).logits, torch.as_tensor(labels[ix]), reduction="sum")
                grads = torch.autograd.grad(loss, [gates[i] for i in live])
                for i, g in zip(live, grads):
                    acc[i] += g.abs()
            prog.update(len(ix))
    finally:
        for h in handles:
            h.remove()
        prog.close()
        model.train(was_training)
    if criterion == "activation":
        return {i: acc[i] / max(1, n_tokens) * down_norm[i] for i in live}
    return {i: acc[i] / max(1, len(split)) for i in live}


def ffn_by_budget(model: nn.Module, fraction: float, criterion: str = "magnitude", tokenizer=None,
                  split: Split | None = None, *, scope: str = "layer", scores: dict | None = None,
                  progress: Progress = None) -> dict[int, list[int]]:
    """The ``fraction`` of FFN neurons with the lowest scores, per layer or globally.

    Globally, a layer may lose all its neurons (its FFN block then outputs its bias).
    """
    fraction = _check_fraction(fraction, "ffn_by_budget")
    if scope not in ("layer", "global"):
        raise AxlabError(f"Unknown scope '{scope}'.", "Use scope='layer' or scope='global'.")
    scores = scores if scores is not None else ffn_importance(model, criterion, tokenizer, split, progress=progress)
    out: dict[int, list[int]] = {}
    if scope == "layer":
        for i, s in scores.items():
            k = int(round(fraction * s.numel()))
            if k:
                out[i] = sorted(torch.argsort(s, stable=True)[:k].tolist())
        return out
    layers_of = torch.cat([torch.full((s.numel(),), i) for i, s in scores.items()])
    index_of = torch.cat([torch.arange(s.numel()) for s in scores.values()])
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = int(round(fraction * flat.numel()))
    for j in torch.argsort(flat, stable=True)[:k].tolist():
        out.setdefault(int(layers_of[j]), []).append(int(index_of[j]))
    return {i: sorted(v) for i, v in sorted(out.items())}


# ----------------------------------------------------------------------------- layers

def _drop_layers_(model: nn.Module, layers: list[int]) -> None:
    for i in layers:
        surgery.skip_layer_(model, _check_layer(model, i, "drop_layers"))


def drop_layers(model: nn.Module, layers: list[int]) -> nn.Module:
    """A copy of ``model`` in which the given layers are skipped (identity)."""
    layers = sorted(set(_check_layer(model, i, "drop_layers") for i in layers))
    if len(layers) == _n_layers(model):
        log.warning("drop_layers: every layer dropped; the model is embeddings + classifier only")
    out = copy.deepcopy(model)
    _drop_layers_(out, layers)
    return _record(out, model, Step("drop_layers", layers=layers))


@register_transform("drop_layers")
def _op_drop_layers(model, ctx: RecipeContext, layers: list):
    _drop_layers_(model, [int(i) for i in layers])
    return model


# ----------------------------------------------------------------------------- vocabulary

def _token_ids(tokenizer, texts: list[str], max_length: int = 512) -> list[list[int]]:
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def vocab_ids(tokenizer, texts: list[str], min_count: int = 1) -> list[int]:
    """Ids used at least ``min_count`` times by ``texts``, plus every special token."""
    counts: dict[int, int] = {}
    for ids in _token_ids(tokenizer, texts):
        for t in ids:
            counts[t] = counts.get(t, 0) + 1
    keep = {t for t, c in counts.items() if c >= min_count}
    keep |= set(int(i) for i in tokenizer.all_special_ids)
    return sorted(keep)


def _oov_rate(tokenizer, texts: list[str], keep: set[int]) -> float:
    special = set(int(i) for i in tokenizer.all_special_ids)
    total = unknown = 0
    for ids in _token_ids(tokenizer, texts):
        for t in ids:
            if t in special:
                continue
            total += 1
            unknown += t not in keep
    return unknown / total if total else 0.0


def _unk_id(tokenizer) -> int:
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        raise AxlabError("The tokenizer has no [UNK] token, so pruned ids have nowhere to go.",
                         "Vocabulary pruning needs a tokenizer with an unknown token (BERT/RoBERTa/ELECTRA have one).")
    return int(unk)


def prune_vocab(model: nn.Module, tokenizer, texts: list[str], *, eval_texts: list[str] | None = None,
                min_count: int = 1, oov: str = "nearest") -> tuple[nn.Module, dict]:
    """Keep only the embedding rows of tokens that ``texts`` use (plus special tokens).

    ``oov`` says what a token the texts did not use becomes: "nearest" (default) maps it
    to the kept token whose embedding row is most cosine-similar to its own (no extra rows:
    the file is as small as with "unk", and on the default model's validation split the
    KL to the unpruned model was about half of "unk"'s); "unk" maps it to [UNK].
    Returns (model, report). ``report["oov_rate"]`` is the share of (non-special) tokens
    of ``eval_texts`` (default: ``texts``, where it is 0 by construction) outside the kept
    vocabulary; pass held-out texts to see what the pruning costs on unseen data.
    """
    require_cpu(model, "Vocabulary pruning")
    step = vocab_step(tokenizer, texts, min_count=min_count, oov=oov)
    keep, unk, special = step["params"]["keep_ids"], step["params"]["unk_id"], step["params"]["exclude"]
    before = size_report(model)
    out = copy.deepcopy(model)
    surgery.remap_vocab_(out, keep, unk, oov=oov, exclude=special)
    after = size_report(out)
    emb = registry.word_embeddings(out)
    report = {"vocab_size": int(emb.old_to_new.numel()), "kept": int(emb.weight.shape[0]), "oov": oov,
              "oov_rate": _oov_rate(tokenizer, eval_texts if eval_texts is not None else texts, set(keep)),
              "oov_measured_on": "eval_texts" if eval_texts is not None else "texts",
              "size_bytes_before": before["size_bytes"], "size_bytes_after": after["size_bytes"],
              "params_before": before["params"], "params_after": after["params"]}
    return _record(out, model, step), report


def vocab_step(tokenizer, texts: list[str], *, min_count: int = 1, oov: str = "nearest") -> dict:
    """The ``prune_vocab`` recipe step for ``texts`` without touching a model (what :func:`prune_vocab`
    records): the kept token ids (those used at least ``min_count`` times, plus special tokens), the
    [UNK] id, the oov mode, and the special ids that are never a nearest-token target."""
    if not texts:
        raise AxlabError("prune_vocab needs the task's texts to know which tokens are used.",
                         "Pass e.g. splits.train.texts.")
    if oov not in surgery.OOV_MODES:
        raise AxlabError(f"prune_vocab: unknown oov mode {oov!r}.", f"Use one of {surgery.OOV_MODES}.")
    return Step("prune_vocab", keep_ids=vocab_ids(tokenizer, texts, min_count), unk_id=_unk_id(tokenizer), oov=oov,
                exclude=sorted(int(i) for i in tokenizer.all_special_ids))


@register_transform("prune_vocab")
def _op_prune_vocab(model, ctx: RecipeContext, keep_ids: list, unk_id: int, oov: str = "unk", exclude: list = ()):
    # recipes written before the oov option mapped every dropped token to [UNK]
    surgery.remap_vocab_(model, [int(i) for i in keep_ids], int(unk_id), oov=oov, exclude=[int(i) for i in exclude])
    return model


# ----------------------------------------------------------------------------- unstructured

def encoder_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, Linear) of every weight matrix inside the encoder layers (q, k, v, o, FFN)."""
    layers = registry.layers(model)
    out = []
    for i, lay in enumerate(layers):
        for name, mod in lay.named_modules():
            if isinstance(mod, nn.Linear) and mod.weight.numel() > 0:
                out.append((f"layer{i}.{name}", mod))
    return out


def _input_norms(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 32) -> dict[int, torch.Tensor]:
    """||X_j||_2 over all real tokens, per Linear (keyed by id(module)), shape (in_features,)."""
    lins = encoder_linears(model)
    sq = {id(m): torch.zeros(m.in_features) for _, m in lins}
    state: dict = {}

    def make_hook(key):
        def hook(mod, args):
            x = args[0].detach()                                # (B, T, in)
            m = token_mask(state["batch"], x).unsqueeze(-1).to(x.dtype)     # (B, T, 1); images: all ones
            sq[key] += (x.pow(2) * m).sum(dim=(0, 1))
            return None                                          # record only: never replace the input
        return hook

    handles = [m.register_forward_pre_hook(make_hook(id(m))) for _, m in lins]
    try:
        with torch.no_grad():
            for _, batch in iter_batches(tokenizer, texts, batch_size):
                state["batch"] = batch
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    return {k: v.sqrt() for k, v in sq.items()}


def _unstructured_(model: nn.Module, sparsity: float, criterion: str, scope: str, tokenizer=None,
                   texts: list[str] | None = None) -> None:
    lins = encoder_linears(model)
    if criterion == "magnitude":
        scores = [m.weight.detach().abs() for _, m in lins]
    else:
        norms = _input_norms(model, tokenizer, texts)
        scores = [m.weight.detach().abs() * norms[id(m)].unsqueeze(0) for _, m in lins]   # (out, in)
    if scope == "global":
        flat = torch.cat([s.flatten() for s in scores])
        k = int(math.floor(sparsity * flat.numel()))
        if k == 0:
            return
        # exact k smallest (ties broken by position) so the sparsity is what was asked
        drop = torch.zeros(flat.numel(), dtype=torch.bool)
        drop[torch.argsort(flat, stable=True)[:k]] = True
        start = 0
        masks = []
        for s in scores:
            masks.append(drop[start:start + s.numel()].view_as(s))
            start += s.numel()
    else:
        masks = []
        for s in scores:
            k = int(math.floor(sparsity * s.numel()))
            d = torch.zeros(s.numel(), dtype=torch.bool)
            d[torch.argsort(s.flatten(), stable=True)[:k]] = True
            masks.append(d.view_as(s))
    with torch.no_grad():
        for (_, m), drop in zip(lins, masks):
            m.weight.masked_fill_(drop, 0.0)


def unstructured(model: nn.Module, sparsity: float, criterion: str = "magnitude", scope: str = "global", *,
                 tokenizer=None, splits=None, calib_split: str = "train", n_calib: int = 128) -> nn.Module:
    """A copy with ``sparsity`` of the encoder's weights set to zero.

    ``criterion="magnitude"``: smallest |W|. ``criterion="data"``: smallest |W_ij| * ||X_j||
    over ``n_calib`` examples of ``splits[calib_split]`` (needs ``tokenizer`` and ``splits``).
    ``scope="global"`` ranks all encoder weights together, ``"layer"`` each matrix alone.
    See :data:`UNSTRUCTURED_NOTE`: this does not make dense inference faster or smaller.
    """
    require_cpu(model, "Unstructured pruning")
    sparsity = _check_fraction(sparsity, "unstructured")
    params = _check_unstructured(criterion, scope)
    texts = None
    if criterion == "data":
        if tokenizer is None or splits is None:
            raise AxlabError("The 'data' criterion needs calibration data.",
                             "Pass tokenizer= and splits= (axlab.data.load_dataset(...)).")
        texts = splits[calib_split].head(n_calib).inputs
        params.update(calib_split=calib_split, n_calib=int(n_calib))
    out = copy.deepcopy(model)
    _unstructured_(out, sparsity, criterion, scope, tokenizer, texts)
    return _record(out, model, Step("unstructured", sparsity=sparsity, **params))


def _check_unstructured(criterion: str, scope: str) -> dict:
    if criterion not in ("magnitude", "data"):
        raise AxlabError(f"Unknown unstructured criterion '{criterion}'.", "Use 'magnitude' or 'data'.")
    if scope not in ("global", "layer"):
        raise AxlabError(f"Unknown scope '{scope}'.", "Use 'global' or 'layer'.")
    return {"criterion": criterion, "scope": scope}


@register_transform("unstructured")
def _op_unstructured(model, ctx: RecipeContext, sparsity: float, criterion: str = "magnitude", scope: str = "global",
                     calib_split: str = "train", n_calib: int = 128):
    _check_unstructured(criterion, scope)
    texts = ctx.require_splits("unstructured")[calib_split].head(n_calib).inputs if criterion == "data" else None
    if criterion == "data" and ctx.tokenizer is None:
        raise AxlabError("Step 'unstructured' (data) needs the tokenizer.", "Pass tokenizer= to apply_recipe.")
    _unstructured_(model, float(sparsity), criterion, scope, ctx.tokenizer, texts)
    return model


def sparsity_report(model: nn.Module) -> dict:
    """Encoder sparsity, non-zeros and the export size, with the plain-language caveat."""
    lins = encoder_linears(model)
    total = sum(m.weight.numel() for _, m in lins)
    zeros = sum(int((m.weight == 0).sum()) for _, m in lins)
    size = size_report(model)
    return {"encoder_weights": total, "encoder_zeros": zeros, "encoder_sparsity": zeros / total if total else 0.0,
            **size, "note": UNSTRUCTURED_NOTE}

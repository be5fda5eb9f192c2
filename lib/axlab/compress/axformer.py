"""AxFormer accuracy-driven pruning (Nagarajan et al.) with selective hard attention.

The search walks the layers from the top down. In each layer it tries, in order:

1. removing the whole FFN block (output = down-projection bias);
2. otherwise, removing FFN neuron groups (neurons ranked by magnitude, least important
   group first);
3. removing the whole attention block (output = output-projection bias);
4. otherwise, removing single heads;
5. top-k hard attention with each k in ``topk_values`` (the best one).

A change is kept only if the validation loss improves (the paper's rule). With
``tolerance > 0`` a change is also kept while the loss stays within ``tolerance`` (absolute,
mean cross-entropy) of the starting loss: a bounded loss in exchange for speed.

It is affordable because the layers below the one being edited never change (top-down):
the hidden states entering layer i are computed once, and every candidate only reruns
layers i..top and the classifier. Layers 0..i-1 are swapped for :class:`_Feed` modules that
hand back the cached states, so the model's own forward (masks, pooler, head) is used.

The result holds a recipe of concrete removals (``prune_heads``, ``prune_ffn``,
``hard_attention`` with explicit lists): replaying it needs no search and gives the same
logits. Report the result on the *test* split; the search looked at validation.
``cached_search`` stores finished recipes under ``cache_dir("axformer")``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

import axlab.compress.hard_attention  # noqa: F401  (registers the hard_attention op that a search replays)
import axlab.compress.prune  # noqa: F401  (registers the prune ops that a search replays)
from axlab.compress.hard_attention import DEFAULT_KS
from axlab.core import registry, surgery
from axlab.core.attention import get_topk
from axlab.core.data import Split, align_labels
from axlab.core.errors import AxlabError
from axlab.core.measure import iter_batches, require_cpu
from axlab.core.paths import cache_dir
from axlab.core.progress import Progress, Stopped, as_progress
from axlab.core.recipe import Step, apply_recipe

__all__ = ["search_topk", "TopkSearchResult", "SearchConfig", "Decision", "SearchResult", "search", "cached_search", "model_fingerprint", "STAGES",
           "decisions_frame", "loss_trace_figure"]

log = logging.getLogger(__name__)

STAGES = ("ffn_block", "ffn_groups", "attention_block", "heads", "hard_attention")
CRITERIA = ("loss", "calibrated_loss")
_LOG_T = torch.linspace(-2.0, 2.0, 161, dtype=torch.float64)    # temperatures e^-2 .. e^2


def calibrated_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy at the temperature that minimises it (grid over e^-2..e^2)."""
    return float(_calibrated_losses(logits, labels).mean())


def _calibrated_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy at the temperature that minimises the mean (grid over e^-2..e^2).

    A fine-tuned model is often over-confident: removing parts then lowers the plain loss
    by softening the logits although the ranking gets worse. At its best temperature the
    loss measures how well the classes are separated, not how confident the model is.
    """
    lg = logits.double()
    t = _LOG_T.exp().view(-1, 1, 1)
    ce = -torch.log_softmax(lg.unsqueeze(0) / t, -1).gather(-1, labels.view(1, -1, 1).expand(len(t), -1, 1))
    ce = ce.squeeze(-1)                                             # (temperatures, N)
    return ce[ce.mean(1).argmin()]


@dataclass
class SearchConfig:
    tolerance: float = 0.0                 # allowed increase of validation loss over the start (absolute)
    stages: tuple = STAGES                 # which kinds of change to try, in this order per layer
    ffn_groups: int = 8                    # FFN neurons are tried in this many groups
    topk_values: tuple = (4, 8, 16)        # hard-attention k values tried per layer
    layers: list | None = None             # layers to visit (default: all), always top-down
    n_val: int | None = None               # first n validation examples (None = all)
    batch_size: int = 64
    time_budget_s: float | None = None     # stop (returning what was found) after this long
    min_improvement: float = 0.0           # a change must lower the loss by more than this (tolerance 0)
    criterion: str = "loss"                # "loss" (the paper) | "calibrated_loss" (loss at the best temperature)
    accuracy_guard: bool = False           # also require validation accuracy not to drop (vs the current)
    significance: float = 0.0              # z: the paired per-example loss drop must exceed z standard errors

    def __post_init__(self):
        self.stages = tuple(self.stages)
        self.topk_values = tuple(int(k) for k in self.topk_values)
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stage {bad[0]!r}; choose from {STAGES}")
        if self.tolerance < 0:
            raise ValueError("tolerance must be >= 0")
        if self.ffn_groups < 1:
            raise ValueError("ffn_groups must be >= 1")
        if any(k < 1 for k in self.topk_values):
            raise ValueError("topk_values must be >= 1")
        if self.n_val is not None and self.n_val < 1:
            raise ValueError("n_val must be >= 1 or None")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.significance < 0:
            raise ValueError("significance must be >= 0")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"], d["topk_values"] = list(self.stages), list(self.topk_values)
        return d


def _resolve_config(config: SearchConfig | None, tolerance: float | None, hard_attention: bool | None) -> SearchConfig:
    """A private copy of ``config`` with the ``tolerance`` / ``hard_attention`` overrides applied."""
    cfg = copy.deepcopy(config) if config is not None else SearchConfig()
    if tolerance is not None:
        cfg.tolerance = float(tolerance)
    if hard_attention is False:
        cfg.stages = tuple(s for s in cfg.stages if s != "hard_attention")
    cfg.__post_init__()
    return cfg


@dataclass
class Decision:
    layer: int
    kind: str                  # one of STAGES
    target: object             # heads / neuron ids (original) / k
    loss_before: float
    loss_after: float
    kept: bool
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    recipe: list               # the new steps (concrete removals), to append to the input's recipe
    full_recipe: list          # the input's recipe + the new steps
    model: nn.Module
    base_loss: float           # validation loss before
    final_loss: float          # validation loss after
    base_accuracy: float
    final_accuracy: float
    log: list = field(default_factory=list)   # Decision per candidate tried
    config: SearchConfig = field(default_factory=SearchConfig)
    stopped: bool = False
    seconds: float = 0.0
    n_val: int = 0
    cached: bool = False

    def summary(self) -> dict:
        kept = [d for d in self.log if d.kept]
        return {"tried": len(self.log), "kept": len(kept), "base_val_loss": self.base_loss,
                "final_val_loss": self.final_loss, "base_val_accuracy": self.base_accuracy,
                "final_val_accuracy": self.final_accuracy, "stopped": self.stopped, "seconds": self.seconds,
                "n_val": self.n_val, "cached": self.cached,
                "removed": {k: sum(1 for d in kept if d.kind == k) for k in STAGES}}

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "full_recipe": self.full_recipe, "log": [d.to_dict() for d in self.log],
                "config": self.config.to_dict(), **self.summary()}


# ----------------------------------------------------------------------------- cached evaluation

class _Feed(nn.Module):
    """Stands in for layers below the one being edited: identity, or (the last one) the cached states."""

    def __init__(self, store: dict | None = None):
        super().__init__()
        self.store = store

    def forward(self, hidden_states, *args, **kwargs):
        if self.store is None:
            return hidden_states
        return self.store["states"][self.store["batch"]]      # (B, T, D) entering the edited layer


class _StopForward(Exception):
    pass


class _Evaluator:
    """Validation loss of a model whose layers below ``start`` never change."""

    def __init__(self, model: nn.Module, tokenizer, split: Split, batch_size: int, criterion: str = "loss"):
        self.model = model
        self.criterion = criterion
        self.batches = [(ix, b) for ix, b in iter_batches(tokenizer, split.inputs, batch_size)]
        labels = np.asarray(split.labels)
        self.labels = [torch.as_tensor(labels[ix]) for ix, _ in self.batches]
        self.start = 0
        self.store: dict = {"states": [], "batch": 0}
        self._saved: list[nn.Module] = []

    def set_start(self, layer: int) -> None:
        """Cache the hidden states entering ``layer`` and feed them in from now on."""
        self._restore()
        self.start = layer
        if layer == 0:
            return
        states = []
        lay = registry.layers(self.model)[layer]

        def grab(mod, args):
            states.append(args[0].detach())
            raise _StopForward

        h = lay.register_forward_pre_hook(grab)
        try:
            with torch.no_grad():
                for _, b in self.batches:
                    try:
                        self.model(**b)
                    except _StopForward:
                        pass
        finally:
            h.remove()
        self.store["states"] = states
        layers = registry.layers(self.model)
        self._saved = [layers[j] for j in range(layer)]
        for j in range(layer):
            layers[j] = _Feed(self.store if j == layer - 1 else None)

    def _restore(self) -> None:
        layers = registry.layers(self.model)
        for j, mod in enumerate(self._saved):
            layers[j] = mod
        self._saved = []
        self.store["states"] = []

    def close(self) -> None:
        self._restore()

    def evaluate(self) -> tuple[float, float]:
        """(loss, accuracy) over the split; the loss is the mean cross-entropy, or with
        ``criterion="calibrated_loss"`` the mean cross-entropy at the best temperature."""
        logits = []
        with torch.no_grad():
            for k, (_, b) in enumerate(self.batches):
                self.store["batch"] = k
                logits.append(self.model(**b).logits)
        lg, y = torch.cat(logits), torch.cat(self.labels)
        acc = float((lg.argmax(-1) == y).double().mean())
        if self.criterion == "calibrated_loss":
            self.losses = _calibrated_losses(lg, y)
        else:
            self.losses = nn.functional.cross_entropy(lg.double(), y, reduction="none")
        return float(self.losses.mean()), acc


# ----------------------------------------------------------------------------- the search

def _split_hash(split) -> str:
    """Identifies a split's inputs (texts or images) and labels, for the cache key."""
    inputs = split.inputs
    h = hashlib.sha256()
    if isinstance(inputs, np.ndarray):                       # images (N, H, W[, C]) uint8
        h.update(str(inputs.shape).encode())
        h.update(np.ascontiguousarray(inputs).tobytes())
    else:
        h.update(json.dumps(list(inputs)).encode())
    h.update(json.dumps([int(y) for y in split.labels]).encode())
    return h.hexdigest()[:16]


def _validation(splits_or_split) -> Split:
    if isinstance(splits_or_split, Split) or (hasattr(splits_or_split, "inputs")
                                              and hasattr(splits_or_split, "labels")):     # a Split or an ImageSplit
        return splits_or_split
    if hasattr(splits_or_split, "validation"):
        return splits_or_split.validation
    raise AxlabError("search needs the dataset's splits (it searches on validation).",
                     "Pass axlab.data.load_dataset(...) or a Split of validation examples.")


def _ffn_groups(model: nn.Module, layer: int, n_groups: int) -> list[list[int]]:
    """Current neuron indices in ``n_groups`` groups, least important (magnitude) first."""
    ffn = registry.ffn_parts(model, layer)
    score = ffn.up.weight.detach().norm(dim=1) * ffn.down.weight.detach().norm(dim=0)
    order = torch.argsort(score, stable=True).tolist()
    return [g.tolist() for g in np.array_split(np.array(order), min(n_groups, len(order))) if len(g)]


def search(model: nn.Module, tokenizer, splits, tolerance: float | None = None, progress: Progress = None,
           hard_attention: bool | None = None, *, config: SearchConfig | None = None) -> SearchResult:
    """AxFormer's greedy top-down search; returns a new model and the recipe that rebuilds it.

    ``splits``: the dataset's Splits (its validation split is used) or a validation Split.
    ``tolerance`` / ``hard_attention`` override the config's (hard_attention=False drops
    that stage). ``progress`` may raise :class:`axlab.progress.Stopped` to stop early.
    """
    require_cpu(model, "The AxFormer search")
    cfg = _resolve_config(config, tolerance, hard_attention)
    val = align_labels(_validation(splits), model).head(cfg.n_val)   # labels matched to the model by name
    if len(val) == 0:
        raise AxlabError("The validation split is empty.", "Use a dataset with a validation split.")
    t0 = time.time()
    work = copy.deepcopy(model)
    work.eval()
    n_layers = len(registry.layers(work))
    visit = sorted({int(i) for i in (cfg.layers if cfg.layers is not None else range(n_layers))}, reverse=True)
    if any(not 0 <= i < n_layers for i in visit):
        raise AxlabError(f"search: layers must be in 0..{n_layers - 1}.", "Fix the 'layers' option.")
    n_heads = registry.n_heads_config(work)
    per_layer = (("ffn_block" in cfg.stages) + cfg.ffn_groups * ("ffn_groups" in cfg.stages)
                 + ("attention_block" in cfg.stages) + n_heads * ("heads" in cfg.stages)
                 + len(cfg.topk_values) * ("hard_attention" in cfg.stages))
    prog = as_progress(progress, total=per_layer * len(visit) + 1, desc="AxFormer search")

    ev = _Evaluator(work, tokenizer, val, cfg.batch_size, cfg.criterion)
    base_loss, base_acc = ev.evaluate()
    cur = {"loss": base_loss, "acc": base_acc, "losses": ev.losses}
    decisions: list[Decision] = []
    removed_heads: dict[int, list[int]] = {}
    removed_ffn: dict[int, list[int]] = {}
    chosen_topk: dict[int, int] = {}
    stopped = False
    prog.update(1, f"baseline loss {base_loss:.4f}")

    def accept(loss: float, acc: float, losses: torch.Tensor) -> bool:
        if cfg.accuracy_guard and acc < cur["acc"] - 1e-12:
            return False
        margin = cfg.min_improvement
        if cfg.significance > 0 and len(losses) > 1:       # paired standard error of the per-example change
            margin = max(margin, cfg.significance * float((losses - cur["losses"]).std()) / len(losses) ** 0.5)
        if loss < cur["loss"] - margin:
            return True
        return cfg.tolerance > 0 and loss <= base_loss + cfg.tolerance

    def out_of_time() -> bool:
        return cfg.time_budget_s is not None and time.time() - t0 > cfg.time_budget_s

    def trial(layer: int, kind: str, target, edit, on_keep) -> bool:
        """Apply ``edit`` to layer ``layer``; keep it (and book it) if the rule says so, else restore the layer."""
        layers = registry.layers(work)
        saved = copy.deepcopy(layers[layer])
        ts = time.time()
        edit()
        loss, acc = ev.evaluate()
        ok = accept(loss, acc, ev.losses)
        decisions.append(Decision(layer, kind, target, cur["loss"], loss, ok, time.time() - ts))
        log.debug("layer %d %s %s: %.4f -> %.4f %s", layer, kind, target, cur["loss"], loss, "kept" if ok else "rejected")
        if ok:
            cur["loss"], cur["acc"], cur["losses"] = loss, acc, ev.losses
            on_keep()
        else:
            layers[layer] = saved
        prog.update(1, f"L{layer} {kind}: loss {cur['loss']:.4f}")
        return ok

    try:
        for layer in visit:
            if out_of_time():
                stopped = True
                break
            if surgery.is_skipped(work, layer):
                prog.update(per_layer)
                continue
            ev.set_start(layer)
            width = registry.ffn_parts(work, layer).up.out_features
            alive = list(range(width))            # the input model's neuron ids still present here
            # 1-2: FFN block, then FFN neuron groups

            def drop_neurons(ids: list[int]) -> None:
                removed_ffn.setdefault(layer, []).extend(ids)
                alive[:] = [n for n in alive if n not in set(ids)]

            if "ffn_block" in cfg.stages:
                if width:
                    trial(layer, "ffn_block", list(alive), lambda: surgery.remove_ffn_neurons_(work, layer, list(range(width))),
                          lambda: drop_neurons(list(alive)))
                else:
                    prog.update(1)
            if "ffn_groups" in cfg.stages:
                groups = _ffn_groups(work, layer, cfg.ffn_groups) if alive else []
                orig_groups = [[alive[i] for i in g] for g in groups]
                for g in orig_groups:
                    if out_of_time():
                        raise Stopped
                    cur_idx = [alive.index(n) for n in g]
                    trial(layer, "ffn_groups", g, lambda: surgery.remove_ffn_neurons_(work, layer, cur_idx),
                          lambda g=g: drop_neurons(g))
                prog.update(cfg.ffn_groups - len(groups))
            # 3-4: attention block, then single heads
            heads = list(registry.attention_module(work, layer).axlab_head_ids)
            if "attention_block" in cfg.stages:
                if heads:
                    trial(layer, "attention_block", list(heads), lambda: surgery.remove_heads_(work, layer, list(heads)),
                          lambda: removed_heads.setdefault(layer, []).extend(heads))
                else:
                    prog.update(1)
            attn_gone = not registry.attention_module(work, layer).axlab_head_ids
            if "heads" in cfg.stages:
                todo = [] if attn_gone else heads
                for h in todo:
                    if out_of_time():
                        raise Stopped
                    left = registry.attention_module(work, layer).axlab_head_ids
                    if len(left) == 1 and "attention_block" in cfg.stages:
                        # removing the last head = removing the block, which was already rejected
                        prog.update(1)
                        continue
                    trial(layer, "heads", h, lambda h=h: surgery.remove_heads_(work, layer, [h]),
                          lambda h=h: removed_heads.setdefault(layer, []).append(h))
                prog.update(n_heads - len(todo))
                attn_gone = not registry.attention_module(work, layer).axlab_head_ids
            # 5: hard attention, the best k if it helps
            if "hard_attention" in cfg.stages and cfg.topk_values:
                if attn_gone or getattr(registry.attention_module(work, layer), "axlab_topk", None) is not None:
                    prog.update(len(cfg.topk_values))
                else:
                    mod = registry.attention_module(work, layer)
                    best = None
                    for k in cfg.topk_values:
                        if out_of_time():
                            raise Stopped
                        ts = time.time()
                        mod.axlab_topk = k
                        loss, acc = ev.evaluate()
                        mod.axlab_topk = None
                        decisions.append(Decision(layer, "hard_attention", k, cur["loss"], loss, False, time.time() - ts))
                        if best is None or loss < best[1]:
                            best = (k, loss, acc, len(decisions) - 1, ev.losses)
                        if k != cfg.topk_values[-1]:
                            prog.update(1, f"L{layer} top-{k}: loss {loss:.4f}")
                    if best is not None and accept(best[1], best[2], best[4]):
                        mod.axlab_topk = best[0]
                        chosen_topk[layer] = best[0]
                        decisions[best[3]].kept = True
                        cur["loss"], cur["acc"], cur["losses"] = best[1], best[2], best[4]
                    prog.update(1, f"L{layer} hard attention: loss {cur['loss']:.4f}")
    except Stopped:
        stopped = True
        log.info("AxFormer search stopped after %d candidates", len(decisions))
    finally:
        ev.close()
        prog.close()

    steps = []
    if removed_heads:
        steps.append(Step("prune_heads", heads={str(k): sorted(v) for k, v in sorted(removed_heads.items())}))
    if removed_ffn:
        steps.append(Step("prune_ffn", neurons={str(k): sorted(v) for k, v in sorted(removed_ffn.items())}))
    if chosen_topk:
        steps.append(Step("hard_attention", topk={str(k): v for k, v in sorted(chosen_topk.items())}))
    full = list(getattr(model, "axlab_recipe", [])) + steps
    work.axlab_recipe = full
    seconds = time.time() - t0
    log.info("AxFormer search: %d tried, %d kept, val loss %.4f -> %.4f in %.0fs", len(decisions),
             sum(d.kept for d in decisions), base_loss, cur["loss"], seconds)
    return SearchResult(recipe=steps, full_recipe=full, model=work, base_loss=base_loss, final_loss=cur["loss"],
                        base_accuracy=base_acc, final_accuracy=cur["acc"], log=decisions, config=cfg,
                        stopped=stopped, seconds=seconds, n_val=len(val))


# ----------------------------------------------------------------------------- cache

def model_fingerprint(model: nn.Module) -> str:
    """A hash of the model's weights, shapes and layout (identifies it for caches)."""
    h = hashlib.sha256()
    h.update(json.dumps(surgery.layout(model), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_search(model: nn.Module, tokenizer, splits, *, config: SearchConfig | None = None,
                  tolerance: float | None = None, hard_attention: bool | None = None, progress: Progress = None,
                  refresh: bool = False) -> SearchResult:
    """:func:`search`, but a finished result is stored under ``cache_dir("axformer")`` keyed by
    model weights + data + options, and later calls rebuild the model from the recipe at once.

    A stopped search is not cached.
    """
    cfg = _resolve_config(config, tolerance, hard_attention)
    opts = {k: v for k, v in cfg.to_dict().items() if k != "time_budget_s"}
    data_key = getattr(splits, "key", None) or _split_hash(_validation(splits))
    key = hashlib.sha256(json.dumps([model_fingerprint(model), data_key, opts], sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir("axformer") / f"{key}.json"
    if path.exists() and not refresh:
        d = json.loads(path.read_text())
        rebuilt = apply_recipe(model, d["recipe"])
        rebuilt.axlab_recipe = list(getattr(model, "axlab_recipe", [])) + d["recipe"]
        log.info("AxFormer result from cache %s", path)
        return SearchResult(recipe=d["recipe"], full_recipe=rebuilt.axlab_recipe, model=rebuilt,
                            base_loss=d["base_val_loss"], final_loss=d["final_val_loss"],
                            base_accuracy=d["base_val_accuracy"], final_accuracy=d["final_val_accuracy"],
                            log=[Decision(**x) for x in d["log"]], config=cfg, stopped=False,
                            seconds=d["seconds"], n_val=d["n_val"], cached=True)
    res = search(model, tokenizer, splits, config=cfg, progress=progress)
    if not res.stopped:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res.to_dict(), indent=1, default=str))
        tmp.replace(path)
    return res


# ----------------------------------------------------------------------------- reporting

def decisions_frame(result: SearchResult):
    """The decision log as a DataFrame (one row per candidate tried)."""
    import pandas as pd
    rows = []
    for i, d in enumerate(result.log):
        target = d.target if not isinstance(d.target, list) or len(d.target) <= 12 else f"{len(d.target)} neurons"
        rows.append({"step": i, "layer": d.layer, "kind": d.kind, "target": str(target), "loss_before": d.loss_before,
                     "loss_after": d.loss_after, "delta": d.loss_after - d.loss_before, "kept": d.kept,
                     "seconds": d.seconds})
    return pd.DataFrame(rows)


def loss_trace_figure(result: SearchResult):
    """Plotly: validation loss of every candidate (kept in colour), and the running loss."""
    import plotly.graph_objects as go
    df = decisions_frame(result)
    fig = go.Figure()
    if len(df):
        for kept, name, color in ((False, "rejected", "#bbbbbb"), (True, "kept", "#d62728")):
            part = df[df.kept == kept]
            fig.add_trace(go.Scatter(x=part.step, y=part.loss_after, mode="markers", name=name, marker_color=color,
                                     text=[f"L{r.layer} {r.kind} {r.target}" for r in part.itertuples()],
                                     hovertemplate="%{text}<br>loss %{y:.4f}<extra></extra>"))
        running = [result.base_loss]
        for d in result.log:
            running.append(d.loss_after if d.kept else running[-1])
        fig.add_trace(go.Scatter(x=list(range(-1, len(df))), y=running, mode="lines", name="current",
                                 line_shape="hv", line_color="#1f77b4"))
    fig.update_layout(title="AxFormer search: validation loss per candidate (top layer first)",
                      xaxis_title="candidate", yaxis_title="validation loss (mean cross-entropy)")
    return fig


@dataclass
class TopkSearchResult:
    topk: dict[int, int]                 # chosen {layer: k}
    model: nn.Module
    base_loss: float
    final_loss: float
    log: list = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0


def search_topk(model: nn.Module, tokenizer, split, *, ks=DEFAULT_KS, layers: list[int] | None = None,
                tolerance: float = 0.0, batch_size: int = 64, progress: Progress = None) -> TopkSearchResult:
    """Which layers gain from top-k hard attention, on ``split`` (a validation split).

    Walks the layers from the top down; in each it tries every k in ``ks`` and keeps the
    best one only if the loss improves (or stays within ``tolerance`` of the start).
    """
    res = search(model, tokenizer, split, config=SearchConfig(stages=("hard_attention",), topk_values=tuple(ks),
                                                               layers=layers, tolerance=tolerance,
                                                               batch_size=batch_size), progress=progress)
    return TopkSearchResult(topk=get_topk(res.model), model=res.model, base_loss=res.base_loss,
                            final_loss=res.final_loss, log=res.log, stopped=res.stopped, seconds=res.seconds)

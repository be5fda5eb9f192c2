"""Leads for a row that is 1.5x faster at batch 1 *and* as accurate as fp32 (issue 15), measured on validation.

    python bench/bench_leads.py                          # default model -> bench/results/leads.json (4 min, 2 cores)
    python bench/bench_leads.py --parts tokens,exits,search  # + two AxFormer search variants (about 13 min more)
    python bench/bench_leads.py --parts teachers         # teacher ensembles (needs CUDA: 4 fine-tunes, 4 students)
    python bench/bench_leads.py --parts bigteacher       # SmolLM2-135M as teacher (bench/teacher.py's table; a GPU)
    python bench/bench_leads.py --parts depth            # depth against width under that teacher, val AND test (a GPU)

Each lead keeps the model's depth and weights, or asks whether a better teacher exists; none trains
the model itself except ``teachers``. Validation only (test is not read):

1. token pruning by [CLS] attention (training-free, PoWER-BERT-style selection): after layer L,
   each row keeps the top share r of its tokens by the attention the [CLS] query pays them (mean
   over heads; [CLS] always kept); the dropped tokens are masked as keys in every later layer,
   which is what a packed graph would compute with those rows removed. The share of
   encoder MACs saved is estimated from the kept tokens (every layer after L on the kept rows).
2. early exits with frozen exit heads: a copy of the pooler + classifier per block, trained on the
   frozen model's [CLS] states of the training split (half KD to the final logits at T 2, half
   labels); an example exits at the first block whose exit is at least tau confident. The model's
   own layers stay as they are, so a row that does not exit gets the full model's answer.
3. ``search``: AxFormer with a budget instead of "must improve": the calibrated loss
   (temperature-scaled, so calibration gains do not count) with tolerance 0.01, and the plain loss
   with an accuracy guard, accepting any change that keeps the loss under the base model's.
4. ``teachers``: four MiniLM fine-tunes (seeds 0-3, the default recipe) and their logit
   average, then the bench's student (layer 2 dropped, FFN -25%, 1,500 steps, 2 perturbed copies)
   distilled from teacher 0 alone and from the average of four, seeds 0 and 1.
5. ``bigteacher``: a larger teacher, SmolLM2-135M fine-tuned (bench/teacher.py, its logits cached in
   bench/teachers/smollm2.npz), against the base as teacher: students L0.83-ffn25 and L0.67-ffn25
   (layers dropped greedily on validation loss, FFN -25% by magnitude; 1,500 steps, 2 perturbed copies,
   seeds 0 and 1), then at 4,000 steps and 8 copies (L0.67-ffn25 seeds 0-2 and their soup, L0.83-ffn25
   seed 0). Accuracy in fp32 PyTorch. About 12 min on an H200; hours on 2 CPU cores.
6. ``depth``: the one part that reads **test** too, as a diagnosis, not a choice: why the SmolLM2-taught
   students' validation gains did not show on test. Depth-cut students (L0.67-ffn25: 3 seeds, KD weight
   alpha 0.5 and 1.0, their soups, and as deployed: int8 weights with 4- or 8-bit embeddings emulated by
   ``fake_quantized``, GPFQ 4-bit in PyTorch; 4,000 steps and 8 copies; started from a full-depth
   SmolLM2-taught model) against full-depth ones (all layers; FFN -25% / -50%, heads -25%; seed 0),
   accuracy and agreement with the teacher on validation and test. About 25 min on an H200.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KEEP_SHARES = (0.5, 0.7)
TOKEN_LAYERS = (1, 2)
TAUS = (0.9, 0.95)
PARTS = ("tokens", "exits", "search", "teachers", "bigteacher", "depth")


def layer_macs(model: nn.Module) -> list[int]:
    """Multiply-adds per token of each encoder layer's Linear layers (its FFN and projections)."""
    from axlab.core import registry
    return [sum(m.in_features * m.out_features for m in layer.modules() if isinstance(m, nn.Linear))
            for layer in registry.layers(model)]


@contextlib.contextmanager
def token_pruning(after: int, keep: float, kept: list):
    """Route axlab's attention through a wrapper that, in layer ``after``, ranks each row's tokens by
    the [CLS] query's attention and masks all but the top ``keep`` share as keys of the later layers.
    Appends (kept tokens, real tokens) per batch to ``kept``."""
    from transformers import AttentionInterface

    from axlab.core.attention import ATTN_NAME, axlab_attention
    state: dict = {}

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, axlab=None, **kw):
        layer = module.axlab_layer
        if layer == 0:
            state.clear()                         # a new forward pass
        mask = attention_mask
        if layer > after and "drop" in state:
            mask = state["drop"] if mask is None else (mask & state["drop"] if mask.dtype == torch.bool
                                                       else mask + state["drop"])
        out, weights = axlab_attention(module, query, key, value, mask, scaling, dropout, axlab, **kw)
        if layer == after:
            real = (mask[:, 0, 0, :] if mask.dtype == torch.bool else mask[:, 0, 0, :] > -1) if mask is not None \
                else torch.ones(weights.shape[0], weights.shape[-1], dtype=torch.bool)
            score = weights[:, :, 0, :].mean(1).masked_fill(~real, -1.0)         # (B, T): [CLS]'s attention
            n_keep = torch.ceil(keep * real.sum(-1, keepdim=True).float()).long()
            rank = score.argsort(-1, descending=True).argsort(-1)
            keep_mask = (rank < n_keep) & real
            keep_mask[:, 0] = True
            kept.append((int(keep_mask.sum()), int(real.sum())))
            drop = keep_mask[:, None, None, :]
            state["drop"] = drop if (mask is not None and mask.dtype == torch.bool) else \
                torch.where(drop, 0.0, torch.finfo(weights.dtype).min)
        return out, weights

    AttentionInterface.register(ATTN_NAME, attention)
    try:
        yield
    finally:
        AttentionInterface.register(ATTN_NAME, axlab_attention)


def token_leads(models: dict, tok, val) -> dict:
    from axlab.core.measure import predict_logits, scores
    out = {}
    for name, m in models.items():
        macs = layer_macs(m)
        dense = scores(predict_logits(m, tok, val.inputs, 64), val.labels)
        out[name] = {"dense": {"accuracy": dense["accuracy"], "loss": dense["loss"]}}
        for after in TOKEN_LAYERS:
            for keep in KEEP_SHARES:
                kept: list = []
                with token_pruning(after, keep, kept):
                    sc = scores(predict_logits(m, tok, val.inputs, 64), val.labels)
                share = sum(k for k, _ in kept) / max(1, sum(n for _, n in kept))
                saved = (1 - share) * sum(macs[after + 1:]) / sum(macs)
                out[name][f"after layer {after}, keep {keep}"] = {
                    "accuracy": sc["accuracy"], "loss": sc["loss"], "tokens_kept": round(share, 3),
                    "encoder_macs_saved": round(saved, 3)}
                sys.stdout.write(f"tokens {name} after {after} keep {keep}: acc {sc['accuracy']:.3f} "
                                 f"(dense {dense['accuracy']:.3f}), MACs saved {saved:.2f}\n")
    return out


def _cls_states(model, tok, split):
    """Every block's [CLS] state and the final logits on ``split`` (in its order)."""
    from axlab.analysis.early_exit import block_outputs
    from axlab.core.measure import forward, iter_batches
    states, logits = None, torch.zeros(len(split), model.config.num_labels)
    with torch.inference_mode():
        for ix, batch in iter_batches(tok, list(split.texts), 64):
            with block_outputs(model) as outs:
                lg = forward(model, batch).logits
            if states is None:
                states = [torch.zeros(len(split), o.shape[-1]) for o in outs]
            for s, o in zip(states, outs):
                s[torch.as_tensor(ix)] = o[:, 0]
            logits[torch.as_tensor(ix)] = lg
    return states, logits


def exit_leads(model, tok, train, val, epochs: int = 50, seed: int = 0) -> dict:
    from axlab.compress.distill import kd_loss
    from axlab.core import registry
    torch.manual_seed(seed)
    s_tr, f_tr = _cls_states(model, tok, train)
    s_va, f_va = _cls_states(model, tok, val)
    y_tr, y_va = torch.as_tensor(train.labels), torch.as_tensor(val.labels)
    final = f_va.argmax(-1)
    macs = layer_macs(model)
    probs = []
    out: dict = {"final_accuracy": float((final == y_va).float().mean())}
    for k in range(len(s_tr) - 1):
        exit_model = copy.deepcopy(model).eval()      # its head (pooler / classifier) is this exit's, trained here
        for prm in exit_model.parameters():
            prm.requires_grad_(False)
        params = [prm for mod in registry.classifier_modules(exit_model) for prm in mod.parameters()]
        for prm in params:
            prm.requires_grad_(True)

        def head(cls_states):
            return registry.head_logits(exit_model, cls_states[:, None, :])

        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
        for _ in range(epochs):
            perm = torch.randperm(len(y_tr))
            for s in range(0, len(perm), 256):
                i = perm[s:s + 256]
                loss = kd_loss(head(s_tr[k][i]), f_tr[i], y_tr[i], temperature=2.0, alpha=0.5)
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            p = head(s_va[k]).softmax(-1)
        probs.append(p)
        out[f"block {k}"] = {"accuracy": float((p.argmax(-1) == y_va).float().mean()),
                             "agreement": float((p.argmax(-1) == final).float().mean())}
    for tau in TAUS:                   # exit at the first confident block
        pred, done, cost = final.clone(), torch.zeros(len(y_va), dtype=torch.bool), torch.full((len(y_va),), 1.0)
        for k, p in enumerate(probs):
            now = (p.max(-1).values >= tau) & ~done
            pred[now], cost[now] = p.argmax(-1)[now], sum(macs[:k + 1]) / sum(macs)
            done |= now
        out[f"tau {tau}"] = {"exited": float(done.float().mean()), "accuracy": float((pred == y_va).float().mean()),
                             "agreement": float((pred == final).float().mean()),
                             "encoder_macs_saved": round(1 - float(cost.mean()), 3)}
        sys.stdout.write(f"exits tau {tau}: {out[f'tau {tau}']}\n")
    return out


def search_leads(base, tok, splits) -> dict:
    from axlab.compress.axformer import SearchConfig, search
    from axlab.core.measure import evaluate
    variants = {"calibrated loss, tolerance 0.01": dict(criterion="calibrated_loss", tolerance=0.01),
                "loss under the base's, accuracy guard": dict(tolerance=1e-3, accuracy_guard=True)}
    out = {"base_macs_per_token": sum(layer_macs(base))}
    for name, kw in variants.items():
        t0 = time.time()
        res = search(base, tok, splits, hard_attention=False, config=SearchConfig(ffn_groups=4, **kw))
        ev = evaluate(res.model, tok, splits.validation)
        out[name] = {"macs_per_token": sum(layer_macs(res.model)),
                     "accuracy": ev["accuracy"], "loss": ev["loss"], "seconds": round(time.time() - t0),
                     "recipe": res.recipe}
        sys.stdout.write(f"search {name}: {out[name]['macs_per_token'] / 1e6:.2f} M MACs/token, "
                         f"acc {ev['accuracy']:.3f}\n")
    return out


class LogitMean(nn.Module):
    """Several classifiers of the same labels as one teacher: the mean of their logits."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    def forward(self, **kw):
        return SimpleNamespace(logits=torch.stack([m(**kw).logits for m in self.members]).mean(0))


def teacher_leads(splits) -> dict:
    from axlab.compress.distill import distill
    from axlab.compress.prune import drop_layers, ffn_by_budget, prune_ffn
    from axlab.core.data import align_labels
    from axlab.core.measure import fidelity, predict_logits, scores
    from axlab.core.train import DEFAULT_CONFIG as C
    from axlab.core.train import _build_model, encoder_dir, train_classifier
    if not torch.cuda.is_available():
        return {"skipped": "needs CUDA (4 fine-tunes and 4 distillations)"}
    teachers = []
    for seed in range(4):
        m, tok, _ = _build_model(str(encoder_dir()), list(splits.label_names), seed)
        train_classifier(m.to("cuda"), tok, align_labels(splits.train, m), epochs=C.epochs, batch_size=C.batch_size,
                         lr=C.lr, weight_decay=C.weight_decay, warmup=C.warmup, max_length=C.max_length, seed=seed)
        teachers.append(m.eval())
    val = align_labels(splits.validation, teachers[0])

    def val_logits(m):
        with torch.no_grad():
            return predict_logits(m, tok, val.inputs, 128).float().cpu()

    ref = val_logits(teachers[0])
    out = {f"teacher {i}": scores(val_logits(t), val.labels)["accuracy"] for i, t in enumerate(teachers)}
    out["mean of 4"] = scores(val_logits(LogitMean(teachers)), val.labels)["accuracy"]
    for seed in (0, 1):
        for name, teacher in (("teacher 0", teachers[0]), ("mean of 4", LogitMean(teachers))):
            small = drop_layers(copy.deepcopy(teachers[0]).cpu(), [2])     # FFN magnitudes are read on the CPU
            small = prune_ffn(small, ffn_by_budget(small, 0.25)).to("cuda")
            student = distill(small, teacher.eval(), tok, splits.train, steps=1500, lr=1e-4, seed=seed, augment=2)
            lg = val_logits(student)
            out[f"student of {name}, seed {seed}"] = {"accuracy": scores(lg, val.labels)["accuracy"],
                                                      "agreement_with_teacher_0": fidelity(lg, ref)["agreement"]}
            sys.stdout.write(f"teachers: student of {name}, seed {seed}: {out[f'student of {name}, seed {seed}']}\n")
    return out


def bigteacher_leads(base, tok, splits) -> dict:
    from axlab.compress.distill import distill, soup
    from axlab.compress.prune import drop_layers, ffn_by_budget, prune_ffn
    from axlab.core.measure import predict_logits, scores
    from run import _layer_drop_order, _teacher_module
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    base = base.cpu()
    table, card = _teacher_module().load_table("smollm2", splits, tok, base.config)
    val = splits.validation

    def acc(m):
        with torch.no_grad():
            return scores(predict_logits(m.to(dev).eval(), tok, val.inputs, 128).float().cpu(), val.labels)["accuracy"]

    out = {"base": acc(base), "teacher smollm2": card["accuracy"]["validation"], "device": dev}
    base = base.cpu()
    order = _layer_drop_order(base, tok, val, 2)
    out["drop_order"] = order
    cut = {"L0.83-ffn25": sorted(order[:1]), "L0.67-ffn25": sorted(order[:2])}

    def student(name):
        m = drop_layers(base, cut[name])
        return prune_ffn(m, ffn_by_budget(m, 0.25))

    def run_one(name, teacher, label, steps, augment, seed):
        st = distill(copy.deepcopy(student(name)).to(dev), copy.deepcopy(teacher).to(dev), tok, splits.train,
                     steps=steps, lr=1e-4, seed=seed, augment=augment)
        out[f"{name} from {label}, {steps} steps aug{augment}, seed {seed}"] = acc(st)
        sys.stdout.write(f"bigteacher: {name} from {label}, {steps} steps aug{augment}, seed {seed}: {acc(st):.4f}\n")
        return st.cpu()

    for name in cut:
        for label, teacher in (("base", base), ("smollm2", table)):
            for seed in (0, 1):
                run_one(name, teacher, label, 1500, 2, seed)
    members = [run_one("L0.67-ffn25", table, "smollm2", 4000, 8, seed) for seed in (0, 1, 2)]
    out["L0.67-ffn25 from smollm2, 4000 steps aug8, soup of seeds 0-2"] = acc(soup(members))
    run_one("L0.83-ffn25", table, "smollm2", 4000, 8, 0)
    return out


def depth_leads(base, tok, splits) -> dict:
    """Part 6 (see the module doc): depth-cut against full-depth students of SmolLM2, validation and test."""
    import numpy as np

    from axlab.analysis.importance import head_importance
    from axlab.compress import prune
    from axlab.compress import quantize as Q
    from axlab.compress.distill import distill, soup
    from axlab.compress.qat import fake_quantized
    from axlab.core.data import align_labels
    from axlab.core.measure import predict_logits, scores
    from run import _layer_drop_order, _lowbit, _task_vocab, _teacher_module
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    base = base.cpu()
    table = _teacher_module().load_table("smollm2", splits, tok, base.config)[0]
    ev_splits = {"val": align_labels(splits.validation, base), "test": align_labels(splits.test, base)}
    logits = np.load(_teacher_module().table_path("smollm2"))
    teacher_pred = {"val": logits["validation"].argmax(-1), "test": logits["test"].argmax(-1)}
    calib = Q.calibration_texts(splits, 512, seed=0)

    def ev(m, where=dev) -> dict:
        r = {}
        for name, sp in ev_splits.items():
            with torch.no_grad():
                lg = predict_logits(m.to(where).eval(), tok, sp.inputs, 128).float().cpu()
            r[name] = scores(lg, sp.labels)["accuracy"]
            r[name + "_agreement_with_teacher"] = float((lg.argmax(-1).numpy() == teacher_pred[name][:len(lg)]).mean())
        m.cpu()
        return r

    def deployed(m) -> dict:
        small = _task_vocab(m.cpu(), tok, splits)
        r = {}
        for bits in (4, 8):
            with fake_quantized(small, embedding_bits=bits, position_bits=8):
                r[f"int8-emb{bits}"] = ev(small)
        r["gpfq4"] = ev(_lowbit("gpfq", small, tok, calib, 4), "cpu")
        return r

    def taught(m, teacher=table, **kw):
        kw = {"steps": 1500, "lr": 1e-4, "augment": 2, "seed": 0, **kw}
        return distill(copy.deepcopy(m).to(dev), copy.deepcopy(teacher).to(dev), tok, splits.train,
                       teacher_source="smollm2", progress=False, **kw).cpu()

    out = {"base": ev(base), "device": dev}
    dropped = sorted(_layer_drop_order(base, tok, splits.validation, 2))      # chosen once, on the base

    def l067_ffn25(m):
        cut = prune.drop_layers(m, dropped)
        return prune.prune_ffn(cut, prune.ffn_by_budget(cut, 0.25))

    small = l067_ffn25(base)

    def record(name, model, **extra):
        out[name] = {"fp32": ev(model), **extra}
        sys.stdout.write(f"depth: {name}: {out[name]['fp32']}\n")

    for alpha in (0.5, 1.0):
        members = [taught(small, alpha=alpha, seed=seed) for seed in (0, 1, 2)]
        for seed, m in enumerate(members):
            record(f"L0.67-ffn25, alpha {alpha}, seed {seed}", m, **({"deployed": deployed(m)} if seed == 0 else {}))
        sp = soup(members)
        record(f"L0.67-ffn25, alpha {alpha}, soup of seeds 0-2", sp, deployed=deployed(sp))
    record("L0.67-ffn25, 4000 steps, 8 copies", taught(small, steps=4000, augment=8))
    for lr in (5e-5, 1e-4):
        record(f"L1.00 (the whole model), lr {lr:g}", taught(base, lr=lr))
    full = taught(base)                     # a full-depth student as the start of the cut one
    from_full = l067_ffn25(full)
    record("L0.67-ffn25 started from the L1.00 student, taught by SmolLM2", taught(from_full))
    record("L0.67-ffn25 started from the L1.00 student, taught by it", taught(from_full, teacher=full))
    imp = head_importance(base, tok, splits.validation, method="gradient", progress=False, cache_results=False)
    for ffn, heads in ((0.75, None), (0.5, 0.25), (0.5, None)):
        m = prune.prune_heads(base, prune.heads_by_budget(imp, heads)) if heads else base
        name = f"L1.00-ffn{int(ffn * 100)}" + (f"-heads{int(heads * 100)}" if heads else "")
        record(name, taught(prune.prune_ffn(m, prune.ffn_by_budget(m, ffn))))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dataset", default="rotten_tomatoes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", default="tokens,exits",
                    help="comma-separated, of: tokens, exits, search (slow), teachers (CUDA), bigteacher, depth "
                         "(a GPU)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        ap.error(f"--parts takes a comma-separated list of {', '.join(PARTS)}")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    import axlab
    from axlab.compress import apply_recipe
    from axlab.compress.axformer import SearchConfig, cached_search
    from axlab.core.data import align_labels
    from axlab.core.measure import hardware_info
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import AXFORMER_OPTIONS

    splits = axlab.load_dataset(args.dataset)
    out = {"model": args.model, "dataset": args.dataset, "threads": args.threads, "hardware": hardware_info(),
           "split": "validation", "n": len(splits.validation)}
    if "depth" in parts:
        out.update(split="validation and test (a diagnosis: see part 6)", n_test=len(splits.test))
    if {"tokens", "exits", "search", "bigteacher", "depth"} & set(parts):    # the teachers lead trains its own models
        bundle = axlab.load_model(args.model)
        base, tok = bundle.model.float().eval(), bundle.tokenizer
        val = align_labels(splits.validation, base)
    if {"tokens", "exits"} & set(parts):
        ax = cached_search(base, tok, splits, config=SearchConfig(**AXFORMER_OPTIONS), progress=False)
        ax_model = apply_recipe(base, ax.recipe).eval()
    if "tokens" in parts:
        out["token_pruning"] = token_leads({"base": base, "AxFormer": ax_model}, tok, val)
    if "exits" in parts:
        out["early_exits"] = exit_leads(ax_model, tok, align_labels(splits.train, base), val)
    if "search" in parts:
        out["axformer_budget"] = search_leads(base, tok, splits)
    if "teachers" in parts:
        out["teacher_ensembles"] = teacher_leads(splits)
    if "bigteacher" in parts:
        out["larger_teacher"] = bigteacher_leads(base, tok, splits)
    if "depth" in parts:
        out["depth_against_width"] = depth_leads(base, tok, splits)
    own = {("teachers",): "leads_teachers.json", ("bigteacher",): "leads_bigteacher.json",
           ("depth",): "leads_depth.json"}
    name = own.get(tuple(parts), "leads.json")
    dest = Path(args.out) / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()

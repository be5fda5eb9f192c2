"""Write the teaching notebooks (``NN_name.ipynb``) from the cell sources below.

The notebooks are committed with outputs stripped; this script is how they are kept
clean and consistent. Edit the cells here, then run::

    .venv/bin/python notebooks/build_notebooks.py          # rewrite every notebook
    .venv/bin/python notebooks/build_notebooks.py --check  # exit 1 if a notebook differs

Every notebook starts with a cell tagged ``parameters`` (model, dataset, sizes). The
tests (tests/test_notebooks.py) insert a cell right after it with a smaller
configuration, run the notebook top to bottom, and read the ``SUMMARY`` dict that the
last cell computes; the conclusion shown to the reader is built from that same dict.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent


def md(text: str):
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str, tags: tuple[str, ...] = ()):
    cell = nbformat.v4.new_code_cell(textwrap.dedent(text).strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def params(text: str):
    return code(text, ("parameters",))


SETUP = """
    import logging
    import warnings

    import numpy as np
    import pandas as pd
    import plotly.graph_objects as go
    from IPython.display import Markdown, display

    import axlab
    from axlab import evaluate, load_dataset, load_model

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.basicConfig(level=logging.WARNING)

    bundle = load_model(MODEL)            # "default" is built once by `axlab prepare` and cached
    model, tok = bundle.model, bundle.tokenizer
    splits = load_dataset(DATASET)
    print(f"{bundle.arch}: {bundle.n_layers} layers x {bundle.n_heads} heads, labels {bundle.labels}")
    print("dataset sizes:", splits.sizes)
"""


# ---------------------------------------------------------------------------------------------
# 01: a tour
# ---------------------------------------------------------------------------------------------

NB01 = [
    md("""
    # 1. A tour of a fine-tuned transformer

    This notebook loads axlab's default model (MiniLM-L6: 6 layers x 12 attention heads,
    fine-tuned to tell fresh from rotten movie reviews) and looks inside it:

    1. how well it does, how big it is;
    2. what the attention of one sentence looks like: every head at once, one head up
       close, and *attention rollout* (how much of each input word reaches the classifier);
    3. what each head does *on average* over many reviews: do lower layers look at the
       neighbouring words (local heads) and higher layers across the sentence (global heads)?
       Do some heads park their attention on the `[SEP]` token (a "no-op")?

    Everything here is a call into the `axlab` library; the notebook only chooses what to
    show. Run it top to bottom (Run > Run All Cells). The parameters cell below sets the
    sizes; smaller numbers run faster.
    """),
    params("""
    # Parameters
    MODEL = "default"              # "default", or a local model folder
    DATASET = "rotten_tomatoes"    # a packaged dataset name, or a CSV file
    N_EXAMPLES = 1000              # validation reviews for accuracy and head statistics
    SENTENCE = "The plot is thin, but the two leads are so warm and funny that I loved every minute."
    LAYER, HEAD = 0, 0             # a head to look at up close
    """),
    md("## Load the model and the data"),
    code(SETUP),
    code("""
    from axlab.measure import size_report

    val = splits.validation.head(N_EXAMPLES)
    size = size_report(model)
    scores = evaluate(model, tok, val, progress=False)
    print(f"parameters: {size['params'] / 1e6:.1f} M, size when exported: {size['size_bytes'] / 1e6:.1f} MB")
    print(f"validation accuracy on {scores['n']} reviews: {scores['accuracy']:.3f} (macro-F1 {scores['macro_f1']:.3f})")
    """),
    md("""
    ## Attention of one sentence

    In every layer each head computes, for every token (a *query*, one row), a probability
    distribution over all the tokens of the sentence (the *keys*, the columns). The
    model view shows all 6 x 12 maps at once: rows of the grid are layers (bottom layer
    first), columns are heads. Hover to see which token attends to which.
    """),
    code("""
    from axlab import viz
    from axlab.attention_maps import attention_for, rollout

    att = attention_for(model, tok, SENTENCE)
    print(len(att.tokens[0]), "tokens:", " ".join(att.tokens[0]))
    viz.model_view(att).show()
    """),
    md("""
    Patterns you can often spot: heads whose map is a diagonal stripe just off the main
    diagonal (each token looks at its neighbour: a *local* head), heads with a bright last
    column (everything attends to `[SEP]`), and heads with a bright first column (`[CLS]`).
    Here is one head up close (`LAYER`, `HEAD` from the parameters); once the statistics
    below are measured, we look at the most local and the most global head the same way.
    """),
    code("""
    viz.head_heatmap(att, LAYER, HEAD).show()
    """),
    md("""
    ### Attention rollout

    A single map only says what one layer does. *Attention rollout* (Abnar & Zuidema, 2020)
    multiplies the head-averaged maps of all layers (plus the residual connection) to
    estimate how much each input token flows into the `[CLS]` position at the top, which is
    what the classifier reads. It is a rough picture (it ignores the feed-forward blocks
    and the value vectors) but a useful first look.
    """),
    code("""
    r = rollout(att)                                     # (T, T), rows sum to 1
    viz.rollout_figure(att, matrix=r).show()
    words = [(t, float(v)) for t, v, special in zip(att.tokens[0], r[0], att.special[0]) if not special]
    top_words = sorted(words, key=lambda x: -x[1])[:3]
    print("tokens with the largest rollout share into [CLS]:", ", ".join(f"{t} ({v:.3f})" for t, v in top_words))
    """),
    md("""
    ## What each head does on average

    `head_statistics` runs the model over `N_EXAMPLES` validation reviews and averages,
    for every head, over every real (non-padding) query token:

    * **mean attention distance**: how many positions away the attended tokens are
      (low = local head, high = global head);
    * **entropy**: low = the head focuses on a few tokens, high = spread out;
    * **share on `[SEP]` / `[CLS]` / punctuation**.
    """),
    code("""
    from axlab.head_stats import STATISTICS, head_statistics

    stats = head_statistics(model, tok, splits.validation, n=N_EXAMPLES, progress=False)
    figs = viz.statistics_figures(stats)
    for name in ("mean_distance", "entropy", "sep_share"):
        print(f"{name}: {STATISTICS[name][1]}")
        figs[name].show()
    """),
    md("""
    ### Local and global heads, layer by layer

    We call a head *local* if its mean attention distance is in the lowest third of all
    heads, *global* if it is in the highest third (a relative split: absolute distances
    depend on how long the reviews are). The bars count them per layer; the line is the
    layer's average distance.
    """),
    code("""
    dist = stats["mean_distance"]                                 # (layers, heads)
    lo, hi = np.nanquantile(dist, [1 / 3, 2 / 3])
    by_layer = pd.DataFrame({
        "layer": np.arange(dist.shape[0]),
        "local heads": (dist <= lo).sum(1),
        "global heads": (dist >= hi).sum(1),
        "mean distance": np.nanmean(dist, 1),
        "mean entropy": np.nanmean(stats["entropy"], 1),
        "share on [SEP]": np.nanmean(stats["sep_share"], 1),
    })
    fig = go.Figure()
    fig.add_bar(x=by_layer.layer, y=by_layer["local heads"], name=f"local (distance <= {lo:.2f})")
    fig.add_bar(x=by_layer.layer, y=by_layer["global heads"], name=f"global (distance >= {hi:.2f})")
    fig.add_scatter(x=by_layer.layer, y=by_layer["mean distance"], name="mean distance (right axis)", yaxis="y2",
                    mode="lines+markers")
    fig.update_layout(title="Local vs global heads by layer", barmode="group", xaxis=dict(title="layer", dtick=1),
                      yaxis=dict(title="number of heads"),
                      yaxis2=dict(title="mean attention distance (tokens)", overlaying="y", side="right"))
    fig.show()
    by_layer.round(3)
    """),
    md("The most local head of the whole model, up close on our sentence:"),
    code("""
    LAYER, HEAD = map(int, np.unravel_index(np.nanargmin(dist), dist.shape))
    G_LAYER, G_HEAD = map(int, np.unravel_index(np.nanargmax(dist), dist.shape))
    print(f"most local head: layer {LAYER}, head {HEAD} ({dist[LAYER, HEAD]:.2f} tokens); "
          f"most global: layer {G_LAYER}, head {G_HEAD} ({dist[G_LAYER, G_HEAD]:.2f} tokens)")
    viz.head_heatmap(att, LAYER, HEAD).show()
    viz.head_heatmap(att, G_LAYER, G_HEAD).show()
    """),
    md("## Conclusion (computed from this run)"),
    code("""
    n_layers = dist.shape[0]
    low, high = by_layer.iloc[: n_layers // 2], by_layer.iloc[n_layers // 2:]
    SUMMARY = {
        "n_examples": int(scores["n"]),
        "accuracy": scores["accuracy"],
        "size_mb": size["size_bytes"] / 1e6,
        "most_local": [LAYER, HEAD, float(dist[LAYER, HEAD])],
        "most_global": [G_LAYER, G_HEAD, float(dist[G_LAYER, G_HEAD])],
        "local_heads_lower_half": int(low["local heads"].sum()),
        "local_heads_upper_half": int(high["local heads"].sum()),
        "distance_lower_half": float(low["mean distance"].mean()),
        "distance_upper_half": float(high["mean distance"].mean()),
        "sep_share_lower_half": float(low["share on [SEP]"].mean()),
        "sep_share_upper_half": float(high["share on [SEP]"].mean()),
        "top_rollout_token": top_words[0][0] if top_words else "",
    }
    s = SUMMARY
    trend = "lower" if s["distance_lower_half"] < s["distance_upper_half"] else "upper"
    display(Markdown(f\"\"\"
    * The model classifies **{s['accuracy']:.1%}** of {s['n_examples']} validation reviews correctly and takes
      **{s['size_mb']:.1f} MB** when exported.
    * Local heads (lowest third of mean attention distance): **{s['local_heads_lower_half']}** in the lower
      half of the layers, **{s['local_heads_upper_half']}** in the upper half. The average distance is
      {s['distance_lower_half']:.2f} tokens in the lower half and {s['distance_upper_half']:.2f} in the upper half,
      so in this run the **{trend}** layers are the more local ones.
    * The most local head is layer {s['most_local'][0]}, head {s['most_local'][1]}
      ({s['most_local'][2]:.2f} tokens); the most global is layer {s['most_global'][0]}, head {s['most_global'][1]}
      ({s['most_global'][2]:.2f} tokens).
    * Attention parked on `[SEP]`: {s['sep_share_lower_half']:.1%} of the mass in the lower half,
      {s['sep_share_upper_half']:.1%} in the upper half.
    * For the example sentence, attention rollout sends the largest share into `[CLS]` from
      "{s['top_rollout_token']}".

    Next: notebook 2 asks which of these heads the task actually needs.
    \"\"\"))
    """),
]


# ---------------------------------------------------------------------------------------------
# 02: which heads matter
# ---------------------------------------------------------------------------------------------

NB02 = [
    md("""
    # 2. Which heads matter?

    Michel et al. (2019) asked "are sixteen heads really better than one?" and found that
    many heads of a fine-tuned model can be removed with little loss, *if you remove the
    right ones*. This notebook scores every head three ways, compares the rankings, and
    then removes more and more heads, lowest score first, against the baseline every score
    must beat: removing heads at random.

    * **gradient** (Michel et al.): put a gate g = 1 on every head's output and average
      |dLoss/dg| over the data. One forward and backward pass.
    * **ablation**: switch each head off alone and measure how much the validation loss rises.
      One forward pass per head: exact for single heads, blind to interactions.
    * **captum** (integrated gradients over the gates, from all heads off to all on): how much
      log-probability of the right label each head adds along that path.

    Importance is measured on validation reviews; the pruned models are scored on the *test*
    reviews, which the scores never saw.
    """),
    params("""
    # Parameters
    MODEL = "default"
    DATASET = "rotten_tomatoes"
    N_IMPORTANCE = 300                  # validation reviews used to score the heads
    N_EVAL = 1000                       # test reviews used to score each pruned model
    FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)   # share of the heads removed
    RANDOM_SEEDS = (0, 1, 2)            # random baselines (their mean and range are plotted)
    CAPTUM_STEPS = 8                    # integration steps for the captum method
    """),
    code(SETUP),
    md("## Three importance scores"),
    code("""
    from axlab import viz
    from axlab.importance import agreement, head_importance, rank_heads

    imp_split = splits.validation.head(N_IMPORTANCE)
    options = {"gradient": {}, "ablation": {}, "captum": {"n_steps": CAPTUM_STEPS}}
    imps = {}
    for method, kw in options.items():
        imps[method] = head_importance(model, tok, imp_split, method, progress=False, **kw)
        viz.importance_figure(imps[method], method=method).show()
    """),
    md("""
    Do the three agree? The Spearman rank correlation compares the orderings (1 = same
    order, 0 = unrelated). The top of each ranking is below.
    """),
    code("""
    agree = agreement(imps)
    viz.agreement_figure(agree).show()
    top = pd.concat({m: rank_heads(v).head(8)[["layer", "head"]].astype(str).agg(" / ".join, axis=1).rename(m)
                     for m, v in imps.items()}, axis=1)
    top.columns = [f"{m} (layer / head)" for m in imps]
    top
    """),
    md("""
    ## Prune by importance vs at random

    For every fraction, `heads_by_budget` picks the lowest-scoring heads and `prune_heads`
    physically removes them (the query/key/value rows and output columns go, so the model
    really shrinks). `random_heads` draws the same number at random.
    """),
    code("""
    from axlab.prune import heads_by_budget, prune_heads, random_heads

    test = splits.test.head(N_EVAL)
    n_heads_total = bundle.n_layers * bundle.n_heads
    base_acc = evaluate(model, tok, test, progress=False)["accuracy"]
    rows = []
    for fraction in FRACTIONS:
        choices = {m: heads_by_budget(v, fraction) for m, v in imps.items()}
        choices.update({f"random-{seed}": random_heads(model, fraction, seed) for seed in RANDOM_SEEDS})
        for name, heads in choices.items():
            n_removed = sum(len(h) for h in heads.values())
            acc = base_acc if n_removed == 0 else evaluate(prune_heads(model, heads), tok, test, progress=False)["accuracy"]
            rows.append({"method": name.split("-")[0], "seed": name, "fraction": fraction, "heads_removed": n_removed,
                         "accuracy": acc, "n_eval": len(test)})
    curve = pd.DataFrame(rows)
    table = curve.groupby(["method", "fraction", "heads_removed"], as_index=False).accuracy.agg(["mean", "min", "max"])
    table.pivot(index="heads_removed", columns="method", values="mean").round(3)
    """),
    code("""
    fig = go.Figure()
    for method, part in table.groupby("method", sort=False):
        if method == "random":
            fig.add_scatter(x=list(part.heads_removed) + list(part.heads_removed[::-1]),
                            y=list(part["max"]) + list(part["min"][::-1]), fill="toself", line=dict(width=0),
                            fillcolor="rgba(128,128,128,0.2)", name="random (range)", hoverinfo="skip")
        fig.add_scatter(x=part.heads_removed, y=part["mean"], mode="lines+markers", name=method,
                        line=dict(dash="dot" if method == "random" else "solid"))
    fig.update_layout(title=f"Test accuracy as heads are removed (of {n_heads_total}; {len(test)} test reviews)",
                      xaxis_title="heads removed", yaxis_title="accuracy")
    fig.show()
    """),
    md("## Conclusion (computed from this run)"),
    code("""
    last = max(FRACTIONS)
    at_last = table[table.fraction == last].set_index("method")["mean"]
    best_method = at_last.drop("random").idxmax()
    SUMMARY = {
        "n_importance": len(imp_split),
        "n_eval": len(test),
        "base_accuracy": base_acc,
        "fraction": last,
        "heads_removed": int(table[table.fraction == last].heads_removed.iloc[0]),
        "accuracy_at_fraction": {m: float(v) for m, v in at_last.items()},
        "best_method": best_method,
        "best_accuracy": float(at_last[best_method]),
        "random_accuracy": float(at_last["random"]),
        "spearman_gradient_ablation": float(agree.loc["gradient", "ablation"]),
        "spearman_gradient_captum": float(agree.loc["gradient", "captum"]),
        "curve": curve.drop(columns="seed").groupby(["method", "fraction"], as_index=False)
                      .agg(accuracy=("accuracy", "mean"), n_eval=("n_eval", "first")).to_dict("records"),
    }
    s = SUMMARY
    gap = s["best_accuracy"] - s["random_accuracy"]
    verdict = "beats" if gap > 0 else "does not beat"
    rho = s["spearman_gradient_ablation"]
    agree_word = "strongly" if rho > 0.7 else "partly" if rho > 0.3 else "hardly"
    display(Markdown(f\"\"\"
    * With no head removed the model scores **{s['base_accuracy']:.3f}** on {s['n_eval']} test reviews.
    * Removing {s['heads_removed']} of {n_heads_total} heads ({s['fraction']:.0%}), the best score was
      **{s['best_method']}**: accuracy **{s['best_accuracy']:.3f}**, against **{s['random_accuracy']:.3f}** for
      random heads (mean of {len(RANDOM_SEEDS)} random draw(s)), so importance {verdict} chance by {abs(gap):.3f}.
      All methods at that point: {", ".join(f"{m} {v:.3f}" for m, v in s['accuracy_at_fraction'].items())}.
    * The gradient and ablation rankings agree {agree_word}: Spearman rho gradient vs ablation {s['spearman_gradient_ablation']:.2f},
      gradient vs captum {s['spearman_gradient_captum']:.2f} (scores from {s['n_importance']} validation reviews).

    Next: notebook 3 lets the validation loss itself decide what to remove (AxFormer).
    \"\"\"))
    """),
]


# ---------------------------------------------------------------------------------------------
# 03: AxFormer
# ---------------------------------------------------------------------------------------------

SEARCH_PARAMS = """
    REUSE_CACHED_SEARCH = True          # True: reuse a finished search with the same settings (instant);
                                        # False: run the search again (minutes) and cache the result
    N_VAL = 1000                        # validation reviews the search judges on (the paper uses all)
    TOLERANCE = 0.0                     # 0 = keep a change only if the validation loss improves
    SIGNIFICANCE = 1.0                  # ... by more than this many paired standard errors (0 = the paper's
                                        # rule: any drop; with 0 the search overfitted validation here)
    SEARCH_LAYERS = None                # layers to visit (None = all, always top layer first)
    FFN_GROUPS = 4                      # FFN neurons are tried in this many groups
    TOPK_VALUES = (8,)                  # hard-attention k tried in each layer
"""

SEARCH_CALL = """
    from axlab import axformer

    config = axformer.SearchConfig(tolerance=TOLERANCE, layers=SEARCH_LAYERS, ffn_groups=FFN_GROUPS,
                                   topk_values=TOPK_VALUES, n_val=N_VAL, significance=SIGNIFICANCE)


    def show_progress(done, total, message):     # axlab's progress convention: fn(done, total, message)
        if done == total or done % max(1, total // 10) == 0:
            print(f"  {done}/{total} {message}", flush=True)


    search = axformer.cached_search(model, tok, splits, config=config, refresh=not REUSE_CACHED_SEARCH,
                                    progress=show_progress)
    found = search.summary()
    print(f"{'reused the cached search' if search.cached else 'searched'}: {found['tried']} candidates tried, "
          f"{found['kept']} kept, in {found['seconds']:.0f} s (when it ran)")
    print(f"validation loss {search.base_loss:.4f} -> {search.final_loss:.4f}, "
          f"accuracy {search.base_accuracy:.3f} -> {search.final_accuracy:.3f} on {search.n_val} reviews")
"""

NB03 = [
    md("""
    # 3. AxFormer: let the validation loss decide what to remove

    Notebook 2 ranked heads by a score and removed the lowest. AxFormer (Nagarajan et al.)
    asks the task directly: walking the layers **from the top down**, it tries in each layer

    1. removing the whole feed-forward (FFN) block, otherwise groups of FFN neurons;
    2. removing the whole attention block, otherwise single heads;
    3. *selective hard attention*: keeping only the top-k attention scores of every query;

    and keeps a change **only if the validation loss goes down**. Fine-tuned models carry
    parts that hurt their task, so this greedy walk can make a model smaller and more
    accurate at once. Top-down order makes it affordable: the layers below the one being
    edited never change, so their outputs are computed once and reused.

    The search result is a *recipe* of concrete removals: replaying it rebuilds the model
    without searching. Then we push further than the loss allows (remove half of the
    remaining heads and FFN neurons) and use **distillation** from the original model to
    win back accuracy.
    """),
    params("""
    # Parameters
    MODEL = "default"
    DATASET = "rotten_tomatoes"
    N_TEST = 2000                       # test reviews for the before/after measurements
    LATENCY_RUNS = (50, 10)             # timed runs at batch 1 and batch 32
""" + SEARCH_PARAMS + """
    N_IMPORTANCE = 300                  # validation reviews for the head scores used to prune further
    PRUNE_MORE = 0.5                    # share of the remaining heads removed after the search
    FFN_MORE = 0.5                      # share of each layer's remaining FFN neurons removed after the search
    DISTILL_STEPS = 200                 # distillation batches
    DISTILL_BATCH = 32
    """),
    code(SETUP),
    md("## The search"),
    code(SEARCH_CALL),
    md("""
    ### The decision log

    Every candidate the search tried, in order (top layer first), with the validation loss
    it gave. Red points were kept; the blue line is the loss of the model so far.
    """),
    code("""
    log_df = axformer.decisions_frame(search)
    axformer.loss_trace_figure(search).show()
    print("candidates tried / kept, by kind:")
    display(log_df.groupby("kind", sort=False).kept.agg(tried="size", kept="sum"))
    log_df[log_df.kept].round(4)
    """),
    md("""
    The recipe is plain JSON: which heads (original ids), which FFN neurons, and which
    layers got top-k hard attention. This is what the variant store and the export keep.
    """),
    code("""
    for step in search.recipe:
        p = step["params"]
        if step["op"] == "prune_heads":
            print("prune_heads:", {int(k): v for k, v in p["heads"].items()})
        elif step["op"] == "prune_ffn":
            print("prune_ffn:  ", {int(k): f"{len(v)} neurons" for k, v in p["neurons"].items()})
        else:
            print(f"{step['op']}:", p)
    """),
    md("""
    ## Before and after, on the test reviews

    The search only looked at validation reviews; the test reviews are new to it. Latency
    is the median of timed runs on this machine, so it moves with whatever else the
    machine is doing; accuracy and size do not. Hard attention adds a top-k per layer and
    is not faster on dense CPU kernels: AxFormer uses it for accuracy.
    """),
    code("""
    from axlab.measure import measure

    test = splits.test.head(N_TEST)

    def measured(name, m):
        r = measure(m, tok, test, latency_runs=LATENCY_RUNS).to_dict()
        return {"variant": name, "accuracy": r["accuracy"], "latency_b1_ms": r["latency_b1_ms"],
                "latency_b32_ms": r["latency_b32_ms"], "size_mb": r["size_bytes"] / 1e6, "params_m": r["params"] / 1e6}

    results = [measured("base", model), measured("axformer", search.model)]
    pd.DataFrame(results).round(3)
    """),
    md("""
    ## Further than the loss allows, then distillation

    Remove `PRUNE_MORE` of the heads AxFormer kept (lowest gradient importance first, as in
    notebook 2) and `FFN_MORE` of each layer's remaining FFN neurons (smallest weights
    first). Accuracy drops. Then *distil*: train the small model for `DISTILL_STEPS`
    batches of training reviews to match the original model's output distribution
    (temperature-softened logits, Hinton et al.) as well as the labels.
    """),
    code("""
    from axlab.distill import distill
    from axlab.importance import head_importance
    from axlab.prune import ffn_by_budget, heads_by_budget, prune_ffn, prune_heads

    imp = head_importance(search.model, tok, splits.validation.head(N_IMPORTANCE), "gradient", progress=False)
    pruned_more = prune_heads(search.model, heads_by_budget(imp, PRUNE_MORE))
    pruned_more = prune_ffn(pruned_more, ffn_by_budget(pruned_more, FFN_MORE, "magnitude"))
    distilled = distill(pruned_more, model, tok, splits.train, steps=DISTILL_STEPS, batch_size=DISTILL_BATCH,
                        progress=False)
    print("distillation:", {k: round(v, 4) if isinstance(v, float) else v
                            for k, v in distilled.axlab_distill_stats.items() if not isinstance(v, list)})
    results += [measured("pruned more", pruned_more), measured("pruned more + distilled", distilled)]
    table = pd.DataFrame(results)
    table.round(3)
    """),
    code("""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=("test accuracy", "latency, batch 1 (ms)", "size (MB)"))
    for col, key in enumerate(("accuracy", "latency_b1_ms", "size_mb"), start=1):
        fig.add_bar(x=table.variant, y=table[key], row=1, col=col, showlegend=False,
                    marker_color=["#7f7f7f", "#d62728", "#ff9896", "#2ca02c"][: len(table)])
    fig.update_yaxes(range=[max(0.0, table.accuracy.min() - 0.05), min(1.0, table.accuracy.max() + 0.02)], row=1, col=1)
    fig.update_layout(title=f"Before and after on {len(test)} test reviews", height=420)
    fig.show()
    """),
    md("## Conclusion (computed from this run)"),
    code("""
    by = table.set_index("variant")
    names = {"base": "base", "axformer": "axformer", "pruned more": "pruned_more",
             "pruned more + distilled": "distilled"}
    SUMMARY = {
        "n_val": search.n_val,
        "n_test": len(test),
        "candidates_tried": found["tried"],
        "candidates_kept": found["kept"],
        "removed": found["removed"],
        "base_val_loss": search.base_loss,
        "final_val_loss": search.final_loss,
        "accuracy": {names[v]: float(by.loc[v, "accuracy"]) for v in names},
        "latency_b1_ms": {names[v]: float(by.loc[v, "latency_b1_ms"]) for v in names},
        "size_mb": {names[v]: float(by.loc[v, "size_mb"]) for v in names},
        "distill_steps": DISTILL_STEPS,
    }
    s = SUMMARY
    acc, size, lat = s["accuracy"], s["size_mb"], s["latency_b1_ms"]
    recovered = acc["distilled"] - acc["pruned_more"]
    display(Markdown(f\"\"\"
    * The search tried {s['candidates_tried']} candidates and kept {s['candidates_kept']}
      ({", ".join(f"{k}: {v}" for k, v in s['removed'].items() if v) or "none"}); validation loss
      {s['base_val_loss']:.4f} -> {s['final_val_loss']:.4f} on {s['n_val']} reviews.
    * On {s['n_test']} unseen test reviews: accuracy **{acc['base']:.3f} -> {acc['axformer']:.3f}**, size
      {size['base']:.1f} -> {size['axformer']:.1f} MB ({size['base'] / size['axformer']:.2f}x smaller), batch-1
      latency {lat['base']:.1f} -> {lat['axformer']:.1f} ms on this machine (noisy when it is shared).
    * Pruning further ({PRUNE_MORE:.0%} of the remaining heads, {FFN_MORE:.0%} of the FFN neurons) gives
      {size['pruned_more']:.1f} MB at accuracy {acc['pruned_more']:.3f}; {s['distill_steps']} distillation
      steps change that to **{acc['distilled']:.3f}** ({recovered:+.3f}).

    Next: notebook 4 makes the weights themselves smaller (quantization).
    \"\"\"))
    """),
]


# ---------------------------------------------------------------------------------------------
# 04: quantization
# ---------------------------------------------------------------------------------------------

NB04 = [
    md("""
    # 4. Quantization: fewer bits per weight

    A float32 weight takes 32 bits. Quantization stores each weight as a small integer
    code times a shared scale. This notebook measures:

    1. **int8 runtimes**: 8-bit weights *and* int8 matrix kernels (PyTorch, ONNX Runtime):
       smaller and faster;
    2. **round-to-nearest (RTN) vs GPFQ** at 8, 4, 3 and 2 bits. RTN rounds every weight on
       its own. GPFQ (Lybrand & Saab; Zhang, Zhou & Saab) quantizes a neuron's weights one
       input at a time and feeds the error made so far into the next choice, measured on
       real inputs, including the inputs of the *already quantized* earlier layers, so
       errors do not pile up;
    3. the **per-layer error** ||XW - X~Q|| / ||XW|| of both methods;
    4. **sparsity-promoting GPFQ**: thresholded rounding that sets small weights to zero;
    5. **mixed precision**: more bits for the layers that need them, under a budget;
    6. **what axlab's defaults add** to the published algorithm: refinement passes and a
       few weights kept exact (outliers).

    The low-bit variants here are *weight-only*: they store packed codes (the size shrinks)
    and compute with the dequantized weights, so they are no faster on this CPU. Speed comes
    from int8 kernels (section 1).
    """),
    params("""
    # Parameters
    MODEL = "default"
    DATASET = "rotten_tomatoes"
    N_TEST = 1000                       # test reviews to score every variant
    N_CALIBRATION = 256                 # training reviews GPFQ learns from (calibration)
    LATENCY_RUNS = (50, 10)             # timed runs at batch 1 and batch 32
    WITH_ONNX = True                    # export to ONNX (fp32 + int8) and time ONNX Runtime
    BITS = (8, 4, 3, 2)                 # bit-widths for RTN vs GPFQ
    GPFQ_OPTIONS = {}                   # more GPFQConfig fields, e.g. {"group_size": 64}; {"scale_grid": None} is faster
    ERROR_BITS = 4                      # bit-width for the per-layer error and the sparsity experiment
    SPARSITY_THRESHOLDS = (0.5, 1.0)    # GPFQ rounding thresholds (in quantization steps); 0 = plain GPFQ
    AVG_BITS = 3.0                      # mixed precision: average bits per weight
    MIXED_CANDIDATES = (2, 3, 4)        # bit-widths a layer may get
    N_SENSITIVITY = 64                  # reviews used to measure each layer's sensitivity
    LEVER_BITS = 3                      # bit-width for the refinement / outliers comparison
    """),
    code(SETUP),
    code("""
    from axlab.measure import measure, size_report
    from axlab.quantize import calibration_texts

    test = splits.test.head(N_TEST)
    calib = calibration_texts(splits, N_CALIBRATION)

    def accuracy(m):
        return evaluate(m, tok, test, progress=False)["accuracy"]

    base_acc = accuracy(model)
    base_mb = size_report(model)["size_bytes"] / 1e6
    print(f"fp32: accuracy {base_acc:.3f} on {len(test)} test reviews, {base_mb:.1f} MB")
    """),
    md("""
    ## 1. int8 runtimes

    `int8_dynamic` stores every Linear layer as int8 with one scale per output channel and
    runs it on PyTorch's int8 kernel (activations are quantized on the fly, per batch).
    The ONNX export is checked against PyTorch on inputs of several lengths before it is
    used; ONNX Runtime's own dynamic int8 quantization then makes the int8 graph.
    """),
    code("""
    from axlab.quantize import int8_dynamic

    def timed(name, m, size_bytes=None, size_of=None):
        r = measure(m, tok, test, latency_runs=LATENCY_RUNS, size_of=size_of).to_dict()
        return {"runtime": name, "accuracy": r["accuracy"], "latency_b1_ms": r["latency_b1_ms"],
                "latency_b32_ms": r["latency_b32_ms"], "size_mb": (size_bytes or r["size_bytes"]) / 1e6}

    runtimes = [timed("fp32 PyTorch", model), timed("int8 PyTorch", int8_dynamic(model))]
    if WITH_ONNX:
        import tempfile
        from pathlib import Path
        from axlab.onnx_export import export_onnx

        onnx = export_onnx(model, tok, Path(tempfile.mkdtemp(prefix="axlab-nb04-")) / "model.onnx", int8=True)
        print(f"ONNX parity with PyTorch: max |difference| {onnx.parity_max_abs_diff:.1e} over {len(onnx.parity)} batches")
        runtimes += [timed("fp32 ONNX Runtime", onnx.predictor, onnx.size_bytes),
                     timed("int8 ONNX Runtime", onnx.int8_predictor, onnx.int8_size_bytes)]
    runtimes = pd.DataFrame(runtimes)
    runtimes.round(3)
    """),
    code("""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("latency, batch 1 (ms, median)", "size (MB)"))
    fig.add_bar(x=runtimes.runtime, y=runtimes.latency_b1_ms, row=1, col=1, showlegend=False)
    fig.add_bar(x=runtimes.runtime, y=runtimes.size_mb, row=1, col=2, showlegend=False)
    fig.update_layout(title="int8: smaller and faster (latency is noisy on a shared machine)", height=400)
    fig.show()
    """),
    md("""
    ## 2. Round-to-nearest vs GPFQ across bit-widths

    Both store per-output-channel scales and packed k-bit codes for every Linear layer of
    the encoder (the embeddings and the classifier stay in float32). GPFQ calibrates on
    `N_CALIBRATION` training reviews.
    """),
    code("""
    from axlab.gpfq import gpfq
    from axlab.quantize import rtn

    rtn_models, gpfq_models, by_bits = {}, {}, []
    for bits in BITS:
        rtn_models[bits] = rtn(model, bits)
        gpfq_models[bits] = gpfq(model, tok, calib, bits, progress=False, **GPFQ_OPTIONS)
        by_bits.append({"bits": bits, "rtn": accuracy(rtn_models[bits]), "gpfq": accuracy(gpfq_models[bits]),
                        "size_mb": size_report(gpfq_models[bits])["size_bytes"] / 1e6,
                        "gpfq_seconds": gpfq_models[bits].axlab_gpfq_report.seconds})
    by_bits = pd.DataFrame(by_bits)
    fig = go.Figure()
    fig.add_scatter(x=by_bits.bits, y=by_bits.rtn, mode="lines+markers", name="round-to-nearest")
    fig.add_scatter(x=by_bits.bits, y=by_bits.gpfq, mode="lines+markers", name="GPFQ")
    fig.add_hline(y=base_acc, line_dash="dot", annotation_text="fp32")
    fig.update_layout(title=f"Test accuracy by bit-width ({len(test)} reviews)", xaxis=dict(title="bits per weight",
                      tickvals=list(BITS), autorange="reversed"), yaxis_title="accuracy")
    fig.show()
    by_bits.round(3)
    """),
    md("""
    ## 3. Where the error comes from: layer by layer

    For every quantized Linear layer, the relative error of its output on calibration
    reviews, ||XW - X~Q|| / ||XW||, where X~ is what the layer receives inside the
    quantized model. Lower is better (log scale).
    """),
    code("""
    from axlab.quantize import error_figure, layer_errors, target_linears

    eb = ERROR_BITS if ERROR_BITS in gpfq_models else BITS[0]
    names = target_linears(model, "encoder")
    errors = layer_errors(model, {"RTN": rtn_models[eb], "GPFQ": gpfq_models[eb]}, tok, calib[:64], names=names)
    error_figure(errors, title=f"Per-layer relative error at {eb} bits").show()
    gpfq_better = sum(errors["GPFQ"][n] < errors["RTN"][n] for n in names)
    print(f"GPFQ has the smaller error in {gpfq_better} of {len(names)} layers")
    """),
    md("""
    ## 4. Sparsity-promoting GPFQ

    With a threshold t > 0, GPFQ rounds a value to zero whenever it is within t
    quantization steps of zero (the error feedback compensates in the following weights).
    Zeros are not smaller in this dense packed format; they pay off with sparse storage or
    kernels. The question here is how many zeros the task tolerates.
    """),
    code("""
    weights = {n: model.get_submodule(n).weight.numel() for n in names}

    def zero_share(m):
        layers = m.axlab_gpfq_report.layers
        return sum(l["zeros"] * weights[l["name"]] for l in layers) / sum(weights[l["name"]] for l in layers)

    sparse = [{"threshold": 0.0, "zeros": zero_share(gpfq_models[eb]), "accuracy": accuracy(gpfq_models[eb])}]
    for t in SPARSITY_THRESHOLDS:
        if t > 0:
            m = gpfq(model, tok, calib, eb, sparsity=t, progress=False, **GPFQ_OPTIONS)
            sparse.append({"threshold": t, "zeros": zero_share(m), "accuracy": accuracy(m)})
    sparse = pd.DataFrame(sparse)
    fig = go.Figure(go.Scatter(x=sparse.zeros, y=sparse.accuracy, mode="lines+markers+text",
                               text=[f"t={t}" for t in sparse.threshold], textposition="top center"))
    fig.update_layout(title=f"Sparsity-promoting GPFQ at {eb} bits", xaxis_title="share of weights that are zero",
                      yaxis_title="test accuracy")
    fig.show()
    sparse.round(3)
    """),
    md("""
    ## 5. Mixed precision

    `choose_bits` measures how much the model's output distribution moves (KL divergence)
    when only one layer is rounded to each candidate bit-width, then spends a budget of
    `AVG_BITS` bits per weight on the upgrades that buy the most per bit. GPFQ then uses
    those bits per layer.
    """),
    code("""
    from axlab.gpfq import GPFQConfig, choose_bits

    bits_per_layer = choose_bits(model, tok, calib[:N_SENSITIVITY], AVG_BITS, MIXED_CANDIDATES, progress=False,
                                 outliers=GPFQ_OPTIONS.get("outliers", GPFQConfig.outliers))
    mixed = gpfq(model, tok, calib, min(MIXED_CANDIDATES), bits_per_layer=bits_per_layer, progress=False,
                 **GPFQ_OPTIONS)
    mixed_avg = sum(bits_per_layer[n] * weights[n] for n in names) / sum(weights.values())
    mixed_acc = accuracy(mixed)
    short = [n.split("encoder.layer.")[-1] for n in names]
    fig = go.Figure(go.Bar(x=short, y=[bits_per_layer[n] for n in names]))
    fig.update_layout(title=f"Bits per layer (average {mixed_avg:.2f})", yaxis_title="bits", xaxis_tickangle=-60)
    fig.show()
    uniform = int(AVG_BITS) if int(AVG_BITS) in gpfq_models else None
    print(f"mixed precision ({mixed_avg:.2f} bits on average): accuracy {mixed_acc:.3f}" +
          (f"; uniform {uniform}-bit GPFQ: {by_bits.set_index('bits').gpfq[uniform]:.3f}" if uniform else ""))
    """),
    md("""
    ## 6. What the defaults add: refinement and outliers

    GPFQ walks a neuron's inputs once and never revisits a choice. **Refinement**
    (`refine_passes`, 3 by default) then re-chooses every code given *all* the others, so
    each also sees the codes after it (coordinate descent on the same error: it can only
    fall).

    **Outliers** (`outliers`, 0.1% by default): with one scale per output row, the largest
    weight of a row sets the step for the whole row. A few rows hold one weight far larger
    than the rest; in MiniLM one weight of layer 0's FFN output feeds a "massive activation"
    (about 200 times the typical value, on a few special tokens). At 3 bits that weight's
    step rounds the rest of its row to zero. Keeping such weights exact in float16 beside
    the codes costs about 0.05 bits per weight. First, how far the largest weight of each
    layer stands out from its row:
    """),
    code("""
    ratio = {}
    for n in names:
        w = model.get_submodule(n).weight.detach()
        ratio[n] = float((w.abs() / w.pow(2).mean(1, keepdim=True).sqrt()).max())
    fig = go.Figure(go.Bar(x=short, y=[ratio[n] for n in names]))
    fig.update_layout(title="Largest |w| / rms(its row), per layer", yaxis_type="log", yaxis_title="ratio",
                      xaxis_tickangle=-60)
    fig.show()
    """),
    md("""
    Now GPFQ at `LEVER_BITS` bits three ways. Besides accuracy, the KL divergence of the
    quantized model's output distribution from fp32's: it moves smoothly where accuracy on a
    few hundred reviews jumps by chance.
    """),
    code("""
    from axlab.measure import fidelity, predict_logits, scores

    ref_logits = predict_logits(model, tok, test.texts)

    def closeness(m):
        logits = predict_logits(m, tok, test.texts)
        fid = fidelity(logits, ref_logits)
        return {"accuracy": scores(logits, test.labels)["accuracy"], "kl_to_fp32": fid["kl"],
                "agreement": fid["agreement"]}

    lb = LEVER_BITS
    base_opts = {k: v for k, v in GPFQ_OPTIONS.items() if k not in ("refine_passes", "outliers")}
    reuse = lb in gpfq_models and base_opts == GPFQ_OPTIONS      # section 2 already ran the defaults
    levers = []
    for label, opts in (("greedy pass only", dict(refine_passes=0, outliers=0.0)),
                        ("+ refinement", dict(outliers=0.0)),
                        ("+ refinement + outliers (defaults)", {})):
        m = gpfq_models[lb] if reuse and not opts else gpfq(model, tok, calib, lb, progress=False, **base_opts, **opts)
        levers.append({"variant": label, **closeness(m)})
    levers = pd.DataFrame(levers)
    fig = go.Figure(go.Bar(x=levers.variant, y=levers.kl_to_fp32, text=[f"acc {a:.3f}" for a in levers.accuracy]))
    fig.update_layout(title=f"GPFQ at {lb} bits: KL of the output distribution to fp32 (lower is closer)",
                      yaxis_title="KL(fp32 || quantized)")
    fig.show()
    levers.round(4)
    """),
    md("## Conclusion (computed from this run)"),
    code("""
    rt = runtimes.set_index("runtime")
    best = by_bits.loc[(by_bits.gpfq - by_bits.rtn).idxmax()]
    SUMMARY = {
        "n_test": len(test),
        "n_calibration": len(calib),
        "base_accuracy": base_acc,
        "base_mb": base_mb,
        "runtimes": runtimes.to_dict("records"),
        "bits": [int(b) for b in by_bits.bits],
        "by_bits": by_bits.to_dict("records"),
        "error_bits": int(eb),
        "gpfq_better_layers": int(gpfq_better),
        "n_layers_compared": len(names),
        "sparsity": sparse.to_dict("records"),
        "mixed_avg_bits": mixed_avg,
        "mixed_accuracy": mixed_acc,
        "uniform_accuracy": float(by_bits.set_index("bits").gpfq[uniform]) if uniform else None,
        "lever_bits": int(lb),
        "levers": levers.to_dict("records"),
    }
    s = SUMMARY
    int8_line = ", ".join(f"{r['runtime']} {r['accuracy']:.3f} / {r['latency_b1_ms']:.1f} ms / {r['size_mb']:.1f} MB"
                          for r in s["runtimes"])
    most_sparse = sparse.iloc[sparse.zeros.idxmax()]
    uniform_line = (f" (uniform {uniform}-bit GPFQ: {s['uniform_accuracy']:.3f})" if uniform else "")
    display(Markdown(f\"\"\"
    * fp32 scores **{s['base_accuracy']:.3f}** on {s['n_test']} test reviews at {s['base_mb']:.1f} MB.
    * int8 runtimes (accuracy / batch-1 latency on this machine / size): {int8_line}.
    * Round-to-nearest vs GPFQ (accuracy): {"; ".join(f"{r['bits']} bits: {r['rtn']:.3f} vs {r['gpfq']:.3f}"
      for r in s['by_bits'])}. The largest GPFQ gain is at {int(best.bits)} bits ({best.gpfq - best.rtn:+.3f}).
    * At {s['error_bits']} bits GPFQ has the smaller output error in **{s['gpfq_better_layers']} of
      {s['n_layers_compared']}** layers.
    * Sparsity-promoting GPFQ: threshold {most_sparse.threshold} makes {most_sparse.zeros:.1%} of the weights zero
      at accuracy {most_sparse.accuracy:.3f}.
    * Mixed precision at {s['mixed_avg_bits']:.2f} bits per weight on average: accuracy
      **{s['mixed_accuracy']:.3f}**{uniform_line}.
    * GPFQ at {s['lever_bits']} bits, KL to fp32 / accuracy: {"; ".join(f"{r['variant']}: {r['kl_to_fp32']:.4f} / "
      f"{r['accuracy']:.3f}" for r in s['levers'])}.

    Next: notebook 5 combines pruning and quantization and exports the result.
    \"\"\"))
    """),
]


# ---------------------------------------------------------------------------------------------
# 05: putting it together
# ---------------------------------------------------------------------------------------------

NB05 = [
    md("""
    # 5. Putting it together: prune, quantize, compare, export

    Pruning removes structure (notebook 3); quantization shrinks what is left (notebook 4).
    They combine. Here every variant is a **recipe**, a JSON list of steps replayed on the
    base model, exactly what axlab's variant store and exports keep:

    | variant | recipe |
    |---|---|
    | base | (nothing) |
    | axformer | the AxFormer search's removals + hard attention (cached from notebook 3) |
    | gpfq4 | GPFQ 4-bit weights (or round-to-nearest: `QUANT_METHOD`) |
    | int8 | int8 weights on int8 kernels |
    | axformer + gpfq, axformer + int8 | both |

    We measure them all on the same test reviews, look at the trade-off (Pareto) plots,
    export the best small variant (model folder + ONNX + comparison report), and check
    that it reloads to exactly the same predictions.
    """),
    params("""
    # Parameters
    MODEL = "default"
    DATASET = "rotten_tomatoes"
    N_TEST = 1000                       # test reviews to score every variant
    LATENCY_RUNS = (50, 10)             # timed runs at batch 1 and batch 32
""" + SEARCH_PARAMS + """
    QUANT_METHOD = "gpfq"               # "gpfq" (calibrated, notebook 4) or "rtn" (round-to-nearest, data-free)
    QUANT_BITS = 4                      # bits per weight
    N_CALIBRATION = 256                 # GPFQ calibration reviews (drawn from the training split, seeded)
    GPFQ_OPTIONS = {}                   # more GPFQConfig fields; {"scale_grid": None} is faster
    MAX_ACCURACY_LOSS = 0.01            # export the smallest variant within this much of the base accuracy
    WITH_ONNX = True                    # add an ONNX graph (checked against PyTorch) to the export
    EXPORT_DIR = None                   # None: a folder under axlab's data directory
    """),
    code(SETUP),
    md("## The variants, as recipes"),
    code(SEARCH_CALL),
    code("""
    import json

    from axlab.variants import Step, apply_recipe

    if QUANT_METHOD == "gpfq":
        quant_step = Step("quantize_gpfq", bits=QUANT_BITS, n_calibration=N_CALIBRATION, **GPFQ_OPTIONS)
    else:
        quant_step = Step("quantize_rtn", bits=QUANT_BITS)
    int8_step = Step("quantize_int8")
    q = f"{QUANT_METHOD}{QUANT_BITS}"
    recipes = {"base": [], "axformer": search.recipe, q: [quant_step], "int8": [int8_step],
               f"axformer + {q}": search.recipe + [quant_step], "axformer + int8": search.recipe + [int8_step]}
    models = {name: apply_recipe(model, recipe, tokenizer=tok, splits=splits) for name, recipe in recipes.items()}
    print(json.dumps(recipes[f"axformer + {q}"], indent=1)[:1500])
    """),
    md("""
    ## Measure and compare

    The comparison table gives every variant's accuracy, latency and size, and its ratios
    to the base (speed-up, compression). Latency is measured on this machine and is noisy
    when the machine is shared; accuracy and size are exact.
    """),
    code("""
    from axlab import compare
    from axlab.measure import measure
    from axlab.variants import Variant

    test = splits.test.head(N_TEST)
    variants = [Variant(name=name, base=MODEL, dataset=DATASET, recipe=recipes[name],
                        measurements=measure(m, tok, test, latency_runs=LATENCY_RUNS).to_dict())
                for name, m in models.items()]
    df = compare.variants_table(variants)
    compare.display_table(df)
    """),
    md("""
    A variant is on the **Pareto front** when no other variant is at least as good on both
    axes and better on one. Those are the only ones worth choosing between.
    """),
    code("""
    compare.tradeoff_figure(df, x="size_mb").show()
    compare.tradeoff_figure(df, x="latency_b1_ms").show()
    front_size = compare.pareto_front(df, x="size_mb")
    front_latency = compare.pareto_front(df, x="latency_b1_ms")
    print("Pareto front, accuracy vs size:   ", ", ".join(df.name[front_size]))
    print("Pareto front, accuracy vs latency:", ", ".join(df.name[front_latency]))
    """),
    md("""
    ## Export the chosen variant and reload it

    We pick the smallest variant whose test accuracy is within `MAX_ACCURACY_LOSS` of the
    base. `export_all` writes one folder: the weights and the recipe (reloadable with
    `axlab.export.load_variant`, or `axlab.load_model` for unpruned models), an ONNX graph
    checked against PyTorch, and a self-contained HTML comparison report.
    """),
    code("""
    from pathlib import Path

    from axlab.export import export_all, load_variant, read_sidecar
    from axlab.measure import predict_logits
    from axlab.paths import data_dir

    base_acc = float(df[df.is_base].accuracy.iloc[0])
    ok = df[df.accuracy >= base_acc - MAX_ACCURACY_LOSS]
    chosen = ok.sort_values(["size_mb", "accuracy"], ascending=[True, False]).variant.iloc[0]
    folder = Path(EXPORT_DIR) if EXPORT_DIR else data_dir("notebook-exports") / "05_chosen_variant"
    exported = export_all(models[chosen], tok, folder, recipe=recipes[chosen], base=MODEL, name=chosen,
                          dataset=DATASET, measurements=next(v.measurements for v in variants if v.name == chosen),
                          onnx=WITH_ONNX, splits=splits, limit=N_TEST, report_variants=variants, overwrite=True,
                          progress=False)
    print(f"exported '{chosen}' to {exported.folder}")
    for path, size in exported.files.items():
        print(f"  {path:40s} {size / 1e6:8.2f} MB")
    """),
    md("""
    Reload the folder from disk (as another machine would) and replay the stored recipe on
    the base model: both must give the logits of the variant we measured.
    """),
    code("""
    reloaded = load_variant(exported.folder)
    logits = predict_logits(models[chosen], tok, test.texts)
    logits_reloaded = predict_logits(reloaded.model, reloaded.tokenizer, test.texts)
    replayed = apply_recipe(model, read_sidecar(exported.folder)["recipe"], tokenizer=tok, splits=splits)
    logits_replayed = predict_logits(replayed, tok, test.texts)
    reload_diff = float((logits - logits_reloaded).abs().max())
    replay_diff = float((logits - logits_replayed).abs().max())
    labels = np.asarray(test.labels)
    exported_acc = float((logits.argmax(-1).numpy() == labels).mean())
    reloaded_acc = float((logits_reloaded.argmax(-1).numpy() == labels).mean())
    print(f"max |logit difference|: reloaded {reload_diff:.2e}, replayed recipe {replay_diff:.2e}")
    if exported.report:
        print("comparison report:", exported.report["html"])
    """),
    md("## Conclusion (computed from this run)"),
    code("""
    rows = df[df.runtime == "pytorch"].set_index("variant")
    SUMMARY = {
        "n_test": len(test),
        "variants": {v: {"accuracy": float(r.accuracy), "size_mb": float(r.size_mb),
                         "latency_b1_ms": float(r.latency_b1_ms), "compression": float(r.compression)}
                     for v, r in rows.iterrows()},
        "pareto": {v: bool(front_size[df.index[(df.variant == v) & (df.runtime == "pytorch")][0]]) for v in rows.index},
        "exported": chosen,
        "exported_accuracy": exported_acc,
        "reload_accuracy": reloaded_acc,
        "reload_max_abs_diff": reload_diff,
        "replay_max_abs_diff": replay_diff,
        "folder": str(exported.folder),
    }
    s = SUMMARY
    v = s["variants"]
    front = [name for name, on in s["pareto"].items() if on]
    smallest = min(v, key=lambda n: v[n]["size_mb"])
    display(Markdown(f\"\"\"
    * On {s['n_test']} test reviews the base scores **{v['base']['accuracy']:.3f}** at {v['base']['size_mb']:.1f} MB.
    * {"; ".join(f"{n}: {x['accuracy']:.3f}, {x['size_mb']:.1f} MB ({x['compression']:.1f}x smaller), "
                 f"{x['latency_b1_ms']:.1f} ms" for n, x in v.items() if n != 'base')}.
    * Smallest: **{smallest}** ({v[smallest]['compression']:.1f}x smaller, accuracy {v[smallest]['accuracy']:.3f}).
      On the accuracy-vs-size Pareto front: {", ".join(front)}.
    * Exported **{s['exported']}** (smallest within {MAX_ACCURACY_LOSS:.1%} of the base accuracy) to
      `{s['folder']}`. Reloaded from disk it gives the same predictions (max logit difference
      {s['reload_max_abs_diff']:.1e}, accuracy {s['reload_accuracy']:.3f}); replaying its recipe on the base model gives
      {s['replay_max_abs_diff']:.1e}.
    \"\"\"))
    """),
]


NOTEBOOKS = {
    "01_tour.ipynb": NB01,
    "02_which_heads_matter.ipynb": NB02,
    "03_axformer.ipynb": NB03,
    "04_quantization.ipynb": NB04,
    "05_putting_it_together.ipynb": NB05,
}


def build(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, cell in enumerate(nb.cells):      # stable ids so a rebuild gives the same file
        cell["id"] = f"cell-{i:02d}"
    return nb


def render(cells) -> str:
    return nbformat.writes(build(cells)) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, cells in NOTEBOOKS.items():
        path = HERE / name
        text = render(cells)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("out of date (run notebooks/build_notebooks.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

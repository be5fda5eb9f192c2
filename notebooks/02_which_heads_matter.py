# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Which heads matter?
#
# > **Run time at these defaults:** 0.4 min top to bottom on a quiet 2-core machine with the importance scores cached; 1.1 min on a first run, which computes them (measured 2026-11-29; a busy machine takes several times longer). Re-measure: `python bench/bench_notebooks.py 02_which_heads_matter`.
#
# Michel et al. (2019) asked "are sixteen heads really better than one?" and found that
# many heads of a fine-tuned model can be removed with little loss, *if you remove the
# right ones*. This notebook scores every head three ways, compares the rankings, and
# then removes more and more heads, lowest score first, against the baseline every score
# must beat: removing heads at random.
#
# * **gradient** (Michel et al.): put a gate g = 1 on every head's output and average
#   |dLoss/dg| over the data. One forward and backward pass.
# * **ablation**: switch each head off alone and measure how much the validation loss rises.
#   One forward pass per head: exact for single heads, blind to interactions.
# * **captum** (integrated gradients over the gates, from all heads off to all on): how much
#   log-probability of the right label each head adds along that path.
#
# Importance is measured on validation reviews; the pruned models are scored on the *test*
# reviews, which the scores never saw.

# %% tags=["parameters"]
# Parameters
MODEL = "default"
DATASET = "rotten_tomatoes"
N_IMPORTANCE = 100                  # validation reviews used to score the heads (steadier: 300)
N_EVAL = 300                        # test reviews used to score each pruned model (all: 2000)
FRACTIONS = (0.0, 0.2, 0.4, 0.6)    # share of the heads removed; finer: (0.0, 0.1, 0.2, ..., 0.7)
RANDOM_SEEDS = (0, 1)               # random baselines (their mean and range are plotted); more: (0, 1, 2)
CAPTUM_STEPS = 8                    # integration steps for the captum method

# %%
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

# %% [markdown]
# ## Three importance scores

# %%
from axlab.analysis import viz
from axlab.analysis.importance import agreement, head_importance, rank_heads

imp_split = splits.validation.head(N_IMPORTANCE)
options = {"gradient": {}, "ablation": {}, "captum": {"n_steps": CAPTUM_STEPS}}
imps = {}
for method, kw in options.items():
    imps[method] = head_importance(model, tok, imp_split, method, progress=False, **kw)
    viz.importance_figure(imps[method], method=method).show()

# %% [markdown]
# Do the three agree? The Spearman rank correlation compares the orderings (1 = same
# order, 0 = unrelated). The top of each ranking is below.

# %%
agree = agreement(imps)
viz.agreement_figure(agree).show()
top = pd.concat({m: rank_heads(v).head(8)[["layer", "head"]].astype(str).agg(" / ".join, axis=1).rename(m)
                 for m, v in imps.items()}, axis=1)
top.columns = [f"{m} (layer / head)" for m in imps]
top

# %% [markdown]
# ## Prune by importance vs at random
#
# For every fraction, `heads_by_budget` picks the lowest-scoring heads and `prune_heads`
# physically removes them (the query/key/value rows and output columns go, so the model
# really shrinks). `random_heads` draws the same number at random.

# %%
from axlab.compress.prune import heads_by_budget, prune_heads, random_heads

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

# %%
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

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
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
display(Markdown(f"""
* With no head removed the model scores **{s['base_accuracy']:.3f}** on {s['n_eval']} test reviews.
* Removing {s['heads_removed']} of {n_heads_total} heads ({s['fraction']:.0%}), the best score was
  **{s['best_method']}**: accuracy **{s['best_accuracy']:.3f}**, against **{s['random_accuracy']:.3f}** for
  random heads (mean of {len(RANDOM_SEEDS)} random draw(s)), so importance {verdict} chance by {abs(gap):.3f}.
  All methods at that point: {", ".join(f"{m} {v:.3f}" for m, v in s['accuracy_at_fraction'].items())}.
* The gradient and ablation rankings agree {agree_word}: Spearman rho gradient vs ablation {s['spearman_gradient_ablation']:.2f},
  gradient vs captum {s['spearman_gradient_captum']:.2f} (scores from {s['n_importance']} validation reviews).

Next: notebook 3 lets the validation loss itself decide what to remove (AxFormer).
"""))

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
# # 1. A tour of a fine-tuned transformer
#
# > **Run time at these defaults:** 0.2 min top to bottom on a quiet 2-core machine (0.25 min on a first run, with no cached analyses) (measured 2026-11-29; a busy machine takes several times longer). Re-measure: `python bench/bench_notebooks.py 01_tour`.
#
# This notebook loads axlab's default model (MiniLM-L6: 6 layers x 12 attention heads,
# fine-tuned to tell fresh from rotten movie reviews) and looks inside it:
#
# 1. how well it does, how big it is;
# 2. what the attention of one sentence looks like: every head at once, one head up
#    close, and *attention rollout* (how much of each input word reaches the classifier);
# 3. what each head does *on average* over many reviews: do lower layers look at the
#    neighbouring words (local heads) and higher layers across the sentence (global heads)?
#    Do some heads park their attention on the `[SEP]` token (a "no-op")?
#
# Everything here is a call into the `axlab` library; the notebook only chooses what to
# show. Run it top to bottom (Run > Run All Cells). The parameters cell below sets the
# sizes; smaller numbers run faster.

# %% tags=["parameters"]
# Parameters
MODEL = "default"              # "default", or a local model folder
DATASET = "rotten_tomatoes"    # a packaged dataset name, or a CSV file
N_EXAMPLES = 500               # validation reviews for accuracy and head statistics (all: 1000)
SENTENCE = "The plot is thin, but the two leads are so warm and funny that I loved every minute."
LAYER, HEAD = 0, 0             # a head to look at up close

# %% [markdown]
# ## Load the model and the data

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

# %%
from axlab.core.measure import size_report

val = splits.validation.head(N_EXAMPLES)
size = size_report(model)
scores = evaluate(model, tok, val, progress=False)
print(f"parameters: {size['params'] / 1e6:.1f} M, size when exported: {size['size_bytes'] / 1e6:.1f} MB")
print(f"validation accuracy on {scores['n']} reviews: {scores['accuracy']:.3f} (macro-F1 {scores['macro_f1']:.3f})")

# %% [markdown]
# ## Attention of one sentence
#
# In every layer each head computes, for every token (a *query*, one row), a probability
# distribution over all the tokens of the sentence (the *keys*, the columns). The
# model view shows all 6 x 12 maps at once: rows of the grid are layers (bottom layer
# first), columns are heads. Hover to see which token attends to which.

# %%
from axlab.analysis import viz
from axlab.analysis.attention_maps import attention_for, rollout

att = attention_for(model, tok, SENTENCE)
print(len(att.tokens[0]), "tokens:", " ".join(att.tokens[0]))
viz.model_view(att).show()

# %% [markdown]
# Patterns you can often spot: heads whose map is a diagonal stripe just off the main
# diagonal (each token looks at its neighbour: a *local* head), heads with a bright last
# column (everything attends to `[SEP]`), and heads with a bright first column (`[CLS]`).
# Here is one head up close (`LAYER`, `HEAD` from the parameters); once the statistics
# below are measured, we look at the most local and the most global head the same way.

# %%
viz.head_heatmap(att, LAYER, HEAD).show()

# %% [markdown]
# ### Attention rollout
#
# A single map only says what one layer does. *Attention rollout* (Abnar & Zuidema, 2020)
# multiplies the head-averaged maps of all layers (plus the residual connection) to
# estimate how much each input token flows into the `[CLS]` position at the top, which is
# what the classifier reads. It is a rough picture (it ignores the feed-forward blocks
# and the value vectors) but a useful first look.

# %%
r = rollout(att)                                     # (T, T), rows sum to 1
viz.rollout_figure(att, matrix=r).show()
words = [(t, float(v)) for t, v, special in zip(att.tokens[0], r[0], att.special[0]) if not special]
top_words = sorted(words, key=lambda x: -x[1])[:3]
print("tokens with the largest rollout share into [CLS]:", ", ".join(f"{t} ({v:.3f})" for t, v in top_words))

# %% [markdown]
# ## What each head does on average
#
# `head_statistics` runs the model over `N_EXAMPLES` validation reviews and averages,
# for every head, over every real (non-padding) query token:
#
# * **mean attention distance**: how many positions away the attended tokens are
#   (low = local head, high = global head);
# * **entropy**: low = the head focuses on a few tokens, high = spread out;
# * **share on `[SEP]` / `[CLS]` / punctuation**.

# %%
from axlab.analysis.head_stats import STATISTICS, head_statistics

stats = head_statistics(model, tok, splits.validation, n=N_EXAMPLES, progress=False)
figs = viz.statistics_figures(stats)
for name in ("mean_distance", "entropy", "sep_share"):
    print(f"{name}: {STATISTICS[name][1]}")
    figs[name].show()

# %% [markdown]
# ### Local and global heads, layer by layer
#
# We call a head *local* if its mean attention distance is in the lowest third of all
# heads, *global* if it is in the highest third (a relative split: absolute distances
# depend on how long the reviews are). The bars count them per layer; the line is the
# layer's average distance.

# %%
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

# %% [markdown]
# The most local head of the whole model, up close on our sentence:

# %%
LAYER, HEAD = map(int, np.unravel_index(np.nanargmin(dist), dist.shape))
G_LAYER, G_HEAD = map(int, np.unravel_index(np.nanargmax(dist), dist.shape))
print(f"most local head: layer {LAYER}, head {HEAD} ({dist[LAYER, HEAD]:.2f} tokens); "
      f"most global: layer {G_LAYER}, head {G_HEAD} ({dist[G_LAYER, G_HEAD]:.2f} tokens)")
viz.head_heatmap(att, LAYER, HEAD).show()
viz.head_heatmap(att, G_LAYER, G_HEAD).show()

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
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
display(Markdown(f"""
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
"""))

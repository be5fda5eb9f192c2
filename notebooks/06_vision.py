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
# # 6. Where a ViT looks, and what self-distillation buys
#
# > **Run time at these defaults:** 0.7 min top to bottom on a quiet 2-core machine (0.6 min on a first run) (measured 2026-11-29; a busy machine takes several times longer). Re-measure: `python bench/bench_notebooks.py 06_vision`.
#
# A vision transformer (ViT, Dosovitskiy et al. 2021) cuts an image into patches and treats
# each patch as a token; a `[CLS]` token gathers what the classifier reads. axlab's default
# vision model is a small ViT trained from scratch on MNIST digits (28 x 28 pixels, 7 x 7
# patches, so 16 patches + `[CLS]`; 4 layers x 4 heads), built on this machine by
# `axlab prepare`. This notebook:
#
# 1. looks at where it attends: every head of a layer as a heatmap over the digit, and
#    attention *rollout* (Abnar & Zuidema 2020) of the whole model;
# 2. measures each head's *mean attention distance* in pixels against depth (the ViT paper's
#    Figure 7: are lower layers more local?);
# 3. asks which pixels the prediction depends on (integrated gradients and occlusion);
# 4. tries **self-distillation** (SDViT): every intermediate block is trained, through the
#    model's own final norm and classifier, toward the last block's softened prediction, with
#    no new parameters. What it buys is measured, not assumed: early-exit accuracy of every
#    block, "keep the first k blocks" models, and accuracy on shifted digits. An equal-budget
#    fine-tune with plain cross-entropy is the control, so "more training" is not mistaken for
#    "self-distillation".
#
# Validation images make the choices; test images are only used to report.

# %% tags=["parameters"]
# Parameters
MODEL = "default-vision"       # "default-vision", or a local image-classifier folder
DATASET = "mnist"              # "mnist", an image folder (one subfolder per class), a .zip of one, or a CSV
IMAGE_INDEX = 0                # the test image to look at
LAYER = 0                      # the layer whose heads are shown one by one
N_STATS = 500                  # validation images for the attention statistics (all: 10000)
N_EVAL = 2000                  # test images for every accuracy below (all: 10000)
IG_STEPS = 64                  # integration steps for integrated gradients (too few: the scores stop adding up)
SD_STEPS = 300                 # self-distillation (and control) batches; more: 1000
SD_BATCH = 64
SD_LR = 1e-4
SD_TEMPERATURE = 2.0
SD_ALPHA = 1.0

# %% [markdown]
# ## Load the model and the data

# %%
import logging
import warnings

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import Markdown, display

from axlab.core.images import load_image_dataset
from axlab.core.loading import load_model
from axlab.core.measure import evaluate

warnings.filterwarnings("ignore", category=DeprecationWarning)
logging.basicConfig(level=logging.WARNING)

bundle = load_model(MODEL)            # "default-vision" is built once by `axlab prepare` and cached
model, proc = bundle.model, bundle.processor
splits = load_image_dataset(DATASET)
print(f"{bundle.arch}: {bundle.n_layers} layers x {bundle.n_heads} heads, labels {bundle.labels}")
print("dataset sizes:", splits.sizes)
test = splits.test.head(N_EVAL)
base_scores = evaluate(model, proc, test, progress=False)
print(f"test accuracy on {len(test)} images: {base_scores['accuracy']:.4f}")

# %% [markdown]
# ## Where each head looks
#
# For one test digit, each heatmap is the attention of `[CLS]` over the 16 patches in one head
# of layer `LAYER` (brighter = more attention), drawn over the image. Removed heads would be
# blank. The share of attention that `[CLS]` keeps on itself is not drawn.

# %%
from axlab.analysis import viz
from axlab.analysis.attention_maps import attention_for, rollout_map

image = test.images[IMAGE_INDEX]
att = attention_for(model, proc, [image])
print(f"true label {test.label_names[test.labels[IMAGE_INDEX]]}; patch grid {att.grid}, "
      f"patch {att.patch} px, prefix tokens {att.n_prefix}")
viz.layer_heads_figure(att, LAYER).show()
viz.layer_heads_figure(att, bundle.n_layers - 1).show()

# %% [markdown]
# **Rollout** multiplies the head-averaged attention of every layer (plus the residual
# connection) to estimate how much each patch flows into `[CLS]` at the top.

# %%
viz.rollout_overlay(att, 0).show()
roll = rollout_map(att, 0)
ink = (np.asarray(image, dtype=float) > 127)
ph, pw = att.patch
ink_share = ink.reshape(att.grid[0], ph, att.grid[1], pw).mean(axis=(1, 3))      # ink per patch
rollout_on_ink = float((roll * (ink_share > 0.1)).sum() / roll.sum())
print(f"share of the rollout on patches with ink: {rollout_on_ink:.1%} "
      f"({int((ink_share > 0.1).sum())} of {ink_share.size} patches have ink)")

# %% [markdown]
# ## Local and global heads, by depth
#
# The *mean attention distance* of a head is the attention-weighted distance in pixels
# between a query patch and the patches it attends to, averaged over patches and images
# (the ViT paper's Figure 7). A small distance is a local head (like a convolution); a large
# one integrates the whole image.

# %%
from axlab.analysis.head_stats import head_statistics

stats = head_statistics(model, proc, splits.validation, n=N_STATS, progress=False)
viz.attention_distance_figure(stats).show()
dist = np.asarray(stats["mean_distance"])                                     # (layers, heads), pixels
by_layer = pd.DataFrame({"layer": range(dist.shape[0]), "mean distance (px)": np.nanmean(dist, 1),
                         "min": np.nanmin(dist, 1), "max": np.nanmax(dist, 1)})
by_layer.round(2)

# %% [markdown]
# ## Which pixels the prediction depends on
#
# **Integrated gradients** (Sundararajan et al. 2017) integrate the gradient of the predicted
# class's probability from a black image to this one; the pixel scores add up to the change
# in probability. **Occlusion** greys out one patch at a time and records the drop. Red pushes
# toward the predicted digit, blue away from it.

# %%
from axlab.analysis.attributions import pixel_attributions

ig = pixel_attributions(model, proc, image, method="integrated_gradients", n_steps=IG_STEPS)
occ = pixel_attributions(model, proc, image, method="occlusion")
viz.pixel_attribution_compare({"integrated gradients": ig, "occlusion": occ}).show()
print(f"integrated gradients: scores sum to {ig.saliency.sum():.3f}, "
      f"p(x) - p(black) = {ig.output - ig.baseline_output:.3f} (convergence gap {ig.delta:.1e})")

# %% [markdown]
# ## Self-distillation: every block learns to answer
#
# An *early exit* sends block k's `[CLS]` through the model's own final norm and classifier.
# Before self-distillation only the last block was trained to answer, so earlier exits are
# poor. `self_distill` draws one intermediate block per batch and trains its exit toward the
# final block's softened prediction (KL at temperature T) plus the usual cross-entropy. The
# **control** (`alpha=0`) is the same fine-tune, same batches and steps, with cross-entropy only.

# %%
from axlab.analysis.early_exit import early_exit_accuracy
from axlab.compress.distill import self_distill

common = dict(steps=SD_STEPS, batch_size=SD_BATCH, lr=SD_LR, temperature=SD_TEMPERATURE, seed=0, progress=False)
sd_model = self_distill(model, proc, splits.train, alpha=SD_ALPHA, **common)
ce_model = self_distill(model, proc, splits.train, alpha=0.0, **common)
exits = {name: early_exit_accuracy(m, proc, test, progress=False)
         for name, m in {"base": model, "fine-tuned (control)": ce_model, "self-distilled": sd_model}.items()}
fig = go.Figure()
for name, e in exits.items():
    fig.add_scatter(x=e["blocks"], y=e["accuracy"], mode="lines+markers", name=name)
fig.update_layout(title=f"Early-exit test accuracy by block ({len(test)} images)", xaxis_title="exit after block",
                  yaxis_title="accuracy", xaxis=dict(dtick=1))
fig.show()
pd.DataFrame({name: e["accuracy"] for name, e in exits.items()}, index=exits["base"]["blocks"]).round(4)

# %% [markdown]
# ## Keep the first k blocks
#
# Dropping the blocks after k gives a shallower, faster model whose prediction *is* block k's
# exit: the curve above is the accuracy of each truncated model. How much faster? The
# latency of each depth, measured interleaved (batch 1):

# %%
from axlab.compress.prune import drop_layers
from axlab.core.measure import compare_latency, describe_speedup

depths = {f"{k} blocks": drop_layers(sd_model, list(range(k, bundle.n_layers))) for k in range(1, bundle.n_layers)}
lat = compare_latency({"all blocks": sd_model, **depths}, proc, test.images[:256], batch_size=1, rounds=5,
                      runs_per_round=20)
rows = []
for k in range(1, bundle.n_layers + 1):
    name = "all blocks" if k == bundle.n_layers else f"{k} blocks"
    rows.append({"blocks kept": k, "base": exits["base"]["accuracy"][k - 1],
                 "control": exits["fine-tuned (control)"]["accuracy"][k - 1],
                 "self-distilled": exits["self-distilled"]["accuracy"][k - 1],
                 "batch-1 ms": lat["models"][name]["median_ms"],
                 "speed-up": "1.00x" if name == "all blocks" else describe_speedup(lat["ratios"][name])})
depth_table = pd.DataFrame(rows)
depth_table.round(4)

# %% [markdown]
# ## Shifted digits
#
# `mnist_shifted` is the same test digits under fixed shifts (rotation by 30 degrees,
# inversion, noise, a 4-pixel translation). The SDViT paper reports better accuracy out of
# distribution after self-distillation; here is what this run shows.

# %%
shifted = load_image_dataset("mnist_shifted").test.head(N_EVAL)
tags = np.asarray(shifted.tags)
shift_rows = []
for name, m in {"base": model, "fine-tuned (control)": ce_model, "self-distilled": sd_model}.items():
    row = {"model": name, "all shifts": evaluate(m, proc, shifted, progress=False)["accuracy"]}
    for tag in sorted(set(tags)):               # labels matched to the model's by name, as everywhere
        row[tag] = evaluate(m, proc, shifted.take(np.flatnonzero(tags == tag)), progress=False)["accuracy"]
    shift_rows.append(row)
shift_table = pd.DataFrame(shift_rows)
shift_table.round(4)

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
e_base, e_ce, e_sd = (exits[k]["accuracy"] for k in ("base", "fine-tuned (control)", "self-distilled"))
inter = slice(0, bundle.n_layers - 1)
SUMMARY = {
    "n_eval": len(test),
    "accuracy": base_scores["accuracy"],
    "rollout_on_ink": rollout_on_ink,
    "distance_first_layer_px": float(by_layer["mean distance (px)"].iloc[0]),
    "distance_last_layer_px": float(by_layer["mean distance (px)"].iloc[-1]),
    "ig_sum": float(ig.saliency.sum()),
    "ig_target_change": float(ig.output - ig.baseline_output),
    "exits_base": list(map(float, e_base)),
    "exits_control": list(map(float, e_ce)),
    "exits_sd": list(map(float, e_sd)),
    "mean_intermediate_base": float(np.mean(e_base[inter])),
    "mean_intermediate_control": float(np.mean(e_ce[inter])),
    "mean_intermediate_sd": float(np.mean(e_sd[inter])),
    "final_base": float(e_base[-1]),
    "final_control": float(e_ce[-1]),
    "final_sd": float(e_sd[-1]),
    "shifted_base": float(shift_table.loc[0, "all shifts"]),
    "shifted_control": float(shift_table.loc[1, "all shifts"]),
    "shifted_sd": float(shift_table.loc[2, "all shifts"]),
}
s = SUMMARY
sd_vs_ce = s["mean_intermediate_sd"] - s["mean_intermediate_control"]
shift_vs_ce = s["shifted_sd"] - s["shifted_control"]
local = "more local" if s["distance_first_layer_px"] < s["distance_last_layer_px"] else "not more local"
display(Markdown(f"""
* The model classifies **{s['accuracy']:.2%}** of {s['n_eval']} test digits correctly.
* Rollout puts **{s['rollout_on_ink']:.0%}** of the flow into `[CLS]` on patches that hold ink.
* Mean attention distance: {s['distance_first_layer_px']:.1f} px in the first layer, {s['distance_last_layer_px']:.1f} px
  in the last, so here the first layer is **{local}** than the last.
* Integrated gradients: the pixel scores sum to {s['ig_sum']:.3f} against a change in probability of
  {s['ig_target_change']:.3f} (completeness).
* Early exits (mean over the intermediate blocks): base **{s['mean_intermediate_base']:.3f}**, equal-budget
  control {s['mean_intermediate_control']:.3f}, self-distilled **{s['mean_intermediate_sd']:.3f}**
  ({sd_vs_ce:+.3f} against the control). Final block: {s['final_base']:.4f} / {s['final_control']:.4f} /
  {s['final_sd']:.4f}.
* Shifted digits: base {s['shifted_base']:.3f}, control {s['shifted_control']:.3f}, self-distilled
  {s['shifted_sd']:.3f} ({shift_vs_ce:+.3f} against the control){'' if shift_vs_ce > 0.005 else
  ': in this run self-distillation did not buy robustness beyond what the extra training did'}.

With more steps (`SD_STEPS = 1000`) the exits move further; `bench/bench_sdvit.py` runs the full protocol
(choices on validation, equal-budget controls, fine-tuned truncations).
"""))

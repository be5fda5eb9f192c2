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
# # 4. Quantization: fewer bits per weight
#
# > **Run time at these defaults:** 4.1 min top to bottom on a quiet 2-core machine (measured 2026-11-29; a busy machine takes several times longer). Re-measure: `python bench/bench_notebooks.py 04_quantization`.
#
# A float32 weight takes 32 bits. Quantization stores each weight as a small integer
# code times a shared scale. This notebook measures:
#
# 1. **int8 runtimes**: 8-bit weights *and* int8 matrix kernels (PyTorch, ONNX Runtime):
#    smaller and faster;
# 2. **round-to-nearest (RTN) vs GPFQ** at 3 and 2 bits (`BITS`; add 4 to see that 4 bits is close
#    to lossless for both). RTN rounds every weight on
#    its own. GPFQ (Lybrand & Saab; Zhang, Zhou & Saab) quantizes a neuron's weights one
#    input at a time and feeds the error made so far into the next choice, measured on
#    real inputs, including the inputs of the *already quantized* earlier layers, so
#    errors do not pile up;
# 3. the **per-layer error** ||XW - X~Q|| / ||XW|| of both methods;
# 4. **sparsity-promoting GPFQ**: thresholded rounding that sets small weights to zero;
# 5. **mixed precision**: more bits for the layers that need them, under a budget;
# 6. **what axlab's defaults add** to the published algorithm: refinement passes and a
#    few weights kept exact (outliers).
#
# The low-bit variants here are *weight-only*: they store packed codes (the size shrinks)
# and compute with the dequantized weights, so they are no faster on this CPU. Speed comes
# from int8 kernels (section 1).

# %% tags=["parameters"]
# Parameters
MODEL = "default"
DATASET = "rotten_tomatoes"
N_TEST = 300                        # test reviews to score every variant (steadier: 1000; all: 2000)
N_CALIBRATION = 64                  # training reviews GPFQ learns from (calibration); steadier: 256, the benchmark: 512
LATENCY_RUNS = (20, 5)              # timed runs at batch 1 and batch 32 (steadier: (50, 10))
WITH_ONNX = True                    # export to ONNX (fp32 + int8) and time ONNX Runtime
BITS = (3, 2)                       # bit-widths for RTN vs GPFQ; (8, 4, 3, 2) shows the whole range (about 1 min more)
GPFQ_OPTIONS = {}                   # more GPFQConfig fields, e.g. {"group_size": 64}; {"scale_grid": None} is faster
ERROR_BITS = 3                      # bit-width for the per-layer error and the sparsity experiment
SPARSITY_THRESHOLDS = (1.0,)        # GPFQ rounding thresholds (in quantization steps); more: (0.5, 1.0)
AVG_BITS = 3.0                      # mixed precision: average bits per weight
MIXED_CANDIDATES = (2, 3, 4)        # bit-widths a layer may get
N_SENSITIVITY = 16                  # reviews used to measure each layer's sensitivity (steadier: 64)
LEVER_BITS = 3                      # bit-width for the refinement / outliers comparison

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
from axlab.core.measure import measure, size_report
from axlab.compress.quantize import calibration_texts

test = splits.test.head(N_TEST)
calib = calibration_texts(splits, N_CALIBRATION)

def accuracy(m):
    return evaluate(m, tok, test, progress=False)["accuracy"]

base_acc = accuracy(model)
base_mb = size_report(model)["size_bytes"] / 1e6
print(f"fp32: accuracy {base_acc:.3f} on {len(test)} test reviews, {base_mb:.1f} MB")

# %% [markdown]
# ## 1. int8 runtimes
#
# `int8_dynamic` stores every Linear layer as int8 with one scale per output channel and
# runs it on PyTorch's int8 kernel (activations are quantized on the fly, per batch).
# The ONNX export is checked against PyTorch on inputs of several lengths before it is
# used; ONNX Runtime's own dynamic int8 quantization then makes the int8 graph.

# %%
from axlab.compress.quantize import int8_dynamic

def timed(name, m, size_bytes=None, size_of=None):
    r = measure(m, tok, test, latency_runs=LATENCY_RUNS, size_of=size_of).to_dict()
    return {"runtime": name, "accuracy": r["accuracy"], "latency_b1_ms": r["latency_b1_ms"],
            "latency_b32_ms": r["latency_b32_ms"], "size_mb": (size_bytes or r["size_bytes"]) / 1e6}

runtimes = [timed("fp32 PyTorch", model), timed("int8 PyTorch", int8_dynamic(model))]
if WITH_ONNX:
    import tempfile
    from pathlib import Path
    from axlab.deploy.onnx_export import export_onnx

    onnx = export_onnx(model, tok, Path(tempfile.mkdtemp(prefix="axlab-nb04-")) / "model.onnx", int8=True)
    print(f"ONNX parity with PyTorch: max |difference| {onnx.parity_max_abs_diff:.1e} over {len(onnx.parity)} batches")
    runtimes += [timed("fp32 ONNX Runtime", onnx.predictor, onnx.size_bytes),
                 timed("int8 ONNX Runtime", onnx.int8_predictor, onnx.int8_size_bytes)]
runtimes = pd.DataFrame(runtimes)
runtimes.round(3)

# %%
from plotly.subplots import make_subplots

fig = make_subplots(rows=1, cols=2, subplot_titles=("latency, batch 1 (ms, median)", "size (MB)"))
fig.add_bar(x=runtimes.runtime, y=runtimes.latency_b1_ms, row=1, col=1, showlegend=False)
fig.add_bar(x=runtimes.runtime, y=runtimes.size_mb, row=1, col=2, showlegend=False)
fig.update_layout(title="int8: smaller and faster (latency is noisy on a shared machine)", height=400)
fig.show()

# %% [markdown]
# ## 2. Round-to-nearest vs GPFQ across bit-widths
#
# Both store per-output-channel scales and packed k-bit codes for every Linear layer of
# the encoder (the embeddings and the classifier stay in float32). GPFQ calibrates on
# `N_CALIBRATION` training reviews.

# %%
from axlab.compress.gpfq import gpfq
from axlab.compress.quantize import rtn

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

# %% [markdown]
# ## 3. Where the error comes from: layer by layer
#
# For every quantized Linear layer, the relative error of its output on calibration
# reviews, ||XW - X~Q|| / ||XW||, where X~ is what the layer receives inside the
# quantized model. Lower is better (log scale).

# %%
from axlab.compress.quantize import error_figure, layer_errors, target_linears

eb = ERROR_BITS if ERROR_BITS in gpfq_models else BITS[0]
names = target_linears(model, "encoder")
errors = layer_errors(model, {"RTN": rtn_models[eb], "GPFQ": gpfq_models[eb]}, tok, calib[:64], names=names)
error_figure(errors, title=f"Per-layer relative error at {eb} bits").show()
gpfq_better = sum(errors["GPFQ"][n] < errors["RTN"][n] for n in names)
print(f"GPFQ has the smaller error in {gpfq_better} of {len(names)} layers")

# %% [markdown]
# ## 4. Sparsity-promoting GPFQ
#
# With a threshold t > 0, GPFQ rounds a value to zero whenever it is within t
# quantization steps of zero (the error feedback compensates in the following weights).
# Zeros are not smaller in this dense packed format; they pay off with sparse storage or
# kernels. The question here is how many zeros the task tolerates.

# %%
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

# %% [markdown]
# ## 5. Mixed precision
#
# `choose_bits` measures how much the model's output distribution moves (KL divergence)
# when only one layer is rounded to each candidate bit-width, then spends a budget of
# `AVG_BITS` bits per weight on the upgrades that buy the most per bit. GPFQ then uses
# those bits per layer.

# %%
from axlab.compress.gpfq import GPFQConfig, choose_bits

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

# %% [markdown]
# ## 6. What the defaults add: refinement and outliers
#
# GPFQ walks a neuron's inputs once and never revisits a choice. **Refinement**
# (`refine_passes`, 3 by default) then re-chooses every code given *all* the others, so
# each also sees the codes after it (coordinate descent on the same error: it can only
# fall).
#
# **Outliers** (`outliers`, 0.1% by default): with one scale per output row, the largest
# weight of a row sets the step for the whole row. A few rows hold one weight far larger
# than the rest; in MiniLM one weight of layer 0's FFN output feeds a "massive activation"
# (about 200 times the typical value, on a few special tokens). At 3 bits that weight's
# step rounds the rest of its row to zero. Keeping such weights exact in float16 beside
# the codes costs about 0.05 bits per weight. First, how far the largest weight of each
# layer stands out from its row:

# %%
ratio = {}
for n in names:
    w = model.get_submodule(n).weight.detach()
    ratio[n] = float((w.abs() / w.pow(2).mean(1, keepdim=True).sqrt()).max())
fig = go.Figure(go.Bar(x=short, y=[ratio[n] for n in names]))
fig.update_layout(title="Largest |w| / rms(its row), per layer", yaxis_type="log", yaxis_title="ratio",
                  xaxis_tickangle=-60)
fig.show()

# %% [markdown]
# Now GPFQ at `LEVER_BITS` bits three ways. Besides accuracy, the KL divergence of the
# quantized model's output distribution from fp32's: it moves smoothly where accuracy on a
# few hundred reviews jumps by chance.

# %%
from axlab.core.measure import fidelity, predict_logits, scores

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

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
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
display(Markdown(f"""
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
"""))

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
# # 5. Putting it together: prune, quantize, compare, export
#
# > **Run time at these defaults:** 2.3 min top to bottom on a quiet 2-core machine, reusing the AxFormer search that notebook 3 cached (a first search adds about 50 s) (measured 2026-11-29; a busy machine takes several times longer). Re-measure: `python bench/bench_notebooks.py 05_putting_it_together`.
#
# Pruning removes structure (notebook 3); quantization shrinks what is left (notebook 4).
# They combine. Here every variant is a **recipe**, a JSON list of steps replayed on the
# base model, exactly what axlab's variant store and exports keep:
#
# | variant | recipe |
# |---|---|
# | base | (nothing) |
# | axformer | the AxFormer search's removals + hard attention (cached from notebook 3) |
# | gpfq4 | GPFQ 4-bit weights (or round-to-nearest: `QUANT_METHOD`) |
# | int8 | int8 weights on int8 kernels |
# | axformer + gpfq, axformer + int8 | both |
#
# We measure them all on the same test reviews, look at the trade-off (Pareto) plots,
# export the best small variant (model folder + ONNX + comparison report), and check
# that it reloads to exactly the same predictions.

# %% tags=["parameters"]
# Parameters
MODEL = "default"
DATASET = "rotten_tomatoes"
N_TEST = 300                        # test reviews to score every variant (steadier: 1000; all: 2000)
LATENCY_RUNS = (20, 5)              # timed runs at batch 1 and batch 32 (steadier: (50, 10))

REUSE_CACHED_SEARCH = True          # True: reuse a finished search with the same settings (instant);
                                    # False: run the search again (minutes) and cache the result
N_VAL = 200                         # validation reviews the search judges on; the paper uses all (1000).
                                    # The same settings as notebook 3 reuse its cached search
TOLERANCE = 0.0                     # 0 = keep a change only if the validation loss improves
SIGNIFICANCE = 1.0                  # ... by more than this many paired standard errors (0 = the paper's
                                    # rule: any drop; with 0 the search overfitted validation here)
SEARCH_LAYERS = None                # layers to visit (None = all, always top layer first)
FFN_GROUPS = 4                      # FFN neurons are tried in this many groups
TOPK_VALUES = (8,)                  # hard-attention k tried in each layer

QUANT_METHOD = "gpfq"               # "gpfq" (calibrated, notebook 4) or "rtn" (round-to-nearest, data-free)
QUANT_BITS = 4                      # bits per weight
N_CALIBRATION = 64                  # GPFQ calibration reviews (drawn from the training split, seeded); more: 512
GPFQ_OPTIONS = {}                   # more GPFQConfig fields; {"scale_grid": None} is faster
MAX_ACCURACY_LOSS = 0.01            # export the smallest variant within this much of the base accuracy
WITH_ONNX = True                    # add an ONNX graph (checked against PyTorch) to the export
EXPORT_DIR = None                   # None: a folder under axlab's data directory

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
# ## The variants, as recipes

# %%
from axlab.compress import axformer

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

# %%
import json

from axlab.compress import Step, apply_recipe

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

# %% [markdown]
# ## Measure and compare
#
# The comparison table gives every variant's accuracy, latency and size, and its ratios
# to the base (speed-up, compression). Latency is measured on this machine and is noisy
# when the machine is shared; accuracy and size are exact.

# %%
from axlab.deploy import compare
from axlab.core.measure import measure
from axlab.store.variants import Variant

test = splits.test.head(N_TEST)
variants = [Variant(name=name, base=MODEL, dataset=DATASET, recipe=recipes[name],
                    measurements=measure(m, tok, test, latency_runs=LATENCY_RUNS).to_dict())
            for name, m in models.items()]
df = compare.variants_table(variants)
compare.display_table(df)

# %% [markdown]
# A variant is on the **Pareto front** when no other variant is at least as good on both
# axes and better on one. Those are the only ones worth choosing between.

# %%
compare.tradeoff_figure(df, x="size_mb").show()
compare.tradeoff_figure(df, x="latency_b1_ms").show()
front_size = compare.pareto_front(df, x="size_mb")
front_latency = compare.pareto_front(df, x="latency_b1_ms")
print("Pareto front, accuracy vs size:   ", ", ".join(df.name[front_size]))
print("Pareto front, accuracy vs latency:", ", ".join(df.name[front_latency]))

# %% [markdown]
# ## Export the chosen variant and reload it
#
# We pick the smallest variant whose test accuracy is within `MAX_ACCURACY_LOSS` of the
# base. `export_all` writes one folder: the weights and the recipe (reloadable with
# `axlab.load_variant`, or `axlab.load_model` for unpruned models), an ONNX graph
# checked against PyTorch, and a self-contained HTML comparison report.

# %%
from pathlib import Path

from axlab.deploy.export import export_all
from axlab.core.loading import load_variant
from axlab.core.folder import read_sidecar
from axlab.core.measure import predict_logits
from axlab.core.paths import data_dir

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

# %% [markdown]
# Reload the folder from disk (as another machine would) and replay the stored recipe on
# the base model: both must give the logits of the variant we measured.

# %%
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

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
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
display(Markdown(f"""
* On {s['n_test']} test reviews the base scores **{v['base']['accuracy']:.3f}** at {v['base']['size_mb']:.1f} MB.
* {"; ".join(f"{n}: {x['accuracy']:.3f}, {x['size_mb']:.1f} MB ({x['compression']:.1f}x smaller), "
             f"{x['latency_b1_ms']:.1f} ms" for n, x in v.items() if n != 'base')}.
* Smallest: **{smallest}** ({v[smallest]['compression']:.1f}x smaller, accuracy {v[smallest]['accuracy']:.3f}).
  On the accuracy-vs-size Pareto front: {", ".join(front)}.
* Exported **{s['exported']}** (smallest within {MAX_ACCURACY_LOSS:.1%} of the base accuracy) to
  `{s['folder']}`. Reloaded from disk it gives the same predictions (max logit difference
  {s['reload_max_abs_diff']:.1e}, accuracy {s['reload_accuracy']:.3f}); replaying its recipe on the base model gives
  {s['replay_max_abs_diff']:.1e}.
"""))

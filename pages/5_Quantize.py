"""Quantize: int8 for speed, k-bit weights (round-to-nearest, GPFQ, or the GPTQ reference) for size."""

import streamlit as st

from axlab.compress import Step, apply_recipe
from axlab.compress import prune as prune_mod
from axlab.compress import quantize as quant

import json
import time

from axlab.core.recipe import describe_recipe, describe_step

from ui import estimate, jobs
from ui.common import create_variant, intro, measure_settings, pick_start
from ui.modality import modality_of, processor_of
from ui.names import name_box, step_name
from ui.sidebar import sidebar
from ui.state import bundle_and_splits, current, show_error, variant_model, workspace_variants

st.set_page_config(page_title="Quantize - axlab", page_icon=":material/compress:", layout="wide")
sidebar()
intro("Quantize",
      "Quantization stores weights with fewer bits: **int8** (4x smaller than float32, and faster because the CPU "
      "multiplies 8-bit integers in bulk), or **2-6 bits** for size. Round-to-nearest treats each weight alone; "
      "**GPFQ** chooses each layer's low-bit weights so that the layer's *outputs* stay close, correcting errors "
      "as it goes.",
      "- **Why int8 is faster.** An int8 matrix multiply moves a quarter of the bytes of float32 and this CPU's "
      "VNNI/AMX instructions do many 8-bit multiply-adds per cycle. *Dynamic* quantization also converts each "
      "activation to int8 on the fly with its own scale, so no calibration data is needed.\n"
      "- **Round-to-nearest (RTN)** maps each weight to the closest of 2^bits levels (per output row, or per group "
      "of inputs). At 3-4 bits the rounding errors of a row add up in the layer's output.\n"
      "- **What GPFQ corrects that rounding does not** (Zhang, Zhou & Saab). GPFQ quantizes a layer one input "
      "coordinate at a time and carries the running error forward: the next coordinate's choice compensates the "
      "error made so far, measured on real inputs. It also feeds each layer the inputs of the *already quantized* "
      "network, so it corrects the errors of the earlier layers too. It needs a few hundred calibration texts (images for an image model).\n"
      "- **Two levers on top.** *Refinement* revisits every code once GPFQ is done, now seeing the codes after it "
      "too (coordinate descent: the error only falls). *Outliers*: a few weights stand far out of their row (in "
      "MiniLM, one weight of layer 0's FFN feeds an activation 200x the usual size); kept exact, they no longer "
      "force a coarse step on the rest of the row. At 3 bits these two took the logits' KL to float32 from 0.09 "
      "to 0.024 on the default model.\n"
      "- **Size vs speed.** k-bit weights here are stored packed (smaller files) and unpacked to float to run: "
      "they save memory and disk, not time. int8 saves both.")

bundle, splits = bundle_and_splits()
if bundle is None:
    st.stop()

image_mode = modality_of(bundle) == "image"
unit = "images" if image_mode else "texts"
proc = processor_of(bundle)

measure_settings()
recipe, start_name = pick_start(splits, key="quant_start")
method = st.radio("Method", ["int8 (dynamic)", "Round-to-nearest (RTN)", "GPFQ", "GPTQ (reference)"], horizontal=True,
                  key="quant_method", help="GPTQ (Frantar et al.) is the field's standard weight-only quantizer, "
                                           "implemented from the paper: the method to compare GPFQ with.")
if image_mode:                     # an image model reads pixels: it has no word embeddings to quantize
    embeddings = False
else:
    embeddings = st.checkbox("Also quantize the word embeddings (half of MiniLM's parameters) to 8 bits",
                             key="quant_emb")
start_variant = next((v for v in workspace_variants() if v.recipe
                      and start_name == f"{v.name} ({len(v.recipe)} steps)"), None)
prefix = "" if start_variant is None else start_variant.name + "+"
if method.startswith("int8"):
    step = Step("quantize_int8", embeddings=embeddings)
else:
    c1, c2 = st.columns(2)
    bits = c1.select_slider("Bits per weight", [2, 3, 4, 5, 6, 8], value=4, key="quant_bits")
    group = c2.selectbox("Scale per", ["output row", "group of 32", "group of 64", "group of 128"], key="quant_group")
    group_size = None if group == "output row" else int(group.split()[-1])
    if method.startswith("Round"):
        step = Step("quantize_rtn", bits=bits, group_size=group_size, embeddings=embeddings)
    elif method.startswith("GPTQ"):
        c1, c2 = st.columns(2)
        n_cal = c1.slider(f"Calibration {unit} (from train)", 32, 1024, 128, step=32, key="gptq_n",
                          help="The same seeded draw as GPFQ's, so the two compare on equal terms.")
        act_order = c2.checkbox("Act-order (largest input energy first)", value=False, key="gptq_act_order",
                                help="The paper's optional column order; off is the paper's default.")
        step = Step("quantize_gptq", bits=bits, n_calibration=n_cal, group_size=group_size, embeddings=embeddings,
                    act_order=act_order)
    else:
        c1, c2, c3 = st.columns(3)
        n_cal = c1.slider(f"Calibration {unit} (from train)", 32, 1024, 128, step=32, key="gpfq_n")
        sparsity = c2.slider("Sparsity threshold (steps; 0 = plain GPFQ)", 0.0, 2.0, 0.0, step=0.25,
                             key="gpfq_sparsity", help="Thresholded rounding: small values become exactly 0.")
        bias_corr = c3.checkbox("Bias correction", value=True, key="gpfq_bias")
        c1, c2 = st.columns(2)
        outliers = c1.select_slider(
            "Weights kept exact (outliers)", [0.0, 0.0002, 0.001, 0.005], value=0.001, key="gpfq_outliers",
            format_func=lambda f: "none" if f == 0 else f"{100 * f:g}%",
            help="The weights that stand out most from their row are stored exactly (float16) beside the codes, "
                 "so one huge weight no longer sets its whole row's step. 0.1% costs about 0.05 bits per weight.")
        passes = c2.slider("Refinement passes", 0, 5, 0 if sparsity else 3, key=f"gpfq_passes_{sparsity > 0}",
                           disabled=sparsity > 0,
                           help="Coordinate descent after GPFQ's greedy pass: each code is re-chosen given all the "
                                "others. The layer's error never grows. Off with a sparsity threshold.")
        step = Step("quantize_gpfq", bits=bits, n_calibration=n_cal, group_size=group_size, embeddings=embeddings,
                    sparsity=sparsity, bias_correction=bias_corr, outliers=outliers,
                    refine_passes=0 if sparsity else passes)

# what the weight quantizer leaves in fp32 (pooler, classifier, embedding tables) packed for the deployed file
c1, c2 = st.columns([3, 1])
pack = c1.checkbox("Pack the rest for deployment", value=False, key="quant_pack",
                   help="Every layer the method above leaves in float32 (the pooler and classifier) to int8"
                        + ("" if image_mode else ", the word table to the bits on the right unless it is quantized "
                           "already, and the position table to 8 bits")
                        + ". This is how the benchmark's smallest files are built; the exported ONNX graph stores "
                          "every table as codes too.")
pack_bits = None if image_mode else c2.selectbox("Word table bits", [8, 4], key="quant_pack_bits", disabled=not pack)
has_vocab = any(s.get("op") == "prune_vocab" for s in recipe)          # the start variant has it already
vocab = False if image_mode else st.checkbox(
    "First keep only the task's vocabulary", value=False, key="quant_vocab", disabled=has_vocab,
    help="Only the word-table rows of tokens the training texts use are kept (a token they never use maps to the "
         "kept token with the most similar embedding); about half of MiniLM's table on the default data. The "
         "quantizer then calibrates on the smaller model.")
pre = []
if vocab and not has_vocab:
    vkey = ("vocab_step", splits.file_hash, len(splits.train))
    if vkey not in st.session_state:                         # tokenizing the training texts takes a moment
        st.session_state[vkey] = prune_mod.vocab_step(proc, list(splits.train.texts))
    pre = [st.session_state[vkey]]
steps = pre + [step] + ([Step("quantize_rest", embedding_bits=pack_bits, position_bits=None if image_mode else 8)]
                        if pack else [])

start_words = ("the base model" if start_variant is None
               else f"**{start_variant.name}** ({describe_recipe(recipe)})")
st.markdown(f"**Recipe:** {start_words}, then **{'; '.join(describe_step(s) for s in steps)}**")
with st.expander("The recipe as JSON"):
    st.code(json.dumps(recipe + steps, indent=1), language="json")
vname = name_box(prefix + step_name(step), "quant_name", {v.name for v in workspace_variants()})

# how long: measuring (from this machine's forward cost) + GPFQ (learned from the last GPFQ run here)
gpfq_units = 0.0
try:
    cost = estimate.costs(bundle, splits)
    seconds = estimate.measuring(bundle, splits)
    note = f"{int(st.session_state.measure_n)} test examples; fewer under Measurement settings"
    if step["op"] in ("quantize_gpfq", "quantize_gptq"):     # one calibration pass per layer, like GPFQ's
        p = step["params"]
        gpfq_units = p["n_calibration"] * (1 + p.get("refine_passes", 0)) * (2 if p["embeddings"] else 1)
        per_unit = estimate.learned("gpfq")
        if per_unit is None:
            per_unit = 0.35 * cost["per_token"] / 2e-4           # a first guess, scaled by this machine's speed
            note = "GPFQ: a first guess; later estimates use this machine's last GPFQ run. " + note
        seconds += gpfq_units * per_unit
    estimate.caption("building and measuring this variant", seconds, note)
except Exception:  # noqa: BLE001  (an estimate is a nicety)
    pass
if st.button("Create variant", type="primary", key="quant_go"):
    try:
        t0 = time.time()
        create_variant(bundle, splits, recipe + steps, vname)
        if gpfq_units:
            estimate.learn("gpfq", time.time() - t0 - estimate.measuring(bundle, splits), gpfq_units)
    except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
        show_error(e)

if not method.startswith("int8") and hasattr(quant, "layer_errors") and hasattr(quant, "error_figure"):
    with st.expander("Per-layer output error: RTN vs GPFQ"):
        st.caption(f"Relative error ||XW - X~Q|| / ||XW|| of every linear layer on 64 calibration {unit}, for "
                   f"{bits}-bit RTN and GPFQ from the same starting model. GPFQ's errors stay lower, most of all in "
                   "the upper layers, where RTN's errors have piled up.")
        if st.button("Compute the per-layer errors", key="quant_errs"):
            ws = current()[2]
            start = variant_model(bundle, splits, recipe)
            inputs = splits.train.inputs[:64]

            def work(progress):
                q = {"rtn": apply_recipe(start, [Step("quantize_rtn", bits=bits, group_size=group_size)]),
                     "gpfq": apply_recipe(start, [Step("quantize_gpfq", bits=bits, n_calibration=64,
                                                       group_size=group_size)], tokenizer=proc,
                                          splits=splits, progress=progress)}
                return quant.layer_errors(start, q, proc, inputs)
            jobs.start(ws, "layer_errors", "Per-layer errors", work)
        try:
            errs = jobs.collect(current()[2], "layer_errors")
            if errs is not None:
                st.session_state.layer_errors = errs
        except Exception as e:  # noqa: BLE001
            show_error(e)
        if st.session_state.get("layer_errors"):
            st.plotly_chart(quant.error_figure(st.session_state.layer_errors), key="quant_err_fig")

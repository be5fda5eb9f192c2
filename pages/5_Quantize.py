"""Quantize: int8 for speed, k-bit weights (round-to-nearest or GPFQ) for size."""

import streamlit as st

from ui.common import create_variant, intro, measure_settings, pick_start
from ui.sidebar import sidebar
from ui.state import bundle_and_splits, feature, show_error

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
      "network, so it corrects the errors of the earlier layers too. It needs a few hundred calibration texts.\n"
      "- **Size vs speed.** k-bit weights here are stored packed (smaller files) and unpacked to float to run: "
      "they save memory and disk, not time. int8 saves both.")

bundle, splits = bundle_and_splits()
if bundle is None:
    st.stop()
quant = feature("quantize", "int8_dynamic", "rtn")
if quant is None:
    st.stop()
from axlab.variants import Step  # noqa: E402

measure_settings()
recipe, start_name = pick_start(splits, key="quant_start")
method = st.radio("Method", ["int8 (dynamic)", "Round-to-nearest (RTN)", "GPFQ"], horizontal=True, key="quant_method")
embeddings = st.checkbox("Also quantize the word embeddings (half of MiniLM's parameters) to 8 bits",
                         key="quant_emb")
prefix = "" if start_name == "base model" else start_name.split(" (")[0] + "+"
if method.startswith("int8"):
    step, name = Step("quantize_int8", embeddings=embeddings), "int8"
else:
    c1, c2 = st.columns(2)
    bits = c1.select_slider("Bits per weight", [2, 3, 4, 5, 6, 8], value=4, key="quant_bits")
    group = c2.selectbox("Scale per", ["output row", "group of 32", "group of 64", "group of 128"], key="quant_group")
    group_size = None if group == "output row" else int(group.split()[-1])
    if method.startswith("Round"):
        step, name = Step("quantize_rtn", bits=bits, group_size=group_size, embeddings=embeddings), f"rtn{bits}"
    else:
        if feature("gpfq", "gpfq") is None:
            st.stop()
        n_cal = st.slider("Calibration texts (from train)", 32, 1024, 128, step=32, key="gpfq_n")
        step = Step("quantize_gpfq", bits=bits, n_calibration=n_cal, group_size=group_size, embeddings=embeddings)
        name = f"gpfq{bits}"

st.caption(f"Recipe: {len(recipe)} step(s) from **{start_name}**, then `{step['op']}` {step['params']}")
vname = st.text_input("Variant name", value=prefix + name, key=f"quant_name_{start_name}_{name}")
if st.button("Create variant", type="primary", key="quant_go"):
    try:
        create_variant(bundle, splits, recipe + [step], vname)
    except Exception as e:  # noqa: BLE001  (shown with st.error; the app keeps working)
        show_error(e)

errs = getattr(quant, "layer_errors", None)
if errs is not None and not method.startswith("int8"):
    with st.expander("Per-layer output error: RTN vs GPFQ"):
        st.caption("Relative error ||XW - X~Q|| / ||XW|| of each linear layer on calibration texts.")
        st.info("Computed by the library's `quantize.layer_errors`; open the Quantize notebook for the full study.")

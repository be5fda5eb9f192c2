"""Export: a reloadable variant folder, ONNX, and a self-contained comparison report."""

import io
import zipfile
from pathlib import Path

import streamlit as st

from axlab.core.paths import data_dir
from axlab.deploy import export

from ui import estimate, jobs
from ui.common import fmt_bytes, intro
from ui.sidebar import sidebar
from ui.state import bundle_and_splits, current, model_cache, show_error, variant_model, workspace_variants

st.set_page_config(page_title="Export - axlab", page_icon=":material/ios_share:", layout="wide")
sidebar()
intro("Export",
      "Export writes the chosen variant as a folder you can load anywhere with `axlab.core.loading.load_variant` (or "
      "`axlab.core.loading.load_model(folder)`), optionally an **ONNX** model for ONNX Runtime, and a self-contained "
      "HTML report comparing all your variants.",
      "- The folder holds safetensors weights, the tokenizer, the recipe and its measurements, and the shapes of "
      "pruned/quantized layers, so the exact variant is rebuilt on load; the export checks this before it "
      "finishes.\n- **ONNX** is checked against PyTorch on real sentences (max |difference| of logits). The "
      "**fused** graph (the default) runs each layer's attention as one ONNX Runtime operator and keeps a "
      "k-bit variant's own codes (stored at their width, run by the int8 kernel; `MatMulNBits` for grouped "
      "codes, or for every k-bit layer when you ask for the exact numbers); where it cannot express the variant (top-k hard attention, an "
      "unsupported architecture) the **plain** graph is written and the page says why. int8 is often the fastest "
      "way to serve a small model on CPU.\n- The ONNX files are measured next to the PyTorch variant: accuracy, "
      "latency in the same interleaved rounds (median and range), size.\n- Existing folders are never "
      "overwritten unless you ask.")

bundle, splits = bundle_and_splits()
if bundle is None:
    st.stop()
source, dataset, ws = current()
variants = workspace_variants()
if not variants:
    st.info("No variants to export yet: create one on the Prune or Quantize page.", icon=":material/info:")
    st.stop()

names = [v.name for v in variants]
name = st.selectbox("Variant", names, index=len(names) - 1, key="exp_variant")
v = next(x for x in variants if x.name == name)
folder = st.text_input("Folder", value=str(data_dir("exports") / ws / name), key=f"exp_folder_{name}")
c1, c2, c3, c4 = st.columns(4)
onnx = c1.checkbox("ONNX", value=True, key="exp_onnx")
int8 = c2.checkbox("ONNX int8 too", value=False, key="exp_int8", disabled=not onnx)
report = c3.checkbox("Comparison report", value=True, key="exp_report")
overwrite = c4.checkbox("Overwrite", value=False, key="exp_overwrite")
GRAPHS = {"fused": "fused (fast: fused attention, native low-bit weights)", "plain": "plain (dynamo export)"}
graph = st.radio("ONNX graph", list(GRAPHS), format_func=GRAPHS.get, horizontal=True, key="exp_graph",
                 disabled=not onnx)
KERNELS = {"auto": "int8 kernel (fastest on most CPUs; int8 activations)",
           "nbits": "MatMulNBits (the PyTorch variant's exact numbers; fp32 activations)"}
lowbit = st.radio("k-bit weights run on", list(KERNELS), format_func=KERNELS.get, horizontal=True,
                  key="exp_lowbit", disabled=not onnx or graph != "fused",
                  help="For GPFQ / GPTQ / RTN variants in the fused graph. Either way the file stores the codes at "
                       "their width. The int8 kernel widens them to int8 when the session loads and quantizes "
                       "activations on the fly; MatMulNBits computes in fp32 with the codes as they are. Grouped "
                       "codes always use MatMulNBits.")

lowbit = lowbit if onnx and graph == "fused" else "auto"
cost_kind = (f"export-onnx{int(onnx)}-int8{int(onnx and int8)}-report{int(report)}" + ("-plain" if graph == "plain" else "")
             + ("-nbits" if lowbit == "nbits" else ""))       # each set of options learns its own time
per_export = estimate.learned(cost_kind)
if per_export is not None:
    estimate.caption("this export", per_export, "from the last export with these options on this machine")
else:
    estimate.caption("this export", None, "the first export with these options here: usually under a minute for "
                     "the folder, a few minutes with ONNX (it checks the ONNX model on real sentences); "
                     "later exports show an estimate")
if st.button("Export", type="primary", key="exp_go"):
    limit, cache = int(st.session_state.measure_n), model_cache()

    def work(progress):
        model = variant_model(bundle, splits, v.recipe, cache=cache)
        return export.export_all(model, bundle.tokenizer, folder, recipe=v.recipe, measurements=v.measurements,
                                 base=source, labels=bundle.labels, name=v.name, dataset=dataset,
                                 overwrite=overwrite, onnx=onnx, int8=onnx and int8, splits=splits,
                                 limit=limit, report_variants=variants, report=report,
                                 progress=progress, onnx_graph=graph, lowbit_kernel=lowbit)
    jobs.start(ws, "export", f"Exporting '{name}'", work)
    st.session_state.export_cost_kind = cost_kind
try:
    job = jobs.get(ws, "export")
    res = jobs.collect(ws, "export")
    if res is not None and job is not None and job.error is None:
        estimate.learn(st.session_state.get("export_cost_kind", cost_kind), job.elapsed, 1)
    if res is not None:
        st.session_state.export_result = {"folder": str(res.folder), "files": res.files,
                                          "onnx": res.measurements.get("onnx"), "comparison": res.comparison,
                                          "report": {k: str(p) for k, p in (res.report or {}).items()}}
except Exception as e:  # noqa: BLE001  (shown, not raised: the rest of the app keeps working)
    show_error(e)

res = st.session_state.get("export_result")
if res:
    st.success(f"Exported to `{res['folder']}`", icon=":material/check_circle:")
    st.dataframe([{"file": f, "size": fmt_bytes(b)} for f, b in res["files"].items()], hide_index=True,
                 key="exp_files")
    if res.get("onnx"):
        o = res["onnx"]
        if o.get("fallback_reason"):
            st.warning(f"The ONNX file is the plain graph, not the fused one: {o['fallback_reason']}.",
                       icon=":material/warning:")
        else:
            st.markdown(f"ONNX graph: **{o.get('graph', 'plain')}**"
                        + (f" ({o['fused_attention_nodes']} fused attention nodes)" if "fused_attention_nodes" in o
                           else "")
                        + "".join(f"; {n} weight matrices on **{k}**" for k, n in (
                            ("MatMulNBits", (o.get("ops") or {}).get("com.microsoft:MatMulNBits")),
                            ("the int8 kernel", sum((o.get("ops") or {}).get(f"com.microsoft:{op}", 0)   # q/k/v stacked
                                                    for op in ("DynamicQuantizeMatMul", "QAttention"))))
                            if n))
        st.markdown(f"ONNX parity with PyTorch: max |logit difference| = "
                    f"{o.get('parity_max_abs_diff', float('nan')):.2e}")

    def ms(r, key):
        v, spread = r.get(f"latency_{key}_ms"), r.get(f"latency_{key}_spread_ms")
        if v is None:
            return "-"
        return f"{v:.2f}" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")

    if res.get("comparison"):
        st.dataframe([{"runtime": r["runtime"], "graph": r["graph"],
                       "accuracy": None if r.get("accuracy") is None else round(r["accuracy"], 4),
                       "batch 1 ms (range)": ms(r, "b1"), "batch 32 ms (range)": ms(r, "b32"),
                       "speed-up b1": "-" if r.get("speedup_b1") is None else
                       f"{r['speedup_b1']:.2f}x" + (" (within noise)" if r.get("within_noise_b1") else ""),
                       "size": "-" if r.get("size_bytes") is None else fmt_bytes(r["size_bytes"])}
                      for r in res["comparison"]], hide_index=True, key="exp_comparison")
        st.caption("Latency measured interleaved (PyTorch and ONNX in the same rounds); the range is over rounds.")
    st.code(f"import axlab\nbundle = axlab.load_variant({res['folder']!r})", language="python")
    html = res["report"].get("html")
    if html and Path(html).exists():
        st.download_button("Download the report (HTML)", Path(html).read_bytes(), file_name="axlab-report.html",
                           mime="text/html", key="exp_dl_report")
    if st.button("Prepare a .zip of the folder", key="exp_zip"):
        buf = io.BytesIO()
        root = Path(res["folder"])
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    z.write(p, Path(root.name) / p.relative_to(root))
        st.download_button("Download .zip", buf.getvalue(), file_name=f"{root.name}.zip", mime="application/zip",
                           key="exp_dl_zip")

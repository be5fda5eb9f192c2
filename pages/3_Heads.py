"""Heads: how much each attention head matters to the task."""

import streamlit as st

from axlab.analysis import importance as imp_mod
from axlab.analysis import viz

from ui import estimate, jobs
from ui.common import intro
from ui.insight import agreement_words, low_in_all
from ui.modality import modality_of, processor_of
from ui.sidebar import sidebar
from ui.state import analysis_results, bundle_and_splits, current, show_error

st.set_page_config(page_title="Heads - axlab", page_icon=":material/leaderboard:", layout="wide")
sidebar()
intro("Head importance",
      "Not every head matters to the task: Michel et al. (2019) removed most heads of fine-tuned BERT models with "
      "little loss. **Importance** scores each head on validation data, so you can remove the least important "
      "ones on the Prune page.",
      "- **gradient** (Michel et al.): put a gate of 1 on each head's output and average |d loss / d gate| over "
      "the data. One backward pass per batch: fast.\n"
      "- **ablation**: remove each head alone and measure how much the validation loss rises. Exact for one head "
      "at a time, but one full pass per head (72 passes for MiniLM).\n"
      "- **captum**: integrated gradients over the gates from 0 to 1 (a path-integrated version of the gradient "
      "score).\n- **Agreement** is the Spearman rank correlation between methods: high means the ranking is "
      "robust; heads ranked low by every method are the safest to remove. Importance is not additive: removing "
      "two unimportant heads can hurt more than the sum, which is why the AxFormer search re-checks every removal.")

bundle, splits = bundle_and_splits()
if bundle is None:
    st.stop()
source, dataset, ws = current()
unit = "images" if modality_of(bundle) == "image" else "examples"

store = analysis_results()
c1, c2 = st.columns(2)
method = c1.selectbox("Method", list(imp_mod.METHODS), key="imp_method")
n = c2.slider(f"Validation {unit}", 50, len(splits.validation), min(200, len(splits.validation)), step=50,
              key="imp_n", help="More examples give a steadier ranking and take longer.")


def importance_key(method: str, n: int):
    return ("importance", source, dataset, method, n)


try:
    cost = estimate.costs(bundle, splits)
    estimate.caption(f"{method} importance on {n} {unit}",
                     estimate.importance_s(method, estimate.forward_s(cost, bundle, splits, "validation", n),
                                           bundle.n_layers * bundle.n_heads),
                     "a result computed before on the same examples comes back at once"
                     + ("; gradient is the fastest method" if method != "gradient" else ""))
except Exception:  # noqa: BLE001  (an estimate is a nicety; the page works without it)
    pass

if st.button("Compute importance", type="primary", key="imp_go"):
    key = importance_key(method, n)
    proc = processor_of(bundle)
    jobs.start(ws, "importance", f"Importance ({method}, {n} {unit})",
               lambda p: store.__setitem__(key, imp_mod.head_importance(
                   bundle.model, proc, splits.validation.head(n), method=method, progress=p)))
try:
    jobs.collect(ws, "importance")
except Exception as e:  # noqa: BLE001
    show_error(e)

done = {k[3]: v for k, v in store.items() if k[:3] == ("importance", source, dataset) and k[4] == n}
if method not in done:
    st.info(f"Press **Compute importance** to score every head with the {method} method.", icon=":material/info:")
    st.stop()

imp = done[method]
st.session_state.importance = {"method": method, "n": n, "values": imp.tolist()}
st.plotly_chart(viz.importance_figure(imp), key="imp_fig")
left, right = st.columns(2)
with left:
    st.subheader("Ranking")
    st.dataframe(imp_mod.rank_heads(imp), hide_index=True, height=320, key="imp_rank")
with right:
    st.subheader("Agreement between methods")
    if len(done) >= 2:
        table = imp_mod.agreement(done)
        st.plotly_chart(viz.agreement_figure(table), key="imp_agree_fig")
        st.markdown(agreement_words(table))
    else:
        st.caption(f"Compute a second method on the same {n} {unit} to see whether they agree.")

st.subheader("Heads every method ranks low")
low = low_in_all(done, 0.25)
methods = ", ".join(done)
if len(done) < 2:
    st.caption(f"With one method ({methods}) these are simply its lowest quarter; compute another method on the "
               f"same {unit} to keep only the heads they all rank low (the safest to remove).")
if low:
    labels = [f"L{layer}.H{head}" for layer, head in low]
    st.markdown(f"**{len(low)}** heads are in the lowest quarter of every method computed ({methods}): "
                + ", ".join(f"`{x}`" for x in labels))
    if st.button(f"Pick these {len(low)} heads on the Prune page", key="imp_to_prune"):
        st.session_state["hand_heads"] = labels
        st.switch_page("pages/4_Prune.py")
else:
    st.markdown(f"No head is in the lowest quarter of every method ({methods}): the rankings share no safe "
                "candidates, so let the AxFormer search on the Prune page check each removal.")

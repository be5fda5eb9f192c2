"""axlab workbench: home page. Run with `streamlit run app.py`.

The pages in pages/ are Streamlit's multipage folder; each calls ui.sidebar.sidebar()
so the sidebar (model, data, workspace, saved variants) is the same everywhere.
"""

import streamlit as st

from ui.nav import PAGES
from ui.state import init_state, load_base, show_error

st.set_page_config(page_title="axlab workbench", page_icon=":material/compress:", layout="wide")
init_state()
# The page text goes out first; the sidebar fills in after it without waiting for torch.

st.title("axlab workbench")
st.markdown(
    "Make a fine-tuned transformer **smaller, faster and more accurate** on one task. Look inside it, remove "
    "what the task does not need, quantize what is left, and compare every variant's accuracy, latency and size "
    "side by side before exporting the one you want.")
st.markdown(
    "It starts with the default model: **MiniLM-L6** (6 layers x 12 attention heads) fine-tuned on "
    "**Rotten Tomatoes** movie reviews (fresh vs rotten). Nothing is downloaded; every step runs on this CPU. "
    "Image classifiers work the same way: the **default vision model** (a small ViT trained on MNIST digits) is a "
    "click away on the Model & data page, and every page then shows patches and images instead of tokens and "
    "text.")

st.subheader("The path from load to export")
cols = st.columns(2)
for i, (page, label, icon, text) in enumerate(PAGES):
    with cols[i % 2]:
        with st.container(border=True):
            st.page_link(page, label=label, icon=icon)
            st.caption(text)

with st.expander("How the workbench keeps your work"):
    st.markdown(
        "Every variant is a **recipe**: the base model plus a list of steps (remove these heads, quantize to int8, "
        "...). The recipe and its measurements are saved, not the model, so a browser refresh or an app restart "
        "loses nothing, and any variant can be rebuilt exactly. The base model is loaded once and never changed. "
        "Your variants belong to your **workspace** (its name is in the page address); open the sidebar's "
        "workspace box to share one with a colleague on purpose.")

status = st.empty()
from ui.sidebar import sidebar  # noqa: E402

# The sidebar describes the model from its config.json and loads it in the background (the next page
# finds it ready); only when that is not possible (a hub id, a missing model) does the home page wait for the
# load, to show what is wrong.
if not sidebar(quick=True):
    try:
        load_base(st.session_state.source, st.session_state.allow_pickle)
    except Exception as e:  # noqa: BLE001  (a new user sees what to do, not a traceback)
        with status.container():
            show_error(e)

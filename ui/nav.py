"""The workbench's pages, in the order of the path from load to export, and the sidebar menu."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitAPIException

__all__ = ["HOME", "PAGES", "nav"]

ROOT = Path(__file__).resolve().parents[1]

HOME = ("app.py", "Home", ":material/home:")
# (file, label, icon, what the page is for)
PAGES = [
    ("pages/1_Model_and_data.py", "1. Model & data", ":material/database:",
     "The default model, a hub id, a local folder, or your own CSV of labelled texts."),
    ("pages/2_Attention.py", "2. Attention", ":material/visibility:",
     "What each head looks at, attention rollout, and per-head statistics."),
    ("pages/3_Heads.py", "3. Heads", ":material/leaderboard:",
     "How much each head matters to the task, by three methods, and whether they agree."),
    ("pages/4_Prune.py", "4. Prune", ":material/content_cut:",
     "Remove heads by hand or by budget, or let the AxFormer search decide."),
    ("pages/5_Quantize.py", "5. Quantize", ":material/compress:",
     "int8 for speed, or 2-8 bit weights with rounding or GPFQ for size."),
    ("pages/6_Compare.py", "6. Compare", ":material/compare:",
     "Every variant's accuracy, latency and size; the Pareto front; before/after views."),
    ("pages/7_Export.py", "7. Export", ":material/ios_share:",
     "A reloadable folder, an ONNX file, and a self-contained report."),
    ("pages/8_Sweep.py", "8. Sweep", ":material/grid_view:",
     "Many recipes at once (on Ray), and the Pareto front of accuracy, latency and size."),
]
PAGES = [p for p in PAGES if (ROOT / p[0]).exists()]


def nav() -> None:
    """The page menu at the top of the sidebar (Streamlit's own list is off in .streamlit/config.toml)."""
    try:
        st.sidebar.page_link(HOME[0], label=HOME[1], icon=HOME[2])
        for page, label, icon, _ in PAGES:
            st.sidebar.page_link(page, label=label, icon=icon)
    except StreamlitAPIException:
        # a page run on its own (e.g. AppTest.from_file on one page) has no app.py to link to
        pass
    st.sidebar.divider()

"""App-only helpers for the axlab workbench (the only code that imports streamlit)."""

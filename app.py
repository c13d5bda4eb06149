"""tinylora: see LoRA and QLoRA learn, live, on a laptop CPU. Run with `streamlit run app.py`."""

import streamlit as st

from tinylora.store import StoreError

st.set_page_config(page_title="tinylora", page_icon=":material/model_training:", layout="wide")

pages = [
    st.Page("pages/train.py", title="Train", icon=":material/play_circle:", default=True),
    st.Page("pages/runs.py", title="Runs", icon=":material/table_rows:"),
    st.Page("pages/quantization.py", title="Quantization lab", icon=":material/grain:"),
    st.Page("pages/parameters.py", title="Parameters and memory", icon=":material/memory:"),
    st.Page("pages/sweep.py", title="Sweep", icon=":material/grid_on:"),
]
try:
    st.navigation(pages).run()
except StoreError as error:
    # A database that breaks while a page draws gets a message on every page, never a traceback.
    st.error(str(error), icon=":material/error:")

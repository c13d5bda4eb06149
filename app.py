"""tinylora: see LoRA and QLoRA learn, live, on a laptop CPU. Run with `streamlit run app.py`."""

from pathlib import Path

import streamlit as st

from tinylora.store import StoreError

# A local image: a Material icon as page icon makes the browser fetch it from fonts.gstatic.com.
ICON = Path(__file__).parent / "assets" / "favicon.png"
st.set_page_config(page_title="tinylora", page_icon=str(ICON), layout="wide")

pages = [
    st.Page("pages/train.py", title="Train", icon=":material/play_circle:", default=True),
    st.Page("pages/runs.py", title="Runs", icon=":material/table_rows:"),
    st.Page("pages/adapters.py", title="Adapters", icon=":material/extension:"),
    st.Page("pages/forgetting.py", title="Forgetting", icon=":material/timeline:"),
    st.Page("pages/quantization.py", title="Quantization lab", icon=":material/grain:"),
    st.Page("pages/parameters.py", title="Parameters and memory", icon=":material/memory:"),
    st.Page("pages/sweep.py", title="Sweep", icon=":material/grid_on:"),
]
try:
    st.navigation(pages).run()
except StoreError as error:
    # A database that breaks while a page draws gets a message on every page, never a traceback.
    st.error(str(error), icon=":material/error:")

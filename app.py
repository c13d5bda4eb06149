"""tinylora: see LoRA and QLoRA learn, live, on a laptop CPU. Run with `streamlit run app.py`."""

import streamlit as st

st.set_page_config(page_title="tinylora", page_icon=":material/model_training:", layout="wide")

pages = [
    st.Page("pages/train.py", title="Train", icon=":material/play_circle:", default=True),
]
st.navigation(pages).run()

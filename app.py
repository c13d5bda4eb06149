"""tinylora: see LoRA and QLoRA learn, live, on a laptop CPU. Run with `streamlit run app.py`."""

import streamlit as st

st.set_page_config(page_title="tinylora", page_icon=":material/model_training:", layout="wide")

pages = [
    st.Page("pages/train.py", title="Train", icon=":material/play_circle:", default=True),
    # When the first session after a server start opens on a path named like a file in pages/, Streamlit
    # 1.67 shows that file with its old pages-directory navigation, so this path differs from the file name.
    st.Page("pages/sweep.py", title="Sweep", icon=":material/grid_on:", url_path="sweeps"),
]
st.navigation(pages).run()

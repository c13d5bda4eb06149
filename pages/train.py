"""Train: pick a method and its settings, start a run in a worker, and watch it learn."""

import streamlit as st

from tinylora import jobs
from tinylora.config import RunConfig
from tinylora.store import StoreError
from ui.common import get_store, page_header, session_owner, start_runner
from ui.controls import apply_config_to_widgets, run_config_controls
from ui.run_view import live_run_view

store = get_store()
start_runner(store)
page_header("Train", "Pick a fine-tuning method and its hyperparameters, press Train, and watch a 202K-parameter "
                     "transformer learn on this CPU. The run trains in a worker process, so clicks, page switches "
                     "and refreshes never stop it.")

run_id = st.query_params.get("run")
run = store.get_run(run_id) if run_id else None

# A fresh session opened on a run's URL shows that run's settings in the controls.
if run is not None and st.session_state.get("_train_loaded") != run_id and run.kind == "train":
    if "train_method" not in st.session_state:
        try:
            apply_config_to_widgets(RunConfig.from_dict(run.config), "train_")
        except ValueError:
            pass
    st.session_state._train_loaded = run_id

active = run is not None and run.active
with st.sidebar:
    st.subheader("Settings")
    config, error = run_config_controls("train_")
    if error:
        st.error(error, icon=":material/error:")
    col_train, col_stop = st.columns(2)
    train_clicked = col_train.button("Train", type="primary", key="train_button", disabled=active or error is not None,
                                     width="stretch", help="Start a run with these settings")
    stop_clicked = col_stop.button("Stop", key="stop_button", disabled=not active, width="stretch",
                                   help="Stop the run; it keeps what it learned so far")

if stop_clicked and run is not None:
    store.request_stop(run.id)
    run = store.get_run(run.id)

if train_clicked:
    current = store.get_run(run_id) if run_id else None
    if current is not None and current.active:
        st.info(f"Run {current.id} is still {current.status}; stop it before starting another.")
    elif config is None:
        st.error(error)
    else:
        try:
            run_id = jobs.submit(store, "train", config.to_dict(), owner=session_owner())
        except (ValueError, StoreError) as submit_error:
            st.error(str(submit_error))
        else:
            st.query_params["run"] = run_id
            st.session_state._train_loaded = run_id
            st.rerun()

if run_id:
    live_run_view(store, run_id, key="train")
else:
    st.info("Choose settings in the sidebar and press **Train**. The defaults are the reference notebook's LoRA run "
            "(r=4, lora_alpha=8 on qkv and proj, learning rate 5e-3, 8 epochs), which ends at validation accuracy "
            "0.984.", icon=":material/play_circle:")

"""Adapters: one adapter per task over one frozen base; the adapter x task matrix, swapping and mixing."""

import streamlit as st

from tinylora.store import StoreError
from ui.adapters_view import (OPEN_RUN, SHOWN_STATUSES, adapters_controls, live_set_progress, load, matrix_view,
                              mixing, pick_set, playground, stop_button, submit_set)
from ui.common import get_store, page_header, session_owner, start_runner

store = get_store()
start_runner(store)
page_header("Adapters", "Train one LoRA adapter per task over the same frozen base, then check each adapter on every "
                        "task, swap between them on a sequence of your own, and mix two of them.")

with st.sidebar:
    st.subheader("New adapter set")
    params, error = adapters_controls("adapters_new_")
    if error:
        st.error(error, icon=":material/error:")
    if st.button("Train adapters", type="primary", key="adapters_train", disabled=params is None, width="stretch",
                 help="Queue one job that trains an adapter per task, one after another, in a worker process"):
        if submit_set(store, params, session_owner()):
            st.rerun()

try:
    run = pick_set(store)
except StoreError as store_error:
    st.error(str(store_error), icon=":material/error:")
    st.stop()

extra_id = st.session_state.get(OPEN_RUN)
set_id = run.id if run is not None and run.status in SHOWN_STATUSES else None
if extra_id:
    left, right = st.columns([5, 1], vertical_alignment="center")
    if set_id is not None:
        opened = f"Showing run {extra_id}'s adapter from the Runs page next to the adapters of set {set_id}."
    elif run is None:
        opened = (f"Showing run {extra_id}'s adapter from the Runs page on its own base: there is no adapter set "
                  "to show it next to.")
    else:
        opened = (f"Showing run {extra_id}'s adapter from the Runs page on its own base: the adapter set {run.id} "
                  f"is {run.status}, so its adapters are not loaded.")
    left.info(opened, icon=":material/extension:")
    if right.button("Close it", key="adapters_close_run", icon=":material/close:"):
        st.session_state.pop(OPEN_RUN)
        st.rerun()

if run is None and not extra_id:
    st.info("No adapter sets yet. Pick two or more tasks in the sidebar and press **Train adapters**. The defaults "
            "are the reference notebook's: adapters for odd_majority and first_lt_last (r=4, lora_alpha=8, 8 epochs) "
            "over the base of seed 0.", icon=":material/extension:")
    st.stop()

if run is not None and run.status not in SHOWN_STATUSES:
    stop_button(store, run)
    live_set_progress(store, run.id, key="adapters_live")
    if run.active and not extra_id:
        st.stop()
if run is not None and run.status == "stopped":
    st.caption(f"This set was stopped: {run.message}. The matrix shows the adapters as they were when it stopped.")

if set_id is None and not extra_id:
    st.stop()
try:
    loaded = load(str(store.home), set_id, extra_id)
except ValueError as load_error:
    st.error(f"The adapters could not be loaded: {load_error}", icon=":material/error:")
    st.stop()

st.subheader("Every adapter on every task")
matrix_view(store, run if set_id else None, loaded, key="adapters")

st.subheader("Swap playground")
st.caption("Type a sequence or draw a random one: every adapter classifies it, with the label its own task's rule "
           "gives and the measured time of each swap.")
playground(loaded, key="adapters_play")

if loaded.adapter_set is not None:
    st.subheader("Mixing two adapters")
    st.caption("The mix adds (1 - w) times the first adapter's weight update to w times the second's (heads "
               "included), exactly, by concatenating their ranks. Each point is evaluated on both tasks' validation "
               "sets once, then the slider only picks a point.")
    mixing(store, run, loaded, key="adapters_mix")

if set_id is not None:
    with st.expander("Training curves of this set"):
        live_set_progress(store, set_id, key="adapters_done")

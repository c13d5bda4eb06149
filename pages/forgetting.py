"""Forgetting: train on task A, then on task B, and follow the accuracy on both under five strategies."""

import streamlit as st

from tinylora import jobs
from tinylora.store import StoreError
from ui.common import get_store, page_header, session_owner, start_runner
from ui.forgetting_view import (LEARNS_LESS_KEY, forgetting_controls, learns_less_controls, learns_less_view,
                                pick_group, pick_learns_less, submit_group, task_controls, timeline_view)

store = get_store()
start_runner(store)
page_header("Forgetting", "Train on task A, then on task B, and watch what happens to A. Compare five strategies "
                          "against catastrophic forgetting, and see whether LoRA learns less and forgets less.")

with st.sidebar:
    st.subheader("Tasks")
    task_a, task_b = task_controls("forgetting_")
    st.subheader("Strategies")
    params, error = forgetting_controls("forgetting_", task_a, task_b)
    if error:
        st.error(error, icon=":material/error:")
    label = f"Run {len(params)} strateg{'y' if len(params) == 1 else 'ies'}" if params else "Run"
    if st.button(label, type="primary", key="forgetting_run", disabled=not params, width="stretch",
                 help="Queue one job per strategy. Each runs in its own worker, as many at once as the runner has "
                      "training slots (one per CPU core by default)"):
        submit_group(store, params, session_owner())
        st.rerun()

st.subheader("Accuracy on A and B while training on A, then on B")
try:
    runs = pick_group(store)
except StoreError as store_error:
    st.error(str(store_error), icon=":material/error:")
    st.stop()
if runs:
    if any(run.active for run in runs) and st.button("Stop this comparison", key="forgetting_stop",
                                                     icon=":material/stop_circle:"):
        for run in runs:
            if run.active:
                store.request_stop(run.id)
        st.rerun()
    timeline_view(store, runs, key="forgetting")
else:
    st.info("No comparisons yet. Pick strategies in the sidebar and press **Run**. With the defaults (the reference "
            "notebook's: 6 epochs on odd_majority, then 12 on first_lt_last), one adapter trained on both in turn "
            "forgets A while it learns B.", icon=":material/timeline:")

st.divider()
st.subheader("Learns less, forgets less")
st.caption("Biderman et al. 2024 (\"LoRA Learns Less and Forgets Less\", TMLR) found that LoRA learns a new domain "
           "less well than full finetuning but keeps more of the base model's skills outside it, and that both "
           "methods lie on one learning-forgetting trade-off curve. Here a model is first fully finetuned on A. Then "
           "full finetuning and LoRA at several ranks each train a copy of it on B, with a head of its own for B, "
           "and each run becomes a point: accuracy on B against accuracy on A, which A's own head measures on the "
           "body the run changed.")
ll_params, ll_error = learns_less_controls("forgetting_ll_", task_a, task_b)
if ll_error:
    st.error(ll_error, icon=":material/error:")
if st.button("Run the study", key="forgetting_ll_run", disabled=ll_params is None, icon=":material/scatter_plot:",
             help=f"One job: finetune on {task_a}, then one run on {task_b} per point"):
    try:
        st.session_state[LEARNS_LESS_KEY] = jobs.submit(store, "learns_less", ll_params, owner=session_owner())
    except (ValueError, StoreError) as submit_error:
        st.error(f"The study was not started: {submit_error}", icon=":material/error:")
    else:
        st.rerun()
study = pick_learns_less(store)
if study is not None:
    learns_less_view(store, study, key="forgetting_ll")

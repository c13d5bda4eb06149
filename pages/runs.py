"""Runs: every stored run in one table; compare, download, delete, and upload adapters."""

import streamlit as st

from tinylora.compare import filter_runs, runs_frame
from tinylora.config import METHODS
from tinylora.store import STATUSES, StoreError
from tinylora.tasks import TASKS
from ui.common import get_store, page_header, session_owner, start_runner
from ui.runs_view import compare_charts, run_actions, runs_table, selection_actions, upload_form

REFRESH_SECONDS = 2.0  # table refreshes while any run is queued or running

store = get_store()
start_runner(store)
page_header("Runs", "Every run this app has trained or stored, kept on disk across restarts. Select rows to "
                    "overlay their curves, download metrics and adapters, or delete them.")

with st.sidebar:
    st.subheader("Filters")
    keep = "session"
    methods = st.multiselect("Method", list(METHODS), key="runs_filter_method", persist_state=keep,
                             placeholder="all methods")
    tasks = st.multiselect("Task", list(TASKS), key="runs_filter_task", persist_state=keep, placeholder="all tasks")
    statuses = st.multiselect("Status", list(STATUSES), key="runs_filter_status", persist_state=keep,
                              placeholder="all statuses")
    st.divider()
    upload_form(store, session_owner())

notice = st.session_state.pop("runs_notice", None)
if notice:
    getattr(st, notice[0])(notice[1])

try:
    any_active = any(run.active for run in store.list_runs())
except StoreError as error:
    st.error(str(error), icon=":material/error:")
    st.stop()


def draw_runs() -> None:
    all_runs = store.list_runs()
    if any(run.status == "running" for run in all_runs):
        store.mark_interrupted()  # a worker that died while this page polls shows as interrupted
        all_runs = store.list_runs()
    if not all_runs:
        st.info("No runs yet. Train one on the Train page, or upload an adapter in the sidebar.",
                icon=":material/info:")
        return
    frame = filter_runs(runs_frame(all_runs), methods=methods, tasks=tasks, statuses=statuses)
    st.caption(f"{len(frame)} of {len(all_runs)} runs shown. Click a column header to sort; tick rows to compare.")
    selected_ids = runs_table(frame)
    if any_active and not any(run.active for run in all_runs):
        st.rerun()  # the last active run ended: redraw the page so that polling stops

    by_id = {run.id: run for run in all_runs}
    selected = [by_id[run_id] for run_id in selected_ids if run_id in by_id]
    if not selected:
        st.caption("Select one or more rows to overlay their curves and act on them.")
        return
    col_smoothing, col_axis = st.columns([3, 1])
    smoothing = col_smoothing.slider(
        "Smoothing", min_value=0.0, max_value=0.99, value=0.6, step=0.01, key="runs_smoothing",
        persist_state="session", help="Smooths the training loss with a debiased exponential moving average, as "
                                      "TensorBoard does; 0 shows the raw values. Validation accuracy is never smoothed.")
    loss_axis = col_axis.radio("Loss against", ["step", "epoch"], key="runs_loss_axis", horizontal=True,
                               persist_state="session",
                               help="Epochs line up runs with different batch sizes, whose steps cover different "
                                    "numbers of examples.")
    compare_charts(store, selected, smoothing, loss_axis)
    selection_actions(store, selected)
    run_actions(store, selected)


@st.fragment(run_every=REFRESH_SECONDS if any_active else None)
def runs_body() -> None:
    try:
        draw_runs()
    except StoreError as error:
        st.error(str(error), icon=":material/error:")


runs_body()

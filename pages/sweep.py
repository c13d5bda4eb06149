"""Sweep: train a grid (or a random or TPE sample) of settings and watch the results fill in."""

import streamlit as st

from tinylora.store import StoreError
from tinylora.sweep_store import dispatchers, list_sweeps, resume_sweep, start_sweep, stop_sweep
from tinylora.sweep_results import sweep_progress
from ui.common import get_store, page_header, session_owner, start_runner
from ui.sweep_controls import sweep_controls
from ui.sweep_view import live_sweep_view, progress_line, select_sweep, sweep_picker

store = get_store()
start_runner(store)
page_header("Sweep", "Which r and lora_alpha should you use? Choose a list of values per setting, start the sweep, "
                     "and watch the table and charts fill in as runs finish. Each point is an ordinary run in a "
                     "worker process (or a task on a Ray cluster), kept with every other run.")

with st.sidebar:
    st.subheader("New sweep")
    spec, error = sweep_controls("sweep_")
    if error:
        st.error(error, icon=":material/error:")
    else:
        points = spec.planned_point_count()
        st.caption(f"{points} point{'s' * (points != 1)} × {len(spec.seeds)} seed{'s' * (len(spec.seeds) != 1)} "
                   f"= {points * len(spec.seeds)} runs")
    start_clicked = st.button("Start sweep", type="primary", key="sweep_start", disabled=error is not None,
                              width="stretch")

if start_clicked and spec is not None:
    try:
        record = start_sweep(store, spec, owner=session_owner())
    except (ValueError, StoreError) as start_error:
        st.error(str(start_error))
    else:
        select_sweep(record.id)
        st.rerun()

records = {r.id: r for r in list_sweeps(store)}
if not records:
    st.info("No sweeps yet. Choose values in the sidebar and press **Start sweep**. The defaults, r in {2, 8} × "
            "lora_alpha in {8, 16}, train four runs of the reference LoRA setup.", icon=":material/grid_on:")
    st.stop()

record = sweep_picker(store, records)

progress = sweep_progress(store, record)
active = progress.active
col_stop, col_resume, col_info = st.columns([1, 1, 4], vertical_alignment="center")
if col_stop.button("Stop sweep", key="sweep_stop", disabled=not active, icon=":material/stop_circle:",
                   help="Stop every queued and running run of this sweep; finished runs are kept"):
    stop_sweep(store, record.id)
    st.rerun()
unfinished = progress.done < progress.runs_total
if col_resume.button("Resume", key="sweep_resume", disabled=active or not unfinished,
                     icon=":material/play_circle:", help="Train the points that have no finished run yet"):
    try:
        resume_sweep(store, record.id, owner=session_owner())
    except ValueError as resume_error:
        st.error(str(resume_error))
    else:
        st.rerun()
latest = dispatchers(store, record.id)
if latest and latest[0].status == "failed":
    col_info.error(f"The sweep's dispatcher failed: {latest[0].message}", icon=":material/error:")
elif latest and not active:
    col_info.caption(f"{latest[0].status.capitalize()}: {latest[0].message or progress_line(progress)}")
elif active:
    where = f"the Ray cluster at {record.spec.ray_address}" if record.spec.executor == "ray" else "this machine"
    col_info.caption(f"Running on {where}; the view refreshes every second.")

live_sweep_view(store, record, key="sweep")

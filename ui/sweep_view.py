"""The live view of one sweep: progress, results table, heatmap, parallel coordinates, accuracy against r, best point."""

import time

import pandas as pd
import streamlit as st

from tinylora.store import RunStore
from tinylora.sweep import AXIS_LABELS, describe_point
from tinylora.sweep_store import SweepRecord, sweeps_dir
from tinylora.sweep_results import (SweepProgress, accuracy_by_r, best_point, heatmap_data, label, points_table,
                                    results_csv, runs_table, sweep_progress, trainable_by_r)

from .charts import accuracy_params_chart, sweep_heatmap, sweep_parallel_coordinates
from .controls import request_train_load

REFRESH_SECONDS = 1.0
CHART_CONFIG = {"displayModeBar": False}
MEAN_OVER_ALL = "mean over all"
NUMERIC_AXES = ("r", "lora_alpha", "lr")  # drawn on a scale; the other axes list their values
HEATMAP_PREFERENCE = ("r", "lora_alpha", "lr", "target_modules", "use_rslora", "method", "task")
PICKER_KEY = "sweep_select"
SWEEP_PARAM = "sweep"  # the query parameter that names the shown sweep, as in /sweep?sweep=<id>


def sweep_title(record: SweepRecord) -> str:
    """Name a sweep in one line for the picker: its name or swept axes, search and start time."""
    spec = record.spec
    what = spec.name or (" × ".join(AXIS_LABELS[a] for a in spec.swept_axes) or "base settings")
    started = time.strftime("%b %d %H:%M", time.localtime(record.created))
    where = " on Ray" if spec.executor == "ray" else ""
    return f"{what} ({spec.search}{where}, {started})"


def select_sweep(sweep_id: str) -> None:
    """Show `sweep_id` from the next run on. Call it before the picker is drawn in this run."""
    st.session_state[PICKER_KEY] = sweep_id
    st.query_params[SWEEP_PARAM] = sweep_id


def _follow_picker() -> None:
    st.query_params[SWEEP_PARAM] = st.session_state[PICKER_KEY]


def sweep_picker(store: RunStore, records: dict[str, SweepRecord]) -> SweepRecord:
    """Draw the picker over `records` (newest first) and return the sweep to show.

    The `sweep` query parameter decides which sweep is shown, and the picker's session state is set from it on
    every run. A new sweep or a changed URL therefore wins over the picker's old value. Picking a sweep writes
    the parameter in the widget's callback, before the next run reads it.
    """
    ids = list(records)
    requested = st.query_params.get(SWEEP_PARAM)
    if requested is not None and requested not in records:
        st.warning(f"Sweep {requested!r} was not found in {sweeps_dir(store)}; showing the latest.",
                   icon=":material/warning:")
        requested = None
    select_sweep(requested or ids[0])

    # Statuses stay out of the labels, because Streamlit 1.67 was seen to keep showing an option's old label
    # when only its text changed. The browser sends the picked label back, so each label must name one sweep.
    titles = [sweep_title(records[i]) for i in ids]
    labels = {i: title if titles.count(title) == 1 else f"{title} · {i}" for i, title in zip(ids, titles)}
    chosen = st.selectbox("Sweep", ids, format_func=labels.get, key=PICKER_KEY, on_change=_follow_picker)
    return records[chosen]


def progress_line(progress: SweepProgress) -> str:
    parts = [f"{progress.done} of {progress.runs_total} runs done"]
    for status in ("running", "queued", "pending", "stopped", "failed", "interrupted", "diverged"):
        if progress.counts.get(status):
            parts.append(f"{progress.counts[status]} {status}")
    return " · ".join(parts)


def _varying_axes(runs: pd.DataFrame, record: SweepRecord) -> list[str]:
    """Return the point axes whose values differ among the sweep's rows."""
    return [a for a in record.spec.point_axes if runs[a].map(lambda v: label(a, v)).nunique() > 1]


def fixed_settings(runs: pd.DataFrame, record: SweepRecord, varying: list[str]) -> str:
    """Describe the axes every point shares, as "method=lora, lr=0.005"."""
    fixed = {a: runs[a].iloc[0] for a in record.spec.point_axes if a not in varying and len(runs)}
    return describe_point(fixed) if fixed else ""


def results_tables(runs: pd.DataFrame, points: pd.DataFrame, record: SweepRecord, varying: list[str],
                   key: str) -> None:
    points_tab, runs_tab = st.tabs(["Points (mean over seeds)", "Runs"])
    number = st.column_config.NumberColumn
    with points_tab:
        shared = [a for a in record.spec.point_axes if a not in varying]
        view = points.drop(columns=["acc_min", "acc_max", "seeds_done", *shared]).copy()
        for axis in varying:
            view[axis] = view[axis].map(lambda v, axis=axis: label(axis, v))
        # A point with one finished seed has no spread: shown as a dash, as the Runs table shows a missing number.
        view["acc_std"] = view["acc_std"].map(lambda v: "–" if pd.isna(v) else f"{v:.3f}")
        if shared:
            st.caption(f"Every point shares {fixed_settings(runs, record, varying)}.")
        st.dataframe(view, key=f"{key}-points", hide_index=True, column_config={
            "acc_mean": number("mean acc", format="%.3f", help="mean final validation accuracy over finished seeds"),
            "acc_std": st.column_config.TextColumn("std", help="sample standard deviation over seeds"),
            "seeds_finished": number("seeds done"), "trainable": number("trainable", format="localized"),
            "seconds_mean": number("seconds", format="%.1f"), "best_run_id": "best run"})
    with runs_tab:
        view = runs.copy()
        for axis in record.spec.point_axes:
            view[axis] = view[axis].map(lambda v, axis=axis: label(axis, v))
        st.dataframe(view, key=f"{key}-runs", hide_index=True, column_config={
            "final_acc": number("final acc", format="%.3f"), "trainable": number("trainable", format="localized"),
            "seconds": number("seconds", format="%.1f")})
    st.download_button("Download CSV", results_csv(runs), file_name=f"{record.id}.csv", mime="text/csv",
                       key=f"{key}-csv", icon=":material/download:", help="One row per run, with its axis values")


def heatmap_section(runs: pd.DataFrame, record: SweepRecord, varying: list[str], key: str) -> None:
    if len(varying) < 2:
        st.info("The heatmap needs two axes with several values each; this sweep varies "
                f"{', '.join(AXIS_LABELS[a] for a in varying) or 'no axis'}.", icon=":material/grid_on:")
        return
    varying = sorted(varying, key=HEATMAP_PREFERENCE.index)
    col_x, col_y = st.columns(2)
    x = col_x.selectbox("Heatmap x axis", varying, index=0, format_func=AXIS_LABELS.get, key=f"{key}-hx")
    y_options = [a for a in varying if a != x]
    y = col_y.selectbox("Heatmap y axis", y_options, index=0, format_func=AXIS_LABELS.get, key=f"{key}-hy")
    fixed = {}
    others = [a for a in varying if a not in (x, y)]
    if others:
        columns = st.columns(len(others))
        for column, axis in zip(columns, others):
            values = list(dict.fromkeys(runs[axis].tolist()))
            choice = column.selectbox(AXIS_LABELS[axis], [MEAN_OVER_ALL, *range(len(values))],
                                      format_func=lambda i, values=values, axis=axis: i if isinstance(i, str)
                                      else label(axis, values[i]), key=f"{key}-fix-{axis}")
            if choice != MEAN_OVER_ALL:
                fixed[axis] = values[choice]
    data = heatmap_data(runs, record.spec, x, y, fixed)
    st.plotly_chart(sweep_heatmap(data, AXIS_LABELS[x], AXIS_LABELS[y], [label(x, v) for v in data.x_values],
                                  [label(y, v) for v in data.y_values]),
                    key=f"{key}-heatmap", config=CHART_CONFIG)


def parallel_section(runs: pd.DataFrame, record: SweepRecord, varying: list[str], key: str) -> None:
    finished = runs[(runs["status"] == "finished") & runs["final_acc"].notna()]
    if finished.empty:
        st.caption("The parallel-coordinates plot draws a line per run as runs finish.")
        return
    axes = list(varying) + (["seed"] if len(record.spec.seeds) > 1 else [])
    finished = finished.sort_values([a for a in axes if finished[a].notna().all()] or ["run_id"])
    columns = []
    for axis in axes:
        values = finished[axis].tolist()
        numeric = axis in NUMERIC_AXES and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        columns.append((AXIS_LABELS[axis], values if numeric else [label(axis, v) for v in values], numeric))
    if finished["trainable"].notna().all():
        columns.append(("trainable", [int(v) for v in finished["trainable"]], True))
    st.plotly_chart(sweep_parallel_coordinates(columns, finished["final_acc"].tolist()), key=f"{key}-parcoords",
                    config=CHART_CONFIG)


def r_section(runs: pd.DataFrame, record: SweepRecord, varying: list[str], key: str) -> None:
    if "r" not in varying:
        st.caption("Sweep over r to see accuracy and trainable parameters against r.")
        return
    series_options = [None] + [a for a in varying if a not in ("r", "seed")]
    default = series_options.index("use_rslora") if "use_rslora" in series_options else 0
    series = st.selectbox("Lines by", series_options, index=default, key=f"{key}-series",
                          format_func=lambda a: "one line (mean over the other axes)" if a is None else AXIS_LABELS[a])
    st.plotly_chart(accuracy_params_chart(accuracy_by_r(runs, series), trainable_by_r(runs)), key=f"{key}-byr",
                    config=CHART_CONFIG)


def best_section(store: RunStore, points: pd.DataFrame, record: SweepRecord, varying: list[str], key: str) -> None:
    best = best_point(points)
    if best is None:
        st.caption("The best configuration appears when the first run finishes.")
        return
    axes = {a: best[a] for a in (varying or record.spec.point_axes)}
    spread = f" ± {best['acc_std']:.3f}" if pd.notna(best["acc_std"]) else ""
    st.success(f"Best so far: {describe_point(axes)}: mean validation accuracy {best['acc_mean']:.3f}{spread} over "
               f"{best['seeds_finished']} seed(s), {int(best['trainable']):,} trainable parameters.",
               icon=":material/emoji_events:")
    if st.button("Open the best run on Train", key=f"{key}-open-best", icon=":material/open_in_new:",
                 help="Load its settings into the Train controls and show its curves"):
        run = store.get_run(best["best_run_id"])
        if run is not None:
            request_train_load(run.id)
            st.switch_page("pages/train.py", query_params={"run": run.id})


def live_sweep_view(store: RunStore, record: SweepRecord, key: str = "sweep") -> SweepProgress:
    """Draw a sweep and refresh it every second while it is active; return its progress at draw time."""
    first = sweep_progress(store, record)

    @st.fragment(run_every=REFRESH_SECONDS if first.active else None)
    def view() -> None:
        runs = runs_table(store, record)
        progress = sweep_progress(store, record, runs)
        st.progress(progress.done / progress.runs_total if progress.runs_total else 0.0,
                    text=progress_line(progress))
        points = points_table(runs, record.spec)
        varying = _varying_axes(runs, record)
        best_section(store, points, record, varying, key)
        results_tables(runs, points, record, varying, key)
        heatmap_section(runs, record, varying, key)
        parallel_section(runs, record, varying, key)
        r_section(runs, record, varying, key)
        if first.active and not progress.active:
            st.rerun()  # the sweep ended: redraw the page so the buttons follow

    view()
    return first

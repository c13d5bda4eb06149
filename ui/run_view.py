"""The live view of one run: status, progress, parameter summary and streaming charts."""

import time

import streamlit as st

from tinylora.config import METHOD_LABELS, RunConfig
from tinylora.capacity import max_runs
from tinylora.jobs import HEARTBEAT_SECONDS, busy_slots
from tinylora.progress import RunProgress, read_progress
from tinylora.store import RunStore, StoreError

from .live_charts import empty_live_charts, live_charts, planned_steps

REFRESH_SECONDS = 0.25  # the experiment pages' live views: 4 updates a second
# How often a running run's status, metrics and chart data are read from the store. The progress line and the
# charts follow the run's live file in between; the store's data is what they show when it cannot be read.
REFRESH_RUN_SECONDS = 5.0
REFRESH_UPLOAD_SECONDS = 0.5  # an uploaded adapter's evaluation has no live file and ends within seconds
STALE_SECONDS = 3 * HEARTBEAT_SECONDS  # a running run's worker writes a heartbeat every HEARTBEAT_SECONDS


def describe_config(config: dict) -> str:
    """One line naming a training run's settings."""
    lora, train = config.get("lora", {}), config.get("train", {})
    parts = [METHOD_LABELS.get(config.get("method"), config.get("method", "?")), f"task {config.get('task')}"]
    if config.get("base", "random") != "random":
        parts.append(f"base {config['base']}")
    if config.get("method") != "full":
        scaling = " (rsLoRA)" if lora.get("use_rslora") else ""
        parts.append(f"r={lora.get('r')}, lora_alpha={lora.get('lora_alpha'):g}{scaling} on "
                     f"{'+'.join(lora.get('target_modules', []))}")
    if "upload" in config:  # an uploaded adapter: evaluated, never trained here
        files = ", ".join(config["upload"].get("files", []))
        parts.append(f"uploaded adapter ({files}) on the base of seed {train.get('seed')}")
        return " · ".join(parts)
    epochs = train.get("epochs")
    parts.append(f"lr {train.get('lr'):g}, {epochs} epoch{'' if epochs == 1 else 's'}, "
                 f"batch {train.get('batch_size')}, seed {train.get('seed')}")
    if train.get("fast", "auto") != "auto":
        parts.append(f"step computation {train['fast']}")
    return " · ".join(parts)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def _status_message(store: RunStore, p: RunProgress) -> None:
    run = p.run
    if run.status == "queued":
        position = store.queue_position(run.id)
        if run.executor:
            st.info(f"Queued on the {run.executor} cluster: it starts when the cluster has a free CPU.",
                    icon=":material/hourglass_top:")
        elif (busy := busy_slots(store)) < max_runs() and position == 1:
            # The runner picks queued runs up within a fraction of a second.
            st.info("Starting: a training slot is free.", icon=":material/hourglass_top:")
        else:
            st.info(f"Queued at position {position}: {busy} of {max_runs()} training slots are busy. "
                    f"It starts as soon as a slot frees up.", icon=":material/hourglass_top:")
    elif run.status == "running" and p.step == 0 and p.status_message:
        message = f"{p.status_message[:1].upper()}{p.status_message[1:]}"
        st.progress(0.0, text=f"{message} · {format_seconds(p.elapsed)} elapsed")
    elif run.status == "running":
        pass  # the live charts draw the progress line, several times a second
    elif run.status == "finished":
        st.success(f"Finished: validation accuracy {run.final_acc:.3f} after {p.step} steps in "
                   f"{format_seconds(run.seconds)}.", icon=":material/check_circle:")
    elif run.status == "stopped":
        acc = f"; validation accuracy {run.final_acc:.3f} with the weights learned so far" if run.final_acc else ""
        st.warning(f"Stopped at step {p.step} of {p.steps_total or '…'}{acc}.", icon=":material/stop_circle:")
    elif run.status == "interrupted":
        st.warning(f"Interrupted: {run.message}", icon=":material/warning:")
    else:
        st.error(f"{run.status.capitalize()}: {run.message}", icon=":material/error:")


def _summary_metrics(p: RunProgress) -> None:
    cols = st.columns(4)
    if p.trainable is not None:
        cols[0].metric("Trainable parameters", f"{p.trainable:,}",
                       help=f"{p.trainable:,} trainable of {p.total:,} parameters in all")
        cols[1].metric("Share of all parameters", f"{100 * p.trainable / p.total:.2f}%",
                       help=f"of {p.total:,} parameters")
    else:
        cols[0].metric("Trainable parameters", "…")
        cols[1].metric("Share of all parameters", "…")
    if p.run.status == "running":
        return  # the live charts' progress line shows the speed and the latest accuracy, several times a second
    rate = p.steps_per_second
    cols[2].metric("Steps per second", f"{rate:.1f}" if rate else "…")
    label = "Final validation accuracy" if not p.run.active and p.eval_accs else "Validation accuracy"
    cols[3].metric(label, f"{p.eval_accs[-1]:.3f}" if p.eval_accs else "…",
                   help="after the latest evaluation (one per epoch)")


def empty_charts(key: str, config: RunConfig | None) -> None:
    """Draw the run view's two charts with no points yet, on the axes a run with `config` will fill.

    Drawing the component before any run also makes the browser load its code with the page, so a run's first
    point appears without that one-time load.
    """
    train = (config or RunConfig()).to_dict()["train"]
    empty_live_charts(f"{key}-empty", planned_steps(train), train["epochs"])


def live_run_view(store: RunStore, run_id: str, key: str = "run") -> RunProgress | None:
    """Draw a run and keep it updating while it is queued or running; return its progress at draw time.

    One fragment draws the status line, the canvas component of `ui.live_charts` and the metrics. While the
    run is active, the component follows the run's live file by itself several times a second. The fragment
    runs again every REFRESH_RUN_SECONDS, and whenever the component reads the run's first events or finds
    its file gone. Each script run makes the browser re-render the page, and on a 2-core machine that
    rendering takes CPU from the training worker. An ended run is drawn by the same component from the store.
    """
    cache_key = f"_progress_{key}"
    first = read_progress(store, run_id, st.session_state.get(cache_key))
    if first is None:
        st.warning(f"Run {run_id} was not found in {store.path}. It may have been deleted; start a new run.")
        return None
    st.session_state[cache_key] = first
    active = first.run.active

    def latest() -> RunProgress | None:
        progress = read_progress(store, run_id, st.session_state.get(cache_key))
        if progress is not None:
            st.session_state[cache_key] = progress
        return progress

    refresh = REFRESH_RUN_SECONDS if first.run.kind == "train" else REFRESH_UPLOAD_SECONDS

    @st.fragment(run_every=refresh if active else None)
    def run_view() -> None:
        try:
            progress = latest()
            if (progress is not None and progress.run.status == "running"
                    and time.time() - (progress.run.heartbeat or 0) > STALE_SECONDS):
                # No heartbeat for a while: if the worker is gone, show the run as interrupted now.
                store.mark_interrupted()
                progress = latest()
        except StoreError as error:
            st.error(str(error), icon=":material/error:")
            return
        if progress is None:
            st.warning(f"Run {run_id} was deleted.")
            return
        if active and not progress.run.active:
            st.rerun()  # the run ended: redraw the page so the buttons and charts follow
        st.caption(f"Run `{run_id}` · {describe_config(progress.run.config)}")
        _status_message(store, progress)
        # The metrics come after the charts: the line above the charts (a status, or the live progress line)
        # keeps about the same height from queued to running to ended, so the charts stay in place.
        live_charts(store, progress, key=f"{key}-live")
        _summary_metrics(progress)

    run_view()
    return first

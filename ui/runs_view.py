"""The parts of the Runs page: the runs table with row selection, overlaid curves, run actions and uploads."""

import hashlib

import pandas as pd
import streamlit as st

from tinylora.adapter_files import FULL_STATE_NAME, MAX_UPLOAD_BYTES, AdapterFileError
from tinylora.adapter_writing import zip_adapter, zip_adapter_set
from tinylora.compare import metrics_csv
from tinylora.config import METHOD_LABELS, RunConfig
from tinylora.experiments import ADAPTERS_DIR
from tinylora.progress import RunProgress, read_progress
from tinylora.smoothing import smooth
from tinylora.store import Run, RunStore, StoreError
from tinylora.tasks import TASKS
from tinylora.uploads import LORA_METHODS, UploadSettings, store_upload
from tinylora.weights import ADAPTER_DIR

from .adapters_view import SET_KEY
from .charts import COLORS, overlay_chart
from .controls import parse_whole_number, request_train_load

TRAIN_PAGE = "pages/train.py"
ADAPTERS_PAGE = "pages/adapters.py"
# Run kinds whose events are several curves (one per adapter, phase or trial), with the page that draws them.
# The overlay draws one loss and one accuracy curve per run, so it leaves these runs out.
EXPERIMENT_PAGES = {
    "adapters": ("Adapters", "pages/adapters.py"),
    "forgetting": ("Forgetting", "pages/forgetting.py"),
    "learns_less": ("Forgetting", "pages/forgetting.py"),
    "sweep": ("Sweep", "pages/sweep.py"),
}
SELECTED = "runs_selected"  # session key: the ids of the selected runs, which outlive the table's row positions

# The table's columns, in display order: the outcome first, so that it stays in view on narrow screens.
# The widths in pixels fit the longest method and task names and a run id in Streamlit 1.67's font.
# `created` is left out because a run's id starts with its creation time.
TABLE_CONFIG = {
    "run": st.column_config.TextColumn("Run", width=165, help="The run's id (its creation time first), also "
                                                               "the name of its directory under runs/"),
    "status": st.column_config.TextColumn("Status", width=75),
    "final_acc": st.column_config.NumberColumn("Final acc", width=70, format="%.3f",
                                               help="validation accuracy at the end of the run"),
    "method": st.column_config.TextColumn("Method", width=125),  # fits "qlora-int8-channel"
    "task": st.column_config.TextColumn("Task", width=95),
    "r": st.column_config.NumberColumn("r", width=35, help="LoRA rank"),
    "lora_alpha": st.column_config.NumberColumn("lora_alpha", width=75, format="plain"),
    "targets": st.column_config.TextColumn("Targets", width=70, help="target_modules"),
    "lr": st.column_config.NumberColumn("lr", width=50, format="%.0e", help="learning rate"),
    "epochs": st.column_config.NumberColumn("Epochs", width=55),
    "seconds": st.column_config.NumberColumn("Seconds", width=65, format="%.1f",
                                             help="training time; for an upload, its evaluation time"),
    "kind": st.column_config.TextColumn("Kind", width=55, help="train: trained here; upload: an uploaded adapter"),
    "fast": st.column_config.TextColumn("Steps", width=55, help="step computation: auto (the default), fused, "
                                                                  "bf16 or off (eager, as the reference)"),
}


def run_label(run: Run) -> str:
    """A short name for a run in chart legends: the end of its id, its method (or strategy), r and kind.

    Only train, upload and absorb runs store a method, so other kinds show their strategy, or only their kind.
    """
    config = run.config
    parts = [run.id[-6:]]
    method = config.get("method")
    if method is not None:
        parts.append(METHOD_LABELS.get(method, str(method)))
    elif config.get("strategy") is not None:
        parts.append(str(config["strategy"]))
    if method != "full" and config.get("strategy") != "full" and isinstance(config.get("lora"), dict):
        parts.append(f"r={config['lora'].get('r')}")
    if run.kind != "train":
        parts.append(run.kind)
    return " · ".join(parts)


def runs_table(frame: pd.DataFrame) -> list[str]:
    """Draw the runs table with multi-row selection and return the ids of the selected runs.

    Streamlit reports a selection as row positions, which point at other runs once rows are added, removed
    or filtered. So the selection is kept as run ids, and the table's key changes with its list of ids: a
    changed list starts a new table whose default selection is the same runs at their new positions.
    """
    ids = list(frame["run"])
    previous = st.session_state.get(SELECTED, [])
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]
    rows = [i for i, run_id in enumerate(ids) if run_id in previous]
    event = st.dataframe(frame, key=f"runs_table_{digest}", on_select="rerun", selection_mode="multi-row",
                         selection_default={"selection": {"rows": rows}} if rows else None,
                         hide_index=True, column_config=TABLE_CONFIG, column_order=list(TABLE_CONFIG),
                         placeholder="–", width="stretch")
    selected = [ids[i] for i in event.selection.rows if 0 <= i < len(ids)]
    st.session_state[SELECTED] = selected
    return selected


def experiment_note(runs: list[Run]) -> str | None:
    """Return a note naming the runs that the overlay leaves out and their pages, or None if there are none."""
    by_page: dict[str, list[str]] = {}
    for run in runs:
        if run.kind in EXPERIMENT_PAGES:
            by_page.setdefault(EXPERIMENT_PAGES[run.kind][0], []).append(f"{run.id} ({run.kind})")
    if not by_page:
        return None
    where = "; ".join(f"{', '.join(names)} on the {page} page" for page, names in by_page.items())
    return (f"Not overlaid: these runs are experiments with several curves each (one per adapter, phase or sweep "
            f"trial), which their own pages draw. "
            f"See {where}.")


def compare_charts(store: RunStore, runs: list[Run], smoothing: float, loss_axis: str = "step") -> None:
    """Overlay the loss and accuracy curves of `runs`; the loss is smoothed with weight `smoothing` (0: raw).

    `loss_axis` is "step" or "epoch": the loss's x axis. A step's epoch is its share of the run's steps times
    the run's epochs, so runs with different batch sizes line up.

    Runs of the `EXPERIMENT_PAGES` kinds are left out, with a note naming them and the page to view them on.
    Validation accuracy is not smoothed: each point is already an evaluation of 512 examples, a run has only
    one per epoch, and a smoothed last point would disagree with the table's final accuracy.
    """
    note = experiment_note(runs)
    if note is not None:
        st.info(note, icon=":material/info:")
        pages = dict(EXPERIMENT_PAGES[run.kind] for run in runs if run.kind in EXPERIMENT_PAGES)
        links = st.container(horizontal=True)
        for label, page in pages.items():
            links.page_link(page, label=f"Open the {label} page", icon=":material/arrow_forward:")
    runs = [run for run in runs if run.kind not in EXPERIMENT_PAGES]
    if not runs:
        return
    cache: dict[str, RunProgress] = st.session_state.setdefault("_runs_progress", {})
    losses, accuracies = {}, {}
    colors = {run_label(run): COLORS[i % len(COLORS)] for i, run in enumerate(runs)}  # one colour per run
    for run in runs:
        progress = read_progress(store, run.id, cache.get(run.id))
        if progress is None:
            continue
        cache[run.id] = progress
        label = run_label(run)
        if progress.steps:
            x = progress.steps
            epochs = (run.config.get("train") or {}).get("epochs")
            if loss_axis == "epoch" and progress.steps_total and epochs:
                x = [step * epochs / progress.steps_total for step in progress.steps]
            losses[label] = (x, progress.losses, smooth(progress.losses, smoothing) if smoothing > 0 else None)
        if progress.eval_accs:
            accuracies[label] = (progress.eval_epochs, progress.eval_accs, None)
    left, right = st.columns(2)
    if losses:
        left.plotly_chart(overlay_chart(losses, "Training loss", loss_axis, "cross-entropy loss", colors=colors),
                          key="runs_loss", config={"displayModeBar": False})
    else:
        left.info("No training loss to show: uploaded adapters are evaluated, not trained, and queued runs have "
                  "not taken a step yet.", icon=":material/info:")
    right.plotly_chart(overlay_chart(accuracies, "Validation accuracy", "epoch", "accuracy", y_range=(0.0, 1.02),
                                     chance=0.5, markers=True, colors=colors), key="runs_acc",
                       config={"displayModeBar": False})


def _weights_file(store: RunStore, run: Run) -> tuple[str, bytes | None, str | None]:
    """Return (button label, download bytes or None, why not) for a run's trained weights."""
    adapter_dir = store.run_dir(run.id) / ADAPTER_DIR
    if adapter_dir.is_dir():
        try:
            return "Download adapter (.zip)", zip_adapter(adapter_dir), None
        except AdapterFileError as error:
            return "Download adapter (.zip)", None, str(error)
    set_dir = store.run_dir(run.id) / ADAPTERS_DIR
    if run.kind == "adapters" and set_dir.is_dir():
        try:
            return "Download adapter set (.zip)", zip_adapter_set(set_dir), None
        except AdapterFileError as error:
            return "Download adapter set (.zip)", None, str(error)
    full_state = store.run_dir(run.id) / FULL_STATE_NAME
    if full_state.is_file():
        return "Download model (.safetensors)", full_state.read_bytes(), None
    reason = (f"run {run.id} is {run.status}, so it has no weights yet" if run.active else
              f"run {run.id} ({run.status}) saved no weights: only finished and stopped runs do")
    return "Download adapter (.zip)", None, reason


def selection_actions(store: RunStore, runs: list[Run]) -> None:
    """Buttons for the selected runs: metrics CSV, stop, delete with a confirmation."""
    ids = [run.id for run in runs]
    active = [run for run in runs if run.active]
    row = st.container(horizontal=True)
    name = f"tinylora-{ids[0]}.csv" if len(ids) == 1 else f"tinylora-{len(ids)}-runs.csv"
    row.download_button("Download metrics (CSV)", data=metrics_csv(store, ids), file_name=name, mime="text/csv",
                            key="runs_download_csv", on_click="ignore", icon=":material/download:",
                            help="One row per event (step, evaluation, start, end) of the selected runs")
    if row.button("Stop", key="runs_stop", disabled=not active, icon=":material/stop_circle:",
                      help="Stop the selected runs that are queued or running"):
        for run in active:
            store.request_stop(run.id)
        st.rerun()
    delete_help = (f"Stop {', '.join(run.id for run in active)} first: an active run cannot be deleted" if active
                   else "Delete the selected runs, their metrics and their files")
    if row.button("Delete", key="runs_delete", disabled=bool(active), icon=":material/delete:", help=delete_help):
        st.session_state["runs_pending_delete"] = ids

    pending = st.session_state.get("runs_pending_delete")
    if pending and pending != ids:
        st.session_state.pop("runs_pending_delete")  # the selection changed: ask again
    elif pending:
        st.warning(f"Delete {len(ids)} run(s) ({', '.join(ids)}) with their metrics and files? This cannot be undone.",
                   icon=":material/warning:")
        answer = st.container(horizontal=True)
        if answer.button("Delete for good", key="runs_delete_confirm", type="primary"):
            st.session_state.pop("runs_pending_delete")
            errors = []
            for run_id in ids:
                try:
                    store.delete_run(run_id)
                except (ValueError, OSError) as error:
                    errors.append(str(error))
            st.session_state["runs_notice"] = ("error", " ".join(errors)) if errors else (
                "success", f"Deleted {len(ids)} run(s).")
            st.session_state[SELECTED] = []
            st.rerun()
        if answer.button("Cancel", key="runs_delete_cancel"):
            st.session_state.pop("runs_pending_delete")
            st.rerun()


def run_actions(store: RunStore, runs: list[Run]) -> None:
    """Buttons for one of the selected runs: download its weights, open it in Adapters or in Train."""
    by_id = {run.id: run for run in runs}
    run_id = st.selectbox("Weights and settings of run", list(by_id),
                          format_func=lambda i: f"{i} ({run_label(by_id[i])})", key="runs_action_run",
                          help="The selected run that the buttons below act on")
    run = by_id[run_id]
    row = st.container(horizontal=True)
    label, data, why_not = _weights_file(store, run)
    if data is None:
        row.button(label, key="runs_download_weights", disabled=True, help=why_not, icon=":material/download:")
    else:
        file_name = f"{run.id}-adapter.zip" if label.endswith("(.zip)") else f"{run.id}-model.safetensors"
        row.download_button(label, data=data, file_name=file_name, key="runs_download_weights",
                                on_click="ignore", icon=":material/download:")

    is_set = run.kind == "adapters" and (store.run_dir(run.id) / ADAPTERS_DIR).is_dir()
    has_adapter = is_set or (store.run_dir(run.id) / ADAPTER_DIR).is_dir()
    adapters_help = ("Show this adapter set on the Adapters page" if is_set else
                     "Open this run's adapter on the Adapters page" if has_adapter else
                     f"Run {run.id} has no adapter to open")
    if row.button("Open in Adapters", key="runs_open_adapters", disabled=not has_adapter,
                  help=adapters_help, icon=":material/extension:"):
        if is_set:
            st.session_state[SET_KEY] = run.id
        else:
            st.session_state["adapters_open_run"] = run.id
        st.switch_page(ADAPTERS_PAGE)

    trained_here = run.kind == "train"
    if row.button("Open settings in Train", key="runs_open_train", disabled=not trained_here,
                      icon=":material/tune:",
                      help="Load this run's settings into the Train page and show its charts" if trained_here
                      else "An uploaded adapter has no training settings"):
        try:
            RunConfig.from_dict(run.config)
        except ValueError as error:
            st.error(f"Run {run.id}'s settings cannot be loaded: {error}")
            return
        request_train_load(run.id)
        st.switch_page(TRAIN_PAGE, query_params={"run": run.id})


def upload_form(store: RunStore, owner: str) -> None:
    """Draw the sidebar form that stores an uploaded adapter as a run and queues its evaluation."""
    st.subheader("Upload an adapter")
    generation = st.session_state.setdefault("runs_upload_generation", 0)
    # No `type` filter: with one, Streamlit rejects a .bin file with only "application/octet-stream files are
    # not allowed". `store_upload` rejects it instead, by its name, with the reason and the fix.
    files = st.file_uploader(
        "Adapter files", accept_multiple_files=True,
        key=f"runs_upload_files_{generation}", max_upload_size=2 * MAX_UPLOAD_BYTES // 2**20,
        help="A zip of a PEFT adapter folder, or its adapter_config.json and adapter_model.safetensors. "
             "Safetensors only: pickled .bin or .pt files are never loaded.")
    task = st.selectbox("Evaluate on task", list(TASKS), key="runs_upload_task",
                        help="The adapter's accuracy is measured on this task's 512 validation examples.")
    method = st.selectbox("Base storage", list(LORA_METHODS), format_func=METHOD_LABELS.get,
                          key="runs_upload_method",
                          help="How the frozen base the adapter was trained on is stored: float32 (LoRA) or "
                               "quantized (QLoRA).")
    # Text, not a number box: a number box with bounds keeps its last valid value when a typed one is out of range.
    seed_text = st.text_input("Base seed", key="runs_upload_seed", placeholder="from the adapter",
                              help="The seed of the random base. Empty: the seed recorded in the adapter's "
                                   "base_model_name_or_path, or 0.")
    if st.button("Upload and evaluate", key="runs_upload_button", disabled=not files, icon=":material/upload:"):
        try:
            seed = parse_whole_number(seed_text, "base seed", 0) if seed_text.strip() else None
            run_id = store_upload(store, {f.name: f.getvalue() for f in files},
                                  UploadSettings(task=task, method=method, seed=seed), owner=owner)
        except (ValueError, StoreError, OSError) as error:
            st.error(f"Upload rejected, nothing was stored: {error}", icon=":material/error:")
            return
        st.session_state["runs_notice"] = ("success", f"Stored the adapter as run {run_id}; its accuracy on "
                                                      f"{task} appears in the table once evaluated.")
        st.session_state["runs_upload_generation"] = generation + 1  # a fresh, empty uploader
        st.session_state[SELECTED] = [run_id]
        st.rerun()

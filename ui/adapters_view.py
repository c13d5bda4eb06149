"""The parts of the Adapters page: the adapter-set controls, live training, the matrix, the playground, mixing."""

import threading
import time
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from tinylora import jobs
from tinylora.adapter_runs import (SWAP_REPEATS, AdapterSet, RunAdapter, describe_set_base, load_adapter_set,
                                   load_run_adapter, matrix_rows, parse_tokens, predictions, random_tokens,
                                   run_adapter_config, run_val_set)
from tinylora.experiment_progress import adapter_curves, read_experiment
from tinylora.experiments import FORWARD_REPEATS, FORWARD_WARMUP, AdaptersSpec, mix_adapters
from tinylora.quant import SCHEMES
from tinylora.store import Run, RunStore, StoreError
from tinylora.tasks import TASKS, make_data

from .charts import accuracy_chart
from .experiment_charts import adapter_matrix_heatmap, mix_chart
from .controls import parse_whole_number, whole_number_box
from .run_view import REFRESH_SECONDS, format_seconds

OPEN_RUN = "adapters_open_run"  # session key the Runs page sets: a train run whose adapter to show here
SET_KEY = "adapters_set"  # the selectbox of adapter sets
TOKENS_KEY = "adapters_tokens"
BASE_LABEL = "base (no adapter)"
SHOWN_STATUSES = ("finished", "stopped")  # adapters runs whose saved files the page loads
MIX_WEIGHTS = [i / 10 for i in range(11)]


# Training a new set

def adapters_controls(prefix: str) -> tuple[dict | None, str | None]:
    """Draw the settings of a new adapter set; return (params for an "adapters" job, None) or (None, error)."""
    keep = "session"
    tasks = st.multiselect("Tasks (one adapter each)", list(TASKS), default=["odd_majority", "first_lt_last"],
                           key=f"{prefix}tasks", persist_state=keep,
                           help="Each task gets its own LoRA adapter and head over the same frozen base.")
    # One row of columns per pair, bottom-aligned, so the boxes line up under a label that wraps.
    left, right = st.columns(2, vertical_alignment="bottom")
    # No min_value or max_value on lora_alpha: Streamlit would keep the last valid value of an out-of-range
    # entry, so the typed value goes to AdaptersSpec.validate, which names it and its range.
    r = whole_number_box(left, "r (rank)", 4, f"{prefix}r")
    alpha = right.number_input("lora_alpha", value=8.0, step=1.0, key=f"{prefix}alpha", persist_state=keep)
    left, right = st.columns(2, vertical_alignment="bottom")
    epochs = whole_number_box(left, "Epochs per adapter", 8, f"{prefix}epochs")
    seed = whole_number_box(right, "Seed", 0, f"{prefix}seed",
                            help="Fixes the base, each adapter's initialisation and the batch order")
    storage = st.selectbox("Frozen base storage", ["float32", *SCHEMES], key=f"{prefix}quant", persist_state=keep,
                           help="float32, or quantized as in QLoRA (the adapters stay float32)")
    if len(tasks) < 2:
        return None, "Pick at least two tasks: the matrix compares each adapter on the other adapters' tasks."
    try:
        train = {"epochs": parse_whole_number(epochs, "epochs", 8), "seed": parse_whole_number(seed, "seed", 0)}
        params = {"tasks": tasks, "lora": {"r": parse_whole_number(r, "r", 4), "lora_alpha": float(alpha)},
                  "train": train, "quant": None if storage == "float32" else storage}
        return AdaptersSpec.from_params(params).to_params(), None
    except ValueError as error:
        return None, str(error)


def submit_set(store: RunStore, params: dict, owner: str) -> str | None:
    """Queue an "adapters" job and select it; return its id, or None after showing why it failed."""
    try:
        run_id = jobs.submit(store, "adapters", params, owner=owner)
    except (ValueError, StoreError) as error:
        st.error(f"The adapter set was not started: {error}", icon=":material/error:")
        return None
    st.session_state[SET_KEY] = run_id
    return run_id


def set_label(run: Run) -> str:
    tasks = ", ".join(run.config.get("tasks", []))
    lora = run.config.get("lora", {})
    quant = run.config.get("quant") or "float32"
    # No status here: Streamlit 1.67 keeps a selectbox's old label when only the formatted text changes.
    return f"{run.id} · {tasks} · r={lora.get('r')} · {quant}"


def pick_set(store: RunStore) -> Run | None:
    """Draw the adapter-set picker (newest first, the newest selected by default); return the chosen run."""
    runs = store.list_runs(kind="adapters")
    if not runs:
        return None
    by_id = {run.id: run for run in runs}
    if st.session_state.get(SET_KEY) not in by_id:
        st.session_state.pop(SET_KEY, None)  # deleted, or from another data directory: fall back to the newest
    chosen = st.selectbox("Adapter set", list(by_id), format_func=lambda i: set_label(by_id[i]), key=SET_KEY,
                          persist_state="session",
                          help="Every adapters run, newest first. Finished sets are loaded from their saved files, so "
                               "they come back after a refresh or a restart.")
    return by_id[chosen]


def live_set_progress(store: RunStore, run_id: str, key: str) -> None:
    """Draw an adapter set's training, refreshing while it is queued or running; rerun the page when it ends."""
    cache_key = f"_adapters_progress_{key}"
    first = read_experiment(store, run_id, st.session_state.get(cache_key))
    if first is None:
        st.warning(f"Run {run_id} was deleted.")
        return

    @st.fragment(run_every=REFRESH_SECONDS if first.run.active else None)
    def view() -> None:
        progress = read_experiment(store, run_id, st.session_state.get(cache_key))
        if progress is None:
            st.warning(f"Run {run_id} was deleted.")
            return
        st.session_state[cache_key] = progress
        run = progress.run
        tasks = run.config.get("tasks", [])
        if run.status == "queued":
            st.info(f"Queued at position {store.queue_position(run.id)}; it starts when a training slot frees up.",
                    icon=":material/hourglass_top:")
        elif run.active:
            index = tasks.index(progress.section) + 1 if progress.section in tasks else 0
            st.progress(progress.fraction, text=f"Adapter {index} of {len(tasks)} ({progress.section or '…'}) · "
                                                f"step {progress.steps_done} of {progress.steps_total or '…'} · "
                                                f"{format_seconds(_elapsed(run))} elapsed")
        elif run.status not in SHOWN_STATUSES:
            st.error(f"The adapter set {run.status}: {run.message}", icon=":material/error:")
        curves = adapter_curves(progress)
        figure = accuracy_chart(curves, title="Each adapter's validation accuracy on its own task")
        figure.update_xaxes(range=[0, run.config.get("train", {}).get("epochs", 8) + 0.2])
        st.plotly_chart(figure, key=f"{key}-curves", config={"displayModeBar": False})
        if first.run.active and not run.active:
            st.rerun(scope="app")

    view()


def _elapsed(run: Run) -> float:
    return max(0.0, time.time() - run.started) if run.started else 0.0


def stop_button(store: RunStore, run: Run) -> None:
    if run.active and st.button("Stop training", key="adapters_stop", icon=":material/stop_circle:",
                                help="Stop this adapter set; adapters trained so far are saved and shown"):
        store.request_stop(run.id)
        st.rerun()


# Loading saved adapters

@dataclass
class Loaded:
    adapter_set: AdapterSet | None
    extra: RunAdapter | None
    lock: threading.Lock  # the models are shared by every session: one user at a time swaps adapters


@st.cache_resource(show_spinner="Loading the adapters…", max_entries=8)
def load(home: str, set_id: str | None, extra_id: str | None) -> Loaded:
    """Load an adapter set and/or a run's adapter; raises ValueError, which is not cached, when one cannot load."""
    from pathlib import Path

    store = RunStore(Path(home))
    adapter_set = load_adapter_set(store, set_id) if set_id else None
    extra = load_run_adapter(store, extra_id, adapter_set) if extra_id else None
    return Loaded(adapter_set, extra, threading.Lock())


def extra_val_sets(store: RunStore, loaded: Loaded) -> dict:
    """Return the validation sets of the matrix columns that an opened run adds.

    With a set, the run's task gets a column when the set lacks it. Without a set, the run's own task comes first
    and every other task follows, all drawn with the run's validation settings.
    """
    if loaded.extra is None:
        return {}
    config = run_adapter_config(store, loaded.extra.run_id)
    if loaded.adapter_set is not None:
        return {} if config.task in loaded.adapter_set.val_sets else {config.task: run_val_set(config)}
    t = config.train
    tasks = [config.task, *(task for task in TASKS if task != config.task)]
    return {task: make_data(task, t.n_val, t.val_data_seed, config.model) for task in tasks}


@st.cache_data(show_spinner="Cross-evaluating…", max_entries=16)
def matrix_with_extra(home: str, set_id: str | None, extra_id: str) -> dict:
    from pathlib import Path

    loaded = load(home, set_id, extra_id)
    with loaded.lock:
        return matrix_rows(loaded.adapter_set, [loaded.extra], extra_val_sets(RunStore(Path(home)), loaded))


@st.cache_data(show_spinner="Evaluating the mixes…", max_entries=32)
def mix_curve(home: str, set_id: str, extra_id: str | None, adapter_a: str, adapter_b: str) -> list[dict]:
    """Evaluate `mix_adapters` at weights 0, 0.1, ..., 1 (about two seconds) once per set and pair."""
    loaded = load(home, set_id, extra_id)
    with loaded.lock:
        return mix_adapters(loaded.adapter_set.model, adapter_a, adapter_b, loaded.adapter_set.val_sets, MIX_WEIGHTS)


# The matrix

def row_label(name: str | None, loaded: Loaded) -> str:
    if name is None:
        return BASE_LABEL
    if loaded.extra is not None and name == loaded.extra.name:
        return f"run {loaded.extra.run_id} ({loaded.extra.task})"
    return f"adapter {name}"


def matrix_findings(matrix: dict, own_task: dict[str, str]) -> dict:
    """Split a matrix into each adapter's accuracy on its own task and its accuracies on the other tasks.

    `own_task` maps a row's adapter name to the task it was trained for. Returns {"own": {name: acc},
    "other": {(name, task): acc}, "base": {task: acc}}.
    """
    own, other, base = {}, {}, {}
    for name, accs in zip(matrix["adapters"], matrix["acc"]):
        for task, acc in zip(matrix["tasks"], accs):
            if name is None:
                base[task] = acc
            elif own_task.get(name) == task:
                own[name] = acc
            else:
                other[name, task] = acc
    return {"own": own, "other": other, "base": base}


def chance_band(n_val: int) -> float:
    """Return three standard deviations of the accuracy of random guessing on `n_val` balanced examples."""
    return 3 * (0.25 / n_val) ** 0.5


def describe_matrix(findings: dict, n_val: int, base_note: str) -> str:
    """Describe the matrix's numbers in one paragraph: the diagonal, the other cells against chance, the base."""
    parts = []
    if findings["own"]:
        own = ", ".join(f"{acc:.3f} ({name})" for name, acc in findings["own"].items())
        parts.append(f"On its own task each adapter reaches {own}.")
    if findings["other"]:
        values = list(findings["other"].values())
        band = chance_band(n_val)
        outside = [f"{name} on {task} ({acc:.3f})" for (name, task), acc in findings["other"].items()
                   if abs(acc - 0.5) > band]
        parts.append(f"On the other tasks they score {min(values):.3f} to {max(values):.3f}.")
        if outside:
            parts.append(f"Outside 0.5 ± {band:.3f}, the spread of random guessing on {n_val} examples: "
                         f"{', '.join(outside)}.")
        else:
            parts.append(f"All lie within 0.5 ± {band:.3f}, the spread of random guessing on {n_val} examples: an "
                         "adapter is at chance on the tasks it was not trained for.")
    if findings["base"]:
        values = list(findings["base"].values())
        parts.append(f"The base without an adapter ({base_note}) scores {min(values):.3f} to {max(values):.3f}.")
    return " ".join(parts)


def matrix_view(store: RunStore, run: Run | None, loaded: Loaded, key: str) -> None:
    if loaded.extra is None:
        matrix = run.summary.get("summary", {}).get("matrix")
        if matrix is None:
            st.warning(f"Run {run.id} recorded no matrix; it {run.status} before any adapter finished.")
            return
    else:
        matrix = matrix_with_extra(str(store.home), run.id if run else None, loaded.extra.run_id)
    labels = [row_label(name, loaded) for name in matrix["adapters"]]
    st.plotly_chart(adapter_matrix_heatmap(labels, matrix["tasks"], matrix["acc"]), key=f"{key}-matrix",
                    config={"displayModeBar": False})
    own_task = {name: name for name in matrix["adapters"] if name is not None}
    if loaded.extra is not None:
        own_task[loaded.extra.name] = loaded.extra.task
    if loaded.adapter_set is not None:
        n_val = loaded.adapter_set.spec.train.n_val
        storage = loaded.adapter_set.spec.quant or "float32"
        base_note = f"the random initialisation of seed {loaded.adapter_set.spec.train.seed}, {storage}"
    else:
        n_val = run_adapter_config(store, loaded.extra.run_id).train.n_val
        base_note = loaded.extra.base_note
    st.caption(describe_matrix(matrix_findings(matrix, own_task), n_val, base_note))
    if loaded.extra is not None and loaded.adapter_set is not None and not loaded.extra.shares_base:
        st.caption(other_base_note(loaded.extra, loaded.adapter_set))


def other_base_note(extra: RunAdapter, adapter_set: AdapterSet) -> str:
    """Explain why an opened run's adapter runs on its own base, not on the set's, in the matrix and playground."""
    set_note = describe_set_base(adapter_set.spec)
    if extra.base_note != set_note:
        where = f"on the {extra.base_note}, not on this set's {set_note}"
    else:  # same seed and storage: the model or the quantization options (modules, block size) differ
        where = (f"on the {extra.base_note} like this set, but with other model or quantization settings (such as "
                 "the quantized modules or the block size)")
    return (f"Run {extra.run_id}'s adapter was trained {where}, so its row is evaluated on its own base. The base "
            "row is this set's base.")


# The playground

def randomise_tokens() -> None:
    st.session_state[TOKENS_KEY] = " ".join(map(str, random_tokens()))


def playground(loaded: Loaded, key: str) -> None:
    st.session_state.setdefault(TOKENS_KEY, " ".join(map(str, random_tokens(seed=0))))
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    text = left.text_input("Sequence of 24 tokens (0 to 15)", key=TOKENS_KEY,
                           help="Whole numbers separated by spaces or commas")
    right.button("Randomise", key=f"{key}-random", on_click=randomise_tokens, icon=":material/casino:",
                 width="stretch", help="Draw 24 new random tokens")
    try:
        tokens = parse_tokens(text)
    except ValueError as error:
        st.error(str(error), icon=":material/error:")
        return
    with loaded.lock:
        rows = predictions(loaded.adapter_set, tokens, [loaded.extra] if loaded.extra else [])
    frame = pd.DataFrame([{
        "adapter": row_label(row["adapter"], loaded),
        "task": row["task"] or "–",
        "truth": "–" if row["label"] is None else str(row["label"]),
        "prediction": row["prediction"],
        "probability": row["probability"],
        "correct": correctness(row),
        "swap_us": 1e6 * row["median_swap_seconds"],
        "forward_us": 1e6 * row["forward_seconds"],
    } for row in rows])
    st.dataframe(frame, key=f"{key}-predictions", hide_index=True, width="stretch", column_config={
        "adapter": st.column_config.TextColumn("Adapter"),
        "task": st.column_config.TextColumn("Trained for"),
        "truth": st.column_config.TextColumn("Label under its task", help="The task's rule applied to the sequence"),
        "prediction": st.column_config.NumberColumn("Prediction"),
        "probability": st.column_config.ProgressColumn("Probability", min_value=0.0, max_value=1.0, format="%.3f",
                                                       help="softmax probability of the predicted class"),
        "correct": st.column_config.TextColumn("Correct"),
        "swap_us": st.column_config.NumberColumn(
            "Swap, median (µs)", format="%.0f",
            help=f"median time of set_adapter(name) over {SWAP_REPEATS} swaps, this click"),
        "forward_us": st.column_config.NumberColumn(
            "Forward, median (µs)", format="%.0f",
            help=f"median time of one forward pass of this sequence over {FORWARD_REPEATS} passes, after "
                 f"{FORWARD_WARMUP} untimed ones, this click"),
    })
    swaps, forwards = frame["swap_us"], frame["forward_us"]
    st.caption(f"A swap took {swaps.min():.0f} to {swaps.max():.0f} µs and a forward pass of this sequence "
               f"{forwards.min():.0f} to {forwards.max():.0f} µs (each the median of {SWAP_REPEATS} and "
               f"{FORWARD_REPEATS} timings per adapter): a swap only repoints each LoRA layer and the head at "
               "another adapter's weights.")


def correctness(row: dict) -> str:
    """Return "yes" or "no" for a prediction against its task's label, or "–" for the base, which has no task."""
    if row["label"] is None:
        return "–"
    return "yes" if row["label"] == row["prediction"] else "no"


# Mixing two adapters

def mixing(store: RunStore, run: Run, loaded: Loaded, key: str) -> None:
    names = [name for name in loaded.adapter_set.model.adapter_names if not name.startswith("_")]
    if len(names) < 2:
        st.info("Mixing needs two adapters over the same base; this set has fewer.", icon=":material/info:")
        return
    left, middle, right = st.columns([2, 2, 3])
    adapter_a = left.selectbox("Adapter at w = 0", names, index=0, key=f"{key}-a")
    adapter_b = middle.selectbox("Adapter at w = 1", [n for n in names if n != adapter_a], index=0, key=f"{key}-b")
    weight = right.slider("Weight w of the second adapter", 0.0, 1.0, 0.5, 0.1, key=f"{key}-weight",
                          help="The mixed adapter is (1 - w) × first + w × second, heads included")
    try:
        curve = mix_curve(str(store.home), run.id, loaded.extra.run_id if loaded.extra else None, adapter_a,
                          adapter_b)
    except ValueError as error:  # for example a combined rank too large for a layer
        st.error(f"These two adapters cannot be mixed: {error}", icon=":material/error:")
        return
    weights = [point["weight"] for point in curve]
    tasks = list(curve[0]["acc"])
    acc = {task: [point["acc"][task] for point in curve] for task in tasks}
    st.plotly_chart(mix_chart(weights, acc, weight, adapter_a, adapter_b), key=f"{key}-chart",
                    config={"displayModeBar": False})
    nearest = min(range(len(weights)), key=lambda i: abs(weights[i] - weight))
    cols = st.columns(len(tasks))
    for col, task in zip(cols, tasks):
        col.metric(f"Accuracy on {task} at w = {weights[nearest]:.1f}", f"{acc[task][nearest]:.3f}",
                   delta=f"{acc[task][nearest] - acc[task][0]:+.3f} against w = 0", delta_color="off")

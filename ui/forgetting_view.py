"""The parts of the Forgetting page: strategy controls, the live timeline, the summary table, learns-less."""

import uuid
from collections import OrderedDict

import pandas as pd
import streamlit as st

from tinylora import jobs
from tinylora.experiment_progress import (ExperimentProgress, forgetting_table, forgetting_timeline,
                                          learns_less_base, learns_less_frame, phase_spans, read_experiment)
from tinylora.forgetting import MAX_REPLAY_FRACTION, STRATEGIES, ForgettingSpec, default_params
from tinylora.learns_less import LearnsLessSpec
from tinylora.store import Run, RunStore, StoreError
from tinylora.tasks import TASKS

from .experiment_charts import forgetting_chart, learns_less_scatter
from .controls import parse_whole_number, whole_number_box
from .run_view import format_seconds

GROUP_KEY = "forgetting_group"
LEARNS_LESS_KEY = "forgetting_ll_study"
REFRESH_SECONDS = 0.5  # several runs' events are read per refresh
RANKS = (1, 2, 4, 8, 16, 32, 64)
# Short names for the pickers and the summary table; charts use the longer labels of
# `tinylora.forgetting.STRATEGIES`.
SHORT_NAMES = {"sequential": "1 Sequential", "separate": "2 Separate adapters", "joint": "3 Joint (task ids)",
               "full": "4 Full finetuning", "replay": "5 Replay"}


# Controls

def task_controls(prefix: str) -> tuple[str, str]:
    keep = "session"
    task_a = st.selectbox("Task A (first)", list(TASKS), index=list(TASKS).index("odd_majority"),
                          key=f"{prefix}task_a", persist_state=keep)
    task_b = st.selectbox("Task B (second)", list(TASKS), index=list(TASKS).index("first_lt_last"),
                          key=f"{prefix}task_b", persist_state=keep)
    return task_a, task_b


def forgetting_controls(prefix: str, task_a: str, task_b: str) -> tuple[list[dict], str | None]:
    """Draw the strategy settings; return (params of one "forgetting" job per chosen strategy, error or None)."""
    keep = "session"
    strategies = st.multiselect("Strategies", list(STRATEGIES), default=list(STRATEGIES), key=f"{prefix}strategies",
                                format_func=SHORT_NAMES.get, persist_state=keep,
                                help="; ".join(f"{SHORT_NAMES[k]}: {v}" for k, v in STRATEGIES.items())
                                     + ". Each strategy runs as its own job; they share the training slots.")
    replay = st.slider("Replay: share of A's examples mixed into phase B", 0, int(100 * MAX_REPLAY_FRACTION), 25, 5,
                       format="%d%%", key=f"{prefix}replay", persist_state=keep)
    # Text boxes: the forgetting job's validation names an out-of-range value and its range. One row of
    # columns per pair, bottom-aligned, so the boxes line up under a label that wraps.
    left, right = st.columns(2, vertical_alignment="bottom")
    epochs_a = whole_number_box(left, "Epochs on A", 6, f"{prefix}epochs_a")
    epochs_b = whole_number_box(right, "Epochs on B", 12, f"{prefix}epochs_b")
    left, right = st.columns(2, vertical_alignment="bottom")
    epochs_joint = whole_number_box(left, "Joint epochs", 10, f"{prefix}epochs_joint",
                                    help="Joint only: epochs over the mixed A and B training sets")
    eval_every = whole_number_box(right, "Evaluate every (steps)", 8, f"{prefix}eval_every",
                                  help="0: only at the start and at the end of each phase")
    if not strategies:
        return [], "Pick at least one strategy."
    if task_a == task_b:
        return [], f"Task A and task B must differ; both are {task_a}."
    try:
        counts = {"epochs_a": parse_whole_number(epochs_a, "epochs on A", 6),
                  "epochs_b": parse_whole_number(epochs_b, "epochs on B", 12),
                  "epochs_joint": parse_whole_number(epochs_joint, "joint epochs", 10),
                  "eval_every": parse_whole_number(eval_every, "evaluate every", 8)}
        params = [{**default_params(strategy), "task_a": task_a, "task_b": task_b, **counts,
                   "replay_fraction": replay / 100} for strategy in strategies]
        return [jobs.validate_job("forgetting", p) for p in params], None
    except ValueError as error:
        return [], str(error)


def submit_group(store: RunStore, params: list[dict], owner: str) -> None:
    """Queue one forgetting job per strategy under one new group id, and show that group."""
    group = uuid.uuid4().hex[:8]
    try:
        for p in params:
            jobs.submit(store, "forgetting", p, owner=owner, group_id=group)
    except (ValueError, StoreError) as error:
        st.error(f"Not every strategy was started: {error}", icon=":material/error:")
    st.session_state[GROUP_KEY] = group


# Picking a comparison

def forgetting_groups(store: RunStore) -> "OrderedDict[str, list[Run]]":
    """Group the forgetting runs by the submission that queued them: newest group first, runs in strategy order."""
    groups: OrderedDict[str, list[Run]] = OrderedDict()
    for run in store.list_runs(kind="forgetting"):
        groups.setdefault(run.group_id or run.id, []).append(run)
    order = list(STRATEGIES)
    for runs in groups.values():
        runs.sort(key=lambda r: (order.index(r.config.get("strategy")) if r.config.get("strategy") in order else 99,
                                 r.created))
    return groups


def group_label(runs: list[Run]) -> str:
    """Name a comparison by what never changes: Streamlit 1.67 keeps showing a selectbox's old label when only
    the formatted text changes, so a status in the label would stay "running" after the runs end."""
    config = runs[0].config
    return (f"{runs[0].id[:15]} · {config.get('task_a')} → {config.get('task_b')} · "
            f"{', '.join(run.config.get('strategy', '?') for run in runs)}")


def pick_group(store: RunStore) -> list[Run]:
    groups = forgetting_groups(store)
    if not groups:
        return []
    if st.session_state.get(GROUP_KEY) not in groups:
        st.session_state.pop(GROUP_KEY, None)
    chosen = st.selectbox("Comparison", list(groups), format_func=lambda g: group_label(groups[g]), key=GROUP_KEY,
                          persist_state="session",
                          help="Each press of Run queues one comparison; the newest is shown first")
    return groups[chosen]


# The timeline

def run_title(progress: ExperimentProgress) -> str:
    config = progress.run.config
    label = STRATEGIES.get(config.get("strategy"), config.get("strategy"))
    if config.get("strategy") == "replay":
        label += f" ({100 * config.get('replay_fraction', 0):.0f}% of A)"
    return label


def status_line(progress: ExperimentProgress) -> str:
    run = progress.run
    name = run_title(progress)
    if run.status == "queued":
        return f"{name}: queued"
    if run.active:
        return f"{name}: step {progress.step} of {progress.steps_total or '…'} (phase {progress.section or '…'})"
    text = f"{name}: {run.status} after {format_seconds(run.seconds)}"
    return text if run.status == "finished" else f"{text} ({run.message})"


def timeline_view(store: RunStore, runs: list[Run], key: str) -> None:
    """Draw the chosen strategies' timelines and summary table, refreshing while any of them is active."""
    titles = {run.id: SHORT_NAMES.get(run.config.get("strategy"), run.id) for run in runs}
    left, right = st.columns([3, 2])
    shown_ids = left.multiselect("Show", [run.id for run in runs], default=[run.id for run in runs],
                                 format_func=titles.get, key=f"{key}-shown")
    layout = right.segmented_control("Layout", ["Small multiples", "Overlay"], default="Small multiples",
                                     key=f"{key}-layout", persist_state="session")
    chosen = [run for run in runs if run.id in shown_ids]
    any_active = any(run.active for run in chosen)

    @st.fragment(run_every=REFRESH_SECONDS if any_active else None)
    def view() -> None:
        progresses = []
        for run in chosen:
            cache_key = f"_forgetting_{run.id}"
            progress = read_experiment(store, run.id, st.session_state.get(cache_key))
            if progress is not None:
                st.session_state[cache_key] = progress
                progresses.append(progress)
        for progress in progresses:
            if progress.run.active or progress.run.status not in ("finished",):
                st.progress(progress.fraction, text=status_line(progress))
        if not progresses:
            st.info("Pick at least one strategy to show.", icon=":material/info:")
            return
        config = progresses[0].run.config
        tasks = [config["task_a"], config["task_b"]]
        series = [(run_title(p), forgetting_timeline(p), phase_spans(p)) for p in progresses]
        st.plotly_chart(forgetting_chart(series, tasks, overlay=layout == "Overlay"), key=f"{key}-timeline",
                        config={"displayModeBar": False})
        summary_table(progresses, tasks, key)
        if any_active and not any(p.run.active for p in progresses):
            st.rerun(scope="app")

    view()


def table_name(progress: ExperimentProgress) -> str:
    """Return a strategy's short name for the summary table, so that every column fits at the default width."""
    config = progress.run.config
    name = SHORT_NAMES.get(config.get("strategy"), str(config.get("strategy"))).split(" ", 1)[-1]
    if config.get("strategy") == "replay":
        name += f" ({100 * config.get('replay_fraction', 0):.0f}% of A)"
    return name


def uses_task_ids(run: Run) -> bool:
    """Return whether a forgetting run tags [CLS] with task ids (by default joint and replay do)."""
    try:
        return ForgettingSpec.from_params(run.config).uses_task_ids
    except ValueError:
        return False


def task_ids_note(progresses: list[ExperimentProgress]) -> str | None:
    """Explain why the strategies with task ids start from another model than those without, if both are shown."""
    tagged = [table_name(p) for p in progresses if uses_task_ids(p.run)]
    if not tagged or len(tagged) == len(progresses):
        return None
    return (f"{' and '.join(tagged)} tag [CLS] with a task id, so they start from a different model: a random task "
            "embedding is added to [CLS], and drawing it shifts the later random draws (the adapter's "
            "initialisation and the batch order). With the same seed, their accuracy on A therefore differs from "
            "the other strategies' from the start, and so does what they lose on A.")


def summary_table(progresses: list[ExperimentProgress], tasks: list[str], key: str) -> None:
    table = forgetting_table(progresses)
    table["strategy"] = [table_name(p) for p in progresses]
    a, b = tasks
    # Widths in pixels that fit each header and add up to 800, under the 818 px that Streamlit 1.67 gives the
    # table beside the sidebar in a 1280 px wide Chromium window, so that no column scrolls out of view.
    st.dataframe(table.drop(columns=["run"]), key=f"{key}-summary", hide_index=True, width="stretch", placeholder="–",
                 column_config={
                     "strategy": st.column_config.TextColumn("Strategy", width=130,
                                                             help="the strategy; the timeline names it in full"),
                     "status": st.column_config.TextColumn("Status", width=80),
                     "a_after_a": st.column_config.NumberColumn(
                         "A after A", format="%.3f", width=72,
                         help=f"accuracy on {a} when the first phase with A ends"),
                     "a_final": st.column_config.NumberColumn("A at end", format="%.3f", width=70),
                     "lost_a": st.column_config.NumberColumn("Lost on A", format="%.3f", width=72,
                                                             help="A after A minus A at the end"),
                     "b_before_b": st.column_config.NumberColumn("B before B", format="%.3f", width=80,
                                                                 help=f"accuracy on {b} before the first phase with B"),
                     "b_final": st.column_config.NumberColumn("B at end", format="%.3f", width=70),
                     "gained_b": st.column_config.NumberColumn("Gained on B", format="%.3f", width=86,
                                                               help="B at the end minus B before B"),
                     "trainable": st.column_config.NumberColumn("Trainable", format="localized", width=72,
                                                                help="trainable parameters over the whole run"),
                     "seconds": st.column_config.NumberColumn("Seconds", format="%.1f", width=68),
                 })
    finished = table[table.status == "finished"].sort_values("lost_a", kind="stable")
    if len(finished) >= 2:
        ranked = ", ".join(f"{row.strategy} {row.lost_a:.3f}" for row in finished.itertuples())
        st.caption(f"Accuracy lost on A, least first: {ranked}.")
        note = task_ids_note(progresses)
        if note is not None:
            st.caption(note)


# Learns less, forgets less

def learns_less_controls(prefix: str, task_a: str, task_b: str) -> tuple[dict | None, str | None]:
    keep = "session"
    defaults = LearnsLessSpec()
    left, middle, right = st.columns([3, 1, 1])
    ranks = left.multiselect("LoRA ranks r", list(RANKS), default=list(defaults.ranks), key=f"{prefix}ranks",
                             persist_state=keep)
    epochs = whole_number_box(middle, "Epochs on B", defaults.epochs, f"{prefix}epochs")
    full = right.checkbox("Full finetuning too", value=defaults.full, key=f"{prefix}full", persist_state=keep)
    if task_a == task_b:
        return None, f"Task A and task B must differ; both are {task_a}."
    try:
        params = {"task_a": task_a, "task_b": task_b, "ranks": sorted(ranks), "full": full,
                  "epochs": parse_whole_number(epochs, "epochs on B", defaults.epochs)}
        return jobs.validate_job("learns_less", params), None
    except ValueError as error:
        return None, str(error)


def pick_learns_less(store: RunStore) -> Run | None:
    runs = store.list_runs(kind="learns_less")
    if not runs:
        return None
    by_id = {run.id: run for run in runs}
    if st.session_state.get(LEARNS_LESS_KEY) not in by_id:
        st.session_state.pop(LEARNS_LESS_KEY, None)
    chosen = st.selectbox("Study", list(by_id), key=LEARNS_LESS_KEY, persist_state="session",
                          format_func=lambda i: f"{i} · {by_id[i].config.get('task_a')} → "
                                                f"{by_id[i].config.get('task_b')}")
    return by_id[chosen]


def describe_learns_less(points: pd.DataFrame, base: dict[str, float] | None, task_a: str, task_b: str) -> str:
    """Describe the scatter in words from its numbers: what each run learned on B and lost on A."""
    if base is None or points.empty:
        return ""
    a0, b0 = base[task_a], base[task_b]
    lines = [f"The starting model scores {a0:.3f} on A and {b0:.3f} on B."]
    full = points[points.method == "full"]
    lora = points[points.method == "lora"].sort_values("r")
    if len(full):
        f = full.iloc[0]
        lines.append(f"Full finetuning gained {f.acc_b - b0:+.3f} on B and lost {a0 - f.acc_a:.3f} on A.")
        if len(lora):
            less_both = lora[(lora.acc_b < f.acc_b) & (lora.acc_a > f.acc_a)]
            lines.append(f"{len(less_both)} of {len(lora)} LoRA runs learned less on B and kept more of A than full "
                         "finetuning, the pattern Biderman et al. report; "
                         f"{int(((lora.acc_b >= f.acc_b) & (lora.acc_a > f.acc_a)).sum())} learned as much and kept "
                         f"more, and {int((lora.acc_a <= f.acc_a).sum())} kept no more of A.")
    if len(lora) >= 2:
        low, high = lora.iloc[0], lora.iloc[-1]
        lines.append(f"From r={low.r} to r={high.r}, accuracy on B goes from {low.acc_b:.3f} to {high.acc_b:.3f} "
                     f"and accuracy kept on A from {low.acc_a:.3f} to {high.acc_a:.3f}.")
    if len(points) >= 3:
        gained, lost = points.acc_b - b0, a0 - points.acc_a
        correlation = float(gained.corr(lost)) if gained.std() > 0 and lost.std() > 0 else float("nan")
        if correlation == correlation:  # not NaN
            reading = ("the more a run learned on B, the more it forgot of A" if correlation > 0.5 else
                       "runs that learned more on B forgot less of A" if correlation < -0.5 else
                       "no clear relation between learning B and forgetting A")
            lines.append(f"Over all {len(points)} runs, accuracy gained on B and accuracy lost on A correlate at "
                         f"{correlation:+.2f} (Pearson): {reading}.")
    return " ".join(lines)


def learns_less_view(store: RunStore, run: Run, key: str) -> None:
    cache_key = f"_learns_less_{run.id}"
    first = read_experiment(store, run.id, st.session_state.get(cache_key))
    if first is None:
        st.warning(f"Run {run.id} was deleted.")
        return

    @st.fragment(run_every=REFRESH_SECONDS if first.run.active else None)
    def view() -> None:
        progress = read_experiment(store, run.id, st.session_state.get(cache_key))
        if progress is None:
            return
        st.session_state[cache_key] = progress
        config = progress.run.config
        task_a, task_b = config["task_a"], config["task_b"]
        if progress.run.status == "queued":
            st.info("Queued; it starts when a training slot frees up.", icon=":material/hourglass_top:")
        elif progress.run.active:
            where = "finetuning the starting model on A" if progress.section == "base" else progress.section
            st.progress(progress.fraction, text=f"{where or '…'} · {len(progress.points)} of "
                                                f"{len((progress.start or {}).get('runs', [])) or '…'} runs done")
        elif progress.run.status != "finished":
            st.warning(f"The study {progress.run.status}: {progress.run.message}", icon=":material/warning:")
        points = learns_less_frame(progress)
        base = learns_less_base(progress)
        st.plotly_chart(learns_less_scatter(points, base, task_a, task_b), key=f"{key}-scatter",
                        config={"displayModeBar": False})
        train = config.get("train", {})
        heads = ("B trains its own head and A is measured with A's" if config.get("separate_heads")
                 else "one head shared by A and B")
        st.caption(f"Settings: {config.get('base_epochs')} epochs of full finetuning on {task_a}, then "
                   f"{config.get('epochs')} epochs on {task_b} per run, learning rate {train.get('lr'):g} for every "
                   f"run, lora_alpha = {config.get('scaling'):g} × r, {heads}, seed {train.get('seed')}.")
        text = describe_learns_less(points, base, task_a, task_b)
        if text:
            st.caption(text)
        if first.run.active and not progress.run.active:
            st.rerun(scope="app")

    view()

"""The runs of the experiment kinds read back from the run store: adapters, forgetting and learns-less.

`read_experiment` reads the events of one run, incrementally like `tinylora.progress.read_progress`, into an
`ExperimentProgress`. The functions after it shape that into what the Adapters and Forgetting pages draw:
per-adapter accuracy curves, the adapter x task matrix, a forgetting timeline with its phase boundaries, one
summary row per forgetting strategy, and the learns-less points. The event fields are documented in
`tinylora.experiments` (adapters) and `tinylora.forgetting` (forgetting and learns-less).
"""

from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from .forgetting import STRATEGIES
from .store import Run, RunStore

EXPERIMENT_KINDS = ("adapters", "forgetting", "learns_less")
# The event that names the part of a run training now: an adapter, a phase, or a learns-less run.
SECTION_EVENTS = {"adapter": "adapter", "phase": "phase", "run": "run"}


@dataclass
class ExperimentProgress:
    run: Run
    start: dict[str, Any] | None = None  # the start event
    steps_done: int = 0  # step events so far, over every adapter, phase or learns-less run
    step: int = 0  # the `step` of the latest step event
    section: str | None = None  # the adapter, phase or learns-less run that trains now
    sections: list[dict[str, Any]] = field(default_factory=list)  # the adapter, phase and run events in order
    evals: list[dict[str, Any]] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)  # learns-less `point` events
    matrix: dict[str, Any] | None = None  # the adapters run's `matrix` event, without its type
    end: dict[str, Any] | None = None
    last_seq: int = 0

    @property
    def steps_total(self) -> int | None:
        return (self.start or {}).get("steps_total")

    @property
    def fraction(self) -> float:
        if not self.steps_total:
            return 0.0
        return min(1.0, self.steps_done / self.steps_total)

    @property
    def summary(self) -> dict[str, Any] | None:
        """The end event's summary, or None before the run ends."""
        return None if self.end is None else self.end.get("summary")


def read_experiment(store: RunStore, run_id: str,
                    previous: ExperimentProgress | None = None) -> ExperimentProgress | None:
    """Read a run's events, only those after `previous` when it is given; None when the run does not exist."""
    run = store.get_run(run_id)
    if run is None:
        return None
    if previous is None or previous.run.id != run_id:
        progress = ExperimentProgress(run)
    else:
        progress = replace(previous, run=run, sections=list(previous.sections), evals=list(previous.evals),
                           points=list(previous.points))
    for seq, event in store.events(run_id, after_seq=progress.last_seq):
        progress.last_seq = seq
        kind = event["type"]
        if kind == "start":
            progress.start = event
        elif kind == "step":
            progress.steps_done += 1
            progress.step = event["step"]
        elif kind in SECTION_EVENTS:
            progress.section = event[SECTION_EVENTS[kind]]
            progress.sections.append(event)
        elif kind == "eval":
            progress.evals.append(event)
        elif kind == "point":
            progress.points.append({k: v for k, v in event.items() if k != "type"})
        elif kind == "matrix":
            progress.matrix = {k: v for k, v in event.items() if k != "type"}
        elif kind == "end":
            progress.end = event
    return progress


# Adapters

def adapter_curves(progress: ExperimentProgress) -> dict[str, tuple[list[float], list[float]]]:
    """Return each adapter's validation accuracy per epoch on its own task: adapter -> (epochs, accuracies)."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for event in progress.evals:
        epochs, accs = curves.setdefault(event["adapter"], ([], []))
        epochs.append(event["epoch"])
        accs.append(event["val/acc"])
    return curves


# Forgetting

def forgetting_timeline(progress: ExperimentProgress) -> pd.DataFrame:
    """Return one row per evaluation of one task: columns step, phase, task, acc (validation accuracy)."""
    rows = [{"step": e["step"], "phase": e["phase"], "task": e["task"], "acc": e["val/acc"]} for e in progress.evals]
    return pd.DataFrame(rows, columns=["step", "phase", "task", "acc"])


def phase_spans(progress: ExperimentProgress) -> list[dict[str, Any]]:
    """Return the planned phases, [{"phase", "tasks", "start", "end"}] in steps, from the start event."""
    if progress.start is None:
        return []
    return [{"phase": p["phase"], "tasks": p["tasks"], "start": p["start_step"], "end": p["start_step"] + p["steps"]}
            for p in progress.start["phases"]]


def forgetting_row(progress: ExperimentProgress) -> dict[str, Any]:
    """Return a forgetting run's summary row; its accuracy columns stay None until the run has finished."""
    params = progress.run.config
    summary = progress.summary or {}
    final = summary.get("final") or {}
    task_a, task_b = params.get("task_a"), params.get("task_b")
    strategy = params.get("strategy")
    label = STRATEGIES.get(strategy, strategy)
    if strategy == "replay":
        label += f" ({100 * params.get('replay_fraction', 0):.0f}% of A)"
    return {
        "run": progress.run.id,
        "strategy": label,
        "status": progress.run.status,
        "a_after_a": summary.get("a_after_a"),
        "a_final": final.get(task_a),
        "lost_a": summary.get("lost_a"),
        "b_before_b": summary.get("b_before_b"),
        "b_final": final.get(task_b),
        "gained_b": summary.get("gained_b"),
        "trainable": summary.get("trainable"),
        "seconds": summary.get("seconds", progress.run.seconds),
    }


def forgetting_table(progresses: list[ExperimentProgress]) -> pd.DataFrame:
    """Return `forgetting_row` of each run as a DataFrame, in the order given."""
    columns = ["run", "strategy", "status", "a_after_a", "a_final", "lost_a", "b_before_b", "b_final", "gained_b",
               "trainable", "seconds"]
    frame = pd.DataFrame([forgetting_row(p) for p in progresses], columns=columns)
    return frame.astype({"trainable": "Int64", **{c: "Float64" for c in columns[3:] if c != "trainable"}})


# Learns less, forgets less

def learns_less_base(progress: ExperimentProgress) -> dict[str, float] | None:
    """Return the accuracy per task of the model finetuned on A, where every run on B starts, or None before.

    Read from the last evaluation of the "base" phase, which runs at the end of that phase.
    """
    base = [e for e in progress.evals if e["phase"] == "base"]
    if not base:
        return None
    last_step = base[-1]["step"]
    if progress.section == "base" and progress.end is None:
        return None  # the base is still training: its last evaluation is not the finished base's
    return {e["task"]: e["val/acc"] for e in base if e["step"] == last_step}


def learns_less_frame(progress: ExperimentProgress) -> pd.DataFrame:
    """Return one row per finished run on B: run, method, r, trainable, acc_b, acc_a, seconds."""
    columns = ["run", "method", "r", "trainable", "acc_b", "acc_a", "seconds"]
    frame = pd.DataFrame(progress.points, columns=columns)
    return frame.astype({"r": "Int64", "trainable": "Int64"})

"""A training run's progress as read back from the run store: curves, counts, speed and time remaining."""

import time
from dataclasses import dataclass, field, replace

from .store import Run, RunStore


@dataclass
class RunProgress:
    run: Run
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_epochs: list[float] = field(default_factory=list)
    eval_accs: list[float] = field(default_factory=list)
    trainable: int | None = None
    total: int | None = None
    steps_total: int | None = None
    seconds: float = 0.0  # training time of the latest event
    status_message: str | None = None  # the latest "status" event, e.g. while a finetuned base is prepared
    last_seq: int = 0

    @property
    def step(self) -> int:
        return self.steps[-1] if self.steps else 0

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.steps_total) if self.steps_total else 0.0

    @property
    def steps_per_second(self) -> float | None:
        if self.run.summary.get("steps_per_second") and not self.run.active:
            return self.run.summary["steps_per_second"]
        return self.step / self.seconds if self.seconds > 0 and self.step else None

    @property
    def elapsed(self) -> float:
        """Seconds since the run started: wall-clock while it runs, its recorded duration once it ended."""
        if self.run.status == "running" and self.run.started:
            return max(self.seconds, time.time() - self.run.started)
        if self.run.seconds is not None:
            return self.run.seconds
        return self.seconds


def read_progress(store: RunStore, run_id: str, previous: RunProgress | None = None) -> RunProgress | None:
    """Read a run's progress, reading only the events after `previous` when it is given; None if not found."""
    run = store.get_run(run_id)
    if run is None:
        return None
    if previous is None or previous.run.id != run_id:
        progress = RunProgress(run)
    else:
        progress = replace(previous, run=run, steps=list(previous.steps), losses=list(previous.losses),
                           eval_steps=list(previous.eval_steps), eval_epochs=list(previous.eval_epochs),
                           eval_accs=list(previous.eval_accs))
    for seq, event in store.events(run_id, after_seq=progress.last_seq):
        progress.last_seq = seq
        kind = event["type"]
        if kind == "start":
            # Experiment kinds (forgetting, learns_less) start without parameter counts.
            progress.trainable, progress.total = event.get("trainable"), event.get("total")
            progress.steps_total = event.get("steps_total")
        elif kind == "step":
            progress.steps.append(event["step"])
            progress.losses.append(event["train/loss"])
            progress.seconds = event["seconds"]
        elif kind == "status":
            progress.status_message = event["message"]
        elif kind == "eval":
            progress.eval_steps.append(event["step"])
            progress.eval_epochs.append(event.get("epoch"))  # None for the experiments' per-task evaluations
            progress.eval_accs.append(event["val/acc"])
            progress.seconds = max(progress.seconds, event["seconds"])
    return progress

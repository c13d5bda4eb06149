"""Catastrophic forgetting: train on task A, then on task B, and follow the accuracy on both.

`run_forgetting` runs one strategy and evaluates every task every few steps:

- `sequential`: one adapter trained on A, then the same adapter on B. In the reference notebook (6 epochs on A,
  12 on B) accuracy on A falls from about 1.0 to chance while B rises above 0.9.
- `separate`: one adapter per task over the same frozen base; training B's adapter cannot touch A's.
- `joint`: one adapter trained on mixed A and B batches, each example tagged with its task id (the notebook
  uses r=8, lora_alpha=16 and 10 epochs and gets both tasks above 0.9).
- `full`: full finetuning on A, then on B.
- `replay`: like `sequential`, but phase B also trains on a share of A's training examples.

The tasks share one input distribution and label it by different rules, so an input often has one label under
A and the other under B. A single model can only serve both when its input names the task, so `joint` and `replay` add a
task id to [CLS] (A: 0, B: 1) by default. The task embedding is frozen in the
LoRA strategies and trained with everything else in `full`.

Events of `run_forgetting`, all plain JSON-serialisable dicts:

- `start`: `strategy`, `task_a`, `task_b`, `task_ids`, `phases` ([{`phase`, `tasks`, `steps`, `start_step`}]),
  `steps_total`;
- `phase`: `phase`, `step` (where it begins, the boundary to mark on a chart), `tasks`, `steps`;
- `step`: `step`, `phase`, `epoch`, `train/loss`, `seconds`;
- `eval`: `step`, `phase`, `task`, `val/acc`, `val/loss`, `seconds`, for every task at step 0, every
  `eval_every` steps and at the end of every phase;
- `end`: `status` ("finished", "stopped" or "diverged"), `message`, `step`, `seconds`, `summary` (see
  `forgetting_summary`).

The study of "LoRA Learns Less and Forgets Less" is in `tinylora.learns_less`.
"""

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .adapters import AdapterModel
from .config import RunConfig, TrainConfig
from .experiments import (build_adapter_model, concat_data, evaluation_events, json_params, make_task_data,
                          spec_from_params, train_phase)
from .lora import LoRAConfig
from .model import ModelConfig, TinyClassifier
from .training import Data, evaluate

STRATEGIES = {
    "sequential": "One adapter: A, then B",
    "separate": "Separate adapters for A and B",
    "joint": "One adapter on mixed A and B batches",
    "full": "Full finetuning: A, then B",
    "replay": "One adapter: A, then B with A replayed",
}
MAX_REPLAY_FRACTION = 0.5
MAX_PHASE_EPOCHS = 100  # per phase: a strategy runs up to two phases, so a run stays within minutes here
MAX_EVAL_EVERY = 1000  # steps between evaluations


@dataclass(frozen=True)
class TrainingSettings:
    """The training settings every phase shares; each phase sets its own number of epochs."""

    seed: int = 0  # fixes model and adapter initialisation and the batch order
    lr: float = 5e-3
    batch_size: int = 64
    weight_decay: float = 0.01
    n_train: int = 1024  # training examples per task
    n_val: int = 512  # validation examples per task
    train_data_seed: int = 1  # task A's; task B uses this + 2
    val_data_seed: int = 2  # task A's; task B uses this + 2

    def phase_config(self, epochs: int) -> TrainConfig:
        return TrainConfig(lr=self.lr, epochs=epochs, batch_size=self.batch_size, weight_decay=self.weight_decay,
                           seed=self.seed, n_train=self.n_train, n_val=self.n_val,
                           train_data_seed=self.train_data_seed, val_data_seed=self.val_data_seed)


@dataclass(frozen=True)
class ForgettingSpec:
    """One forgetting run; the defaults are the notebook's sequential experiment."""

    strategy: str = "sequential"
    task_a: str = "odd_majority"
    task_b: str = "first_lt_last"
    epochs_a: int = 6
    epochs_b: int = 12
    epochs_joint: int = 10  # joint only: epochs over the mixed A and B training sets
    replay_fraction: float = 0.25  # replay only: share of A's training examples added to phase B, 0 to 0.5
    task_ids: bool | None = None  # tag [CLS] with the task id; None: on for joint and replay, off otherwise
    eval_every: int = 8  # steps between evaluations of every task; 0: only at step 0 and at phase ends
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # unused by full
    train: TrainingSettings = field(default_factory=TrainingSettings)

    @property
    def uses_task_ids(self) -> bool:
        if self.task_ids is None:
            return self.strategy in ("joint", "replay")
        return self.task_ids

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "ForgettingSpec":
        """Build and validate a spec from JSON-style params; missing keys take the defaults."""
        return spec_from_params(cls, params, {"lora": LoRAConfig, "train": TrainingSettings}).validate()

    def to_params(self) -> dict[str, Any]:
        return json_params(self)

    def validate(self) -> "ForgettingSpec":
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        check_tasks(self.task_a, self.task_b)
        for name in ("epochs_a", "epochs_b", "epochs_joint"):
            if not 1 <= getattr(self, name) <= MAX_PHASE_EPOCHS:
                raise ValueError(f"{name} must be between 1 and {MAX_PHASE_EPOCHS}, got {getattr(self, name)}")
        if not 0 <= self.replay_fraction <= MAX_REPLAY_FRACTION:
            raise ValueError(f"replay_fraction must be between 0 and {MAX_REPLAY_FRACTION}, "
                             f"got {self.replay_fraction!r}")
        if not 0 <= self.eval_every <= MAX_EVAL_EVERY:
            raise ValueError(f"eval_every must be 0 (phase ends only) or a number of steps up to {MAX_EVAL_EVERY}, "
                             f"got {self.eval_every}")
        method = "full" if self.strategy == "full" else "lora"
        RunConfig(method=method, task=self.task_a, lora=self.lora, train=self.train.phase_config(1)).validate()
        return self


def default_params(strategy: str) -> dict[str, Any]:
    """Return the notebook's settings for `strategy` as `run_forgetting` params (joint: r=8, lora_alpha=16)."""
    spec = ForgettingSpec(strategy=strategy).validate()
    if strategy == "joint":
        spec = dataclasses.replace(spec, lora=LoRAConfig(r=8, lora_alpha=16))
    return spec.to_params()


@dataclass
class Phase:
    name: str
    tasks: list[str]  # the tasks whose examples it trains on
    data: Data
    epochs: int
    adapter: str | None = None  # an adapter to add and train from this phase on (separate adapters)

    def steps(self, batch_size: int) -> int:
        return math.ceil(len(self.data[0]) / batch_size) * self.epochs


def plan_phases(spec: ForgettingSpec, data: Mapping[str, tuple[Data, Data]]) -> list[Phase]:
    """Return the phases of `spec.strategy`, each with its training data."""
    a, b = spec.task_a, spec.task_b
    train_a, train_b = data[a][0], data[b][0]
    if spec.strategy == "joint":
        return [Phase("A+B", [a, b], concat_data([train_a, train_b]), spec.epochs_joint)]
    if spec.strategy == "separate":
        return [Phase("A", [a], train_a, spec.epochs_a, adapter=a), Phase("B", [b], train_b, spec.epochs_b, adapter=b)]
    phase_b = Phase("B", [b], train_b, spec.epochs_b)
    if spec.strategy == "replay":
        # The replayed subset comes from its own generator, so it does not shift the batch order.
        n_replay = round(spec.replay_fraction * len(train_a[0]))
        order = torch.randperm(len(train_a[0]), generator=torch.Generator().manual_seed(spec.train.seed))
        replayed = tuple(column[order[:n_replay]] for column in train_a)
        phase_b = Phase("B", [b, a] if n_replay else [b], concat_data([train_b, replayed]), spec.epochs_b)
    return [Phase("A", [a], train_a, spec.epochs_a), phase_b]


def build_forgetting_model(spec: ForgettingSpec, model_config: ModelConfig) -> nn.Module:
    """Seed the global generator and build the strategy's model (adapters for `separate` come per phase)."""
    if spec.strategy == "full":
        torch.manual_seed(spec.train.seed)
        return TinyClassifier(model_config)
    model = build_adapter_model(spec.train.seed, None, model_config)
    if spec.strategy != "separate":
        model.add_adapter("shared", spec.lora)
    return model


def two_task_data(task_a: str, task_b: str, train: TrainingSettings,
                  task_ids: bool) -> tuple[ModelConfig, dict[str, tuple[Data, Data]], dict[str, Data]]:
    """Return the model config for tasks A and B, their data as {task: (training, validation)} and their
    validation data by task; with `task_ids`, A's examples carry task id 0 and B's task id 1."""
    model_config = ModelConfig(n_task_ids=2 if task_ids else 0)
    data = make_task_data([task_a, task_b], train.phase_config(1), task_ids, model_config)
    return model_config, data, {task_a: data[task_a][1], task_b: data[task_b][1]}


def run_forgetting(params: Mapping[str, Any], should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    """Run one forgetting strategy and yield its events (see the module docstring)."""
    spec = ForgettingSpec.from_params(params)
    start = time.perf_counter()
    a, b = spec.task_a, spec.task_b
    model_config, data, val_sets = two_task_data(a, b, spec.train, spec.uses_task_ids)
    model = build_forgetting_model(spec, model_config)
    phases = plan_phases(spec, data)

    def evaluator() -> dict[str, tuple[float, float]]:
        if not isinstance(model, AdapterModel) or spec.strategy != "separate":
            return {task: evaluate(model, val) for task, val in val_sets.items()}
        # Each task is served by its own adapter, or by the plain base before that adapter exists.
        active, results = model.active_adapter, {}
        for task, val in val_sets.items():
            model.set_adapter(task if task in model.adapter_names else None)
            results[task] = evaluate(model, val)
        model.set_adapter(active)
        return results

    plan, offset = [], 0
    for phase in phases:
        plan.append({"phase": phase.name, "tasks": phase.tasks, "steps": phase.steps(spec.train.batch_size),
                     "start_step": offset})
        offset += plan[-1]["steps"]
    yield {"type": "start", "strategy": spec.strategy, "task_a": a, "task_b": b, "task_ids": spec.uses_task_ids,
           "phases": plan, "steps_total": offset}

    checkpoints, trained = [], {}
    status, message, offset = "finished", f"finished {len(phases)} phase(s)", 0
    for index, phase in enumerate(phases):
        if phase.adapter is not None:
            model.add_adapter(phase.adapter, spec.lora, task=phase.adapter)
        yield {"type": "phase", "phase": phase.name, "step": offset, "tasks": phase.tasks,
               "steps": plan[index]["steps"]}
        if index == 0:
            accuracies = yield from evaluation_events(evaluator, phase.name, 0, start)
            checkpoints.append({"after": "start", "step": 0, "acc": accuracies})
        trained.update({id(p): p.numel() for p in model.parameters() if p.requires_grad})
        end, accuracies = yield from train_phase(model, phase.name, phase.data, spec.train.phase_config(phase.epochs),
                                                 evaluator, spec.eval_every, offset, start, should_stop)
        offset += end["step"]
        if end["status"] != "finished":
            status, message = end["status"], f"phase {phase.name}: {end['message']}"
            break
        checkpoints.append({"after": phase.name, "step": offset, "acc": accuracies})

    seconds = time.perf_counter() - start
    summary = forgetting_summary(spec, phases, checkpoints, accuracies, sum(trained.values()), seconds)
    yield {"type": "end", "status": status, "message": message, "step": offset, "seconds": seconds,
           "summary": summary}


def forgetting_job(params: Mapping[str, Any], ctx) -> Iterator[dict]:
    """Job-runner entry point for `run_forgetting`; it saves no files."""
    yield from run_forgetting(params, ctx.should_stop)


def validate_forgetting_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return `params` normalised, or raise ValueError naming the first invalid setting."""
    return ForgettingSpec.from_params(params).to_params()


def forgetting_summary(spec: ForgettingSpec, phases: list[Phase], checkpoints: list[dict], final: dict[str, float],
                       trainable: int, seconds: float) -> dict[str, Any]:
    """Summarise a run from its checkpoints (accuracies at step 0 and after each completed phase).

    `final` contains the last accuracies measured, where the run ended or stopped. `a_after_a` is the accuracy on
    A at the end of the first phase that trains on A, and `b_before_b` the accuracy on B just before the first
    phase that trains on B. For a finished run, `gained_b` = final B - `b_before_b` and `lost_a` =
    `a_after_a` - final A (0 for joint, which has no later phase). Values a stopped run never reached are None.
    """
    a, b = spec.task_a, spec.task_b
    by_phase = {c["after"]: c["acc"] for c in checkpoints}
    phase_a = next(p.name for p in phases if a in p.tasks)
    index_b = next(i for i, p in enumerate(phases) if b in p.tasks)
    before_b = "start" if index_b == 0 else phases[index_b - 1].name
    a_after_a = by_phase.get(phase_a, {}).get(a)
    b_before_b = by_phase.get(before_b, {}).get(b)
    finished = len(checkpoints) == len(phases) + 1
    return {
        "strategy": spec.strategy,
        "label": STRATEGIES[spec.strategy],
        "task_a": a,
        "task_b": b,
        "task_ids": spec.uses_task_ids,
        "replay_fraction": spec.replay_fraction if spec.strategy == "replay" else None,
        "checkpoints": checkpoints,
        "a_after_a": a_after_a,
        "b_before_b": b_before_b,
        "final": final,
        "gained_b": final[b] - b_before_b if finished and b_before_b is not None else None,
        "lost_a": a_after_a - final[a] if finished and a_after_a is not None else None,
        "trainable": trainable,
        "seconds": seconds,
    }


def check_tasks(task_a: str, task_b: str) -> None:
    for task in (task_a, task_b):
        RunConfig(task=task).validate()
    if task_a == task_b:
        raise ValueError(f"task A and task B must differ, both are {task_a!r}")

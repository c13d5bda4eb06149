"""LoRA learns less and forgets less: from one model finetuned on task A, finetune on task B in several ways.

`run_learns_less` follows Biderman et al. 2024, "LoRA Learns Less and Forgets Less" (arXiv:2405.09673): from
one model fully finetuned on A, it finetunes on B with full finetuning and with LoRA at several ranks and
reports, per run, the accuracy learned on B and the accuracy kept on A. Its events are `start` (`runs`,
`steps_total`), `run` (`run`, `method`, `r`), the `step` and `eval` events of `tinylora.forgetting` with
`phase` set to "base" or the run's name and steps counted from 0 in each, `point` (`run`, `method`, `r`, `trainable`, `acc_b`,
`acc_a`, `seconds`) and `end` with `summary` {`base`: {task: accuracy}, `points`: [...]}.

In the paper the model keeps one output layer, and its input shows which domain a prompt belongs to. Here A
and B label the same inputs by unrelated rules. With one shared head, a model that predicts B's labels well
must predict A's at chance, so the scatter would trace that constraint instead of forgetting. By default
every run on B therefore trains its own head (PEFT's `modules_to_save`, starting as a copy of A's) and A is
evaluated with A's head, which stays frozen, on the body the run changed. What A loses is then what the
finetuned body forgot. Every phase uses one learning rate, 1e-3 by default, the full-finetuning rate of
`tinylora.checkpoints.BaseRecipe`, so the methods differ only in what they train.
"""

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .adapters import AdapterModel, ModulesToSaveWrapper
from .config import RunConfig
from .experiments import json_params, spec_from_params, train_phase
from .forgetting import TrainingSettings, check_tasks, two_task_data
from .lora import LoRAConfig
from .model import TinyClassifier, count_parameters
from .training import Data, evaluate


@dataclass(frozen=True)
class LearnsLessTraining(TrainingSettings):
    """Training settings of the learns-less study: the same for every phase, full finetuning's learning rate."""

    lr: float = 1e-3


@dataclass(frozen=True)
class LearnsLessSpec:
    """From a model fully finetuned on A, finetune on B with full finetuning and with LoRA at several ranks."""

    task_a: str = "odd_majority"
    task_b: str = "first_lt_last"
    base_epochs: int = 6  # full finetuning on A that makes the starting model, as long as forgetting phase A
    epochs: int = 12  # finetuning on B in every run, as long as forgetting phase B
    ranks: tuple[int, ...] = (1, 4, 16, 64)
    full: bool = True  # also finetune every weight on B
    target_modules: tuple[str, ...] = ("qkv", "proj")
    scaling: float = 2.0  # lora_alpha = scaling * r (the notebook's 8 / 4), the same for every rank
    separate_heads: bool = True  # each run on B trains its own head and A is evaluated with A's frozen head
    task_ids: bool = False  # tag [CLS] with the task id (A: 0, B: 1), another way to let a model keep both
    eval_every: int = 16  # steps between evaluations within a run; 0: only at its end
    train: LearnsLessTraining = field(default_factory=LearnsLessTraining)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "LearnsLessSpec":
        """Build and validate a spec from JSON-style params; missing keys take the defaults."""
        return spec_from_params(cls, params, {"train": LearnsLessTraining}).validate()

    def to_params(self) -> dict[str, Any]:
        return json_params(self)

    def lora_config(self, r: int) -> LoRAConfig:
        return LoRAConfig(r=r, lora_alpha=self.scaling * r, target_modules=self.target_modules)

    def validate(self) -> "LearnsLessSpec":
        check_tasks(self.task_a, self.task_b)
        for name in ("base_epochs", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.ranks and not self.full:
            raise ValueError("nothing to run: give at least one LoRA rank or set full=True")
        if len(set(self.ranks)) != len(self.ranks):
            raise ValueError(f"each rank may appear once, got {list(self.ranks)}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be 0 (run ends only) or a number of steps, got {self.eval_every}")
        for r in self.ranks:
            RunConfig(method="lora", task=self.task_a, lora=self.lora_config(r),
                      train=self.train.phase_config(1)).validate()
        return self

    def runs(self) -> list[tuple[str, str, int | None]]:
        """(name, method, r) of every run on B."""
        full = [("full", "full", None)] if self.full else []
        return full + [(f"lora r={r}", "lora", r) for r in self.ranks]


def run_learns_less(params: Mapping[str, Any], should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    """Fully finetune on A, then finetune that model on B once per run; yield events (see the module docstring).

    Every run starts from the same finetuned weights and reseeds the global generator with `train.seed`.
    """
    spec = LearnsLessSpec.from_params(params)
    start = time.perf_counter()
    a, b = spec.task_a, spec.task_b
    model_config, data, val_sets = two_task_data(a, b, spec.train, spec.task_ids)
    runs = spec.runs()
    steps_a = math.ceil(spec.train.n_train / spec.train.batch_size) * spec.base_epochs
    steps_b = math.ceil(spec.train.n_train / spec.train.batch_size) * spec.epochs
    yield {"type": "start", "runs": [name for name, _, _ in runs], "task_a": a, "task_b": b,
           "task_ids": spec.task_ids, "steps_total": steps_a + steps_b * len(runs)}

    # The starting model: every weight finetuned on A
    torch.manual_seed(spec.train.seed)
    model = TinyClassifier(model_config)
    yield {"type": "run", "run": "base", "method": "full", "r": None}
    end, base_acc = yield from train_phase(model, "base", data[a][0], spec.train.phase_config(spec.base_epochs),
                                           task_evaluator(model, val_sets), spec.eval_every, 0, start, should_stop)
    finetuned = {k: v.clone() for k, v in model.state_dict().items()}
    points, status, message = [], end["status"], f"finetuned on {a}, then ran {len(runs)} run(s) on {b}"
    if status != "finished":
        message = f"base: {end['message']}"

    for name, method, r in runs if status == "finished" else []:
        run_start = time.perf_counter()
        torch.manual_seed(spec.train.seed)
        model = TinyClassifier(model_config)
        model.load_state_dict(finetuned)
        if method == "lora":
            model = AdapterModel(model)  # the adapter's head is B's; the wrapped base head stays A's
            model.add_adapter("b", spec.lora_config(r), task=b)
        elif spec.separate_heads:
            model.head = ModulesToSaveWrapper(model.head)
            model.head.original_module.requires_grad_(False)
            model.head.add_adapter("b")
            model.head.set_adapter("b")
        yield {"type": "run", "run": name, "method": method, "r": r}
        trainable = count_parameters(model, trainable_only=True)
        evaluator = task_evaluator(model, val_sets, a if spec.separate_heads else None)
        end, acc = yield from train_phase(model, name, data[b][0], spec.train.phase_config(spec.epochs),
                                          evaluator, spec.eval_every, 0, start, should_stop)
        if end["status"] != "finished":
            status, message = end["status"], f"{name}: {end['message']}"
            break
        point = {"run": name, "method": method, "r": r, "trainable": trainable, "acc_b": acc[b], "acc_a": acc[a],
                 "seconds": time.perf_counter() - run_start}
        points.append(point)
        yield {"type": "point", **point}

    yield {"type": "end", "status": status, "message": message, "seconds": time.perf_counter() - start,
           "summary": {"base": base_acc, "points": points}}


def learns_less_job(params: Mapping[str, Any], ctx) -> Iterator[dict]:
    """Job-runner entry point for `run_learns_less`; it saves no files."""
    yield from run_learns_less(params, ctx.should_stop)


def validate_learns_less_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return `params` normalised, or raise ValueError naming the first invalid setting."""
    return LearnsLessSpec.from_params(params).to_params()


def task_evaluator(model: nn.Module, val_sets: Mapping[str, Data],
                   original_head_task: str | None = None) -> Callable[[], dict[str, tuple[float, float]]]:
    """Evaluate every task; `original_head_task` is evaluated through the head the model started with."""
    def evaluator() -> dict[str, tuple[float, float]]:
        results = {}
        for task, val in val_sets.items():
            with original_head(model) if task == original_head_task else contextlib.nullcontext():
                results[task] = evaluate(model, val)
        return results
    return evaluator


@contextlib.contextmanager
def original_head(model: nn.Module) -> Iterator[None]:
    """Route the forward pass through the original head inside the block; the LoRA layers stay as they are.

    A model whose head is not a `ModulesToSaveWrapper` has only one head and is left as it is.
    """
    head = model.head
    if not isinstance(head, ModulesToSaveWrapper):
        yield
        return
    active = head.active_adapter
    head.set_adapter(None)
    try:
        yield
    finally:
        head.set_adapter(active)

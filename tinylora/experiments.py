"""One adapter per task over a shared frozen base: training, the adapter x task matrix, swapping and mixing.

The reference notebook's experiment trains adapter A on `odd_majority` and adapter B on `first_lt_last` over
one frozen base from seed 0 and evaluates each adapter on each task. Each adapter solves its own task and is at
chance (about 0.5) on the other. `run_adapters` generalises it to any list of tasks and reports as plain event
dicts, so a worker process can run it and a page can chart it live:

- `start`: `tasks`, `adapters` (one per task, named after it), `trainable` (per adapter), `total`,
  `steps_total` (over all adapters);
- `adapter`: `adapter`, `task`, `index` when an adapter starts training;
- `step` and `eval`: the events of `tinylora.training.train`, with `adapter` and `task` added;
- `matrix`: the `cross_evaluate` result once every adapter is trained;
- `end`: `status` ("finished", "stopped" or "diverged"), `message`, `seconds` and `summary`: the matrix, per
  adapter `task`, `final_acc`, `seconds` and `status`, and `out_dir`, where the base and the adapters are
  saved (`load_adapters` reads them) unless the run diverged.

Task i of the list (from 0) draws its training data from `train.train_data_seed + 2 * i` and its validation
data from `train.val_data_seed + 2 * i`, so with the defaults the first task uses seeds 1 and 2 and the second
3 and 4, as in the notebook.
"""

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .adapter_sets import save_adapters
from .adapters import AdapterModel
from .config import RunConfig, TrainConfig, target_shapes
from .lora import LoRAConfig
from .model import ModelConfig, TinyClassifier, count_parameters
from .quant import QuantConfig, get_scheme
from .tasks import get_task, make_data
from .training import Data, evaluate, train

ADAPTERS_DIR = "adapters"  # under a job's run directory: the saved base and adapters (`load_adapters` reads it)

# A function that evaluates the model on every task: {task: (accuracy, mean cross-entropy)}.
TaskEvaluator = Callable[[], dict[str, tuple[float, float]]]


# Data for several tasks

def task_seeds(index: int, config: TrainConfig) -> tuple[int, int]:
    """Return the (training, validation) data seeds of the task at `index` in a list of tasks."""
    return config.train_data_seed + 2 * index, config.val_data_seed + 2 * index


def make_task_data(tasks: Sequence[str], config: TrainConfig, task_ids: bool = False,
                   model_config: ModelConfig = ModelConfig()) -> dict[str, tuple[Data, Data]]:
    """Draw every task's data as {task: (training data, validation data)}.

    With `task_ids`, the examples of the task at index i carry task id i as a third tensor.
    """
    data = {}
    for i, task in enumerate(tasks):
        train_seed, val_seed = task_seeds(i, config)
        splits = [make_data(task, config.n_train, train_seed, model_config),
                  make_data(task, config.n_val, val_seed, model_config)]
        if task_ids:
            splits = [(x, y, torch.full((len(x),), i, dtype=torch.long)) for x, y in splits]
        data[task] = (splits[0], splits[1])
    return data


def concat_data(parts: Sequence[Data]) -> Data:
    """Stack datasets that all carry task ids, or all carry none."""
    widths = {len(part) for part in parts}
    if len(widths) != 1:
        raise ValueError("cannot mix data with and without task ids; give every part task ids or none")
    return tuple(torch.cat(columns) for columns in zip(*parts))


# Training with evaluation on every task

def train_phase(model: nn.Module, phase: str, train_data: Data, config: TrainConfig, evaluator: TaskEvaluator,
                eval_every: int, step_offset: int, start: float,
                should_stop: Callable[[], bool]) -> Generator[dict, None, tuple[dict, dict[str, float]]]:
    """Train one phase with `tinylora.training.train` and evaluate every task every `eval_every` steps.

    Yields `step` events and one `eval` event per task (`step`, `phase`, `task`, `val/acc`, `val/loss`,
    `seconds`), with steps counted from `step_offset` and seconds from `start`. `eval_every` counts the
    phase's own steps (0: evaluate only at the end). Evaluation also runs after the
    phase's last step (or the step where it stopped), so every phase ends with a point for every task.
    Returns the training `end` event and the last accuracies. Evaluating between steps changes no weight and
    draws nothing from the random generator, so it leaves training exactly as it would be without it.
    """
    step, evaluated_at, accuracies = step_offset, None, {}
    for event in train(model, train_data, None, config, should_stop):
        if event["type"] == "step":
            step = step_offset + event["step"]
            yield {"type": "step", "step": step, "phase": phase, "epoch": event["epoch"],
                   "train/loss": event["train/loss"], "seconds": time.perf_counter() - start}
            if eval_every and event["step"] % eval_every == 0:
                accuracies = yield from evaluation_events(evaluator, phase, step, start)
                evaluated_at = step
        elif event["type"] == "end":
            if evaluated_at != step:
                accuracies = yield from evaluation_events(evaluator, phase, step, start)
            return event, accuracies
    raise AssertionError("train() ended without an end event")


def evaluation_events(evaluator: TaskEvaluator, phase: str, step: int,
                      start: float) -> Generator[dict, None, dict[str, float]]:
    """Yield one `eval` event per task and return {task: accuracy}."""
    results = evaluator()
    seconds = time.perf_counter() - start
    for task, (acc, loss) in results.items():
        yield {"type": "eval", "step": step, "phase": phase, "task": task, "val/acc": acc,
               "val/loss": loss if math.isfinite(loss) else None, "seconds": seconds}
    return {task: acc for task, (acc, _) in results.items()}


# Adapters over one base

@dataclass(frozen=True)
class AdaptersSpec:
    """Settings of one adapter per task over one frozen base; the defaults are the notebook's experiment."""

    tasks: tuple[str, ...] = ("odd_majority", "first_lt_last")
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # its seed builds the base; data seeds per task
    quant: str | None = None  # scheme of the frozen base ("int8"), or None for float32
    out_dir: str | None = None  # where to save the base and the adapters, if anywhere

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "AdaptersSpec":
        """Build and validate a spec from JSON-style params; missing keys take the defaults."""
        return spec_from_params(cls, params, {"lora": LoRAConfig, "train": TrainConfig}).validate()

    def to_params(self) -> dict[str, Any]:
        return json_params(self)

    def validation_sets(self) -> dict[str, Data]:
        """Draw the validation data of every task, the sets the run's matrix was computed on."""
        return {task: val for task, (_, val) in make_task_data(self.tasks, self.train).items()}

    def validate(self) -> "AdaptersSpec":
        if not self.tasks:
            raise ValueError("pick at least one task, e.g. tasks=['odd_majority', 'first_lt_last']")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"each task may appear once, got {list(self.tasks)}")
        if self.quant is not None:
            get_scheme(self.quant)
        for task in self.tasks:
            RunConfig(method="lora", task=task, lora=self.lora, train=self.train).validate()
        return self


def json_params(spec) -> dict[str, Any]:
    """Return a spec dataclass as the JSON-style params its `from_params` reads (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def spec_from_params(cls, params: Mapping[str, Any], parts: Mapping[str, type]):
    """Build dataclass `cls` from JSON-style params: dicts for the nested dataclasses in `parts`, lists for tuples.

    Missing keys take the defaults and unknown keys raise ValueError.
    """
    values = _known_values(cls, params, cls.__name__)
    for key, part in parts.items():
        if key in values and not dataclasses.is_dataclass(values[key]):
            values[key] = part(**_known_values(part, values[key], key))
    return cls(**values)


def _known_values(cls, params: Mapping[str, Any], where: str) -> dict[str, Any]:
    values = dict(params)
    fields = dataclasses.fields(cls)
    unknown = sorted(set(values) - {f.name for f in fields})
    if unknown:
        raise ValueError(f"unknown {where} setting(s) {unknown}; known settings are {[f.name for f in fields]}")
    for f in fields:
        if f.name in values and isinstance(f.default, tuple):
            values[f.name] = tuple(values[f.name])
    return values


def build_adapter_model(seed: int, quant: str | None = None, model_config: ModelConfig = ModelConfig()) -> AdapterModel:
    """Seed the global generator with `seed` and build the shared frozen base, quantized with scheme `quant`.

    The base draws the same weights as `build_model` does for that seed, so the first adapter added next
    matches a plain LoRA run of the same seed exactly.
    """
    torch.manual_seed(seed)
    base = TinyClassifier(model_config)
    return AdapterModel(base, None if quant is None else QuantConfig(scheme=quant))


def run_adapters(params: Mapping[str, Any], should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    """Train one adapter per task over one frozen base and report the adapter x task matrix (see module docstring).

    Adapters are added and trained in task order on one global generator: the base from `train.seed`, then
    each adapter's LoRA A, then its batch order. The first adapter therefore reproduces
    `python -m tinylora train --task <first task>` exactly.
    """
    spec = AdaptersSpec.from_params(params)
    start = time.perf_counter()
    data = make_task_data(spec.tasks, spec.train)
    model = build_adapter_model(spec.train.seed, spec.quant)
    steps_per_adapter = math.ceil(spec.train.n_train / spec.train.batch_size) * spec.train.epochs
    adapter_size = lora_trainable_count(spec.lora, model.config)
    yield {"type": "start", "tasks": list(spec.tasks), "adapters": list(spec.tasks), "trainable": adapter_size,
           "total": count_parameters(model) + adapter_size * len(spec.tasks),
           "steps_total": steps_per_adapter * len(spec.tasks)}

    adapters, status, message = {}, "finished", f"trained {len(spec.tasks)} adapters"
    for index, task in enumerate(spec.tasks):
        model.add_adapter(task, spec.lora, task=task)
        yield {"type": "adapter", "adapter": task, "task": task, "index": index}
        for event in train(model, *data[task], spec.train, should_stop):
            if event["type"] in ("step", "eval"):
                yield {**event, "adapter": task, "task": task}
            elif event["type"] == "end":
                adapters[task] = {"task": task, "final_acc": event["final_acc"], "seconds": event["seconds"],
                                  "status": event["status"]}
                if event["status"] != "finished":
                    status, message = event["status"], f"adapter {task!r}: {event['message']}"
        if status != "finished":
            break

    matrix = cross_evaluate(model, {task: val for task, (_, val) in data.items()})
    yield {"type": "matrix", **matrix}
    if spec.out_dir is not None and status != "diverged":
        save_adapters(model, spec.out_dir)
    yield {"type": "end", "status": status, "message": message, "seconds": time.perf_counter() - start,
           "summary": {"matrix": matrix, "adapters": adapters, "out_dir": spec.out_dir}}


def adapters_job(params: Mapping[str, Any], ctx) -> Iterator[dict]:
    """Job-runner entry point: `run_adapters` saving the base and adapters under `ctx.run_dir / "adapters"`."""
    yield from run_adapters({**params, "out_dir": str(Path(ctx.run_dir) / ADAPTERS_DIR)}, ctx.should_stop)


def validate_adapters_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return `params` normalised, or raise ValueError naming the first invalid setting."""
    return AdaptersSpec.from_params(params).to_params()


def lora_trainable_count(config: LoRAConfig, model_config: ModelConfig = ModelConfig()) -> int:
    """Trainable parameters of one adapter: r * (in + out) per targeted layer, plus its classifier head."""
    shapes = target_shapes(model_config)
    per_block = sum(config.r * (shapes[m][0] + shapes[m][1]) for m in config.target_modules)
    head = model_config.d_model * model_config.n_classes + model_config.n_classes
    return per_block * model_config.n_layers + head


# Evaluating, swapping and mixing adapters

def cross_evaluate(model: AdapterModel, val_sets: Mapping[str, Data],
                   adapters: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Evaluate each adapter (None: the plain base) on each task; the previously active adapter stays active.

    Returns {"adapters": [name or None, ...], "tasks": [task, ...], "acc": [[accuracy per task] per adapter]}.
    By default the rows are every adapter, then the base.
    """
    rows = [*model.adapter_names, None] if adapters is None else list(adapters)
    previous = model.active_adapter
    acc = []
    try:
        for name in rows:
            model.set_adapter(name)
            acc.append([evaluate(model, data)[0] for data in val_sets.values()])
    finally:
        model.set_adapter(previous)
    return {"adapters": rows, "tasks": list(val_sets), "acc": acc}


def check_tokens(tokens: Sequence[int], model_config: ModelConfig = ModelConfig()) -> torch.Tensor:
    """Return `tokens` as a (1, seq_len) tensor, or raise ValueError naming what is wrong with them."""
    tokens = list(tokens)
    if len(tokens) != model_config.seq_len:
        raise ValueError(f"a sequence has {model_config.seq_len} tokens, got {len(tokens)}")
    bad = [t for t in tokens if not (isinstance(t, int) and 0 <= t < model_config.vocab_size)]
    if bad:
        raise ValueError(f"tokens are integers from 0 to {model_config.vocab_size - 1}, got {bad}")
    return torch.tensor([tokens], dtype=torch.long)


FORWARD_REPEATS = 25  # timed forward passes per adapter in `predict_each_adapter`; the median is reported
FORWARD_WARMUP = 2  # untimed passes before them, because the first call after a swap can be many times slower


@torch.no_grad()
def predict_each_adapter(model: AdapterModel, tokens: Sequence[int], task_id: int | None = None,
                         adapters: Sequence[str | None] | None = None, repeats: int = FORWARD_REPEATS,
                         warmup: int = FORWARD_WARMUP) -> list[dict[str, Any]]:
    """Swap to each adapter (None: the base) in turn and classify one sequence of tokens.

    Returns one dict per adapter: `adapter`, `task`, `label` (the truth under that task's rule, None for the
    base or an adapter without a task), `prediction`, `probability` (of the predicted class), `p_positive`,
    `swap_seconds` (one `set_adapter` call) and `forward_seconds`, the median of `repeats` forward passes
    after `warmup` untimed ones. One pass of this small model is short (an estimate: about a millisecond on a
    desktop CPU), so a single timing is easily dominated by a busy machine's scheduler. The previously active
    adapter stays active.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be at least 1 and warmup at least 0, got repeats={repeats}, warmup={warmup}")
    x = check_tokens(tokens, model.config)
    task_ids = None if task_id is None else torch.tensor([task_id])
    rows = [*model.adapter_names, None] if adapters is None else list(adapters)
    previous = model.active_adapter
    was_training = model.training
    model.eval()
    results = []
    try:
        for name in rows:
            t0 = time.perf_counter()
            model.set_adapter(name)
            swap_seconds = time.perf_counter() - t0
            for _ in range(warmup):
                model(x, task_ids)
            timings = []
            for _ in range(repeats):
                t1 = time.perf_counter()
                logits = model(x, task_ids)
                timings.append(time.perf_counter() - t1)
            probs = torch.softmax(logits, dim=-1)[0]  # (n_classes,)
            task = None if name is None else model.adapter_tasks[name]
            label = None if task is None else int(get_task(task).label(x, model.config.vocab_size)[0])
            prediction = int(probs.argmax())
            results.append({"adapter": name, "task": task, "label": label, "prediction": prediction,
                            "probability": float(probs[prediction]), "p_positive": float(probs[1]),
                            "swap_seconds": swap_seconds, "forward_seconds": statistics.median(timings)})
    finally:
        model.set_adapter(previous)
        model.train(was_training)
    return results


def mix_adapters(model: AdapterModel, adapter_a: str, adapter_b: str, val_sets: Mapping[str, Data],
                 weights: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Evaluate the combination (1 - w) * `adapter_a` + w * `adapter_b` on every task for each weight w.

    Weight 0 is `adapter_a` and weight 1 is `adapter_b`, bit for bit (see `AdapterModel.add_weighted_adapter`,
    which also mixes the heads). Returns [{"weight": w, "acc": {task: accuracy}}, ...]; the model is left as it
    was, with no extra adapter and the same one active.
    """
    weights = [i / 10 for i in range(11)] if weights is None else list(weights)
    previous = model.active_adapter
    name = "_mix"
    results = []
    try:
        for w in weights:
            model.add_weighted_adapter([adapter_a, adapter_b], [1 - w, w], name)
            results.append({"weight": w, "acc": {task: evaluate(model, data)[0] for task, data in val_sets.items()}})
            model.delete_adapter(name)
    finally:
        if name in model.adapter_names:
            model.delete_adapter(name)
        model.set_adapter(previous)
    return results

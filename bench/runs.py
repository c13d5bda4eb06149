"""One timed training run of the reference recipe or of tinylora, reported in the same form."""

import dataclasses
import time
from dataclasses import dataclass

import torch

from tinylora.config import METHODS, RunConfig, TrainConfig
from tinylora.split_step import set_step_processes, step_processes
from tinylora.training import prepare_run

from . import reference


@dataclass
class Timing:
    steps: int
    seconds: float  # the whole run: training steps and per-epoch evaluations
    eval_seconds: float
    accuracies: list[float]  # per epoch
    final_loss: float

    @property
    def step_seconds(self) -> float:
        """Mean wall-clock seconds of one training step (forward, backward, optimizer), evaluation excluded."""
        return (self.seconds - self.eval_seconds) / self.steps

    @property
    def steps_per_second(self) -> float:
        return 1.0 / self.step_seconds


def run_config(method: str, fast: str | None = None, seed: int = 0, epochs: int | None = None) -> RunConfig:
    """Build the default configuration for `method`, with `fast`, `seed` and `epochs` replaced when given."""
    train = RunConfig().train
    changes = {"seed": seed}
    if fast is not None:
        changes["fast"] = fast
    if epochs is not None:
        changes["epochs"] = epochs
    return RunConfig(method=method, train=dataclasses.replace(train, **changes))


def run_reference(method: str, seed: int = 0, epochs: int = TrainConfig.epochs) -> Timing:
    """Train `method` with bench.reference on the default configuration's settings."""
    config = RunConfig(method=method)
    scheme = METHODS[method]
    quantized = config.lora.target_modules if config.quant.modules == "targets" else reference.BLOCK_LINEARS
    model = reference.build(method, seed, scheme, config.lora.r, config.lora.lora_alpha,
                            config.lora.target_modules, quantized)
    t = config.train
    result = reference.train(model, epochs, t.lr, t.batch_size, t.n_train, t.n_val)
    return Timing(result.steps, result.seconds, result.eval_seconds, result.accuracies, result.losses[-1])


def run_tinylora(config: RunConfig) -> Timing:
    """Train `config` through `prepare_run(...).events()`, timing evaluations from the event timestamps."""
    prepared = prepare_run(config)
    eval_seconds, previous, accuracies, loss = 0.0, 0.0, [], float("nan")
    for event in prepared.events():
        if event["type"] == "step":
            loss = event["train/loss"]
        elif event["type"] == "eval":
            eval_seconds += event["seconds"] - previous
            accuracies.append(event["val/acc"])
        elif event["type"] == "end":
            return Timing(event["step"], event["seconds"], eval_seconds, accuracies, loss)
        if "seconds" in event:
            previous = event["seconds"]
    raise RuntimeError("the training loop ended without an end event")


class SteppedRun:
    """A training run advanced one event at a time, so that several runs can share a process step by step.

    Each run keeps its own copy of the global random generator's state. So interleaving does not change any
    run's batch order, and every run trains exactly as it would alone.
    """

    def __init__(self, contender: str, method: str, epochs: int, threads: int | None = None, processes: int = 1):
        """Prepare `contender` ("reference" or "tinylora fast=MODE") on `method`.

        With `threads`, every advance runs at that many intra-op threads (else at the count in force), and with
        `processes` 2 tinylora splits each step over two processes (see tinylora.split_step).
        """
        self.threads, self.processes = threads, processes
        if contender == "reference":
            config = RunConfig(method=method)
            quantized = config.lora.target_modules if config.quant.modules == "targets" else reference.BLOCK_LINEARS
            model = reference.build(method, 0, METHODS[method], config.lora.r, config.lora.lora_alpha,
                                    config.lora.target_modules, quantized)
            t = config.train
            self._events = (_reference_event(kind, value)
                            for kind, value in reference.events(model, epochs, t.lr, t.batch_size, t.n_train, t.n_val))
        else:
            self._events = prepare_run(run_config(method, fast=contender.split("=", 1)[1], epochs=epochs)).events()
        self._rng = torch.get_rng_state()
        self.step_seconds: list[float] = []
        self.eval_seconds: list[float] = []
        self.accuracies: list[float] = []
        self.final_loss = float("nan")
        self.done = False

    def advance(self) -> None:
        """Run until the next event, timing it, with this run's random generator state swapped in."""
        torch.set_rng_state(self._rng)
        threads, processes = torch.get_num_threads(), step_processes()
        torch.set_num_threads(self.threads or threads)
        set_step_processes(self.processes)
        try:
            start = time.perf_counter()
            event = next(self._events, None)
            seconds = time.perf_counter() - start
        finally:
            torch.set_num_threads(threads)
            set_step_processes(processes)
        self._rng = torch.get_rng_state()
        if event is None or event["type"] == "end":
            self.done = True
            self._events.close()  # ends the run's generator now, and any helper process with it
        elif event["type"] == "step":
            self.step_seconds.append(seconds)
            self.final_loss = event["train/loss"]
        elif event["type"] == "eval":
            self.eval_seconds.append(seconds)
            self.accuracies.append(event["val/acc"])


def _reference_event(kind: str, value: float) -> dict:
    return {"type": "step", "train/loss": value} if kind == "step" else {"type": "eval", "val/acc": value}

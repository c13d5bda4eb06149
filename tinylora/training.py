"""The training loop, which reports progress as plain event dicts.

The loop never prints and never draws: it yields events that the worker stores, the command line prints and
the pages chart. Every event has a `type`:

- `start`: `trainable`, `total` (parameters), `steps_total`;
- `step`: `step`, `epoch`, `train/loss`, `seconds` (since the start of training);
- `eval`: `step`, `epoch`, `val/acc`, `val/loss`, `seconds`;
- `end`: `status` ("finished", "stopped" or "diverged"), `message`, `step`, `seconds`, `steps_per_second`,
  `final_acc` (None when no evaluation happened), `step_processes` (1, or 2 when a helper computed half of
  each step).

No event carries a non-finite number: a non-finite loss ends the run with status "diverged" before it is
reported.
"""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import RANDOM_BASE, RunConfig, TrainConfig
from .fastpath import keep_freed_memory, make_forward
from .methods import build_model
from .model import count_parameters
from .split_step import HalfBatchHelper, step_processes
from .tasks import make_data

# (token ids (N, T), labels (N,)), optionally followed by task ids (N,) that the model receives as `task_ids`.
Data = tuple[torch.Tensor, ...]


def model_inputs(data: Data, idx: torch.Tensor | slice) -> tuple[torch.Tensor, ...]:
    """Return the model's positional inputs for rows `idx` of `data`: token ids, then any task ids."""
    x, _, *task_ids = data
    return (x[idx], *(t[idx] for t in task_ids))


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, batch_size: int = 1024,
             forward: Callable[..., torch.Tensor] | None = None) -> tuple[float, float]:
    """Return (accuracy, mean cross-entropy) of `model` on `data`, computing logits with `forward` when given."""
    correct, loss_sum = correct_and_loss(model, data, slice(0, len(data[0])), batch_size, forward)
    return correct / len(data[0]), loss_sum / len(data[0])


@torch.no_grad()
def correct_and_loss(model: nn.Module, data: Data, rows: slice, batch_size: int = 1024,
                     forward: Callable[..., torch.Tensor] | None = None) -> tuple[int, float]:
    """Return the correct count and the summed cross-entropy of `model` on rows `rows` of `data`, in eval mode."""
    y = data[1]
    forward = model if forward is None else forward
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(rows.start, rows.stop, batch_size):
        chunk = slice(i, min(i + batch_size, rows.stop))
        logits = forward(*model_inputs(data, chunk))
        correct += (logits.argmax(-1) == y[chunk]).sum().item()
        loss_sum += F.cross_entropy(logits, y[chunk], reduction="sum").item()
    model.train(was_training)
    return correct, loss_sum


def train(model: nn.Module, train_data: Data, val_data: Data | None, config: TrainConfig,
          should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    """Train the parameters of `model` that require grad with AdamW; yield events (see the module docstring).

    Each epoch shuffles with `torch.randperm` on the global generator and evaluates on `val_data` at its end
    (no evaluation at all when `val_data` is None, for callers that evaluate between steps themselves).
    `should_stop` is called after every step; when it returns True the run evaluates once more and ends
    with status "stopped", keeping the weights learned so far.
    """
    x, y = train_data[0], train_data[1]
    n = len(x)
    steps_per_epoch = math.ceil(n / config.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    # The fast path computes the eager model's logits up to float rounding (see tinylora.fastpath) and updates
    # with fused AdamW, one kernel for all parameters, which also differs from the default loop in the last
    # bits. The eager modules use foreach AdamW, which matches the default loop bit for bit.
    forward = make_forward(model, config.fast, config.cache_dequantized)
    fast = forward is not model
    if fast:
        # Process-wide: later steps reuse freed memory instead of faulting in fresh pages (see the module).
        keep_freed_memory()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=not fast, fused=fast)
    yield {"type": "start", "trainable": count_parameters(model, trainable_only=True),
           "total": count_parameters(model), "steps_total": steps_per_epoch * config.epochs}

    start = time.perf_counter()
    step, final_acc = 0, None

    def end(status: str, message: str) -> dict:
        if helper is not None:  # before the last event, which a caller may never resume after
            helper.close()
        seconds = time.perf_counter() - start
        # The processes the steps actually used: the eager path and a run with dropout keep one.
        return {"type": "end", "status": status, "message": message, "step": step, "seconds": seconds,
                "steps_per_second": step / seconds if seconds > 0 else 0.0, "final_acc": final_acc,
                "step_processes": 1 if helper is None else 2}

    def evaluation(epoch: float) -> dict:
        nonlocal final_acc
        if helper is None:
            final_acc, val_loss = evaluate(model, val_data, forward=forward)
        else:
            n_val = len(val_data[0])
            correct, loss_sum = helper.evaluate(n_val)
            final_acc, val_loss = correct / n_val, loss_sum / n_val
        return {"type": "eval", "step": step, "epoch": epoch, "val/acc": final_acc,
                "val/loss": val_loss if math.isfinite(val_loss) else None,
                "seconds": time.perf_counter() - start}

    def half_loss(rows: torch.Tensor, batch_size: int) -> torch.Tensor:
        if not model.training:  # the helper's copy of the model keeps the mode it had when it was forked
            model.train()
        return F.cross_entropy(forward(*model_inputs(train_data, rows)), y[rows], reduction="sum") / batch_size

    def half_evaluation(rows: slice) -> tuple[float, float]:
        return correct_and_loss(model, val_data, rows, forward=forward)

    # On the fast path, a second process can compute half of every batch (see tinylora.split_step). Dropout
    # draws from the random generator, which each process would draw from separately, so it keeps one process.
    helper = None
    dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    float32 = all(p.dtype == torch.float32 for p in params)
    if fast and step_processes() == 2 and not dropout and float32 and config.batch_size >= 2 and n >= 2:
        helper = HalfBatchHelper(params, half_loss, half_evaluation, config.batch_size)
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            perm = torch.randperm(n)
            for i in range(0, n, config.batch_size):
                idx = perm[i:i + config.batch_size]
                optimizer.zero_grad()
                if helper is not None and len(idx) >= 2:
                    split = len(idx) // 2
                    helper.start(idx, split, len(idx))
                    loss = half_loss(idx[:split], len(idx))
                    loss.backward()
                    loss_value = loss.item() + helper.collect()
                else:
                    loss = F.cross_entropy(forward(*model_inputs(train_data, idx)), y[idx])
                    loss_value = loss.item()
                if not math.isfinite(loss_value):
                    yield end("diverged", f"the training loss became {loss_value} at step {step + 1} (epoch {epoch}); "
                                          f"lower the learning rate (now {config.lr:g}) and train again")
                    return
                if helper is None or len(idx) < 2:
                    loss.backward()
                optimizer.step()
                step += 1
                yield {"type": "step", "step": step, "epoch": epoch - 1 + (i + len(idx)) / n,
                       "train/loss": loss_value, "seconds": time.perf_counter() - start}
                if should_stop():
                    if val_data is not None:
                        yield evaluation(epoch - 1 + (i + len(idx)) / n)
                    yield end("stopped", f"stopped at step {step} of {steps_per_epoch * config.epochs}")
                    return
            if val_data is not None:
                yield evaluation(float(epoch))
        yield end("finished", f"finished {config.epochs} epochs")
    finally:
        if helper is not None:
            helper.close()


@dataclass
class PreparedRun:
    """A model built for a config, with its data, ready for `events()`."""

    config: RunConfig
    model: nn.Module
    train_data: Data
    val_data: Data

    def events(self, should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
        return train(self.model, self.train_data, self.val_data, self.config.train, should_stop)


def prepare_run(config: RunConfig, base_state: dict[str, torch.Tensor] | None = None,
                home: Path | None = None) -> PreparedRun:
    """Build the model (which seeds the global generator) and the run's training and validation data.

    Without `base_state`, a finetuned `config.base` is loaded from the cache under `home` (default:
    `data_home()`), which trains it first if it is missing. The random base needs no file.
    """
    if base_state is None and config.base != RANDOM_BASE:
        # Imported here because tinylora.checkpoints trains its bases with this module.
        from .checkpoints import load_base_state
        base_state = load_base_state(config.base, home, config.model)
    model = build_model(config, base_state)
    t = config.train
    train_data = make_data(config.task, t.n_train, t.train_data_seed, config.model)
    val_data = make_data(config.task, t.n_val, t.val_data_seed, config.model)
    return PreparedRun(config, model, train_data, val_data)

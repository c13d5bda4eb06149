"""Training steps split over two processes: same gradients up to rounding, same seed same numbers, clean ends."""

import os
import signal

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tinylora import capacity, split_step
from tinylora.config import RunConfig, TrainConfig
from tinylora.fastpath import make_forward
from tinylora.lora import LoRAConfig
from tinylora.split_step import HalfBatchHelper, HelperFailed
from tinylora.training import correct_and_loss, model_inputs, prepare_run
from torch_threads import step_processes, torch_threads

SHORT = RunConfig(train=TrainConfig(epochs=2, n_train=256, n_val=128))


def losses_and_accuracies(config: RunConfig, processes: int) -> tuple[list[float], list[float]]:
    with torch_threads(1), step_processes(processes):
        events = list(prepare_run(config).events())
    return ([e["train/loss"] for e in events if e["type"] == "step"],
            [e["val/acc"] for e in events if e["type"] == "eval"])


def helper_for(prepared):
    """Return the trained parameters, a fast forward and the two half functions for a prepared run."""
    model, data, val = prepared.model, prepared.train_data, prepared.val_data
    params = [p for p in model.parameters() if p.requires_grad]
    forward = make_forward(model, "fused")

    def half_loss(rows, batch_size):
        return F.cross_entropy(forward(*model_inputs(data, rows)), data[1][rows], reduction="sum") / batch_size

    def half_evaluation(rows):
        return correct_and_loss(model, val, rows, forward=forward)

    return params, forward, half_loss, half_evaluation


def test_split_gradients_match_one_process():
    prepared = prepare_run(SHORT)
    params, forward, half_loss, half_evaluation = helper_for(prepared)
    rows = torch.randperm(len(prepared.train_data[0]))[:64]
    whole = F.cross_entropy(forward(*model_inputs(prepared.train_data, rows)), prepared.train_data[1][rows])
    whole.backward()
    expected = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None

    with torch_threads(1), HalfBatchHelper(params, half_loss, half_evaluation, 64) as helper:
        helper.start(rows, 32, 64)
        first = half_loss(rows[:32], 64)
        first.backward()
        loss = first.item() + helper.collect()
        correct, loss_sum = helper.evaluate(len(prepared.val_data[0]))

    assert loss == pytest.approx(whole.item(), abs=1e-6)
    for got, want in zip([p.grad for p in params], expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert (correct, pytest.approx(loss_sum, rel=1e-6)) == correct_and_loss(
        prepared.model, prepared.val_data, slice(0, len(prepared.val_data[0])), forward=forward)


def test_split_run_repeats_exactly():
    first = losses_and_accuracies(SHORT, 2)
    second = losses_and_accuracies(SHORT, 2)
    assert first == second
    assert len(first[0]) == 8


def test_split_run_close_to_one_process():
    split_losses, split_accs = losses_and_accuracies(SHORT, 2)
    losses, accs = losses_and_accuracies(SHORT, 1)
    assert split_losses == pytest.approx(losses, abs=1e-4)
    assert split_accs == accs


def test_weights_own_their_memory_after_a_split_run(tmp_path):
    with torch_threads(1), step_processes(2):
        prepared = prepare_run(SHORT)
        list(prepared.events())
    trained = {name: p.detach() for name, p in prepared.model.named_parameters() if p.requires_grad}
    # safetensors rejects tensors that share memory, as views into one shared buffer would
    save_file(trained, tmp_path / "adapter.safetensors")
    pointers = [t.untyped_storage().data_ptr() for t in trained.values()]
    assert len(set(pointers)) == len(pointers)


def test_stop_ends_the_helper(monkeypatch):
    helpers = []
    original = HalfBatchHelper.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        helpers.append(self.pid)

    monkeypatch.setattr(HalfBatchHelper, "__init__", record)
    steps = iter(range(100))
    with torch_threads(1), step_processes(2):
        events = prepare_run(SHORT).events(should_stop=lambda: next(steps) >= 2)
        last = next(event for event in events if event["type"] == "end")  # the generator is left suspended
    assert last["status"] == "stopped"
    assert len(helpers) == 1
    with pytest.raises(ChildProcessError):
        os.waitpid(helpers[0], os.WNOHANG)  # already waited for: no such child any more


def test_helpers_alive_together_close_in_any_order():
    prepared = prepare_run(SHORT)
    params, _, half_loss, half_evaluation = helper_for(prepared)
    with torch_threads(1):
        first = HalfBatchHelper(params, half_loss, half_evaluation, 64)
        second = HalfBatchHelper(params, half_loss, half_evaluation, 64)
        pids = [first.pid, second.pid]
        first.close()
        second.close()
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_helper_error_names_the_cause():
    prepared = prepare_run(SHORT)
    params, _, half_loss, half_evaluation = helper_for(prepared)
    parent = os.getpid()

    def failing_half_loss(rows, batch_size):
        if os.getpid() != parent:
            raise ValueError("half batch exploded")
        return half_loss(rows, batch_size)

    rows = torch.arange(64)
    with torch_threads(1), HalfBatchHelper(params, failing_half_loss, half_evaluation, 64) as helper:
        helper.start(rows, 32, 64)
        with pytest.raises(HelperFailed, match="ValueError: half batch exploded"):
            helper.collect()


def test_killed_helper_fails_the_step():
    prepared = prepare_run(SHORT)
    params, _, half_loss, half_evaluation = helper_for(prepared)
    with torch_threads(1), HalfBatchHelper(params, half_loss, half_evaluation, 64) as helper:
        os.kill(helper.pid, signal.SIGKILL)
        os.waitpid(helper.pid, 0)
        with pytest.raises(HelperFailed, match="exited; train again, or set TINYLORA_STEP_PROCESSES=1"):
            helper.start(torch.arange(64), 32, 64)
            helper.collect()


def test_dropout_keeps_one_process(monkeypatch):
    def reject(*args, **kwargs):
        raise AssertionError("a run with dropout started a helper")

    monkeypatch.setattr(HalfBatchHelper, "__init__", reject)
    config = RunConfig(lora=LoRAConfig(lora_dropout=0.1), train=SHORT.train)
    with torch_threads(1), step_processes(2):
        events = list(prepare_run(config).events())
    assert events[-1]["status"] == "finished"
    assert events[-1]["step_processes"] == 1


@pytest.mark.parametrize("method, fast, processes", [("full", "auto", 1), ("full", "fused", 2), ("lora", "auto", 2)])
def test_end_event_names_the_processes_used(method, fast, processes):
    config = RunConfig(method=method, train=TrainConfig(epochs=1, n_train=128, n_val=64, fast=fast))
    with torch_threads(1), step_processes(2):
        end = list(prepare_run(config).events())[-1]
    assert end["step_processes"] == processes  # the eager path of a full finetune keeps one


def test_step_processes_accepts_one_or_two():
    with pytest.raises(ValueError, match="must be 1 or 2, got 3"):
        split_step.set_step_processes(3)
    assert split_step.step_processes() == 1


def test_worker_policy(monkeypatch):
    monkeypatch.delenv("TINYLORA_STEP_PROCESSES", raising=False)
    monkeypatch.setattr(capacity, "threads_per_run", lambda: 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert capacity.step_processes_per_run() == 2
    assert capacity.step_processes_per_run(grouped=True) == 1
    monkeypatch.setattr(capacity, "threads_per_run", lambda: 2)
    assert capacity.step_processes_per_run() == 1
    monkeypatch.setenv("TINYLORA_STEP_PROCESSES", "1")
    monkeypatch.setattr(capacity, "threads_per_run", lambda: 1)
    assert capacity.step_processes_per_run() == 1
    monkeypatch.setenv("TINYLORA_STEP_PROCESSES", "3")
    assert capacity.step_processes_per_run() == 2  # ignored with a warning

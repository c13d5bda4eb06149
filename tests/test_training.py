"""The training loop's events, divergence, stopping and reproducibility."""

import dataclasses
import math

from tinylora.config import RunConfig, TrainConfig
from tinylora.tasks import TASKS, make_data
from tinylora.training import prepare_run


def short(**changes) -> RunConfig:
    return RunConfig(train=dataclasses.replace(TrainConfig(epochs=1, n_train=256, n_val=128), **changes))


def finite_numbers(event):
    return all(math.isfinite(v) for v in event.values() if isinstance(v, float))


def test_events_in_order_with_required_fields():
    events = list(prepare_run(short(epochs=2)).events())
    assert events[0]["type"] == "start"
    assert events[0]["steps_total"] == 8
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 9))
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["epoch"] for e in evals] == [1.0, 2.0]
    assert events[-1]["type"] == "end"
    assert events[-1]["status"] == "finished"
    assert events[-1]["final_acc"] == evals[-1]["val/acc"]
    for event in steps:
        assert set(event) == {"type", "step", "epoch", "train/loss", "seconds"}


def test_huge_learning_rate_diverges_without_nan_events():
    events = list(prepare_run(RunConfig(method="full", train=TrainConfig(lr=1e12, epochs=3))).events())
    end = events[-1]
    assert end["status"] == "diverged"
    assert "lower the learning rate" in end["message"]
    assert all(finite_numbers(e) for e in events)


def test_stop_keeps_learned_weights():
    prepared = prepare_run(short(epochs=4))
    calls = iter(range(1000))
    events = list(prepared.events(should_stop=lambda: next(calls) >= 2))
    assert events[-1]["status"] == "stopped"
    assert events[-1]["step"] == 3
    assert events[-2]["type"] == "eval"
    assert events[-1]["final_acc"] == events[-2]["val/acc"]


def test_same_seed_same_numbers():
    first = [e.get("train/loss") for e in prepare_run(short()).events() if e["type"] == "step"]
    second = [e.get("train/loss") for e in prepare_run(short()).events() if e["type"] == "step"]
    other_seed = [e.get("train/loss") for e in prepare_run(short(seed=1)).events() if e["type"] == "step"]
    assert first == second
    assert first != other_seed


def test_tasks_are_near_balanced():
    for name in TASKS:
        _, y = make_data(name, 4000, seed=0)
        assert 0.40 <= y.float().mean().item() <= 0.60, name


def test_data_does_not_touch_global_generator():
    import torch

    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    make_data("odd_majority", 100, seed=1)
    assert torch.equal(torch.rand(1), expected)

"""The experiment generators (adapters per task, forgetting, learns-less) on tiny data: events and invariants."""

import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tinylora.adapter_sets import load_adapters
from tinylora.config import RunConfig, TrainConfig
from tinylora.experiments import (ADAPTERS_DIR, AdaptersSpec, adapters_job, build_adapter_model, cross_evaluate,
                                  make_task_data, run_adapters, train_phase, validate_adapters_params)
from tinylora.forgetting import (STRATEGIES, ForgettingSpec, default_params, forgetting_job, run_forgetting,
                                 validate_forgetting_params)
from tinylora.learns_less import (LearnsLessSpec, learns_less_job, run_learns_less, task_evaluator,
                                  validate_learns_less_params)
from tinylora.lora import LoRAConfig
from tinylora.training import evaluate, prepare_run

TINY_TRAIN = {"n_train": 64, "n_val": 32, "batch_size": 16}  # 4 steps per epoch
TASKS = ["odd_majority", "first_lt_last"]


def collect(events) -> list[dict]:
    events = list(events)
    for event in events:
        json.dumps(event, allow_nan=False)
    return events


def tiny_forgetting(strategy: str, **overrides) -> dict:
    params = {**default_params(strategy), "epochs_a": 1, "epochs_b": 2, "epochs_joint": 1, "eval_every": 2,
              "train": TINY_TRAIN}
    return {**params, **overrides}


# run_adapters

@pytest.fixture(scope="module")
def adapters_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("adapters")
    params = {"tasks": TASKS, "train": {**TINY_TRAIN, "epochs": 2}, "out_dir": str(out_dir)}
    return collect(run_adapters(params)), out_dir


def test_adapters_event_order(adapters_run):
    events, _ = adapters_run
    types = [e["type"] for e in events]
    assert types[0] == "start"
    assert types[-2:] == ["matrix", "end"]
    assert [e["adapter"] for e in events if e["type"] == "adapter"] == TASKS
    assert events[-1]["status"] == "finished"


def test_adapters_events_carry_adapter(adapters_run):
    events, _ = adapters_run
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) == events[0]["steps_total"] == 2 * 2 * 4
    assert {e["adapter"] for e in steps} == set(TASKS)
    evals = [e for e in events if e["type"] == "eval"]
    assert [(e["adapter"], e["epoch"]) for e in evals] == [(t, float(k)) for t in TASKS for k in (1, 2)]


def test_adapters_matrix_shape(adapters_run):
    events, _ = adapters_run
    matrix = events[-1]["summary"]["matrix"]
    assert matrix["adapters"] == [*TASKS, None]
    assert matrix["tasks"] == TASKS
    assert [len(row) for row in matrix["acc"]] == [2, 2, 2]
    for i, task in enumerate(TASKS):
        assert matrix["acc"][i][i] == events[-1]["summary"]["adapters"][task]["final_acc"]


def test_adapters_files_reproduce_matrix(adapters_run):
    events, out_dir = adapters_run
    model = load_adapters(out_dir)
    val_sets = AdaptersSpec.from_params({"tasks": TASKS, "train": TINY_TRAIN}).validation_sets()
    assert list(val_sets) == TASKS
    assert cross_evaluate(model, val_sets) == events[-1]["summary"]["matrix"]


def test_first_adapter_matches_plain_run():
    events = collect(run_adapters({"tasks": ["first_lt_last"], "train": {**TINY_TRAIN, "epochs": 2}}))
    config = RunConfig(task="first_lt_last", train=TrainConfig(**TINY_TRAIN, epochs=2))
    plain = [e["val/acc"] for e in prepare_run(config).events() if e["type"] == "eval"]
    assert [e["val/acc"] for e in events if e["type"] == "eval"] == plain


def test_adapters_stop_ends_stopped():
    calls = []

    def stop_after_three_steps() -> bool:
        calls.append(1)
        return len(calls) >= 3

    events = collect(run_adapters({"train": TINY_TRAIN}, should_stop=stop_after_three_steps))
    assert events[-1]["type"] == "end"
    assert events[-1]["status"] == "stopped"
    assert [e["adapter"] for e in events if e["type"] == "adapter"] == [TASKS[0]]


@pytest.mark.parametrize("params, match", [
    ({"tasks": []}, "at least one task"),
    ({"tasks": ["odd_majority", "odd_majority"]}, "once"),
    ({"tasks": ["nope"]}, "unknown task"),
    ({"quant": "int3"}, "quantization scheme"),
    ({"lora": {"r": 0}}, "r must be between"),
    ({"colour": 1}, "unknown AdaptersSpec setting"),
])
def test_adapters_rejects_bad_params(params, match):
    with pytest.raises(ValueError, match=match):
        next(run_adapters(params))


# run_forgetting

@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_forgetting_evaluates_every_task(strategy):
    events = collect(run_forgetting(tiny_forgetting(strategy)))
    start, end = events[0], events[-1]
    assert start["type"] == "start"
    assert end["type"] == "end"
    assert end["status"] == "finished"
    tasks_at = defaultdict(list)
    for e in events:
        if e["type"] == "eval":
            tasks_at[e["step"]].append(e["task"])
    boundaries = [p["start_step"] + p["steps"] for p in start["phases"]]
    expected_steps = sorted({0, *range(2, start["steps_total"] + 1, 2), *boundaries})
    assert sorted(tasks_at) == expected_steps
    for step, tasks in tasks_at.items():
        assert sorted(tasks) == sorted(TASKS), step
    assert [e["step"] for e in events if e["type"] == "phase"] == [p["start_step"] for p in start["phases"]]
    assert len([e for e in events if e["type"] == "step"]) == start["steps_total"]


@pytest.mark.parametrize("strategy, phases", [("sequential", ["A", "B"]), ("separate", ["A", "B"]),
                                              ("full", ["A", "B"]), ("replay", ["A", "B"]), ("joint", ["A+B"])])
def test_forgetting_phases(strategy, phases):
    events = collect(run_forgetting(tiny_forgetting(strategy)))
    assert [e["phase"] for e in events if e["type"] == "phase"] == phases


def test_forgetting_summary_fields():
    events = collect(run_forgetting(tiny_forgetting("sequential")))
    summary = events[-1]["summary"]
    by_phase = {c["after"]: c["acc"] for c in summary["checkpoints"]}
    assert list(by_phase) == ["start", "A", "B"]
    assert summary["a_after_a"] == by_phase["A"]["odd_majority"]
    assert summary["b_before_b"] == by_phase["A"]["first_lt_last"]
    assert summary["final"] == by_phase["B"]
    assert summary["lost_a"] == by_phase["A"]["odd_majority"] - by_phase["B"]["odd_majority"]
    assert summary["gained_b"] == by_phase["B"]["first_lt_last"] - by_phase["A"]["first_lt_last"]
    assert summary["trainable"] == 6274


def test_separate_keeps_a_constant():
    events = collect(run_forgetting(tiny_forgetting("separate")))
    acc_a = [e["val/acc"] for e in events if e["type"] == "eval" and e["phase"] == "B" and e["task"] == "odd_majority"]
    summary = events[-1]["summary"]
    assert len(acc_a) > 1
    assert set(acc_a) == {summary["a_after_a"]}
    assert summary["lost_a"] == 0
    assert summary["trainable"] == 2 * 6274


def test_joint_has_no_lost_a():
    summary = collect(run_forgetting(tiny_forgetting("joint")))[-1]["summary"]
    assert summary["task_ids"] is True
    assert summary["lost_a"] == 0
    assert summary["b_before_b"] == summary["checkpoints"][0]["acc"]["first_lt_last"]


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5])
def test_replay_adds_a_examples(fraction):
    start = next(run_forgetting(tiny_forgetting("replay", replay_fraction=fraction)))
    n_b = TINY_TRAIN["n_train"] + round(fraction * TINY_TRAIN["n_train"])
    assert start["phases"][1]["steps"] == math.ceil(n_b / TINY_TRAIN["batch_size"]) * 2
    assert ("odd_majority" in start["phases"][1]["tasks"]) == (fraction > 0)


def test_full_trains_every_weight():
    summary = collect(run_forgetting(tiny_forgetting("full")))[-1]["summary"]
    assert summary["trainable"] == 202114


def test_forgetting_stop_ends_stopped():
    calls = []

    def stop_after_five_steps() -> bool:
        calls.append(1)
        return len(calls) >= 5

    events = collect(run_forgetting(tiny_forgetting("sequential"), should_stop=stop_after_five_steps))
    assert events[-1]["status"] == "stopped"
    assert events[-1]["summary"]["lost_a"] is None
    assert [e["phase"] for e in events if e["type"] == "phase"] == ["A", "B"]


@pytest.mark.parametrize("overrides, match", [
    ({"strategy": "forget"}, "unknown strategy"),
    ({"replay_fraction": 0.6}, "replay_fraction"),
    ({"task_b": "odd_majority"}, "must differ"),
    ({"epochs_a": 0}, "epochs_a"),
    ({"eval_every": -1}, "eval_every"),
    ({"train": {"lr": 0}}, "learning rate"),
    ({"train": {"epochs": 3}}, "unknown train setting"),
    ({"lora": {"r": 99}}, "r must be between"),
])
def test_forgetting_rejects_bad_params(overrides, match):
    with pytest.raises(ValueError, match=match):
        ForgettingSpec.from_params({**default_params("sequential"), **overrides})


def test_default_params_joint_recipe():
    params = default_params("joint")
    assert (params["lora"]["r"], params["lora"]["lora_alpha"]) == (8, 16)
    assert params["epochs_joint"] == 10
    assert ForgettingSpec.from_params(params).uses_task_ids


def test_evaluating_between_steps_changes_nothing():
    weights = []
    for eval_every in (0, 1):
        model = build_adapter_model(0)
        model.add_adapter("a", LoRAConfig())
        data = make_task_data(TASKS, TrainConfig(**TINY_TRAIN))
        val = {task: data[task][1] for task in TASKS}
        evaluator = lambda: {task: evaluate(model, v) for task, v in val.items()}  # noqa: E731
        for _ in train_phase(model, "A", data["odd_majority"][0], TrainConfig(**TINY_TRAIN, epochs=1), evaluator,
                             eval_every, 0, 0.0, lambda: False):
            pass
        weights.append(model.get_adapter_state_dict("a"))
    for key, tensor in weights[0].items():
        assert torch.equal(weights[1][key], tensor), key


# run_learns_less

def test_learns_less_points():
    params = {"ranks": [1, 2], "base_epochs": 1, "epochs": 1, "eval_every": 0, "train": TINY_TRAIN}
    events = collect(run_learns_less(params))
    assert events[-1]["status"] == "finished"
    points = [e for e in events if e["type"] == "point"]
    assert [p["run"] for p in points] == ["full", "lora r=1", "lora r=2"]
    assert points[0]["trainable"] == 202114
    assert points[1]["trainable"] < points[2]["trainable"] < points[0]["trainable"]
    for p in points:
        assert 0 <= p["acc_a"] <= 1
        assert 0 <= p["acc_b"] <= 1
    assert events[-1]["summary"]["points"] == [{k: v for k, v in p.items() if k != "type"} for p in points]
    assert set(events[-1]["summary"]["base"]) == set(TASKS)


def test_learns_less_runs_share_start():
    params = {"ranks": [1], "full": False, "base_epochs": 1, "epochs": 1, "eval_every": 0, "train": TINY_TRAIN}
    first = [e for e in collect(run_learns_less(params)) if e["type"] == "point"]
    second = [e for e in collect(run_learns_less(params)) if e["type"] == "point"]
    assert [(p["acc_a"], p["acc_b"]) for p in first] == [(p["acc_a"], p["acc_b"]) for p in second]


@pytest.mark.parametrize("params, match", [({"ranks": [], "full": False}, "nothing to run"),
                                           ({"ranks": [4, 4]}, "once"), ({"ranks": [65]}, "r must be between")])
def test_learns_less_rejects_bad_params(params, match):
    with pytest.raises(ValueError, match=match):
        next(run_learns_less(params))


# Job-runner entry points

def test_adapters_job_saves_in_run_dir(tmp_path):
    ctx = SimpleNamespace(run_dir=tmp_path, should_stop=lambda: False)
    events = collect(adapters_job({"tasks": ["sum_high"], "train": {**TINY_TRAIN, "epochs": 1}}, ctx))
    assert events[-1]["summary"]["out_dir"] == str(tmp_path / ADAPTERS_DIR)
    assert load_adapters(tmp_path / ADAPTERS_DIR).adapter_names == ["sum_high"]


@pytest.mark.parametrize("job", [forgetting_job, learns_less_job])
def test_forgetting_jobs_honour_stop(job):
    ctx = SimpleNamespace(run_dir=None, should_stop=lambda: True)
    params = {"train": TINY_TRAIN, "eval_every": 0}
    events = collect(job(params, ctx))
    assert events[-1]["type"] == "end"
    assert events[-1]["status"] == "stopped"


@pytest.mark.parametrize("validate, spec, params", [
    (validate_adapters_params, AdaptersSpec, {"tasks": ["sum_high", "middle_high"], "lora": {"r": 2}}),
    (validate_forgetting_params, ForgettingSpec, default_params("joint")),
    (validate_learns_less_params, LearnsLessSpec, {"ranks": [2, 8], "train": {"lr": 1e-3}}),
])
def test_validated_params_round_trip(validate, spec, params):
    normalised = validate(params)
    assert json.loads(json.dumps(normalised)) == normalised
    assert validate(normalised) == normalised
    assert spec.from_params(normalised) == spec.from_params(params)


def test_task_evaluator_uses_original_head():
    model = build_adapter_model(0)
    model.add_adapter("b", LoRAConfig())  # lora_B = 0: the body is the base's
    with torch.no_grad():
        model.head.modules_to_save["b"].weight.mul_(-1)  # B's head flips every prediction
        model.head.modules_to_save["b"].bias.mul_(-1)
    data = make_task_data(TASKS, TrainConfig(**TINY_TRAIN))
    val = {task: data[task][1] for task in TASKS}
    results = task_evaluator(model, val, original_head_task="odd_majority")()
    with model.disable_adapter():
        plain = {task: evaluate(model, v)[0] for task, v in val.items()}
    assert results["odd_majority"][0] == plain["odd_majority"]
    assert results["first_lt_last"][0] == pytest.approx(1 - plain["first_lt_last"])
    assert model.head.active_adapter == "b"


@pytest.mark.parametrize("separate_heads", [True, False])
def test_learns_less_full_run_keeps_a_head(separate_heads):
    params = {"ranks": [], "base_epochs": 1, "epochs": 1, "eval_every": 0, "train": TINY_TRAIN,
              "separate_heads": separate_heads}
    point = next(e for e in collect(run_learns_less(params)) if e["type"] == "point")
    assert point["trainable"] == 202114  # with separate heads: B's head trains and A's stays frozen


def test_learns_less_default_lr():
    spec = LearnsLessSpec.from_params({"train": {"n_train": 64}})
    assert spec.train.lr == 1e-3
    assert spec.separate_heads

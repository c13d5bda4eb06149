"""Experiment runs read back from a real store: incremental reads, timelines, summary rows, learns-less base."""

import os

import pytest

from run_factory import run_job
from tinylora.experiment_progress import (adapter_curves, forgetting_row, forgetting_table, forgetting_timeline,
                                          learns_less_base, learns_less_frame, phase_spans, read_experiment)
from tinylora.forgetting import default_params, run_forgetting
from tinylora.learns_less import run_learns_less
from tinylora.store import RunStore

TINY_TRAIN = {"n_train": 64, "n_val": 32, "batch_size": 16}
SEQUENTIAL = {**default_params("sequential"), "epochs_a": 1, "epochs_b": 2, "eval_every": 2, "train": TINY_TRAIN}


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path)


def running_run(store: RunStore, kind: str, params: dict) -> str:
    run_id = store.create_run(kind, params)
    store.claim_next(os.getpid())
    return run_id


def test_incremental_read_equals_full_read(store):
    events = list(run_forgetting(SEQUENTIAL))
    run_id = running_run(store, "forgetting", SEQUENTIAL)
    half = len(events) // 2
    store.append_events(run_id, events[:half])
    partial = read_experiment(store, run_id)
    store.append_events(run_id, events[half:])
    incremental = read_experiment(store, run_id, partial)
    full = read_experiment(store, run_id)
    assert partial.end is None
    assert len(partial.evals) < len(full.evals)
    for name in ("steps_done", "step", "section", "sections", "evals", "points", "end", "last_seq", "start"):
        assert getattr(incremental, name) == getattr(full, name), name


def test_forgetting_timeline_and_phases(store):
    run_id = run_job(store, "forgetting", SEQUENTIAL)
    progress = read_experiment(store, run_id)
    timeline = forgetting_timeline(progress)
    assert list(timeline.columns) == ["step", "phase", "task", "acc"]
    assert len(timeline) == len(progress.evals)
    assert set(timeline.task) == {"odd_majority", "first_lt_last"}
    assert phase_spans(progress) == [{"phase": "A", "tasks": ["odd_majority"], "start": 0, "end": 4},
                                     {"phase": "B", "tasks": ["first_lt_last"], "start": 4, "end": 12}]
    assert progress.steps_done == progress.steps_total == 12
    assert progress.fraction == 1.0


def test_forgetting_row_reads_summary(store):
    run_id = run_job(store, "forgetting", SEQUENTIAL)
    summary = store.get_run(run_id).summary["summary"]
    row = forgetting_row(read_experiment(store, run_id))
    assert row["lost_a"] == summary["lost_a"]
    assert row["gained_b"] == summary["gained_b"]
    assert row["a_final"] == summary["final"]["odd_majority"]
    assert row["b_final"] == summary["final"]["first_lt_last"]
    assert row["trainable"] == 6274


def test_queued_run_has_empty_row(store):
    run_id = store.create_run("forgetting", {**SEQUENTIAL, "strategy": "replay", "replay_fraction": 0.3})
    progress = read_experiment(store, run_id)
    row = forgetting_row(progress)
    assert row["strategy"] == "One adapter: A, then B with A replayed (30% of A)"
    assert row["lost_a"] is None
    assert progress.fraction == 0.0
    assert phase_spans(progress) == []
    table = forgetting_table([progress])
    assert table.lost_a.isna().all()


def test_missing_run_reads_none(store):
    assert read_experiment(store, "no-such-run") is None


def test_adapter_curves_per_adapter(store):
    run_id = run_job(store, "adapters", {"train": {**TINY_TRAIN, "epochs": 2}})
    progress = read_experiment(store, run_id)
    curves = adapter_curves(progress)
    assert list(curves) == ["odd_majority", "first_lt_last"]
    assert [epochs for epochs, _ in curves.values()] == [[1.0, 2.0], [1.0, 2.0]]
    assert progress.matrix == store.get_run(run_id).summary["summary"]["matrix"]
    assert progress.steps_done == progress.steps_total == 16


def test_learns_less_base_waits_for_the_base(store):
    params = {"ranks": [1], "base_epochs": 2, "epochs": 1, "eval_every": 2, "train": TINY_TRAIN}
    events = list(run_learns_less(params))
    run_id = running_run(store, "learns_less", params)
    first_run = next(i for i, e in enumerate(events) if e["type"] == "run" and e["run"] != "base")
    store.append_events(run_id, events[:first_run - 1])  # the base is still training
    progress = read_experiment(store, run_id)
    assert progress.section == "base"
    assert learns_less_base(progress) is None
    store.append_events(run_id, events[first_run - 1:])
    progress = read_experiment(store, run_id, progress)
    end_of_base = [e for e in events[:first_run] if e["type"] == "eval"][-2:]
    assert learns_less_base(progress) == {e["task"]: e["val/acc"] for e in end_of_base}
    assert learns_less_base(progress) == events[-1]["summary"]["base"]
    frame = learns_less_frame(progress)
    assert list(frame.run) == ["full", "lora r=1"]
    assert list(frame.acc_a) == [p["acc_a"] for p in events[-1]["summary"]["points"]]

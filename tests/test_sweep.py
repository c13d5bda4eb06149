"""Sweeps end to end on this machine: the dispatcher, the runner's workers and the run store, for real."""

import importlib.util
import subprocess
import sys

import pytest

from browser_support import free_port
from conftest import ROOT, wait_for
from tinylora.config import RunConfig
from tinylora.jobs import busy_slots
from tinylora.store import RunStore
from tinylora.sweep import SweepSpec
from tinylora.sweep_search import grid_points, point_config, point_key
from tinylora.sweep_store import dispatchers, resume_sweep, start_sweep, stop_sweep
from tinylora.sweep_results import runs_table

TINY = {"train": {"epochs": 2, "n_train": 256, "n_val": 128}}
GRID = {"base": TINY, "axes": {"r": [2, 8], "lora_alpha": [8, 16]}}


def dispatcher_ended(store, sweep_id):
    runs = dispatchers(store, sweep_id)
    return runs[0] if runs and not runs[0].active else None


def test_grid_runs_every_point_into_the_store(store):
    spec = SweepSpec.from_dict(GRID)
    record = start_sweep(store, spec, owner="tester")
    dispatcher = wait_for(lambda: dispatcher_ended(store, record.id), timeout=120, message="the sweep to end")
    assert dispatcher.status == "finished", dispatcher.message
    assert dispatcher.message == "4 of 4 runs finished"

    runs = store.list_runs(kind="train", group_id=record.id)
    assert len(runs) == 4
    assert {r.status for r in runs} == {"finished"}
    assert {r.owner for r in runs} == {"tester"}
    by_key = {point_key(p, 0): p for p in grid_points(spec)}
    from tinylora.sweep_search import point_from_config
    assert {point_key(*point_from_config(spec, r.config)) for r in runs} == set(by_key)
    for run in runs:
        config = RunConfig.from_dict(run.config)
        assert config.train.epochs == 2
        assert 0.0 <= run.final_acc <= 1.0
        assert run.summary["trainable"] == 4 * config.lora.r * (256 + 128) + 130
        steps = store.events(run.id, types=("step",))
        assert len(steps) == 8
        evals = store.events(run.id, types=("eval",))
        assert evals[-1][1]["val/acc"] == run.final_acc
        assert (store.run_dir(run.id) / "adapter" / "adapter_model.safetensors").is_file()
    assert dispatcher.final_acc == max(r.final_acc for r in runs)

    table = runs_table(store, record)
    assert table["status"].tolist() == ["finished"] * 4
    assert sorted(table["final_acc"]) == sorted(r.final_acc for r in runs)


def test_stop_then_resume_skips_finished_points(store, monkeypatch):
    monkeypatch.setenv("TINYLORA_MAX_RUNS", "1")  # one run at a time, so stopping leaves points unfinished
    spec = SweepSpec.from_dict(GRID)
    record = start_sweep(store, spec)
    wait_for(lambda: store.list_runs(kind="train", group_id=record.id, statuses=("finished",)), timeout=120,
             message="the first run to finish")
    assert stop_sweep(store, record.id) >= 1
    dispatcher = wait_for(lambda: dispatcher_ended(store, record.id), timeout=60, message="the sweep to stop")
    assert dispatcher.status == "stopped"
    before = store.list_runs(kind="train", group_id=record.id)
    assert not any(r.active for r in before)
    finished = {r.id: r for r in before if r.status == "finished"}
    assert 1 <= len(finished) < 4
    assert any(r.status == "stopped" for r in before)

    resume_sweep(store, record.id)
    dispatcher = wait_for(lambda: (d := dispatcher_ended(store, record.id)) and d.status != "stopped" and d,
                          timeout=120, message="the resumed sweep to end")
    assert dispatcher.status == "finished", dispatcher.message
    after = store.list_runs(kind="train", group_id=record.id)
    assert len(after) == len(before) + (4 - len(finished))
    table = runs_table(store, record)
    assert table["status"].tolist() == ["finished"] * 4
    assert set(finished) <= set(table["run_id"])
    for run in finished.values():  # a finished point was not trained again
        same = [r for r in after if r.config == run.config]
        assert [r.id for r in same] == [run.id]
    assert len(dispatchers(store, record.id)) == 2


def test_resume_rejects_active_sweep(store, monkeypatch):
    monkeypatch.setenv("TINYLORA_MAX_RUNS", "1")
    record = start_sweep(store, SweepSpec.from_dict(GRID))
    with pytest.raises(ValueError, match="stop it before resuming it"):
        resume_sweep(store, record.id)
    # Wait for the dispatcher's worker, so the runner holds its lock and the fixture can end it at teardown.
    wait_for(lambda: dispatchers(store, record.id)[0].status == "running", timeout=60, message="the dispatcher")
    stop_sweep(store, record.id)
    wait_for(lambda: dispatcher_ended(store, record.id), timeout=60, message="the sweep to stop")


@pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="optuna is not installed")
def test_tpe_search_trains_its_budget(store):
    spec = SweepSpec.from_dict({"base": {"train": {"epochs": 1, "n_train": 128, "n_val": 64}}, "search": "tpe",
                                "budget": 4, "axes": {"r": {"low": 1, "high": 16, "log": True},
                                                      "use_rslora": [False, True]}})
    record = start_sweep(store, spec)
    dispatcher = wait_for(lambda: dispatcher_ended(store, record.id), timeout=120, message="the TPE sweep to end")
    assert dispatcher.status == "finished", dispatcher.message
    table = runs_table(store, record)
    assert len(table) == dispatcher.summary["counts"]["finished"]
    assert 1 <= len(table) <= 4  # a repeated proposal reuses its result instead of training again
    assert table["status"].eq("finished").all()
    assert table["r"].between(1, 16).all()
    assert len({(r, s) for r, s in zip(table["r"], table["use_rslora"])}) == len(table)


def test_dispatcher_takes_no_training_slot(store, monkeypatch):
    monkeypatch.setenv("TINYLORA_MAX_RUNS", "1")
    record = start_sweep(store, SweepSpec.from_dict(GRID))
    wait_for(lambda: store.list_runs(kind="train", group_id=record.id, statuses=("running",)), timeout=60,
             message="a run to start beside the dispatcher")
    assert dispatchers(store, record.id)[0].status == "running"
    assert busy_slots(store) == 1
    assert store.count_running() == 2
    stop_sweep(store, record.id)
    wait_for(lambda: dispatcher_ended(store, record.id), timeout=60, message="the sweep to stop")


def test_remote_runs_are_never_claimed_locally(store):
    config = RunConfig().to_dict()
    remote = store.create_run("train", config, executor="ray", pid=123)
    local = store.create_run("train", config)
    assert store.claim_next(pid=1).id == local
    assert store.claim_next(pid=1) is None
    assert store.get_run(remote).status == "queued"
    assert store.queue_position(remote) == 1
    assert store.start_run(remote, pid=2)
    assert not store.start_run(remote, pid=2)
    assert store.count_running() == 1  # only the local run counts as this machine's


def test_claim_by_kind(store):
    train = store.create_run("train", {})
    sweep = store.create_run("sweep", {"sweep_id": "s"})
    assert store.claim_next(pid=1, exclude_kinds=("sweep",)).id == train
    assert store.claim_next(pid=1, exclude_kinds=("sweep",)) is None
    assert store.claim_next(pid=1, kinds=("sweep",)).id == sweep


def test_old_database_gets_executor_column(tmp_path):
    import sqlite3

    path = tmp_path / "runs.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, created REAL NOT NULL, "
                   "config TEXT NOT NULL, status TEXT NOT NULL, message TEXT NOT NULL DEFAULT '', started REAL, "
                   "ended REAL, seconds REAL, final_acc REAL, summary TEXT NOT NULL DEFAULT '{}', pid INTEGER, "
                   "heartbeat REAL, stop_requested INTEGER NOT NULL DEFAULT 0, owner TEXT NOT NULL DEFAULT '', "
                   "group_id TEXT NOT NULL DEFAULT '')")
        db.execute("INSERT INTO runs (id, kind, created, config, status) VALUES ('old', 'train', 1, '{}', 'queued')")
    store = RunStore(tmp_path)
    assert store.get_run("old").executor == ""
    assert store.claim_next(pid=1).id == "old"


def test_orphaned_remote_queued_run_is_interrupted(store):
    run_id = store.create_run("train", {}, executor="ray", pid=2**22 + 12345)  # no such process
    assert store.mark_interrupted(now=10**12) == [run_id]
    assert store.get_run(run_id).status == "interrupted"


def test_local_sweep_never_imports_ray(home):
    code = ("import sys; from tinylora import sweep, sweep_search, sweep_store, sweep_jobs, sweep_results, jobs; "
            "from tinylora.commands import sweep as command; "
            "print('ray' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_unreachable_ray_address_fails_the_dispatcher(store):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    spec = SweepSpec.from_dict({**GRID, "executor": "ray", "ray_address": address})
    record = start_sweep(store, spec)
    dispatcher = wait_for(lambda: dispatcher_ended(store, record.id), timeout=60, message="the dispatcher to fail")
    assert dispatcher.status == "failed"
    assert f"no Ray cluster answers at {address}" in dispatcher.message
    assert store.list_runs(kind="train", group_id=record.id) == []


def test_point_config_of_sweep_matches_train_validation():
    spec = SweepSpec.from_dict(GRID)
    for point in grid_points(spec):
        assert point_config(spec, point, 0).validate()

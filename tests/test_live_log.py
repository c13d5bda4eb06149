"""The live file a training worker writes for the Train page's charts, and its removal with the run."""

import json
import time

import pytest

from conftest import wait_for
from run_factory import add_run
from tinylora import jobs
from tinylora.config import RunConfig, TrainConfig
from tinylora.live_log import LiveLog
from tinylora.store import RunStore

FAST = RunConfig(train=TrainConfig(epochs=2, n_train=256, n_val=128)).to_dict()


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_live_log_write_and_close(tmp_path):
    path = tmp_path / "live" / "run.jsonl"
    log = LiveLog(path)
    log.write([{"type": "step", "step": 1, "train/loss": 0.5}])
    log.write([])
    log.write([{"type": "step", "step": 2, "train/loss": 0.25}, {"type": "eval", "step": 2, "val/acc": 0.75}])
    assert path.read_text().endswith("\n")
    assert [e["step"] for e in read_lines(path)] == [1, 2, 2]
    log.close()
    assert not path.exists()


def test_live_log_unwritable_path(tmp_path):
    blocker = tmp_path / "live"
    blocker.write_text("a file where the directory should be")
    log = LiveLog(blocker / "run.jsonl")
    log.write([{"type": "step", "step": 1}])  # the directory cannot be made
    log.write([{"type": "step", "step": 2}])
    log.close()
    assert blocker.read_text() == "a file where the directory should be"


def test_record_events_with_live_log(store, tmp_path):
    path = tmp_path / "run.jsonl"
    log = LiveLog(path)
    run_id = store.create_run("train", FAST)
    events = [{"type": "start", "steps_total": 3}] + [
        {"type": "step", "step": i, "train/loss": 1 / i, "seconds": 0.01 * i} for i in (1, 2, 3)] + [
        {"type": "eval", "step": 3, "epoch": 1.0, "val/acc": 0.5, "seconds": 0.03},
        {"type": "end", "status": "finished", "final_acc": 0.5, "seconds": 0.03}]
    assert jobs.record_events(store, run_id, "train", lambda: iter(events), live=log) == 0
    assert read_lines(path) == [event for _, event in store.events(run_id)] == events


def test_worker_live_file_lifetime(store):
    run_id = jobs.submit(store, "train", RunConfig(train=TrainConfig(epochs=200)).to_dict())
    path = store.live_path(run_id)
    wait_for(lambda: path.exists() and sum(e["type"] == "step" for e in read_lines(path)) >= 5,
             message="step events in the live file")
    stored = [event for _, event in store.events(run_id)]
    live = read_lines(path)
    assert live[0]["type"] == "start"
    assert live[0]["steps_total"] == 3200
    assert live[:len(stored) - 1] == [e for e in stored if e["type"] != "end"][:len(stored) - 1]
    store.request_stop(run_id)
    wait_for(lambda: not store.get_run(run_id).active, message="the run to stop")
    wait_for(lambda: not path.exists(), message="the live file to go")


def test_live_file_of_deleted_and_interrupted_runs(store):
    running = add_run(store, losses=[1.0, 0.5], status="running")
    path = store.live_path(running)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"type":"step"}\n')
    store.finish_run(running, "stopped", "stopped by a test")
    store.delete_run(running)
    assert not path.exists()

    orphaned = add_run(store, losses=[1.0], status="running")
    store.live_path(orphaned).write_text('{"type":"step"}\n')
    with store._connect() as db:  # above Linux's largest pid (2**22), so no process has it
        db.execute("UPDATE runs SET pid = ? WHERE id = ?", (2 ** 22 + 17, orphaned))
    assert store.mark_interrupted(now=time.time()) == [orphaned]
    assert not store.live_path(orphaned).exists()


def test_live_path_with_invalid_run_id(store):
    with pytest.raises(ValueError):
        store.live_path("../runs.db")
    assert RunStore(store.home).live_path("20261205-000000-abcdef").parent == store.home / "live"

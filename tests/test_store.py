"""The SQLite run store."""

import os
import sqlite3
import time

import pytest

from tinylora.store import RunStore, StoreError


def test_round_trip(store):
    run_id = store.create_run("train", {"method": "lora", "train": {"lr": 0.005}}, owner="abc", group_id="g1")
    run = store.get_run(run_id)
    assert run.status == "queued"
    assert run.config == {"method": "lora", "train": {"lr": 0.005}}
    assert run.owner == "abc"
    assert run.group_id == "g1"
    store.append_events(run_id, [{"type": "step", "step": 1, "train/loss": 0.7}], summary={"trainable": 10})
    store.append_events(run_id, [{"type": "step", "step": 2, "train/loss": 0.6}])
    assert [seq for seq, _ in store.events(run_id)] == [1, 2]
    assert store.events(run_id, after_seq=1) == [(2, {"type": "step", "step": 2, "train/loss": 0.6})]
    assert store.get_run(run_id).summary == {"trainable": 10}
    assert store.finish_run(run_id, "finished", "done", final_acc=0.9, seconds=1.5)
    run = store.get_run(run_id)
    assert (run.status, run.final_acc, run.seconds, run.message) == ("finished", 0.9, 1.5, "done")


def test_reopened_store_keeps_runs(home):
    run_id = RunStore(home).create_run("train", {"a": 1})
    assert RunStore(home).get_run(run_id).config == {"a": 1}


def test_wal_mode(store):
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_claim_in_creation_order_and_queue_positions(store):
    ids = [store.create_run("train", {"n": i}) for i in range(3)]
    assert [store.queue_position(i) for i in ids] == [1, 2, 3]
    claimed = store.claim_next(pid=os.getpid())
    assert claimed.id == ids[0]
    assert claimed.status == "running"
    assert store.queue_position(ids[0]) is None
    assert [store.queue_position(i) for i in ids[1:]] == [1, 2]


def test_stop_of_queued_run_never_starts_it(store):
    run_id = store.create_run("train", {})
    store.request_stop(run_id)
    assert store.get_run(run_id).status == "stopped"
    assert store.claim_next(pid=os.getpid()) is None


def test_finish_only_if_active_leaves_ended_run(store):
    run_id = store.create_run("train", {})
    store.finish_run(run_id, "finished")
    assert not store.finish_run(run_id, "failed", "late", only_if_active=True)
    assert store.get_run(run_id).status == "finished"


def test_dead_running_run_is_interrupted(store):
    run_id = store.create_run("train", {})
    store.claim_next(pid=2**22 + 12345)  # no such process
    assert store.mark_interrupted(now=time.time()) == []  # heartbeat still fresh
    assert store.mark_interrupted(now=time.time() + 60) == [run_id]
    run = store.get_run(run_id)
    assert run.status == "interrupted"
    assert "start it again" in run.message


def test_live_running_run_is_not_interrupted(store):
    store.create_run("train", {})
    store.claim_next(pid=os.getpid())
    assert store.mark_interrupted(now=time.time() + 60) == []


def test_delete_refuses_active_run(store):
    run_id = store.create_run("train", {})
    with pytest.raises(ValueError, match="stop it before deleting it"):
        store.delete_run(run_id)
    store.finish_run(run_id, "stopped")
    store.delete_run(run_id)
    assert store.get_run(run_id) is None


def test_corrupt_database_gives_clear_error(home):
    (home / "runs.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the run database .*runs.db.*move the file aside"):
        RunStore(home)


def test_invalid_final_status_is_rejected(store):
    run_id = store.create_run("train", {})
    with pytest.raises(ValueError, match="got 'running'"):
        store.finish_run(run_id, "running")

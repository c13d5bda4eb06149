"""The SQLite run store."""

import os
import sqlite3
import subprocess
import time

import pytest

from run_factory import add_run
from tinylora.processes import process_info
from tinylora.store import HEARTBEAT_TIMEOUT, RunStore, StoreError


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


def test_dead_running_run_is_interrupted_at_once(store):
    run_id = store.create_run("train", {})
    store.claim_next(pid=2**22 + 12345)  # above Linux's largest pid, so no such process
    assert store.mark_interrupted(now=time.time()) == [run_id]
    run = store.get_run(run_id)
    assert run.status == "interrupted"
    assert "start the run again" in run.message
    assert store.mark_interrupted() == []


def test_unreaped_worker_waits_for_its_runner(store):
    # A zombie whose parent is alive is left to that parent (the runner), which records the exit reason.
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while not process_info(child.pid).zombie and time.monotonic() < deadline:
            time.sleep(0.01)
        run_id = store.create_run("train", {})
        store.claim_next(pid=child.pid)
        assert store.mark_interrupted(now=time.time()) == []
        assert store.mark_interrupted(now=time.time() + HEARTBEAT_TIMEOUT + 1) == [run_id]
    finally:
        child.wait()


def test_reused_pid_is_not_the_worker(store):
    run_id = store.create_run("train", {})
    store.claim_next(pid=os.getpid())
    # The worker's last heartbeat was long ago, and the pid now names a process started since then.
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE runs SET heartbeat = heartbeat - 3600 WHERE id = ?", (run_id,))
    db.close()
    newcomer = subprocess.Popen(["sleep", "30"])
    try:
        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE runs SET pid = ? WHERE id = ?", (newcomer.pid, run_id))
        db.close()
        assert store.mark_interrupted() == [run_id]
    finally:
        newcomer.kill()
        newcomer.wait()


def test_live_running_run_is_not_interrupted(store):
    store.create_run("train", {})
    store.claim_next(pid=os.getpid())
    assert store.mark_interrupted(now=time.time() + 60) == []


def test_delete_refuses_active_run(store):
    run_id = store.create_run("train", {})
    store.run_dir(run_id).mkdir(parents=True)
    with pytest.raises(ValueError, match="stop it before deleting it"):
        store.delete_run(run_id)
    assert store.run_dir(run_id).is_dir()
    store.finish_run(run_id, "stopped")
    store.delete_run(run_id)
    assert store.get_run(run_id) is None


def test_delete_removes_events_and_files(store):
    kept, deleted = add_run(store, losses=[0.5], accs=[0.7]), add_run(store, losses=[0.5, 0.4], accs=[0.8])
    for run_id in (kept, deleted):
        (store.run_dir(run_id) / "adapter").mkdir(parents=True)
        (store.run_dir(run_id) / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    store.delete_run(deleted)
    assert store.get_run(deleted) is None
    assert store.events(deleted) == []
    assert not store.run_dir(deleted).exists()
    assert [p.name for p in (store.home / "runs").iterdir()] == [kept]
    assert len(store.events(kept)) == 4


def test_delete_of_unknown_run_raises(store):
    with pytest.raises(ValueError, match="run 'nope' not found"):
        store.delete_run("nope")


def test_create_run_with_chosen_id(store):
    run_id = store.create_run("upload", {"a": 1}, run_id="20250101-000000-abcdef")
    assert run_id == "20250101-000000-abcdef"
    assert store.get_run(run_id).kind == "upload"


@pytest.mark.parametrize("bad_id", ["../escape", "a/b", "", "x" * 65, "dot.name"])
def test_unsafe_run_id_is_rejected(store, bad_id):
    with pytest.raises(ValueError, match="run id .* is invalid"):
        store.create_run("train", {}, run_id=bad_id)
    with pytest.raises(ValueError, match="is invalid"):
        store.run_dir(bad_id)


def test_row_that_is_not_json_raises_store_error(store):
    run_id = add_run(store, losses=[0.5], accs=[0.7])
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE runs SET config = 'not json{' WHERE id = ?", (run_id,))
        db.execute("UPDATE events SET data = '{' WHERE run_id = ? AND seq = 2", (run_id,))
    db.close()
    with pytest.raises(StoreError, match=f"the config of run {run_id} .* is not valid JSON"):
        store.get_run(run_id)
    with pytest.raises(StoreError, match="not valid JSON"):
        store.list_runs()
    with pytest.raises(StoreError, match=f"event 2 of run {run_id}"):
        store.events(run_id)


def test_damaged_pages_raise_store_error_on_read(home):
    store = RunStore(home)
    for _ in range(20):
        add_run(store, losses=[0.5] * 50, accs=[0.7])
    with sqlite3.connect(store.path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    # Keep page 1 (the header and schema), so the file opens; every table page after it is garbage.
    data = store.path.read_bytes()
    store.path.write_bytes(data[:4096] + b"\xff" * (len(data) - 4096))
    reopened = RunStore(home)
    with pytest.raises(StoreError, match="runs.db failed: database disk image is malformed"):
        reopened.list_runs()


def test_corrupt_database_gives_clear_error(home):
    (home / "runs.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the run database .*runs.db.*move the file aside"):
        RunStore(home)


def test_invalid_final_status_is_rejected(store):
    run_id = store.create_run("train", {})
    with pytest.raises(ValueError, match="got 'running'"):
        store.finish_run(run_id, "running")

"""The runner and its worker processes, end to end with real processes."""

import os
import signal
import time

import pytest

from conftest import wait_for
from torch_threads import step_processes, torch_threads
from tinylora import jobs
from tinylora.config import RunConfig, TrainConfig

FAST = RunConfig(train=TrainConfig(epochs=2, n_train=256, n_val=128)).to_dict()
LONG = RunConfig(train=TrainConfig(epochs=500)).to_dict()


def ended(store, run_id):
    run = store.get_run(run_id)
    return run if not run.active else None


def test_run_finishes_with_events_and_weights(store):
    run_id = jobs.submit(store, "train", FAST, owner="me")
    run = wait_for(lambda: ended(store, run_id), message="the run to end")
    assert run.status == "finished", run.message
    events = [e for _, e in store.events(run_id)]
    assert [e["type"] for e in events][0] == "start"
    assert sum(e["type"] == "step" for e in events) == 8
    assert sum(e["type"] == "eval" for e in events) == 2
    assert run.final_acc == events[-2]["val/acc"]
    assert run.summary["trainable"] == 6_274
    assert (store.run_dir(run_id) / "adapter" / "adapter_model.safetensors").is_file()


def test_worker_matches_in_process_training(store):
    from tinylora.training import prepare_run

    run_id = jobs.submit(store, "train", FAST)
    run = wait_for(lambda: ended(store, run_id), message="the run to end")
    worker_losses = [e["train/loss"] for _, e in store.events(run_id, types=("step",))]
    # The worker records its thread and step process counts; the same counts here give the same float sums.
    with torch_threads(run.summary["threads"]), step_processes(run.summary["step_processes"]):
        local_losses = [e["train/loss"] for e in prepare_run(RunConfig.from_dict(FAST)).events()
                        if e["type"] == "step"]
    assert worker_losses == local_losses


def test_stop_ends_run_and_keeps_weights(store):
    run_id = jobs.submit(store, "train", LONG)
    wait_for(lambda: store.events(run_id, types=("step",)), message="the first step")
    store.request_stop(run_id)
    run = wait_for(lambda: ended(store, run_id), timeout=30, message="the run to stop")
    assert run.status == "stopped"
    assert run.summary["step"] < 500 * 16
    assert run.final_acc is not None
    assert (store.run_dir(run_id) / "adapter" / "adapter_model.safetensors").is_file()


def test_cap_queues_extra_runs(store, monkeypatch):
    monkeypatch.setenv("TINYLORA_MAX_RUNS", "1")
    first = jobs.submit(store, "train", LONG)
    second = jobs.submit(store, "train", FAST)
    wait_for(lambda: store.get_run(first).status == "running", message="the first run to start")
    time.sleep(0.5)
    assert store.get_run(second).status == "queued"
    assert store.queue_position(second) == 1
    assert store.count_running() == 1
    store.request_stop(first)
    run = wait_for(lambda: ended(store, second), message="the queued run to finish")
    assert run.status == "finished"


def test_killed_worker_marks_run_failed(store):
    run_id = jobs.submit(store, "train", LONG)
    wait_for(lambda: store.events(run_id, types=("step",)), message="the first step")
    os.kill(store.get_run(run_id).pid, signal.SIGKILL)
    run = wait_for(lambda: ended(store, run_id), timeout=20, message="the run to be marked failed")
    assert run.status == "failed"
    assert "killed by signal 9" in run.message
    # The runner survives and starts the next run.
    next_id = jobs.submit(store, "train", FAST)
    assert wait_for(lambda: ended(store, next_id), message="the next run").status == "finished"


def test_one_runner_per_data_directory(store):
    jobs.ensure_runner(store.home)
    pid = wait_for(lambda: jobs.runner_pid(store.home), message="the runner to start")
    jobs.ensure_runner(store.home)
    jobs.ensure_runner(store.home)
    time.sleep(1.0)
    assert jobs.runner_pid(store.home) == pid


def test_invalid_job_is_not_queued(store):
    bad = RunConfig(train=TrainConfig(epochs=0)).to_dict()
    with pytest.raises(ValueError, match="epochs must be between 1 and 500"):
        jobs.submit(store, "train", bad)
    with pytest.raises(ValueError, match="unknown job kind 'bake'"):
        jobs.submit(store, "bake", {})
    assert store.list_runs() == []


def test_failing_job_is_marked_failed(store, monkeypatch):
    # A config that passes validation at submit time but breaks in the worker: an unknown data seed type.
    params = RunConfig(train=TrainConfig(epochs=1)).to_dict()
    params["train"]["n_train"] = "many"
    run_id = store.create_run("train", params)
    jobs.ensure_runner(store.home)
    run = wait_for(lambda: ended(store, run_id), message="the run to fail")
    assert run.status == "failed"
    assert "TypeError" in run.message

"""Runs under stress: concurrent sessions under the cap, killed workers and runners, diverged runs."""

import os
import signal
import time

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, stop_runner, wait_for
from tinylora import jobs
from tinylora.config import RunConfig, TrainConfig

LONG = RunConfig(train=TrainConfig(epochs=500)).to_dict()


def ended(store, run_id):
    run = store.get_run(run_id)
    return run if not run.active else None


def max_overlap(runs) -> int:
    """The largest number of runs whose [started, ended] intervals contain one moment."""
    moments = sorted([(r.started, 1) for r in runs] + [(r.ended, -1) for r in runs], key=lambda m: (m[0], m[1]))
    current = best = 0
    for _, change in moments:
        current += change
        best = max(best, current)
    return best


def test_four_sessions_share_two_slots(home, store, monkeypatch):
    monkeypatch.setenv("TINYLORA_MAX_RUNS", "2")
    sessions = []
    for seed in range(4):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        at.text_input(key="train_epochs").input("1").run()
        at.text_input(key="train_batch_size").input("256").run()  # 4 steps a run
        at.text_input(key="train_seed").input(str(10 + seed)).run()
        sessions.append(at)
    for at in sessions:
        at.button(key="train_button").click().run()
        assert not at.exception

    # Poll the store while the runs go: never more than two may be running.
    most_running = 0
    deadline = time.monotonic() + 180
    while any(run.active for run in store.list_runs()) and time.monotonic() < deadline:
        most_running = max(most_running, store.count_running())
        assert store.count_running() <= 2
        time.sleep(0.02)
    runs = store.list_runs()
    assert len(runs) == 4
    assert [run.status for run in runs] == ["finished"] * 4, [run.message for run in runs]
    assert most_running == 2
    assert max_overlap(runs) <= 2

    # Each session shows its own run, with its own settings, and owns it.
    by_id = {run.id: run for run in runs}
    seen = set()
    for seed, at in enumerate(sessions):
        at.run()
        run_id = at.query_params["run"]
        run_id = run_id[0] if isinstance(run_id, list) else run_id
        seen.add(run_id)
        assert by_id[run_id].config["train"]["seed"] == 10 + seed
        caption = next(c.value for c in at.caption if run_id in c.value)
        assert f"seed {10 + seed}" in caption
        assert any("Finished" in s.value for s in at.success)
        assert by_id[run_id].owner == at.session_state["owner"]
    assert seen == set(by_id)
    assert len({run.owner for run in runs}) == 4


def test_killed_worker_fails_while_the_other_run_finishes(store, monkeypatch):
    monkeypatch.setenv("TINYLORA_MAX_RUNS", "2")
    doomed = jobs.submit(store, "train", LONG)
    survivor = jobs.submit(store, "train", RunConfig(train=TrainConfig(epochs=3, batch_size=128, seed=1)).to_dict())
    wait_for(lambda: all(store.events(i, types=("step",)) for i in (doomed, survivor)), timeout=60,
             message="both runs to take a step")
    assert store.get_run(survivor).status == "running"
    runner = jobs.runner_pid(store.home)

    os.kill(store.get_run(doomed).pid, signal.SIGKILL)
    failed = wait_for(lambda: ended(store, doomed), timeout=30, message="the killed run to be marked")
    assert failed.status == "failed"
    assert "killed by signal 9" in failed.message
    finished = wait_for(lambda: ended(store, survivor), timeout=120, message="the other run to finish")
    assert finished.status == "finished", finished.message
    assert (store.run_dir(survivor) / "adapter" / "adapter_model.safetensors").is_file()
    assert not (store.run_dir(doomed) / "adapter").exists()
    assert jobs.runner_pid(store.home) == runner


def start_and_kill_runner(store) -> str:
    """Start a long run, then SIGKILL the runner's process group (runner and worker) mid-run."""
    run_id = jobs.submit(store, "train", LONG)
    wait_for(lambda: store.events(run_id, types=("step",)), timeout=60, message="the first step")
    stop_runner(store.home)
    assert store.get_run(run_id).status == "running"  # nobody is left to record the end
    return run_id


def test_next_page_load_shows_dead_run_interrupted(store):
    run_id = start_and_kill_runner(store)
    at = AppTest.from_file(str(ROOT / "pages" / "runs.py"), default_timeout=60).run()
    assert not at.exception
    run = store.get_run(run_id)
    assert run.status == "interrupted"
    assert "start the run again" in run.message
    table = at.dataframe[0].value.set_index("run")
    assert table.loc[run_id, "status"] == "interrupted"


def test_runner_start_marks_dead_run_interrupted(store):
    run_id = start_and_kill_runner(store)
    jobs.ensure_runner(store.home)
    run = wait_for(lambda: ended(store, run_id), timeout=30, message="the new runner to mark the run")
    assert run.status == "interrupted"


def test_diverged_run_writes_no_weights(store):
    run_id = jobs.submit(store, "train", RunConfig(train=TrainConfig(lr=1e10, epochs=2, n_train=256)).to_dict())
    run = wait_for(lambda: ended(store, run_id), timeout=60, message="the run to end")
    assert run.status == "diverged"
    assert "lower the learning rate" in run.message
    leftovers = sorted(p.name for p in store.run_dir(run_id).iterdir()) if store.run_dir(run_id).exists() else []
    assert leftovers == []


@pytest.mark.parametrize("method", ["lora", "full"])
def test_non_finite_weights_are_never_saved(store, method, monkeypatch):
    # A run whose loss stays finite but whose weights hold a NaN fails instead of saving them.
    from tinylora import training

    real_train = training.train

    def train_then_poison(model, *args, **kwargs):
        for event in real_train(model, *args, **kwargs):
            if event["type"] == "end":
                with __import__("torch").no_grad():
                    model.head.weight[0, 0] = float("nan")
            yield event

    monkeypatch.setattr(training, "train", train_then_poison)
    from tinylora.jobs import JobContext, train_job

    params = RunConfig(method=method, train=TrainConfig(epochs=1, n_train=64, n_val=32)).to_dict()
    run_dir = store.home / "runs" / "poisoned"
    with pytest.raises(ValueError, match="non-finite value"):
        list(train_job(params, JobContext("poisoned", store, run_dir, lambda: False)))
    assert not run_dir.exists() or sorted(p.name for p in run_dir.iterdir()) == []

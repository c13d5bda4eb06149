"""The adapters, forgetting and learns_less job kinds through the real runner, on tiny settings."""

import pytest

from conftest import wait_for
from tinylora import capacity, jobs
from tinylora.adapter_sets import load_adapters
from tinylora.experiments import ADAPTERS_DIR
from tinylora.forgetting import default_params

TINY_TRAIN = {"n_train": 64, "n_val": 32, "batch_size": 16}


def test_three_kinds_finish_in_workers(store):
    ids = {
        "adapters": jobs.submit(store, "adapters", {"tasks": ["sum_high", "middle_high"],
                                                    "train": {**TINY_TRAIN, "epochs": 2}}),
        "forgetting": jobs.submit(store, "forgetting", {**default_params("replay"), "epochs_a": 1, "epochs_b": 1,
                                                        "eval_every": 2, "train": TINY_TRAIN}),
        "learns_less": jobs.submit(store, "learns_less", {"ranks": [2], "base_epochs": 1, "epochs": 1,
                                                          "eval_every": 0, "train": TINY_TRAIN}),
    }
    wait_for(lambda: not any(store.get_run(i).active for i in ids.values()), timeout=180, interval=0.5,
             message="the three experiment runs to end")
    runs = {kind: store.get_run(run_id) for kind, run_id in ids.items()}
    for kind, run in runs.items():
        assert run.status == "finished", (kind, run.message)
        assert run.summary["threads"] == capacity.threads_per_run(), kind

    adapters = runs["adapters"]
    model = load_adapters(store.run_dir(adapters.id) / ADAPTERS_DIR)
    assert model.adapter_names == ["sum_high", "middle_high"]
    assert adapters.summary["summary"]["matrix"]["adapters"] == ["sum_high", "middle_high", None]
    assert adapters.summary["summary"]["out_dir"] == str(store.run_dir(adapters.id) / ADAPTERS_DIR)

    forgetting = runs["forgetting"].summary["summary"]
    assert forgetting["strategy"] == "replay"
    assert forgetting["lost_a"] is not None
    assert [p["phase"] for p in runs["forgetting"].summary["phases"]] == ["A", "B"]

    points = [e for _, e in store.events(runs["learns_less"].id, types=("point",))]
    assert [p["run"] for p in points] == ["full", "lora r=2"]


def test_stop_ends_a_forgetting_job(store):
    params = {**default_params("sequential"), "epochs_a": 50, "epochs_b": 50, "train": TINY_TRAIN}
    run_id = jobs.submit(store, "forgetting", params)
    wait_for(lambda: store.events(run_id, types=("step",)), timeout=120, message="the first step")
    store.request_stop(run_id)
    run = wait_for(lambda: (r := store.get_run(run_id)) and not r.active and r, timeout=60, message="the stop")
    assert run.status == "stopped"
    assert run.summary["summary"]["lost_a"] is None


@pytest.mark.parametrize("kind, params, match", [
    ("adapters", {"tasks": ["nope"]}, "unknown task"),
    ("adapters", {"lora": {"r": 0}}, "r must be between"),
    ("forgetting", {"strategy": "forget"}, "unknown strategy"),
    ("forgetting", {"replay_fraction": 0.9}, "replay_fraction"),
    ("learns_less", {"ranks": [], "full": False}, "nothing to run"),
    ("learns_less", {"colour": "red"}, "unknown LearnsLessSpec setting"),
])
def test_bad_params_queue_nothing(store, kind, params, match):
    with pytest.raises(ValueError, match=match):
        jobs.submit(store, kind, params, start_runner=False)
    assert store.list_runs() == []


@pytest.mark.parametrize("kind", ["adapters", "forgetting", "learns_less"])
def test_submit_stores_normalised_params(store, kind):
    run_id = jobs.submit(store, kind, {}, start_runner=False)
    config = store.get_run(run_id).config
    assert config == jobs.validate_job(kind, config)
    assert config != {}

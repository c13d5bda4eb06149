"""Adapters loaded back from runs: an adapters run's set, a train run's adapter next to it, tokens."""

import shutil

import pytest
import torch

from run_factory import run_job
from tinylora.adapter_runs import (load_adapter_set, load_run_adapter, matrix_rows, median_swap_seconds,
                                   parse_tokens, predictions, random_tokens, run_adapter_config, run_val_set)
from tinylora.config import RunConfig, TrainConfig
from tinylora.store import RunStore

TINY = {"n_train": 64, "n_val": 64, "batch_size": 16, "epochs": 2}
TASKS = ["odd_majority", "first_lt_last"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("runs"))
    ids = {
        "set": run_job(store, "adapters", {"tasks": TASKS, "train": TINY}),
        "same_base": run_job(store, "train", RunConfig(task="sum_high", train=TrainConfig(**TINY)).to_dict()),
        "other_seed": run_job(store, "train", RunConfig(train=TrainConfig(**TINY, seed=7)).to_dict()),
        "qlora": run_job(store, "train", RunConfig(method="qlora-int8", train=TrainConfig(**TINY)).to_dict()),
        "full": run_job(store, "train", RunConfig(method="full", train=TrainConfig(**{**TINY, "epochs": 1})).to_dict()),
    }
    return store, ids


def test_set_matrix_matches_the_run(runs):
    store, ids = runs
    adapter_set = load_adapter_set(store, ids["set"])
    assert adapter_set.model.adapter_names == TASKS
    assert list(adapter_set.val_sets) == TASKS
    assert matrix_rows(adapter_set) == store.get_run(ids["set"]).summary["summary"]["matrix"]


def test_same_base_adapter_joins_the_set(runs):
    store, ids = runs
    adapter_set = load_adapter_set(store, ids["set"])
    extra = load_run_adapter(store, ids["same_base"], adapter_set)
    assert extra.shares_base
    assert extra.model is adapter_set.model
    assert adapter_set.model.adapter_names == [*TASKS, f"run-{ids['same_base']}"]
    assert adapter_set.model.active_adapter == TASKS[0]  # loading left the active adapter alone
    config = run_adapter_config(store, ids["same_base"])
    matrix = matrix_rows(adapter_set, [extra], {"sum_high": run_val_set(config)})
    assert matrix["adapters"] == [*TASKS, extra.name, None]
    assert matrix["tasks"] == [*TASKS, "sum_high"]
    # The run's final accuracy was measured on the fast path, equal up to float rounding.
    assert abs(matrix["acc"][2][2] - store.get_run(ids["same_base"]).final_acc) <= 1 / TINY["n_val"]


@pytest.mark.parametrize("name, note", [("other_seed", "random base of seed 7, float32"),
                                        ("qlora", "random base of seed 0, int8 quantized")])
def test_other_base_adapter_gets_its_own_model(runs, name, note):
    store, ids = runs
    adapter_set = load_adapter_set(store, ids["set"])
    extra = load_run_adapter(store, ids[name], adapter_set)
    assert not extra.shares_base
    assert extra.model is not adapter_set.model
    assert extra.base_note == note
    assert adapter_set.model.adapter_names == TASKS
    matrix = matrix_rows(adapter_set, [extra])
    assert abs(matrix["acc"][2][0] - store.get_run(ids[name]).final_acc) <= 1 / TINY["n_val"]


def test_predictions_cover_every_adapter(runs):
    store, ids = runs
    adapter_set = load_adapter_set(store, ids["set"])
    extras = [load_run_adapter(store, ids["same_base"], adapter_set),
              load_run_adapter(store, ids["other_seed"], adapter_set)]
    rows = predictions(adapter_set, random_tokens(seed=1), extras)
    assert [row["adapter"] for row in rows] == [*TASKS, *(e.name for e in extras), None]
    assert [row["shares_base"] for row in rows] == [True, True, True, False, True]
    for row in rows:
        assert row["prediction"] in (0, 1)
        assert 0.5 <= row["probability"] <= 1


def test_run_adapter_alone_has_base_row(runs):
    store, ids = runs
    extra = load_run_adapter(store, ids["other_seed"])
    matrix = matrix_rows(None, [extra], {"odd_majority": run_val_set(run_adapter_config(store, ids["other_seed"]))})
    assert matrix["adapters"] == [extra.name, None]
    assert len(matrix["acc"]) == 2


@pytest.mark.parametrize("name, match", [("set", "only train and upload runs"), ("full", "has no adapter")])
def test_run_without_single_adapter_is_rejected(runs, name, match):
    store, ids = runs
    with pytest.raises(ValueError, match=match):
        load_run_adapter(store, ids[name])


def test_unknown_run_is_rejected(runs):
    store, _ = runs
    with pytest.raises(ValueError, match="was not found"):
        run_adapter_config(store, "no-such-run")
    with pytest.raises(ValueError, match="not an adapters run"):
        load_adapter_set(store, "no-such-run")


def test_uncached_finetuned_base_is_rejected(runs):
    store, ids = runs
    run = store.get_run(ids["other_seed"])
    config = {**run.config, "base": "finetuned:sum_high"}
    run_id = store.create_run("train", config)
    shutil.copytree(store.run_dir(ids["other_seed"]) / "adapter", store.run_dir(run_id) / "adapter")
    with pytest.raises(ValueError, match="is not cached"):
        load_run_adapter(store, run_id)


def test_random_tokens_leave_global_generator():
    state = torch.get_rng_state()
    tokens = random_tokens(seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert tokens == random_tokens(seed=3)
    assert len(tokens) == 24
    assert all(0 <= t < 16 for t in tokens)


def test_parse_tokens_accepts_commas_and_spaces():
    assert parse_tokens("1, 2 3,4 " + " ".join(["0"] * 20)) == [1, 2, 3, 4] + [0] * 20


@pytest.mark.parametrize("text, match", [("1 2", "got 2"), (" ".join(["16"] * 24), r"got \[16"),
                                         (" ".join(["-1"] * 24), r"got \[-1"), ("a " * 24, "got 'a'"),
                                         ("1.5 " * 24, "got '1.5'")])
def test_parse_tokens_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        parse_tokens(text)


def test_median_swap_seconds_restores_active(runs):
    store, ids = runs
    model = load_adapter_set(store, ids["set"]).model
    model.set_adapter(TASKS[1])
    swaps = median_swap_seconds(model, [*TASKS, None], repeats=5)
    assert list(swaps) == [*TASKS, None]
    assert all(seconds > 0 for seconds in swaps.values())
    assert model.active_adapter == TASKS[1]

"""The runs table and the metrics export of tinylora.compare, over a real store."""

import csv
import io

import pandas as pd
import pytest

from run_factory import add_run
from tinylora.compare import METRIC_COLUMNS, TABLE_COLUMNS, filter_runs, metrics_csv, metrics_frame, runs_frame
from tinylora.config import RunConfig, TrainConfig
from tinylora.lora import LoRAConfig


@pytest.fixture
def three_runs(store):
    lora = add_run(store, RunConfig(lora=LoRAConfig(r=8, lora_alpha=16.0, target_modules=("qkv", "fc1")),
                                    train=TrainConfig(lr=1e-3, epochs=2)), losses=[0.7, 0.6, 0.5, 0.4],
                   accs=[0.6, 0.8])
    full = add_run(store, RunConfig(method="full", task="sum_high", train=TrainConfig(epochs=1, fast="fused")),
                   losses=[0.9, 0.8], accs=[0.55], status="stopped")
    queued = add_run(store, RunConfig(method="qlora-int8"), status="queued")
    return {"lora": lora, "full": full, "queued": queued}


def test_runs_frame_has_a_row_per_run(store, three_runs):
    frame = runs_frame(store.list_runs())
    assert list(frame.columns) == TABLE_COLUMNS
    assert list(frame["run"]) == [three_runs["queued"], three_runs["full"], three_runs["lora"]]


def test_runs_frame_values_come_from_the_config(store, three_runs):
    frame = runs_frame(store.list_runs()).set_index("run")
    lora = frame.loc[three_runs["lora"]]
    assert (lora["method"], lora["task"], lora["targets"]) == ("lora", "odd_majority", "qkv+fc1")
    assert (lora["r"], lora["lora_alpha"], lora["lr"], lora["epochs"]) == (8, 16.0, 1e-3, 2)
    assert lora["status"] == "finished"
    assert lora["final_acc"] == 0.8
    assert lora["seconds"] == pytest.approx(0.04)
    assert (lora["fast"], frame.loc[three_runs["full"]]["fast"]) == ("auto", "fused")


def test_full_finetune_row_has_no_lora_settings(store, three_runs):
    full = runs_frame(store.list_runs()).set_index("run").loc[three_runs["full"]]
    assert pd.isna(full["r"])
    assert pd.isna(full["lora_alpha"])
    assert full["targets"] == ""
    assert full["status"] == "stopped"


def test_queued_run_has_no_seconds_or_accuracy(store, three_runs):
    queued = runs_frame(store.list_runs()).set_index("run").loc[three_runs["queued"]]
    assert pd.isna(queued["seconds"])
    assert pd.isna(queued["final_acc"])
    assert queued["status"] == "queued"


def test_running_run_seconds_grow_with_the_clock(store):
    run_id = add_run(store, losses=[0.7], status="running")
    run = store.get_run(run_id)
    frame = runs_frame([run], now=run.started + 12.5)
    assert frame.loc[0, "seconds"] == pytest.approx(12.5)


@pytest.mark.parametrize("filters, expected", [
    ({}, {"lora", "full", "queued"}),
    ({"methods": ["lora"]}, {"lora"}),
    ({"methods": ["lora", "full"]}, {"lora", "full"}),
    ({"tasks": ["sum_high"]}, {"full"}),
    ({"statuses": ["queued", "finished"]}, {"lora", "queued"}),
    ({"methods": ["full"], "statuses": ["finished"]}, set()),
    ({"kinds": ["upload"]}, set()),
])
def test_filter_runs(store, three_runs, filters, expected):
    frame = filter_runs(runs_frame(store.list_runs()), **filters)
    names = {name for name, run_id in three_runs.items() if run_id in set(frame["run"])}
    assert names == expected
    assert list(frame.index) == list(range(len(frame)))


def test_metrics_frame_has_one_row_per_event(store, three_runs):
    ids = [three_runs["lora"], three_runs["full"]]
    frame = metrics_frame(store, ids)
    assert list(frame.columns[:len(METRIC_COLUMNS)]) == METRIC_COLUMNS
    # lora: start, 4 steps, 2 evals, end; full: start, 2 steps, 1 eval, end.
    assert len(frame) == 8 + 5
    assert list(frame["run_id"]) == [ids[0]] * 8 + [ids[1]] * 5
    assert list(frame[frame["run_id"] == ids[0]]["type"]) == ["start"] + ["step"] * 4 + ["eval"] * 2 + ["end"]
    steps = frame[(frame["run_id"] == ids[0]) & (frame["type"] == "step")]
    assert list(steps["train/loss"]) == [0.7, 0.6, 0.5, 0.4]
    assert list(steps["step"]) == [1, 2, 3, 4]
    evals = frame[frame["type"] == "eval"]
    assert list(evals["val/acc"]) == [0.6, 0.8, 0.55]
    assert pd.isna(evals["train/loss"]).all()


def test_metrics_frame_keeps_other_event_fields(store, three_runs):
    frame = metrics_frame(store, [three_runs["lora"]])
    for column in ("trainable", "total", "steps_total", "status", "message", "final_acc"):
        assert column in frame.columns
    end = frame[frame["type"] == "end"].iloc[0]
    assert end["status"] == "finished"
    assert end["final_acc"] == 0.8


def test_metrics_csv_round_trips(store, three_runs):
    ids = [three_runs["lora"], three_runs["full"]]
    parsed = pd.read_csv(io.BytesIO(metrics_csv(store, ids)))
    assert len(parsed) == 13
    assert list(parsed.columns) == list(metrics_frame(store, ids).columns)
    assert parsed[parsed["type"] == "step"]["train/loss"].tolist() == [0.7, 0.6, 0.5, 0.4, 0.9, 0.8]


def test_metrics_csv_writes_counts_as_integers(store, three_runs):
    rows = list(csv.DictReader(io.StringIO(metrics_csv(store, [three_runs["lora"]]).decode())))
    start, first_step = rows[0], rows[1]
    assert start["trainable"] == "6274"
    assert start["total"] == "208388"
    assert start["steps_total"] == "4"
    assert start["seq"] == "1"
    assert start["step"] == ""  # the start event has no step
    assert first_step["step"] == "1"
    assert first_step["train/loss"] == "0.7"


def test_metrics_csv_keeps_float_columns(store, three_runs):
    frame = metrics_frame(store, [three_runs["lora"]])
    assert frame["epoch"].dtype == float
    assert frame["train/loss"].dtype == float
    assert str(frame["step"].dtype) == "Int64"


def test_metrics_of_no_runs_is_a_header(store):
    assert metrics_csv(store, []).decode().strip() == ",".join(METRIC_COLUMNS)

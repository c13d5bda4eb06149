"""Sweep results from the run store: tables, mean and spread over seeds, heatmap cells, best point, CSV.

The runs here are written straight into the store with known accuracies, so every aggregate is checked
against numbers computed by hand.
"""

import io
import statistics

import pandas as pd
import pytest

from tinylora.sweep import SweepSpec
from tinylora.sweep_search import grid_points, point_config
from tinylora.sweep_store import save_sweep
from tinylora.sweep_results import (accuracy_by_r, best_point, heatmap_data, points_table, results_csv, runs_table,
                                    sweep_progress, trainable_by_r)

TINY = {"train": {"epochs": 1, "n_train": 64, "n_val": 64}}
# (r, lora_alpha, seed) -> final accuracy
ACCS = {(2, 8.0, 0): 0.60, (2, 8.0, 1): 0.70, (2, 16.0, 0): 0.65, (2, 16.0, 1): 0.75,
        (8, 8.0, 0): 0.80, (8, 8.0, 1): 0.90, (8, 16.0, 0): 0.85}  # (8, 16, seed 1) never ran


def trainable(r: int) -> int:
    return 4 * r * ((64 + 192) + (64 + 64)) + 130  # qkv and proj adapters in 4 blocks, plus the head


def add_run(store, record, point, seed, status="finished", acc=None):
    config = point_config(record.spec, point, seed).to_dict()
    run_id = store.create_run("train", config, group_id=record.id)
    store.append_events(run_id, [{"type": "start", "trainable": trainable(point["r"]), "total": 0,
                                  "steps_total": 1}], summary={"trainable": trainable(point["r"])})
    if status != "queued":
        store.finish_run(run_id, status, final_acc=acc, seconds=1.0)
    return run_id


@pytest.fixture
def swept(store):
    spec = SweepSpec.from_dict({"base": TINY, "axes": {"r": [2, 8], "lora_alpha": [8, 16], "seed": [0, 1]}})
    record = save_sweep(store, spec)
    for point in grid_points(spec):
        for seed in spec.seeds:
            acc = ACCS.get((point["r"], point["lora_alpha"], seed))
            if acc is not None:
                add_run(store, record, point, seed, acc=acc)
    return record


def test_runs_table_row_per_slot(store, swept):
    runs = runs_table(store, swept)
    assert list(runs.columns) == ["r", "lora_alpha", "seed", "status", "final_acc", "trainable", "seconds", "run_id"]
    assert len(runs) == 8
    assert (runs["status"] == "finished").sum() == 7
    pending = runs[runs["status"] == "pending"]
    assert pending[["r", "lora_alpha", "seed"]].values.tolist() == [[8, 16.0, 1]]
    assert pending["run_id"].isna().all()
    row = runs[(runs["r"] == 2) & (runs["lora_alpha"] == 16.0) & (runs["seed"] == 1)].iloc[0]
    assert row["final_acc"] == pytest.approx(0.75)
    assert row["trainable"] == trainable(2)


def test_points_table_mean_and_spread(store, swept):
    points = points_table(runs_table(store, swept), swept.spec)
    assert len(points) == 4
    first = points[(points["r"] == 2) & (points["lora_alpha"] == 8.0)].iloc[0]
    assert first["acc_mean"] == pytest.approx(0.65)
    assert first["acc_std"] == pytest.approx(statistics.stdev([0.60, 0.70]))
    assert first["seeds_finished"] == 2
    single = points[(points["r"] == 8) & (points["lora_alpha"] == 16.0)].iloc[0]
    assert single["acc_mean"] == pytest.approx(0.85)
    assert pd.isna(single["acc_std"])
    assert single["seeds_finished"] == 1
    assert single["seeds"] == 2


def test_best_point_is_highest_mean(store, swept):
    best = best_point(points_table(runs_table(store, swept), swept.spec))
    assert (best["r"], best["lora_alpha"]) == (8, 8.0)
    assert best["acc_mean"] == pytest.approx(0.85)
    assert store.get_run(best["best_run_id"]).final_acc == pytest.approx(0.90)


def test_heatmap_cells_average_seeds(store, swept):
    data = heatmap_data(runs_table(store, swept), swept.spec, "r", "lora_alpha")
    assert data.x_values == [2, 8]
    assert data.y_values == [8.0, 16.0]
    assert data.mean[0][0] == pytest.approx(0.65)
    assert data.mean[0][1] == pytest.approx(0.85)
    assert data.mean[1][1] == pytest.approx(0.85)
    assert data.count == [[2, 2], [2, 1]]
    assert data.std[0][1] == pytest.approx(statistics.stdev([0.80, 0.90]))
    assert data.std[1][1] is None


def test_heatmap_with_fixed_axis_filters_rows(store, swept):
    data = heatmap_data(runs_table(store, swept), swept.spec, "r", "seed", fixed={"lora_alpha": 16.0})
    assert data.mean[0] == [pytest.approx(0.65), pytest.approx(0.85)]
    assert data.mean[1] == [pytest.approx(0.75), None]


def test_heatmap_rejects_same_axis_twice(store, swept):
    with pytest.raises(ValueError, match="two different axes"):
        heatmap_data(runs_table(store, swept), swept.spec, "r", "r")


def test_stopped_run_then_newer_finished(store, swept):
    point = {"r": 8, "lora_alpha": 16.0}
    stopped = add_run(store, swept, point, 1, status="stopped", acc=0.55)
    runs = runs_table(store, swept)
    row = runs[(runs["r"] == 8) & (runs["lora_alpha"] == 16.0) & (runs["seed"] == 1)].iloc[0]
    assert row["status"] == "stopped"
    assert row["run_id"] == stopped
    assert pd.isna(row["final_acc"])
    finished = add_run(store, swept, point, 1, acc=0.95)
    add_run(store, swept, point, 1, status="queued")  # a newer active run does not hide the finished one
    runs = runs_table(store, swept)
    row = runs[(runs["r"] == 8) & (runs["lora_alpha"] == 16.0) & (runs["seed"] == 1)].iloc[0]
    assert row["run_id"] == finished
    assert row["final_acc"] == pytest.approx(0.95)


def test_progress_counts(store, swept):
    progress = sweep_progress(store, swept)
    assert progress.runs_total == 8
    assert progress.done == 7
    assert progress.counts == {"finished": 7, "pending": 1}
    assert progress.dispatcher_status is None
    assert not progress.active


def test_accuracy_and_trainable_by_r(store, swept):
    runs = runs_table(store, swept)
    overall = accuracy_by_r(runs)
    assert overall["r"].tolist() == [2, 8]
    assert overall["acc_mean"].tolist() == pytest.approx([0.675, 0.85])
    assert overall["runs"].tolist() == [4, 3]
    by_alpha = accuracy_by_r(runs, "lora_alpha")
    assert by_alpha["series"].tolist() == ["8", "8", "16", "16"]
    params = trainable_by_r(runs)
    assert params["trainable"].tolist() == [trainable(2), trainable(8)]


def test_csv_has_every_row(store, swept):
    runs = runs_table(store, swept)
    back = pd.read_csv(io.StringIO(results_csv(runs)))
    assert len(back) == 8
    assert back["final_acc"].dropna().tolist() == pytest.approx(runs["final_acc"].dropna().tolist())

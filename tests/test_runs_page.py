"""The Runs page under Streamlit's AppTest: table, filters, overlaid curves, actions, uploads, bad databases."""

import io
import json
import os
import sqlite3

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, wait_for
from run_factory import add_run, run_job
from tinylora.adapter_writing import save_adapter, zip_adapter
from tinylora.config import RunConfig, TrainConfig
from tinylora.lora import LoRAConfig
from tinylora.methods import build_model
from tinylora.smoothing import smooth
from tinylora.store import RunStore

LOSSES = {"a": [0.9, 0.5, 0.8, 0.3, 0.6, 0.2, 0.4, 0.1], "b": [0.7, 0.7, 0.6, 0.65, 0.5, 0.55, 0.45, 0.5]}
ACCS = {"a": [0.6, 0.9], "b": [0.55, 0.7]}


def runs_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    return at.switch_page("pages/runs.py").run()


def table(at: AppTest) -> pd.DataFrame:
    return at.dataframe[0].value


def select(at: AppTest, run_ids: list[str]) -> AppTest:
    """Tick the table rows of `run_ids`, as a click in the browser would."""
    ids = list(table(at)["run"])
    rows = [ids.index(run_id) for run_id in run_ids]
    at.session_state[at.dataframe[0].key] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    return at.run()


def traces(at: AppTest, title: str) -> dict[str, list[float]]:
    """The y values of each trace of the chart titled `title`, by trace name."""
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        if spec["layout"]["title"]["text"] == title:
            return {trace["name"]: trace["y"] for trace in spec["data"]}
    raise AssertionError(f"no chart titled {title!r}")


@pytest.fixture
def two_runs(store):
    a = add_run(store, RunConfig(lora=LoRAConfig(r=8, lora_alpha=16.0), train=TrainConfig(epochs=2)),
                losses=LOSSES["a"], accs=ACCS["a"])
    b = add_run(store, RunConfig(method="full", task="sum_high", train=TrainConfig(epochs=2, lr=1e-3)),
                losses=LOSSES["b"], accs=ACCS["b"], status="stopped")
    return a, b


def test_table_lists_every_run_with_its_settings(two_runs):
    at = runs_page()
    assert not at.exception
    frame = table(at).set_index("run")
    assert set(frame.index) == set(two_runs)
    a, b = two_runs
    assert (frame.loc[a, "method"], frame.loc[a, "r"], frame.loc[a, "lora_alpha"]) == ("lora", 8, 16.0)
    assert (frame.loc[a, "status"], frame.loc[a, "final_acc"]) == ("finished", 0.9)
    assert (frame.loc[b, "method"], frame.loc[b, "task"], frame.loc[b, "lr"]) == ("full", "sum_high", 1e-3)
    assert frame.loc[b, "status"] == "stopped"
    assert any("2 of 2 runs shown" in c.value for c in at.caption)


@pytest.mark.parametrize("key, value, expected", [
    ("runs_filter_method", ["full"], "b"),
    ("runs_filter_task", ["odd_majority"], "a"),
    ("runs_filter_status", ["stopped"], "b"),
])
def test_filters_narrow_the_table(two_runs, key, value, expected):
    at = runs_page()
    at.multiselect(key=key).set_value(value).run()
    assert list(table(at)["run"]) == [two_runs["ab".index(expected)]]
    assert any("1 of 2 runs shown" in c.value for c in at.caption)


def test_selection_overlays_both_runs_curves(two_runs):
    at = select(runs_page(), list(two_runs))
    assert not at.exception
    losses, accs = traces(at, "Training loss"), traces(at, "Validation accuracy")
    smoothed_names = [name for name in losses if not name.endswith("(raw)")]
    assert len(smoothed_names) == 2
    assert {len(y) for y in losses.values()} == {8}
    assert {len(y) for y in accs.values()} == {2}
    for run_id, key in zip(two_runs, "ab"):
        name = next(n for n in smoothed_names if n.startswith(run_id[-6:]))
        assert losses[f"{name} (raw)"] == LOSSES[key]
        assert accs[name] == ACCS[key]  # accuracy is never smoothed
    assert len(accs) == 2


def test_loss_against_epoch_scales_steps(two_runs):
    at = select(runs_page(), list(two_runs))
    at.radio(key="runs_loss_axis").set_value("epoch").run()
    assert not at.exception
    chart = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                 if json.loads(c.proto.spec)["layout"]["title"]["text"] == "Training loss")
    # 8 steps over 2 epochs: a step is a quarter of an epoch
    assert {tuple(trace["x"]) for trace in chart["data"]} == {(0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)}
    assert chart["layout"]["xaxis"]["title"]["text"] == "epoch"


def add_experiment(store: RunStore, kind: str, config: dict, sections: list[str]) -> str:
    """Store a finished run of an experiment `kind` whose steps restart at 1 for each of `sections`."""
    run_id = store.create_run(kind, config)
    store.claim_next(os.getpid())
    events = [{"type": "start", "steps_total": 3 * len(sections)}]
    for section in sections:
        events += [{"type": "step", "step": i, "epoch": i / 3, "train/loss": 0.5, "seconds": 0.01 * i,
                    "adapter": section} for i in (1, 2, 3)]
        events.append({"type": "eval", "step": 3, "epoch": None, "task": section, "val/acc": 0.8, "seconds": 0.03})
    store.append_events(run_id, events)
    store.finish_run(run_id, "finished", "done", None, 0.1)
    return run_id


def test_experiment_runs_left_out_of_overlay(store, two_runs):
    adapters = add_experiment(store, "adapters", {"tasks": ["odd_majority", "first_lt_last"], "lora": {"r": 4}},
                              ["odd_majority", "first_lt_last"])
    forgetting = add_experiment(store, "forgetting", {"strategy": "replay", "lora": {"r": 4}}, ["A", "B"])
    at = select(runs_page(), [two_runs[0], adapters, forgetting])
    assert not at.exception
    losses, accs = traces(at, "Training loss"), traces(at, "Validation accuracy")
    assert [name for name in losses if not name.endswith("(raw)")] == [next(iter(accs))]
    assert len(accs) == 1
    assert next(iter(accs)).startswith(two_runs[0][-6:])
    [note] = [i.value for i in at.info if "Not overlaid" in i.value]
    assert f"{adapters} (adapters) on the Adapters page" in note
    assert f"{forgetting} (forgetting) on the Forgetting page" in note


def test_only_experiment_runs_no_chart(store):
    adapters = add_experiment(store, "adapters", {"tasks": ["odd_majority", "first_lt_last"], "lora": {"r": 4}},
                              ["odd_majority", "first_lt_last"])
    at = select(runs_page(), [adapters])
    assert not at.exception
    assert at.get("plotly_chart") == []
    assert any("on the Adapters page" in i.value for i in at.info)


@pytest.mark.parametrize("kind, config, expected", [
    ("adapters", {"tasks": ["odd_majority"], "lora": {"r": 4}}, "r=4 · adapters"),
    ("forgetting", {"strategy": "replay", "lora": {"r": 4}}, "replay · r=4 · forgetting"),
    ("forgetting", {"strategy": "full", "lora": {"r": 4}}, "full · forgetting"),
    ("base", {"base": "finetuned:odd_majority"}, "base"),
])
def test_run_label_without_method(store, kind, config, expected):
    from ui.runs_view import run_label

    run = store.get_run(store.create_run(kind, config))
    label = run_label(run)
    assert "None" not in label
    assert label == f"{run.id[-6:]} · {expected}"


def test_smoothing_changes_the_plotted_values(two_runs):
    at = select(runs_page(), [two_runs[0]])
    at.slider(key="runs_smoothing").set_value(0.0).run()
    raw = traces(at, "Training loss")
    assert list(raw.values()) == [LOSSES["a"]]  # no smoothing: one trace, the raw values

    at.slider(key="runs_smoothing").set_value(0.9).run()
    smoothed = traces(at, "Training loss")
    name = next(n for n in smoothed if not n.endswith("(raw)"))
    assert smoothed[name] == pytest.approx(smooth(LOSSES["a"], 0.9))
    assert smoothed[name] != pytest.approx(LOSSES["a"])
    assert smoothed[name][0] == pytest.approx(LOSSES["a"][0])
    assert smoothed[f"{name} (raw)"] == LOSSES["a"]


def test_selection_follows_runs_when_rows_move(store, two_runs):
    at = select(runs_page(), [two_runs[0]])
    add_run(store, losses=[0.5], accs=[0.5])  # a newer run lands on top and shifts every row down
    at.run()
    assert at.session_state["runs_selected"] == [two_runs[0]]
    assert len([n for n in traces(at, "Training loss") if not n.endswith("(raw)")]) == 1


def test_csv_download_holds_the_selected_runs_events(two_runs, monkeypatch):
    from ui import runs_view

    produced = []
    real = runs_view.metrics_csv
    monkeypatch.setattr(runs_view, "metrics_csv", lambda store, ids: produced.append(real(store, ids)) or produced[-1])
    at = select(runs_page(), [two_runs[1]])
    button = at.get("download_button")[0]
    assert button.label == "Download metrics (CSV)"
    csv = pd.read_csv(io.BytesIO(produced[-1]))
    assert set(csv["run_id"]) == {two_runs[1]}
    # start, 8 steps, 2 evals, end
    assert list(csv["type"]) == ["start"] + ["step"] * 8 + ["eval"] * 2 + ["end"]
    assert csv[csv["type"] == "step"]["train/loss"].tolist() == LOSSES["b"]
    assert csv[csv["type"] == "eval"]["val/acc"].tolist() == ACCS["b"]


def test_delete_asks_first_then_removes_run_and_files(store, two_runs):
    doomed, kept = two_runs
    (store.run_dir(doomed) / "adapter").mkdir(parents=True)
    at = select(runs_page(), [doomed])
    at.button(key="runs_delete").click().run()
    assert any("cannot be undone" in w.value for w in at.warning)
    assert store.get_run(doomed) is not None  # nothing deleted before the confirmation

    at.button(key="runs_delete_confirm").click().run()
    assert not at.exception
    assert store.get_run(doomed) is None
    assert not store.run_dir(doomed).exists()
    assert store.get_run(kept) is not None
    assert list(table(at)["run"]) == [kept]
    assert any("Deleted 1 run" in s.value for s in at.success)


def test_cancel_keeps_the_run(store, two_runs):
    at = select(runs_page(), [two_runs[0]])
    at.button(key="runs_delete").click().run()
    at.button(key="runs_delete_cancel").click().run()
    assert store.get_run(two_runs[0]) is not None
    assert not any("cannot be undone" in w.value for w in at.warning)


def test_active_run_cannot_be_deleted_but_can_be_stopped(store, two_runs):
    running = add_run(store, losses=[0.7, 0.6], status="running")
    at = select(runs_page(), [running, two_runs[0]])
    delete = at.button(key="runs_delete")
    assert delete.disabled
    assert f"Stop {running} first" in delete.help
    at.button(key="runs_stop").click().run()
    assert store.get_run(running).stop_requested
    assert not store.get_run(two_runs[0]).stop_requested


def test_open_settings_in_train(two_runs):
    at = select(runs_page(), [two_runs[1]])
    at.button(key="runs_open_train").click().run()
    assert not at.exception
    assert at.title[0].value == "Train"
    assert at.query_params["run"] in (two_runs[1], [two_runs[1]])
    assert at.selectbox(key="train_method").value == "full"
    assert at.selectbox(key="train_task").value == "sum_high"
    assert at.text_input(key="train_lr").value == "0.001"


def test_adapters_button_needs_an_adapter(store, two_runs):
    at = select(runs_page(), [two_runs[0]])
    button = at.button(key="runs_open_adapters")
    assert button.disabled
    assert f"Run {two_runs[0]} has no adapter to open" in button.help
    config = RunConfig()
    save_adapter(build_model(config), store.run_dir(two_runs[0]) / "adapter", config.lora)
    at.run()
    button = at.button(key="runs_open_adapters")
    assert not button.disabled
    assert "Open this run's adapter on the Adapters page" in button.help


def test_weights_download_offers_the_adapter_zip(store, two_runs):
    config = RunConfig()
    save_adapter(build_model(config), store.run_dir(two_runs[0]) / "adapter", config.lora)
    at = select(runs_page(), [two_runs[0]])
    assert [b.label for b in at.get("download_button")] == ["Download metrics (CSV)", "Download adapter (.zip)"]


def test_weights_download_is_disabled_without_files(two_runs):
    at = select(runs_page(), [two_runs[1]])
    button = at.button(key="runs_download_weights")
    assert button.disabled
    assert "saved no weights" in button.help


def test_upload_through_the_page(store, tmp_path):
    config = RunConfig(train=TrainConfig(seed=2))
    save_adapter(build_model(config), tmp_path / "adapter", config.lora, base_model_name_or_path="x")
    at = runs_page()
    at.file_uploader(key="runs_upload_files_0").set_value(("adapter.zip", zip_adapter(tmp_path / "adapter"),
                                                           "application/zip")).run()
    at.selectbox(key="runs_upload_task").set_value("middle_high").run()
    at.button(key="runs_upload_button").click().run()
    assert not at.exception
    [run] = store.list_runs()
    assert run.kind == "upload"
    assert run.config["task"] == "middle_high"
    assert any(f"Stored the adapter as run {run.id}" in s.value for s in at.success)
    assert list(table(at)["run"]) == [run.id]
    assert at.session_state["runs_selected"] == [run.id]
    assert at.file_uploader(key="runs_upload_files_1").value in (None, [])  # a fresh, empty uploader
    wait_for(lambda: not store.get_run(run.id).active, timeout=60, message="the evaluation")


def test_upload_run_opens_on_its_train_url(store, tmp_path):
    from tinylora.uploads import UploadSettings, store_upload

    config = RunConfig()
    save_adapter(build_model(config), tmp_path / "adapter", config.lora)
    run_id = store_upload(store, {"a.zip": zip_adapter(tmp_path / "adapter")}, UploadSettings(task="odd_majority"))
    wait_for(lambda: not store.get_run(run_id).active, timeout=60, message="the evaluation")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception
    assert any("uploaded adapter (a.zip)" in c.value for c in at.caption)


def test_bad_upload_through_the_page_shows_why(store):
    at = runs_page()
    at.file_uploader(key="runs_upload_files_0").set_value(("weights.zip", b"PK\x03\x04 not really", "application/zip"))
    at.run()
    at.button(key="runs_upload_button").click().run()
    assert not at.exception
    assert any("Upload rejected, nothing was stored" in e.value and "not a valid zip" in e.value for e in at.error)
    assert store.list_runs() == []


def test_bin_upload_gets_the_pickle_message(store):
    at = runs_page()
    uploader = at.file_uploader(key="runs_upload_files_0")
    assert list(uploader.proto.type) == []  # a type filter would make the browser reject .bin before the app receives it
    uploader.set_value(("adapter_model.bin", b"\x80\x02}q\x00.", "application/octet-stream")).run()
    at.button(key="runs_upload_button").click().run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert "adapter_model.bin looks like a PyTorch pickle" in error
    assert "never unpickles" in error
    assert "save_pretrained" in error
    assert store.list_runs() == []


def corrupt_header(home):
    (home / "runs.db").write_bytes(b"this is not a database" * 200)


def corrupt_pages(home):
    store = RunStore(home)
    for _ in range(10):
        add_run(store, losses=[0.5] * 40, accs=[0.6])
    with sqlite3.connect(store.path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = store.path.read_bytes()
    store.path.write_bytes(data[:4096] + b"\xff" * (len(data) - 4096))


PAGES = ["pages/" + p.name for p in sorted((ROOT / "pages").glob("*.py"))]


@pytest.mark.parametrize("corrupt", [corrupt_header, corrupt_pages])
def test_corrupt_database_gives_a_message_on_every_page(home, corrupt):
    corrupt(home)
    for path in PAGES:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        at.switch_page(path).run()
        assert not at.exception, (path, [e.message for e in at.exception])
        if "get_store" not in (ROOT / path).read_text():
            continue  # a page that never reads the run store has nothing to report about it
        errors = " ".join(e.value for e in at.error)
        assert "runs.db" in errors, (path, errors)
        assert "move it aside" in errors or "move the file aside" in errors, (path, errors)


def test_experiment_runs_are_listed_and_comparable(store):
    tiny = {"n_train": 32, "n_val": 32, "batch_size": 16}
    ids = [run_job(store, "adapters", {"train": {**tiny, "epochs": 1}}),
           run_job(store, "forgetting", {"epochs_a": 1, "epochs_b": 1, "eval_every": 0, "train": tiny}),
           run_job(store, "learns_less", {"ranks": [1], "base_epochs": 1, "epochs": 1, "eval_every": 0,
                                          "train": tiny})]
    at = select(runs_page(), ids)
    assert not at.exception, [e.message for e in at.exception]
    assert set(table(at)["kind"]) == {"adapters", "forgetting", "learns_less"}
    assert at.button(key="runs_open_train").disabled


def test_adapter_set_downloads_and_opens(store):
    set_id = run_job(store, "adapters", {"tasks": ["odd_majority", "first_lt_last"],
                                         "train": {"n_train": 64, "n_val": 64, "batch_size": 16, "epochs": 1}})
    at = select(runs_page(), [set_id])
    assert [b.label for b in at.get("download_button")] == ["Download metrics (CSV)", "Download adapter set (.zip)"]
    button = at.button(key="runs_open_adapters")
    assert not button.disabled
    assert "Show this adapter set on the Adapters page" in button.help
    button.click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.session_state["adapters_set"] == set_id
    assert at.title[0].value == "Adapters"


def test_adapter_set_zip_keeps_its_folders(store):
    import zipfile

    from tinylora.adapter_writing import zip_adapter_set
    from tinylora.experiments import ADAPTERS_DIR

    set_id = run_job(store, "adapters", {"tasks": ["odd_majority", "first_lt_last"],
                                         "train": {"n_train": 64, "n_val": 64, "batch_size": 16, "epochs": 1}})
    data = zip_adapter_set(store.run_dir(set_id) / ADAPTERS_DIR)
    names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert "odd_majority/adapter_config.json" in names
    assert "first_lt_last/adapter_model.safetensors" in names
    assert data == zip_adapter_set(store.run_dir(set_id) / ADAPTERS_DIR)

"""The Sweep page under Streamlit's AppTest, with real runs in worker processes."""

import json

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, wait_for
from tinylora.sweep import dispatchers, list_sweeps


def sweep_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/sweep.py").run()
    return at


def chart_titles(at: AppTest) -> list[str]:
    titles = []
    for chart in at.get("plotly_chart"):
        layout = json.loads(chart.proto.spec)["layout"]
        titles.append(layout.get("title", {}).get("text", ""))
    return titles


def tiny(at: AppTest) -> AppTest:
    at.number_input(key="sweep_epochs").set_value(2).run()
    at.number_input(key="sweep_n_train").set_value(256).run()
    return at


@pytest.mark.parametrize("key, value, message", [
    ("sweep_r", "", "axis r has no values"),
    ("sweep_r", "2, 128", "r must be between 1 and 64 for qkv (64 -> 192), got 128"),
    ("sweep_lr", "abc", "axis lr: 'abc' is not a number"),
    ("sweep_lr", "0", "learning rate must be a positive finite number"),
    ("sweep_targets", "qkv+xyz", "unknown module 'xyz'"),
    ("sweep_seeds", "-1", "seed -1 is out of range"),
    ("sweep_lora_alpha", "8, 8", "axis lora_alpha lists 8 more than once"),
    ("sweep_method", [], "axis method has no values"),
    ("sweep_scaling", [], "axis use_rslora has no values"),
])
def test_invalid_axis_shows_error_and_starts_nothing(home, store, key, value, message):
    at = sweep_page()
    if isinstance(value, list):
        at.multiselect(key=key).set_value(value).run()
    else:
        at.text_input(key=key).input(value).run()
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="sweep_start").disabled
    assert store.list_runs() == []
    assert list_sweeps(store) == []


def test_range_needs_random_or_tpe(home):
    at = sweep_page()
    at.text_input(key="sweep_r").input("1..64 log").run()
    assert any("grid search needs a list of values" in e.value for e in at.error)
    at.segmented_control(key="sweep_search").set_value("random").run()
    assert not at.error
    assert any("8 points × 1 seed = 8 runs" in c.value for c in at.caption)


def test_sweep_fills_in_then_opens_best_on_train(home, store):
    at = tiny(sweep_page())
    assert any("4 points × 1 seed = 4 runs" in c.value for c in at.caption)
    at.button(key="sweep_start").click().run()
    assert not at.exception
    [record] = list_sweeps(store)
    assert at.query_params["sweep"] in (record.id, [record.id])

    wait_for(lambda: (d := dispatchers(store, record.id)) and not d[0].active, timeout=120, interval=0.2,
             message="the sweep to finish")
    assert dispatchers(store, record.id)[0].status == "finished"
    at.run()
    assert not at.exception
    assert any("4 of 4 runs done" in (p.proto.text or "") for p in at.get("progress"))
    titles = chart_titles(at)
    assert "Mean final validation accuracy" in titles
    assert "Every finished run" in titles
    assert "Accuracy and trainable parameters against r" in titles
    heatmap = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                   if json.loads(c.proto.spec)["layout"]["title"]["text"] == "Mean final validation accuracy")
    runs = {(r.config["lora"]["r"], r.config["lora"]["lora_alpha"]): r.final_acc
            for r in store.list_runs(kind="train", group_id=record.id)}
    z = heatmap["data"][0]["z"]
    assert heatmap["data"][0]["x"] == ["2", "8"]
    assert heatmap["data"][0]["y"] == ["8", "16"]
    assert z == [[runs[(2, 8.0)], runs[(8, 8.0)]], [runs[(2, 16.0)], runs[(8, 16.0)]]]
    points_frame, runs_frame = at.dataframe
    assert len(points_frame.value) == 4
    assert len(runs_frame.value) == 4
    assert sorted(runs_frame.value["final_acc"]) == sorted(runs.values())
    assert any("Best so far" in s.value for s in at.success)

    best_r, best_alpha = max(runs, key=runs.get)
    at.button(key="sweep-open-best").click().run()
    assert not at.exception
    assert at.session_state["train_r"] == best_r
    assert at.session_state["train_lora_alpha"] == best_alpha
    assert at.title[0].value == "Train"


def test_stop_button_stops_the_sweep(home, store, monkeypatch):
    monkeypatch.setenv("TINYLORA_MAX_RUNS", "1")
    at = sweep_page()
    at.number_input(key="sweep_epochs").set_value(300).run()
    at.button(key="sweep_start").click().run()
    [record] = list_sweeps(store)
    wait_for(lambda: store.list_runs(kind="train", group_id=record.id, statuses=("running",)), timeout=60,
             message="the first run to start")
    at.run()
    assert not at.button(key="sweep_stop").disabled
    assert at.button(key="sweep_resume").disabled
    at.button(key="sweep_stop").click().run()
    dispatcher = wait_for(lambda: (d := dispatchers(store, record.id)[0]) and not d.active and d, timeout=60,
                          message="the sweep to stop")
    assert dispatcher.status == "stopped"
    assert {r.status for r in store.list_runs(kind="train", group_id=record.id)} == {"stopped"}
    at.run()
    assert at.button(key="sweep_stop").disabled
    assert not at.button(key="sweep_resume").disabled


def test_train_rslora_checkbox_sets_run_config(home, store):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.number_input(key="train_epochs").set_value(300).run()
    at.checkbox(key="train_use_rslora").check().run()
    at.button(key="train_button").click().run()
    assert not at.exception
    [run] = store.list_runs()
    assert run.config["lora"]["use_rslora"] is True
    assert any("(rsLoRA)" in c.value for c in at.caption)
    # Wait for a worker, so the runner holds its lock and the fixture can end it at teardown.
    wait_for(lambda: store.get_run(run.id).status == "running", timeout=60, message="the run to start")
    store.request_stop(run.id)
    wait_for(lambda: not store.get_run(run.id).active, timeout=60, message="the run to stop")

"""The Sweep page under Streamlit's AppTest, with real runs in worker processes."""

import json

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, wait_for
from tinylora.sweep import SweepSpec
from tinylora.sweep_search import point_config
from tinylora.sweep_store import dispatchers, list_sweeps, save_sweep


@pytest.fixture
def no_runner(monkeypatch):
    """Keep pages from starting a runner in tests that train nothing, so no idle runner outlives the test."""
    from tinylora import jobs

    monkeypatch.setattr(jobs, "ensure_runner", lambda home: None)


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
    at.text_input(key="sweep_epochs").input("2").run()
    at.text_input(key="sweep_n_train").input("256").run()
    return at


@pytest.mark.parametrize("key, value, message", [
    ("sweep_r", "", "axis r has no values"),
    ("sweep_r", "2, 128", "r must be between 1 and 64 for qkv (64 -> 192), got 128"),
    ("sweep_lr", "abc", "axis lr: 'abc' is not a number"),
    ("sweep_lr", "0", "learning rate must be a positive finite number"),
    ("sweep_targets", "qkv+xyz", "unknown module 'xyz'"),
    ("sweep_seeds", "-1", "seed -1 is out of range"),
    ("sweep_lora_alpha", "8, 8", "axis lora_alpha lists 8 more than once"),
    ("sweep_lora_alpha", "8, 1e9", "sweep point r=2, lora_alpha=1e+09, seed 0: lora_alpha must be at most 1024"),
    ("sweep_method", [], "axis method has no values"),
    ("sweep_scaling", [], "axis use_rslora has no values"),
])
def test_invalid_axis_shows_error_and_starts_nothing(home, store, no_runner, key, value, message):
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


@pytest.mark.parametrize("key, value, message", [
    ("sweep_epochs", 501, "epochs must be between 1 and 500, got 501"),
    ("sweep_batch_size", 5000, "batch size must be between 1 and 1024, got 5000"),
    ("sweep_n_train", 100_000, "need between 1 and 65536 examples, got 100000"),
    ("sweep_epochs", "99999999999999999999", "got 99999999999999999999"),
    ("sweep_batch_size", "", "batch size '' is not a whole number; enter one such as 64"),
])
def test_out_of_range_run_setting_is_named(home, store, no_runner, key, value, message):
    at = sweep_page()
    at.text_input(key=key).input(str(value)).run()
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="sweep_start").disabled
    assert store.list_runs() == []


def test_range_needs_random_or_tpe(home, no_runner):
    at = sweep_page()
    at.text_input(key="sweep_r").input("1..64 log").run()
    assert any("grid search needs a list of values" in e.value for e in at.error)
    at.segmented_control(key="sweep_search").set_value("random").run()
    assert not at.error
    assert any("8 points × 1 seed = 8 runs" in c.value for c in at.caption)


def add_finished_run(store, record, point, acc):
    config = point_config(record.spec, point, 0).to_dict()
    run_id = store.create_run("train", config, group_id=record.id)
    trainable = 4 * point["r"] * (256 + 128) + 130
    total = 202_114 - 130 + trainable  # the frozen base without its head, plus the adapters and the head
    store.append_events(run_id, [{"type": "start", "trainable": trainable, "total": total, "steps_total": 1}],
                        summary={"trainable": trainable})
    store.finish_run(run_id, "finished", final_acc=acc, seconds=1.0)
    return run_id


def test_sweep_view_shows_results_and_opens_best_on_train(home, store, no_runner):
    """The views over runs written straight into the store (the browser test trains a real sweep)."""
    spec = SweepSpec.from_dict({"base": {"train": {"epochs": 2}}, "axes": {"r": [2, 8], "lora_alpha": [8, 16]}})
    record = save_sweep(store, spec)
    accs = {(2, 8.0): 0.625, (2, 16.0): 0.75, (8, 8.0): 0.875, (8, 16.0): 0.8125}
    ids = {key: add_finished_run(store, record, {"r": key[0], "lora_alpha": key[1]}, acc)
           for key, acc in accs.items()}
    at = sweep_page()
    assert not at.exception
    assert any("4 of 4 runs done" in (p.proto.text or "") for p in at.get("progress"))
    titles = chart_titles(at)
    assert "Mean final validation accuracy" in titles
    assert "Every finished run" in titles
    assert "Accuracy and trainable parameters against r" in titles
    heatmap = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                   if json.loads(c.proto.spec)["layout"]["title"]["text"] == "Mean final validation accuracy")
    assert heatmap["data"][0]["x"] == ["2", "8"]
    assert heatmap["data"][0]["y"] == ["8", "16"]
    assert heatmap["data"][0]["z"] == [[0.625, 0.875], [0.75, 0.8125]]
    points_frame, runs_frame = at.dataframe
    assert points_frame.value["acc_mean"].tolist() == [0.625, 0.75, 0.875, 0.8125]
    assert sorted(runs_frame.value["final_acc"]) == sorted(accs.values())
    assert any("Best so far: r=8, lora_alpha=8: mean validation accuracy 0.875" in s.value for s in at.success)
    assert at.get("download_button")

    at.button(key="sweep-open-best").click().run()
    assert not at.exception
    assert at.title[0].value == "Train"
    assert at.session_state["train_r"] == "8"
    assert at.session_state["train_lora_alpha"] == 8.0
    assert at.query_params["run"] in (ids[(8, 8.0)], [ids[(8, 8.0)]])


def test_stop_button_stops_the_sweep(home, store, monkeypatch):
    monkeypatch.setenv("TINYLORA_MAX_RUNS", "1")
    at = sweep_page()
    at.text_input(key="sweep_epochs").input("300").run()
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
    at.text_input(key="train_epochs").input("300").run()
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


def query_param(at: AppTest, name: str) -> str | None:
    value = at.query_params.get(name)
    return value[0] if isinstance(value, list) else value


def test_start_switches_to_new_sweep(home, store, no_runner):
    old = save_sweep(store, SweepSpec.from_dict({"base": {"train": {"epochs": 2}}, "axes": {"r": [2]}}))
    at = sweep_page()
    assert at.selectbox(key="sweep_select").value == old.id
    assert query_param(at, "sweep") == old.id

    at.text_input(key="sweep_name").input("second").run()
    tiny(at).button(key="sweep_start").click().run()
    assert not at.exception
    [new] = [r for r in list_sweeps(store) if r.id != old.id]
    assert query_param(at, "sweep") == new.id
    assert at.selectbox(key="sweep_select").value == new.id
    assert not at.button(key="sweep_stop").disabled

    # Choosing the old sweep again still works, and the URL follows the picker.
    at.selectbox(key="sweep_select").select(old.id).run()
    assert query_param(at, "sweep") == old.id
    assert at.button(key="sweep_stop").disabled


def test_picker_labels_name_one_sweep_each(home, store, no_runner):
    """The browser sends the picked label back, so two sweeps with one title must still get distinct labels."""
    first = save_sweep(store, SweepSpec.from_dict({"name": "twin", "axes": {"r": [2]}}))
    second = save_sweep(store, SweepSpec.from_dict({"name": "twin", "axes": {"r": [2]}}))
    at = sweep_page()
    picker = at.selectbox(key="sweep_select")
    assert len(set(picker.options)) == 2
    picker.select(first.id).run()
    assert at.selectbox(key="sweep_select").value == first.id
    assert query_param(at, "sweep") == first.id
    assert second.id != first.id


def test_unknown_sweep_id_warns_and_shows_latest(home, store, no_runner):
    save_sweep(store, SweepSpec.from_dict({"axes": {"r": [2]}}))
    latest = save_sweep(store, SweepSpec.from_dict({"axes": {"r": [4]}}))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/sweep.py")
    at.query_params["sweep"] = "bogus"
    at.run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert any(f"Sweep 'bogus' was not found in {store.home / 'sweeps'}; showing the latest" in w
               for w in warnings), warnings
    assert at.selectbox(key="sweep_select").value == latest.id
    assert query_param(at, "sweep") == latest.id
    assert len(at.selectbox(key="sweep_select").options) == 2


def test_negative_sampler_seed_is_named(home, store, no_runner):
    at = sweep_page()
    at.segmented_control(key="sweep_search").set_value("random").run()
    at.text_input(key="sweep_sampler_seed").input("-1").run()
    assert any("sampler seed must be between 0 and 2147483647, got -1" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert at.button(key="sweep_start").disabled

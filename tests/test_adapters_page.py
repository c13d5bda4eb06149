"""The Adapters page under Streamlit's AppTest, over tiny adapter sets trained by the real job code."""

import pytest

from apptest_support import chart_by_title, page
from conftest import ROOT, stop_runner, wait_for
from run_factory import run_job
from streamlit.testing.v1 import AppTest
from tinylora import jobs
from tinylora.adapter_sets import load_adapters
from tinylora.config import RunConfig, TrainConfig
from tinylora.experiments import ADAPTERS_DIR, predict_each_adapter
from tinylora.store import RunStore

TINY = {"n_train": 64, "n_val": 64, "batch_size": 16, "epochs": 2}
TASKS = ["odd_majority", "first_lt_last"]
MATRIX_TITLE = "Validation accuracy: adapter (row)"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One data directory for the tests that only read: a tiny adapter set, and a train run on its base."""
    home = tmp_path_factory.mktemp("shared") / "data"
    home.mkdir()
    store = RunStore(home)
    adapter_set = run_job(store, "adapters", {"tasks": TASKS, "train": TINY})
    train_run = run_job(store, "train", RunConfig(task="sum_high", train=TrainConfig(**TINY)).to_dict())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYLORA_HOME", str(home))
        yield store, adapter_set, train_run
    stop_runner(home)  # the page starts a runner for its data directory


@pytest.fixture
def store(shared):
    return shared[0]


@pytest.fixture
def adapter_set(shared):
    return shared[1]


def adapters_page() -> AppTest:
    return page("adapters.py").run()


def predictions_table(at: AppTest):
    """The playground's table: the one dataframe with a swap-time column."""
    tables = [frame.value for frame in at.dataframe if "swap_us" in frame.value.columns]
    assert len(tables) == 1, len(tables)
    return tables[0]


def test_empty_store_invites_a_first_set(home):
    at = adapters_page()
    assert not at.exception
    assert any("No adapter sets yet" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_heatmap_has_base_row_and_values(store, adapter_set):
    at = adapters_page()
    assert not at.exception, [e.message for e in at.exception]
    spec = chart_by_title(at, MATRIX_TITLE)
    heatmap = spec["data"][0]
    matrix = store.get_run(adapter_set).summary["summary"]["matrix"]
    assert heatmap["y"] == ["adapter odd_majority", "adapter first_lt_last", "base (no adapter)"]
    assert heatmap["x"] == TASKS
    assert heatmap["z"] == matrix["acc"]
    assert heatmap["text"] == [[f"{v:.3f}" for v in row] for row in matrix["acc"]]
    assert heatmap["texttemplate"] == "%{text}"


def test_matrix_caption_reads_the_numbers(store, adapter_set):
    at = adapters_page()
    matrix = store.get_run(adapter_set).summary["summary"]["matrix"]
    caption = next(c.value for c in at.caption if c.value.startswith("On its own task"))
    assert f"{matrix['acc'][0][0]:.3f} (odd_majority)" in caption
    assert f"{matrix['acc'][1][1]:.3f} (first_lt_last)" in caption
    assert "spread of random guessing on 64 examples" in caption


def test_playground_predicts_with_every_adapter(store, adapter_set):
    at = adapters_page()
    tokens = [1, 3, 5, 7, 9, 11, 13, 15, 1, 3, 5, 7, 9, 11, 13, 15, 1, 3, 5, 7, 9, 11, 13, 0]
    at.text_input(key="adapters_tokens").input(" ".join(map(str, tokens))).run()
    assert not at.exception
    table = predictions_table(at)
    assert list(table["adapter"]) == ["adapter odd_majority", "adapter first_lt_last", "base (no adapter)"]
    model = load_adapters(store.run_dir(adapter_set) / ADAPTERS_DIR)
    expected = predict_each_adapter(model, tokens)
    assert list(table["prediction"]) == [row["prediction"] for row in expected]
    assert list(table["probability"]) == pytest.approx([row["probability"] for row in expected], abs=1e-6)
    assert list(table["truth"]) == ["1", "0", "–"]  # 23 odd tokens; the first (1) is not below the last (0)
    assert (table["swap_us"] > 0).all()


def test_randomise_draws_new_tokens(store, adapter_set):
    at = adapters_page()
    before = at.text_input(key="adapters_tokens").value
    at.button(key="adapters_play-random").click().run()
    after = at.text_input(key="adapters_tokens").value
    assert after != before
    assert len(after.split()) == 24
    assert len(predictions_table(at)) == 3


@pytest.mark.parametrize("text, message", [("1 2 3", "type 24 tokens"), (" ".join(["16"] * 24), "from 0 to 15"),
                                           (" ".join(["x"] * 24), "got 'x'")])
def test_playground_rejects_bad_tokens(store, adapter_set, text, message):
    at = adapters_page()
    at.text_input(key="adapters_tokens").input(text).run()
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert not [frame for frame in at.dataframe if "swap_us" in frame.value.columns]


def test_mixing_curve_ends_at_each_adapter(store, adapter_set):
    at = adapters_page()
    at.slider(key="adapters_mix-weight").set_value(0.3).run()
    assert not at.exception
    spec = chart_by_title(at, "Mixing odd_majority")
    lines = [trace for trace in spec["data"] if trace.get("name", "").startswith("on ")]
    markers = [trace for trace in spec["data"] if not trace.get("name", "").startswith("on ")]
    matrix = store.get_run(adapter_set).summary["summary"]["matrix"]
    assert [trace["x"] for trace in lines] == [[i / 10 for i in range(11)]] * 2
    for t, trace in enumerate(lines):
        assert trace["y"][0] == matrix["acc"][0][t]  # w = 0 is the first adapter, bit for bit
        assert trace["y"][-1] == matrix["acc"][1][t]  # w = 1 is the second
    assert [trace["x"] for trace in markers] == [[0.3], [0.3]]
    verticals = [shape["x0"] for shape in spec["layout"]["shapes"] if shape["x0"] == shape["x1"]]
    assert verticals == [0.3]


def test_reload_picks_newest_and_keeps_older(home):
    store = RunStore(home)
    older = run_job(store, "adapters", {"tasks": ["sum_high", "middle_high"], "train": TINY})
    newer = run_job(store, "adapters", {"tasks": TASKS, "train": TINY})
    at = adapters_page()
    assert at.selectbox(key="adapters_set").value == newer
    at.selectbox(key="adapters_set").set_value(older).run()
    assert not at.exception
    assert chart_by_title(at, MATRIX_TITLE)["data"][0]["x"] == ["sum_high", "middle_high"]


def test_opened_train_run_joins_matrix_and_playground(shared):
    store, _, run_id = shared
    at = page("adapters.py")
    at.session_state["adapters_open_run"] = run_id
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    heatmap = chart_by_title(at, MATRIX_TITLE)["data"][0]
    label = f"run {run_id} (sum_high)"
    assert heatmap["y"] == ["adapter odd_majority", "adapter first_lt_last", label, "base (no adapter)"]
    assert heatmap["x"] == [*TASKS, "sum_high"]
    # Same base, same validation set: the run's own final accuracy reappears in its row, up to the float
    # rounding of the fast path it was measured on.
    assert abs(heatmap["z"][2][2] - store.get_run(run_id).final_acc) <= 1 / TINY["n_val"]
    assert label in list(predictions_table(at)["adapter"])
    at.button(key="adapters_close_run").click().run()
    assert "adapters_open_run" not in at.session_state
    assert len(chart_by_title(at, MATRIX_TITLE)["data"][0]["y"]) == 3


def test_opened_run_on_other_base_runs_alone(home):
    store = RunStore(home)
    config = RunConfig(task="odd_majority", train=TrainConfig(**TINY, seed=7))
    run_id = run_job(store, "train", config.to_dict())
    at = page("adapters.py")
    at.session_state["adapters_open_run"] = run_id
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    heatmap = chart_by_title(at, MATRIX_TITLE)["data"][0]
    assert heatmap["y"] == [f"run {run_id} (odd_majority)", "base (no adapter)"]
    assert heatmap["x"][0] == "odd_majority"
    assert abs(heatmap["z"][0][0] - store.get_run(run_id).final_acc) <= 1 / TINY["n_val"]
    assert any("random base of seed 7" in c.value for c in at.caption)
    [opened] = [i.value for i in at.info if f"run {run_id}'s adapter" in i.value]
    assert "there is no adapter set" in opened
    assert "next to the adapters of set" not in opened
    assert not any("this set's" in c.value for c in at.caption)


def test_opened_run_on_other_base_names_both(home):
    store = RunStore(home)
    set_id = run_job(store, "adapters", {"tasks": TASKS, "train": {**TINY, "epochs": 1}})
    run_id = run_job(store, "train", RunConfig(task="odd_majority", train=TrainConfig(**TINY, seed=7)).to_dict())
    at = page("adapters.py")
    at.session_state["adapters_open_run"] = run_id
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(f"next to the adapters of set {set_id}" in i.value for i in at.info)
    [note] = [c.value for c in at.caption if "its own base" in c.value]
    assert "on the random base of seed 7, float32, not on this set's random base of seed 0, float32" in note


def test_other_base_note_with_same_words():
    from tinylora.adapter_runs import AdapterSet, RunAdapter
    from tinylora.experiments import AdaptersSpec
    from ui.adapters_view import other_base_note

    spec = AdaptersSpec(quant="int8")
    adapter_set = AdapterSet("set1", model=None, spec=spec, val_sets={})
    extra = RunAdapter("run1", "run-run1", "odd_majority", model=None, shares_base=False,
                       base_note="random base of seed 0, int8 quantized")
    note = other_base_note(extra, adapter_set)
    assert "like this set, but with other model or quantization settings" in note
    assert "not on this set's" not in note


def test_runs_page_opens_adapter_here(home):
    store = RunStore(home)
    run_id = run_job(store, "train", RunConfig(train=TrainConfig(**TINY)).to_dict())
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/runs.py").run()
    at.session_state[at.dataframe[0].key] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    button = at.button(key="runs_open_adapters")
    assert not button.disabled
    button.click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.session_state["adapters_open_run"] == run_id
    assert at.title[0].value == "Adapters"


def test_train_button_queues_a_set(home):
    store = RunStore(home)
    at = adapters_page()
    at.multiselect(key="adapters_new_tasks").set_value(["sum_high", "middle_high"]).run()
    at.button(key="adapters_train").click().run()
    assert not at.exception
    runs = store.list_runs(kind="adapters")
    assert len(runs) == 1
    assert runs[0].config["tasks"] == ["sum_high", "middle_high"]
    assert at.selectbox(key="adapters_set").value == runs[0].id
    store.request_stop(runs[0].id)


def test_one_task_is_rejected(home):
    at = adapters_page()
    at.multiselect(key="adapters_new_tasks").set_value(["sum_high"]).run()
    assert any("at least two tasks" in e.value for e in at.error)
    assert at.button(key="adapters_train").disabled


@pytest.mark.parametrize("key, value, message", [
    ("adapters_new_r", 65, "r must be between 1 and 64"),
    ("adapters_new_epochs", 501, "epochs must be between 1 and 500, got 501"),
    ("adapters_new_alpha", 2000.0, "lora_alpha must be at most 1024, got 2000"),
    ("adapters_new_seed", -1, "seed must be between 0 and 2147483647, got -1"),
    # Whole numbers are text, so one too large for a browser's number box still reaches the check.
    ("adapters_new_seed", "99999999999999999999", "got 99999999999999999999"),
    ("adapters_new_epochs", "2.5", "epochs '2.5' is not a whole number; enter one such as 8"),
])
def test_out_of_range_setting_is_named(home, key, value, message):
    at = adapters_page()
    if key == "adapters_new_alpha":
        at.number_input(key=key).set_value(value).run()
    else:
        at.text_input(key=key).input(str(value)).run()
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="adapters_train").disabled


def test_live_set_shows_progress_then_matrix(home):
    store = RunStore(home)
    run_id = jobs.submit(store, "adapters", {"tasks": TASKS, "train": {**TINY, "epochs": 3}})
    at = adapters_page()
    assert not at.exception
    assert at.get("plotly_chart") or at.info  # queued or already running: progress is drawn
    wait_for(lambda: not store.get_run(run_id).active, timeout=120, message="the adapter set to finish")
    at.run()
    assert store.get_run(run_id).status == "finished"
    curves = chart_by_title(at, "Each adapter's validation accuracy")
    assert [len(trace["x"]) for trace in curves["data"]] == [3, 3]
    assert chart_by_title(at, MATRIX_TITLE)["data"][0]["y"][-1] == "base (no adapter)"


def test_chosen_set_survives_page_switch(home):
    store = RunStore(home)
    older = run_job(store, "adapters", {"tasks": ["sum_high", "middle_high"], "train": TINY})
    run_job(store, "adapters", {"tasks": TASKS, "train": TINY})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/adapters.py").run()
    at.selectbox(key="adapters_set").set_value(older).run()
    at.switch_page("pages/train.py").run()
    at.switch_page("pages/adapters.py").run()
    assert not at.exception
    assert at.selectbox(key="adapters_set").value == older

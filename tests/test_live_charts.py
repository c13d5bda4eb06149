"""The Train page's live charts: what the page sends the canvas component while a run trains."""

import json

from streamlit.testing.v1 import AppTest

from conftest import ROOT
from run_factory import add_run
from tinylora.config import RunConfig, TrainConfig
from ui.live_charts import MAX_POINTS, thin


def live_data(at: AppTest) -> dict:
    (component,) = at.get("bidi_component")
    return json.loads(component.proto.json)


def open_run(run_id: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60)
    at.query_params["run"] = run_id
    return at.run()


def test_thin_leaves_a_short_series_alone():
    xs, ys = list(range(1, 11)), [1 / i for i in range(1, 11)]
    assert thin(xs, ys, limit=10) == (xs, ys)


def test_thin_long_series_with_spikes():
    n = 10_001
    xs = list(range(1, n + 1))
    ys = [0.5 + 0.1 * ((i * 7919) % 13) / 13 for i in range(n)]
    ys[4_321] = 9.0  # a spike
    ys[7_000] = -1.0  # and a dip
    thinned_x, thinned_y = thin(xs, ys)
    assert len(thinned_x) <= MAX_POINTS + 1
    assert thinned_x == sorted(set(thinned_x))
    pairs = set(zip(thinned_x, thinned_y))
    assert (xs[4_321], 9.0) in pairs
    assert (xs[7_000], -1.0) in pairs
    assert (thinned_x[-1], thinned_y[-1]) == (xs[-1], ys[-1])
    assert all(ys[x - 1] == y for x, y in zip(thinned_x, thinned_y))


def test_running_run_data(home, store):
    config = RunConfig(train=TrainConfig(epochs=4))
    run_id = add_run(store, config, losses=[1.0, 0.8, 0.5, 0.4, 0.3, 0.2], accs=[0.6, 0.7], status="running")
    at = open_run(run_id)
    assert not at.exception
    assert not at.get("plotly_chart")
    # Speed and accuracy change every step: the component's progress line shows them, not metrics that
    # would only change at each status refresh.
    assert [m.label for m in at.metric] == ["Trainable parameters", "Share of all parameters"]
    data = live_data(at)
    loss, accuracy = data["charts"]
    assert (loss["x"], loss["y"], loss["count"]) == ([1, 2, 3, 4, 5, 6], [1.0, 0.8, 0.5, 0.4, 0.3, 0.2], 6)
    assert loss["x_range"] == [0, 6]  # steps_total of the start event
    assert (accuracy["x"], accuracy["y"], accuracy["x_range"]) == ([1.0, 2.0], [0.6, 0.7], [0.5, 4.5])
    assert data["progress"] == {"step": 6, "steps_total": 6, "seconds": 0.06, "stopping": False}
    assert data["live_url"].startswith("component/")
    assert data["live_url"].endswith(f"/{run_id}.jsonl")
    assert store.live_path(run_id).parent.is_dir()  # the directory the server serves exists


def test_queued_run_without_progress_line(home, store, monkeypatch):
    import ui.common
    monkeypatch.setattr(ui.common, "start_runner", lambda store: None)  # no runner, so the run stays queued
    data = live_data(open_run(add_run(store, status="queued")))
    assert "progress" not in data
    assert data["charts"][0]["count"] == 0


def test_ended_run_from_the_store(home, store):
    finished = add_run(store, RunConfig(train=TrainConfig(epochs=3)), losses=[1.0, 0.5], accs=[0.9],
                       status="finished")
    data = live_data(open_run(finished))
    assert "live_url" not in data  # nothing to follow: the store's data is all there is
    assert "progress" not in data  # the page's banner above the charts gives the outcome
    assert [chart["count"] for chart in data["charts"]] == [2, 1]


def test_stop_request_shows_in_the_progress_line(home, store):
    run_id = add_run(store, losses=[1.0, 0.5], accs=[0.9], status="running")
    store.request_stop(run_id)
    assert live_data(open_run(run_id))["progress"]["stopping"] is True


def test_queued_run_axis_spans_its_planned_steps(home, store, monkeypatch):
    import ui.common
    monkeypatch.setattr(ui.common, "start_runner", lambda store: None)
    config = RunConfig(train=TrainConfig(epochs=300, batch_size=64, n_train=1024))
    data = live_data(open_run(add_run(store, config, status="queued")))
    assert data["charts"][0]["x_range"] == [0, 4800]
    assert data["charts"][1]["x_range"] == [0.5, 300.5]


def test_queued_run_with_a_free_slot_reads_starting(home, store, monkeypatch):
    import ui.common
    monkeypatch.setattr(ui.common, "start_runner", lambda store: None)
    at = open_run(add_run(store, status="queued"))
    assert [info.value for info in at.info] == ["Starting: a training slot is free."]

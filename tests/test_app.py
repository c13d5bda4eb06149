"""Every page under Streamlit's AppTest, and the Train page's run flow with a real worker."""

import json
import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.errors import AppTestError

from conftest import ROOT, wait_for

PAGES = sorted(p.name for p in (ROOT / "pages").glob("*.py"))


def app() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / name), default_timeout=60)


def chart_points(at: AppTest) -> dict[str, list[int]]:
    """Number of points of each chart that the Train page's chart component draws, keyed by the chart's title."""
    (component,) = at.get("bidi_component")
    return {chart["title"]: [chart["count"]] for chart in json.loads(component.proto.json)["charts"]}


def test_app_opens_on_train(home):
    at = app().run()
    assert not at.exception
    assert at.title[0].value == "Train"


@pytest.mark.parametrize("name", PAGES)
def test_page_runs_without_exception(home, name):
    at = page(name).run()
    assert not at.exception, [e.message for e in at.exception]


def test_train_runs_to_the_end_and_charts_hold_points(home):
    at = app().run()
    at.text_input(key="train_epochs").input("2").run()
    at.button(key="train_button").click().run()
    assert not at.exception
    run_id = at.query_params["run"][0] if isinstance(at.query_params["run"], list) else at.query_params["run"]

    def finished():
        at.run()
        return any("Finished" in s.value for s in at.success)

    wait_for(finished, timeout=120, interval=0.5, message="the run to finish on the page")
    points = chart_points(at)
    assert points["Training loss"] == [32]
    assert points["Validation accuracy"] == [2]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Trainable parameters"] == "6,274"
    assert metrics["Share of all parameters"] == "3.01%"
    assert float(metrics["Final validation accuracy"]) > 0.5
    assert run_id in at.caption[-1].value or any(run_id in c.value for c in at.caption)
    assert not at.button(key="train_button").disabled


def test_second_click_while_active_starts_nothing(home, store):
    at = app().run()
    at.text_input(key="train_epochs").input("400").run()
    at.button(key="train_button").click().run()
    assert at.button(key="train_button").disabled
    with pytest.raises(AppTestError, match="disabled"):
        at.button(key="train_button").click()
    at.run()
    # A second session opened on the run's URL (a refresh, or a new tab) cannot start another one either.
    other = app()
    other.query_params["run"] = store.list_runs()[0].id
    other.run()
    assert other.button(key="train_button").disabled
    assert len(store.list_runs()) == 1
    at.button(key="stop_button").click().run()
    run = wait_for(lambda: (r := store.list_runs()[0]) and not r.active and r, timeout=30, message="the stop")
    assert run.status == "stopped"


@pytest.mark.parametrize("key, value, message", [
    ("train_r", 0, "r must be between 1 and 64"),
    ("train_lr", "abc", "learning rate 'abc' is not a number"),
    ("train_lr", "nan", "learning rate must be a positive finite number"),
    ("train_lr", "-1e-3", "learning rate must be a positive finite number"),
    ("train_epochs", 0, "epochs must be between 1 and 500, got 0"),
    ("train_targets", [], "LoRA needs at least one target module"),
    # Values outside a box's range reach the check and are named, instead of being replaced by the last valid one.
    ("train_r", 300, "got 300"),
    ("train_epochs", 501, "epochs must be between 1 and 500, got 501"),
    ("train_batch_size", 5000, "batch size must be between 1 and 1024, got 5000"),
    ("train_batch_size", 0, "batch size must be between 1 and 1024, got 0"),
    ("train_lora_alpha", -3.0, "lora_alpha must be a positive finite number such as 8, got -3.0"),
    ("train_lora_alpha", 2000.0, "lora_alpha must be at most 1024, got 2000"),
    ("train_seed", -1, "seed must be between 0 and 2147483647, got -1"),
    # Whole numbers are typed as text, so a number too large for a browser's number box still reaches the check.
    ("train_r", "99999999999999999999", "got 99999999999999999999"),
    ("train_epochs", "99999999999999999999", "epochs must be between 1 and 500, got 99999999999999999999"),
    ("train_seed", "99999999999999999999", "seed must be between 0 and 2147483647, got 99999999999999999999"),
    ("train_epochs", "2.5", "epochs '2.5' is not a whole number; enter one such as 8"),
    ("train_r", "four", "r 'four' is not a whole number; enter one such as 4"),
    ("train_batch_size", "", "batch size '' is not a whole number; enter one such as 64"),
    ("train_epochs", "1_0", "epochs '1_0' is not a whole number"),
    ("train_seed", "\u0663", "seed '\u0663' is not a whole number"),
])
def test_invalid_setting_shows_error_and_starts_nothing(home, store, key, value, message):
    at = app().run()
    if key in ("train_lr", "train_r", "train_epochs", "train_batch_size", "train_seed"):
        at.text_input(key=key).input(str(value)).run()
    elif key == "train_targets":
        at.multiselect(key=key).set_value(value).run()
    else:
        at.number_input(key=key).set_value(value).run()
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="train_button").disabled
    assert store.list_runs() == []


def test_refresh_on_run_url_shows_the_run(home, store):
    from tinylora import jobs
    from tinylora.config import RunConfig, TrainConfig

    run_id = jobs.submit(store, "train", RunConfig(method="full", train=TrainConfig(epochs=1, seed=5)).to_dict())
    wait_for(lambda: not store.get_run(run_id).active, timeout=120, message="the run to end")
    at = app()
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception
    assert any(run_id in c.value for c in at.caption)
    assert at.selectbox(key="train_method").value == "full"
    assert at.text_input(key="train_seed").value == "5"
    assert chart_points(at)["Validation accuracy"] == [1]


def test_unknown_run_id_shows_warning(home):
    at = app()
    at.query_params["run"] = "no-such-run"
    at.run()
    assert not at.exception
    assert any("was not found" in w.value for w in at.warning)


def test_rerun_with_old_url_starts_no_duplicate(home, store):
    from tinylora import jobs
    from tinylora.config import RunConfig, TrainConfig

    at = app().run()
    # A first click queued this session's run, but the second click's rerun still carries the URL without it.
    first = jobs.submit(store, "train", RunConfig(train=TrainConfig(epochs=400)).to_dict(), owner=at.session_state.owner)
    at.button(key="train_button").click().run()
    assert [run.id for run in store.list_runs()] == [first]
    assert any(f"Run {first} is still" in i.value for i in at.info)
    assert at.query_params["run"] in (first, [first])
    store.request_stop(first)


def test_train_page_finds_the_session_run(home, store):
    from tinylora import jobs
    from tinylora.config import RunConfig, TrainConfig

    at = app().run()
    # Train, then another page, then Train from the sidebar: the URL has no run id any more.
    run_id = jobs.submit(store, "train", RunConfig(train=TrainConfig(epochs=400)).to_dict(),
                         owner=at.session_state.owner)
    at.run()
    assert at.query_params["run"] in (run_id, [run_id])
    assert any(run_id in c.value for c in at.caption)
    assert at.button(key="train_button").disabled
    assert not at.button(key="stop_button").disabled
    store.request_stop(run_id)


def test_train_click_uses_value_typed_before_it(home, store):
    # A click right after typing sends the new text and the click in one rerun, before the page redraws.
    at = app().run()
    at.text_input(key="train_epochs").input("abc")
    at.button(key="train_button").click().run()
    assert store.list_runs() == []
    assert any("The settings are invalid" in i.value for i in at.info)
    at.text_input(key="train_epochs").input("8").run()  # valid again: Train is enabled
    at.text_input(key="train_epochs").input("3")
    at.text_input(key="train_seed").input("7")
    at.button(key="train_button").click().run()
    [run] = store.list_runs()
    assert run.config["train"]["epochs"] == 3
    assert run.config["train"]["seed"] == 7
    store.request_stop(run.id)


def test_refreshed_session_finds_its_run_after_page_switch(home, store):
    from tinylora import jobs
    from tinylora.config import RunConfig, TrainConfig

    # The run was started before a browser refresh, which gave the page a new session id.
    run_id = jobs.submit(store, "train", RunConfig(train=TrainConfig(epochs=400)).to_dict(), owner="old-session")
    at = app()
    at.query_params["run"] = run_id
    at.run()
    # Another page, then Train from the sidebar: the URL has no run id any more.
    at.query_params.pop("run")
    at.run()
    assert at.query_params["run"] in (run_id, [run_id])
    assert at.button(key="train_button").disabled
    assert not at.button(key="stop_button").disabled
    store.request_stop(run_id)


def test_run_of_another_kind_names_its_page(home, store):
    run_id = store.create_run("adapters", {"tasks": ["odd_majority", "first_lt_last"]})
    at = app()
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("adapters run, not a training run" in w.value and "Adapters page" in w.value for w in at.warning)
    assert at.button(key="stop_button").disabled

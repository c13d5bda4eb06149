"""The Forgetting page under Streamlit's AppTest, over tiny runs made by the real job code."""

from collections import defaultdict

import pytest
from streamlit.testing.v1 import AppTest

from apptest_support import chart_by_title, page
from conftest import stop_runner, wait_for
from run_factory import run_job
from tinylora import jobs
from tinylora.experiments import lora_trainable_count
from tinylora.forgetting import STRATEGIES, default_params
from tinylora.lora import LoRAConfig
from tinylora.store import RunStore

TINY_TRAIN = {"n_train": 64, "n_val": 32, "batch_size": 16}  # 4 steps per epoch
TIMELINE = "Validation accuracy on each task during training"
SCATTER = "Learned on B against kept on A"
TASKS = ["odd_majority", "first_lt_last"]


def tiny(strategy: str) -> dict:
    return {**default_params(strategy), "epochs_a": 1, "epochs_b": 2, "epochs_joint": 2, "eval_every": 2,
            "train": TINY_TRAIN}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A data directory with one comparison of all five strategies and one learns-less study."""
    home = tmp_path_factory.mktemp("shared") / "data"
    home.mkdir()
    store = RunStore(home)
    runs = {strategy: run_job(store, "forgetting", tiny(strategy), group_id="g1") for strategy in STRATEGIES}
    study = run_job(store, "learns_less", {"ranks": [1, 4], "base_epochs": 1, "epochs": 2, "eval_every": 2,
                                           "train": TINY_TRAIN})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYLORA_HOME", str(home))
        yield store, runs, study
    stop_runner(home)


def forgetting_page() -> AppTest:
    return page("forgetting.py").run()


def eval_points(store: RunStore, run_id: str) -> dict[str, tuple[list[int], list[float]]]:
    """Each task's (steps, accuracies) from a run's stored eval events."""
    points = defaultdict(lambda: ([], []))
    for _, event in store.events(run_id, types=("eval",)):
        points[event["task"]][0].append(event["step"])
        points[event["task"]][1].append(event["val/acc"])
    return dict(points)


def test_empty_store_invites_a_first_comparison(home):
    at = forgetting_page()
    assert not at.exception
    assert any("No comparisons yet" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_timeline_points_per_task_and_step(shared):
    store, runs, _ = shared
    at = forgetting_page()
    assert not at.exception, [e.message for e in at.exception]
    spec = chart_by_title(at, TIMELINE)
    assert len(spec["data"]) == 2 * len(STRATEGIES)  # a panel per strategy, a trace per task
    for index, (strategy, run_id) in enumerate(runs.items()):
        expected = eval_points(store, run_id)
        traces = spec["data"][2 * index: 2 * index + 2]
        assert [trace["name"] for trace in traces] == TASKS, strategy
        assert traces[0]["x"] == traces[1]["x"], strategy  # both tasks at every evaluation step
        for trace in traces:
            assert (trace["x"], trace["y"]) == (expected[trace["name"]][0], expected[trace["name"]][1]), strategy


def test_timeline_marks_the_phase_boundary(shared):
    store, runs, _ = shared
    spec = chart_by_title(forgetting_page(), TIMELINE)
    boundaries = defaultdict(list)
    for shape in spec["layout"]["shapes"]:
        if shape["type"] == "line" and shape["x0"] == shape["x1"]:
            boundaries[shape["xref"]].append(shape["x0"])
    phase_b = 1 * 4  # one epoch of four steps on A
    axes = ["x", "x2", "x3", "x4", "x5"]
    for axis, strategy in zip(axes, STRATEGIES):
        assert boundaries[axis] == ([] if strategy == "joint" else [phase_b]), strategy
    labels = [a["text"] for a in spec["layout"]["annotations"] if a["text"].startswith("phase")]
    assert labels.count("phase A") == 4
    assert labels.count("phase B") == 4
    assert labels.count("phase A+B") == 1


def test_overlay_draws_every_run_on_one_panel(shared):
    at = forgetting_page()
    at.get_by_key("forgetting-layout").set_value("Overlay").run()
    assert not at.exception
    spec = chart_by_title(at, TIMELINE)
    assert {trace.get("xaxis", "x") for trace in spec["data"]} == {"x"}
    assert len(spec["data"]) == 2 * len(STRATEGIES)
    assert spec["data"][0]["name"] == f"{STRATEGIES['sequential']}: odd_majority"


def test_show_filter_keeps_chosen_strategies(shared):
    _, runs, _ = shared
    at = forgetting_page()
    at.multiselect(key="forgetting-shown").set_value([runs["full"]]).run()
    spec = chart_by_title(at, TIMELINE)
    assert len(spec["data"]) == 2
    assert [a["text"] for a in spec["layout"]["annotations"] if not a["text"].startswith("phase")] \
        == [STRATEGIES["full"]]


def test_summary_table_row_per_strategy(shared):
    store, runs, _ = shared
    at = forgetting_page()
    table = next(frame.value for frame in at.dataframe if "lost_a" in frame.value.columns)
    assert len(table) == len(STRATEGIES)
    for row, run_id in zip(table.itertuples(), runs.values()):
        summary = store.get_run(run_id).summary["summary"]
        assert row.lost_a == pytest.approx(summary["lost_a"])
        assert row.gained_b == pytest.approx(summary["gained_b"])
        assert row.trainable == summary["trainable"]
    joint = lora_trainable_count(LoRAConfig(r=8, lora_alpha=16))
    assert list(table.trainable) == [6274, 2 * 6274, joint, 202114, 6274]


def test_summary_names_task_id_strategies(shared):
    at = forgetting_page()
    table = next(frame.value for frame in at.dataframe if "lost_a" in frame.value.columns)
    assert list(table.strategy) == ["Sequential", "Separate adapters", "Joint (task ids)", "Full finetuning",
                                     "Replay (25% of A)"]
    [note] = [c.value for c in at.caption if "task id" in c.value and "[CLS]" in c.value]
    assert note.startswith("Joint (task ids) and Replay (25% of A) tag [CLS] with a task id")
    assert "Sequential" not in note


def test_learns_less_scatter_has_point_per_run(shared):
    store, _, study = shared
    at = forgetting_page()
    spec = chart_by_title(at, SCATTER)
    by_name = {trace["name"]: trace for trace in spec["data"]}
    points = store.get_run(study).summary["summary"]["points"]
    base = store.get_run(study).summary["summary"]["base"]
    assert by_name["start: finetuned on A"]["x"] == [base["first_lt_last"]]
    assert by_name["full finetuning"]["x"] == [points[0]["acc_b"]]
    assert by_name["full finetuning"]["y"] == [points[0]["acc_a"]]
    assert list(by_name) == ["start: finetuned on A", "full finetuning", "LoRA r=1", "LoRA r=4"]
    for point in points[1:]:
        assert (by_name[f"LoRA r={point['r']}"]["x"], by_name[f"LoRA r={point['r']}"]["y"]) \
            == ([point["acc_b"]], [point["acc_a"]])
    caption = next(c.value for c in at.caption if c.value.startswith("The starting model"))
    assert f"{base['odd_majority']:.3f} on A" in caption
    assert f"lost {base['odd_majority'] - points[0]['acc_a']:.3f} on A" in caption


def test_run_button_queues_one_job_per_strategy(home):
    store = RunStore(home)
    at = forgetting_page()
    at.multiselect(key="forgetting_strategies").set_value(["sequential", "replay"]).run()
    at.slider(key="forgetting_replay").set_value(40).run()
    at.text_input(key="forgetting_epochs_b").input("3").run()
    at.button(key="forgetting_run").click().run()
    assert not at.exception
    runs = store.list_runs(kind="forgetting")
    for run in runs:
        store.request_stop(run.id)
    assert sorted(run.config["strategy"] for run in runs) == ["replay", "sequential"]
    assert len({run.group_id for run in runs}) == 1
    assert {run.config["epochs_b"] for run in runs} == {3}
    assert {run.config["replay_fraction"] for run in runs} == {0.4}
    assert at.selectbox(key="forgetting_group").value == runs[0].group_id


def test_same_tasks_are_rejected(home):
    at = forgetting_page()
    at.selectbox(key="forgetting_task_b").set_value("odd_majority").run()
    assert any("must differ" in e.value for e in at.error)
    assert at.button(key="forgetting_run").disabled
    assert at.button(key="forgetting_ll_run").disabled


@pytest.mark.parametrize("key, value, message", [
    ("forgetting_epochs_a", 0, "epochs_a must be between 1 and 100, got 0"),
    ("forgetting_epochs_b", 101, "epochs_b must be between 1 and 100, got 101"),
    ("forgetting_eval_every", -1, "eval_every must be 0 (phase ends only) or a number of steps up to 1000, got -1"),
    ("forgetting_epochs_a", "99999999999999999999", "got 99999999999999999999"),
    ("forgetting_epochs_joint", "abc", "joint epochs 'abc' is not a whole number; enter one such as 10"),
])
def test_out_of_range_setting_is_named(home, key, value, message):
    at = forgetting_page()
    at.text_input(key=key).input(str(value)).run()
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="forgetting_run").disabled


def test_learns_less_button_queues_a_study(home):
    store = RunStore(home)
    at = forgetting_page()
    at.multiselect(key="forgetting_ll_ranks").set_value([2, 8]).run()
    at.button(key="forgetting_ll_run").click().run()
    runs = store.list_runs(kind="learns_less")
    store.request_stop(runs[0].id)
    assert runs[0].config["ranks"] == [2, 8]
    assert runs[0].config["separate_heads"] is True


def test_live_run_fills_the_timeline(home):
    store = RunStore(home)
    run_id = jobs.submit(store, "forgetting", {**tiny("sequential"), "epochs_b": 3}, group_id="live")
    at = forgetting_page()
    assert not at.exception
    wait_for(lambda: not store.get_run(run_id).active, timeout=120, message="the forgetting run to end")
    at.run()
    assert store.get_run(run_id).status == "finished"
    spec = chart_by_title(at, TIMELINE)
    expected = eval_points(store, run_id)
    assert [trace["x"] for trace in spec["data"]] == [expected[task][0] for task in TASKS]

"""The headless lab at full fidelity (the notebook's settings), run once, and its command line."""

import json

import pytest

import tinylora.commands.lab as lab_command
from tinylora.cli import main
from tinylora.lab import LAB_METHODS, format_lab, run_lab

CHANCE = (0.4, 0.6)


@pytest.fixture(scope="module")
def lab():
    # The lab's default: two worker processes with one torch thread each.
    return run_lab(workers=2, threads_per_worker=1)


def test_lab_is_json(lab):
    assert json.loads(json.dumps(lab, allow_nan=False)) == lab


def test_methods_rows(lab):
    rows = {row["method"]: row for row in lab["methods"]}
    assert list(rows) == list(LAB_METHODS)
    assert rows["full"]["trainable"] == 202114
    assert rows["lora"]["trainable"] == rows["qlora-int8"]["trainable"] == 6274
    assert rows["lora"]["share_of_full"] == pytest.approx(6274 / 202114)
    for row in rows.values():
        assert row["status"] == "finished"
        assert row["val_acc"] >= 0.93, row["method"]


def test_default_lora_row_reproduces_train_command(lab):
    lora = next(row for row in lab["methods"] if row["method"] == "lora")
    assert lora["val_acc"] == 0.984375  # `python -m tinylora train`: 504 of 512 validation examples


def test_cross_evaluation_diagonal_high(lab):
    for adapter, acc in lab["adapters"]["diagonal"].items():
        assert acc >= 0.93, adapter


def test_cross_evaluation_off_diagonal_chance(lab):
    assert lab["adapters"]["off_diagonal"]
    for pair, acc in lab["adapters"]["off_diagonal"].items():
        assert CHANCE[0] <= acc <= CHANCE[1], pair


def test_cross_evaluation_default_figures(lab):
    # The Adapters page's default set, as the README quotes it.
    matrix = lab["adapters"]["matrix"]
    rounded = [[round(acc, 3) for acc in row] for row in matrix["acc"]]
    assert rounded[:2] == [[0.984, 0.521], [0.506, 0.971]]


def test_cross_evaluation_has_base_row(lab):
    matrix = lab["adapters"]["matrix"]
    assert matrix["adapters"][-1] is None
    assert len(matrix["acc"]) == len(matrix["adapters"]) == 3


def test_sequential_forgets_a(lab):
    f = lab["forgetting"]
    assert f["after_a"][f["task_a"]] > 0.9
    assert f["after_b"][f["task_a"]] < 0.65
    assert f["after_b"][f["task_b"]] > 0.9


@pytest.mark.parametrize("phase, task, notebook", [("after_a", "odd_majority", 0.998),
                                                   ("after_a", "first_lt_last", 0.514),
                                                   ("after_b", "first_lt_last", 0.930)])
def test_sequential_matches_notebook(lab, phase, task, notebook):
    assert round(lab["forgetting"][phase][task], 3) == notebook


def test_sequential_a_after_b_near_notebook(lab):
    # NOTE: the notebook prints 0.490 (251 of 512), and this run keeps 252 of 512 (0.492) after 12 epochs on B.
    # Float rounding on another machine explains a one-example drift. Every other figure matches.
    correct = round(lab["forgetting"]["after_b"]["odd_majority"] * 512)
    assert abs(correct - 251) <= 1


def test_joint_learns_both(lab):
    # NOTE: the notebook reports 0.947 and 0.932. This experiment's final accuracies depend on the order of
    # float sums. The default fast path ends at 0.959 and 0.922 and the eager path at 0.885 and 0.938. Over
    # seeds 0 to 4 the eager path alone ends between 0.88 and 0.98, so the bound is 0.85, not 0.9. An extra
    # torch.randperm of the joint set before training, as the notebook does, does not recover its figures.
    for task, acc in lab["joint"]["acc"].items():
        assert acc >= 0.85, task
    assert lab["joint"]["acc"]["odd_majority"] - lab["forgetting"]["after_b"]["odd_majority"] > 0.3


def test_format_lab_tables(lab):
    text = format_lab(lab)
    assert "Methods compared" in text
    assert "base (no adapter)" in text
    assert "after phase B" in text
    assert f"{lab['joint']['acc']['first_lt_last']:.3f}" in text


def test_cli_json_prints_lab(lab, monkeypatch, capsys):
    monkeypatch.setattr(lab_command, "run_lab", lambda workers, threads_per_worker: lab)
    assert main(["lab", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == lab


def test_cli_prints_tables(lab, monkeypatch, capsys):
    monkeypatch.setattr(lab_command, "run_lab", lambda workers, threads_per_worker: lab)
    assert main(["lab"]) == 0
    assert capsys.readouterr().out.strip() == format_lab(lab)


@pytest.mark.parametrize("flags", [["--workers", "0"], ["--workers", "7"], ["--threads", "0"]])
def test_cli_rejects_bad_workers(flags, capsys):
    assert main(["lab", *flags]) == 2
    assert "error:" in capsys.readouterr().err

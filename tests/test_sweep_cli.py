"""`python -m tinylora sweep`, called in-process through `tinylora.cli.main` (its runs train in real workers)."""

import json

import pytest

from tinylora.cli import main
from tinylora.store import RunStore
from tinylora.sweep import SweepSpec
from tinylora.sweep_store import save_sweep

TINY = ["--epochs", "1", "--n-train", "128", "--n-val", "64"]


def test_sweep_json_then_resume_trains_nothing_new(home, capsys):
    assert main(["sweep", "--r", "2,8", "--seeds", "0,1", *TINY, "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["status"] == "finished"
    assert len(out["runs"]) == 4
    assert {run["status"] for run in out["runs"]} == {"finished"}
    assert [point["r"] for point in out["points"]] == [2, 8]
    assert [point["seeds_finished"] for point in out["points"]] == [2, 2]
    assert out["best"]["acc_mean"] == max(point["acc_mean"] for point in out["points"])
    assert "[4/4] r=" in captured.err

    assert main(["sweep", "--resume", out["sweep_id"]]) == 0
    table = capsys.readouterr().out
    assert "finished: 4 of 4 runs finished" in table
    assert "best: r=" in table
    assert len(RunStore(home).list_runs(kind="train")) == 4


def test_sweep_spec_file_with_flag_override(home, capsys, tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text("name: from a file\naxes:\n  r: [2, 4]\n  use_rslora: [false, true]\n"
                    "base:\n  train: {epochs: 1, n_train: 128, n_val: 64}\n")
    assert main(["sweep", "--spec", str(spec), "--r", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["spec"]["name"] == "from a file"
    assert out["spec"]["axes"]["r"] == [4]
    assert [(p["r"], p["use_rslora"]) for p in out["points"]] == [(4, False), (4, True)]


@pytest.mark.parametrize("args, message", [
    (["--r", ""], "axis r has no values"),
    (["--r", "0,4"], "sweep point r=0, seed 0: r must be between 1 and 64"),
    (["--lr", "fast"], "axis lr: 'fast' is not a number"),
    (["--lora-alpha", "16,2048"], "sweep point lora_alpha=2048, seed 0: lora_alpha must be at most 1024"),
    (["--targets", "qkv+attn"], "unknown module 'attn'"),
    (["--search", "random"], "random search needs a budget"),
    (["--resume", "no-such-sweep"], "sweep 'no-such-sweep' was not found, because"),
    (["--resume", "no-such-sweep"], "contains no sweeps. Start a sweep first."),
])
def test_sweep_invalid_input_exits_2_and_starts_nothing(home, capsys, args, message):
    assert main(["sweep", *args]) == 2
    assert message in capsys.readouterr().err
    assert RunStore(home).list_runs() == []


def test_resume_unknown_id_lists_stored_sweeps(home, capsys):
    store = RunStore(home)
    older = save_sweep(store, SweepSpec.from_dict({"axes": {"r": [2]}}))
    newer = save_sweep(store, SweepSpec.from_dict({"axes": {"r": [4]}}))
    assert main(["sweep", "--resume", "bogus"]) == 2
    err = capsys.readouterr().err
    assert f"sweep 'bogus' was not found in {home / 'sweeps'}" in err
    assert "Choose one of the stored sweeps, newest first:" in err
    assert older.id in err
    assert newer.id in err
    assert store.list_runs() == []

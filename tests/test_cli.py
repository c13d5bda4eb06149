"""`python -m tinylora train` in a real subprocess."""

import json
import subprocess
import sys

from conftest import ROOT


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tinylora", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_train_json_has_config_counts_history_and_speed():
    result = run_cli("train", "--epochs", "2", "--task", "first_lt_last", "--r", "2", "--lora-alpha", "4",
                     "--targets", "qkv,fc1", "--seed", "3", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["config"]["task"] == "first_lt_last"
    assert out["config"]["lora"] == {"r": 2, "lora_alpha": 4.0, "target_modules": ["qkv", "fc1"],
                                     "lora_dropout": 0.0, "use_rslora": False}
    assert out["config"]["train"]["seed"] == 3
    assert out["trainable"] == 4 * 2 * (64 + 192) + 4 * 2 * (64 + 256) + 130
    assert out["total"] == 202_114 + out["trainable"] - 130
    assert [h["epoch"] for h in out["history"]] == [1.0, 2.0]
    assert out["final_acc"] == out["history"][-1]["val/acc"]
    assert out["status"] == "finished"
    assert out["seconds"] > 0
    assert out["steps_per_second"] > 0


def test_train_log_prints_each_epoch():
    result = run_cli("train", "--epochs", "1", "--method", "full")
    assert result.returncode == 0, result.stderr
    assert "trainable: 202,114 / 202,114 (100.00%)" in result.stdout
    assert "epoch 1 loss=" in result.stdout


def test_invalid_flags_exit_2_with_message():
    result = run_cli("train", "--r", "0")
    assert result.returncode == 2
    assert "r must be between 1 and 64" in result.stderr
    result = run_cli("train", "--targets", "")
    assert result.returncode == 2
    assert "LoRA needs at least one target module" in result.stderr


def test_train_use_rslora_flag_sets_config():
    result = run_cli("train", "--epochs", "1", "--r", "16", "--use-rslora", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["config"]["lora"]["use_rslora"] is True

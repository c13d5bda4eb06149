"""The base and absorb job kinds, run by the real runner in worker processes."""

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import wait_for
from tinylora import jobs
from tinylora.checkpoints import base_path
from tinylora.config import RunConfig, TrainConfig
from tinylora.model import ModelConfig, TinyClassifier
from tinylora.progress import read_progress
from tinylora.quant_lab import SchemeChoice, lab_run_config

TINY_TRAIN = TrainConfig(epochs=1, n_train=128, n_val=64)
BASE = "finetuned:first_lt_last"


def ended(store, run_id):
    run = store.get_run(run_id)
    return run if not run.active else None


def write_cached_base(home, base: str = BASE, val_acc: float = 0.75) -> dict[str, torch.Tensor]:
    """Store a base file where the cache looks for `base`, so that no job has to train it."""
    torch.manual_seed(7)
    state = {name: tensor.contiguous() for name, tensor in TinyClassifier().state_dict().items()}
    path = base_path(base, home)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"tinylora": json.dumps({"val_acc": val_acc, "seconds": 1.0})})
    return state


def test_absorb_job_lands_result_before_end(store):
    config = lab_run_config("random", SchemeChoice("nf4"), train=TINY_TRAIN)
    run_id = jobs.submit(store, "absorb", config.to_dict(), group_id="g1")
    run = wait_for(lambda: ended(store, run_id), timeout=90, message="the absorb run to end")
    assert run.status == "finished", run.message
    types = [event["type"] for _, event in store.events(run_id)]
    assert types[:2] == ["baseline", "start"]
    assert types[-2:] == ["result", "end"]
    assert types.count("step") == 2
    result = store.events(run_id, types=("result",))[0][1]
    assert result["qlora_acc"] == run.final_acc
    assert result["merged_max_logit_change"] < 1e-5
    assert result["requantized_acc"] is not None
    assert run.group_id == "g1"


def test_absorb_job_rejects_float_method(store):
    with pytest.raises(ValueError, match="an absorb job needs a QLoRA method, got 'lora'"):
        jobs.submit(store, "absorb", RunConfig(method="lora").to_dict())
    assert store.list_runs() == []


@pytest.mark.parametrize("params, message", [
    ({"base": "random"}, "the random base needs no training"),
    ({"base": "finetuned:nothing"}, "unknown base 'finetuned:nothing'"),
    ({"base": BASE, "epochs": 3}, r"unknown base job setting\(s\) \['epochs'\]"),
])
def test_base_job_rejects_bad_params(store, params, message):
    with pytest.raises(ValueError, match=message):
        jobs.submit(store, "base", params)


def test_base_job_loads_cached_base(store):
    write_cached_base(store.home, val_acc=0.625)
    run_id = jobs.submit(store, "base", {"base": BASE})
    run = wait_for(lambda: ended(store, run_id), timeout=60, message="the base job to end")
    assert run.status == "finished", run.message
    assert run.final_acc == 0.625
    assert [event["type"] for _, event in store.events(run_id)] == ["end"]


def test_train_job_uses_cached_base_without_status(store):
    write_cached_base(store.home)
    config = RunConfig(method="qlora-nf4", base=BASE, train=TINY_TRAIN)
    run_id = jobs.submit(store, "train", config.to_dict())
    run = wait_for(lambda: ended(store, run_id), timeout=60, message="the train run to end")
    assert run.status == "finished", run.message
    assert store.events(run_id, types=("status",)) == []


def test_base_status_only_when_not_cached(tmp_path):
    missing = list(jobs._base_status(BASE, ModelConfig(), tmp_path))
    assert [event["type"] for event in missing] == ["status"]
    assert f"preparing the base {BASE}" in missing[0]["message"]
    write_cached_base(tmp_path)
    assert list(jobs._base_status(BASE, ModelConfig(), tmp_path)) == []
    assert list(jobs._base_status("random", ModelConfig(), tmp_path)) == []


def test_progress_keeps_status_message(store):
    run_id = store.create_run("train", RunConfig().to_dict())
    store.append_events(run_id, [{"type": "status", "message": "preparing the base"}])
    progress = read_progress(store, run_id)
    assert progress.status_message == "preparing the base"
    assert progress.step == 0

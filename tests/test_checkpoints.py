import os
import threading

import pytest
import torch

from tinylora import checkpoints
from tinylora.checkpoints import (BaseRecipe, base_metadata, base_path, clear_memory_cache, is_cached,
                                  load_base_state)
from tinylora.config import BASES, RunConfig
from tinylora.model import ModelConfig, TinyClassifier
from tinylora.paths import data_home
from tinylora.training import prepare_run

TINY = BaseRecipe(epochs=1, n_train=64, n_val=32, batch_size=32)  # seconds to train, enough to test caching
BASE = "finetuned:odd_majority"


@pytest.fixture(autouse=True)
def fresh_memory_cache():
    clear_memory_cache()
    yield
    clear_memory_cache()


@pytest.fixture
def training_counter(monkeypatch):
    calls = []
    train_base = checkpoints.train_base

    def counting_train_base(*args, **kwargs):
        calls.append(args)
        return train_base(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "train_base", counting_train_base)
    return calls


def test_random_base_has_no_state(tmp_path):
    assert load_base_state("random", tmp_path) is None
    assert base_path("random", tmp_path) is None
    assert is_cached("random", tmp_path)


def test_first_load_trains_and_caches(tmp_path, training_counter):
    assert not is_cached(BASE, tmp_path, recipe=TINY)
    state = load_base_state(BASE, tmp_path, recipe=TINY)
    assert len(training_counter) == 1
    assert is_cached(BASE, tmp_path, recipe=TINY)
    assert set(state) == set(TinyClassifier().state_dict())


def test_second_load_does_not_retrain(tmp_path, training_counter):
    first = load_base_state(BASE, tmp_path, recipe=TINY)
    second = load_base_state(BASE, tmp_path, recipe=TINY)
    assert len(training_counter) == 1
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_new_process_loads_from_disk(tmp_path, training_counter):
    first = load_base_state(BASE, tmp_path, recipe=TINY)
    clear_memory_cache()  # as a new process would start
    second = load_base_state(BASE, tmp_path, recipe=TINY)
    assert len(training_counter) == 1
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_returned_state_is_a_copy(tmp_path):
    first = load_base_state(BASE, tmp_path, recipe=TINY)
    first["head.bias"].fill_(123.0)
    assert not torch.equal(load_base_state(BASE, tmp_path, recipe=TINY)["head.bias"], first["head.bias"])


def test_base_differs_from_random_initialisation(tmp_path):
    state = load_base_state(BASE, tmp_path, recipe=TINY)
    torch.manual_seed(TINY.seed)
    initial = TinyClassifier().state_dict()
    assert not torch.equal(state["head.weight"], initial["head.weight"])


def test_recipe_and_model_change_the_file(tmp_path):
    default = base_path(BASE, tmp_path)
    assert base_path(BASE, tmp_path, recipe=TINY) != default
    assert base_path(BASE, tmp_path, model=ModelConfig(d_model=32)) != default
    assert base_path("finetuned:first_lt_last", tmp_path) != default
    assert default.parent == tmp_path / "bases"


def test_write_is_atomic(tmp_path, monkeypatch):
    replaced = []
    replace = os.replace

    def recording_replace(source, target):
        assert os.path.exists(source)
        assert not os.path.exists(target)  # the final name appears only through the rename
        replaced.append((source, target))
        replace(source, target)

    monkeypatch.setattr(checkpoints.os, "replace", recording_replace)
    load_base_state(BASE, tmp_path, recipe=TINY)
    path = base_path(BASE, tmp_path, recipe=TINY)
    assert len(replaced) == 1
    assert os.path.dirname(replaced[0][0]) == str(path.parent)
    assert replaced[0][1] == path
    assert list(path.parent.glob("*.tmp")) == []


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def failing_save(state, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        load_base_state(BASE, tmp_path, recipe=TINY)
    path = base_path(BASE, tmp_path, recipe=TINY)
    assert not path.exists()
    assert list(path.parent.glob("*.tmp")) == []


def test_concurrent_loads_train_once(tmp_path, training_counter):
    states = []

    def load():
        states.append(load_base_state(BASE, tmp_path, recipe=TINY))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(training_counter) == 1
    assert len(states) == 2
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_metadata_records_recipe(tmp_path):
    load_base_state(BASE, tmp_path, recipe=TINY)
    info = base_metadata(base_path(BASE, tmp_path, recipe=TINY))
    assert info["task"] == "odd_majority"
    assert info["recipe"]["epochs"] == 1
    assert 0.0 <= info["val_acc"] <= 1.0


def test_training_leaves_global_generator_alone(tmp_path):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_base_state(BASE, tmp_path, recipe=TINY)
    assert torch.equal(torch.rand(3), expected)


def test_prepare_run_loads_cached_base(tmp_path):
    # Put a known state where the default recipe's base lives, so prepare_run loads it instead of training.
    torch.manual_seed(5)
    known = {k: v.contiguous() for k, v in TinyClassifier().state_dict().items()}
    path = base_path(BASE, tmp_path)
    path.parent.mkdir(parents=True)
    checkpoints._write_atomically(path, known, {"task": "odd_majority"})
    prepared = prepare_run(RunConfig(method="lora", base=BASE), home=tmp_path)
    assert torch.equal(prepared.model.tok.weight, known["tok.weight"])
    assert torch.equal(prepared.model.blocks[0].qkv.base_layer.weight, known["blocks.0.qkv.weight"])


def test_prepare_run_random_base_needs_no_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TINYLORA_HOME", raising=False)
    prepare_run(RunConfig())
    assert list(tmp_path.iterdir()) == []


def test_data_home_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLORA_HOME", str(tmp_path))
    assert data_home() == tmp_path
    monkeypatch.delenv("TINYLORA_HOME")
    assert data_home().name == "tinylora-data"


def test_bases_name_every_task():
    assert BASES[0] == "random"
    assert "finetuned:odd_majority" in BASES
    assert "finetuned:first_lt_last" in BASES


@pytest.mark.parametrize("base", ["pretrained", "finetuned:", "finetuned:nope", "finetuned_odd_majority", ""])
def test_invalid_base_rejected(base):
    with pytest.raises(ValueError, match=f"unknown base {base!r}; choose one of random, finetuned:odd_majority"):
        RunConfig(base=base).validate()


def test_invalid_base_rejected_by_loader(tmp_path):
    with pytest.raises(ValueError, match="unknown base 'finetuned:nope'"):
        load_base_state("finetuned:nope", tmp_path)

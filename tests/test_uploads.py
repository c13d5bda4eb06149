"""Uploaded adapters: every rejection leaves nothing behind; a valid one becomes an evaluated run."""

import io
import json
import zipfile

import pytest
import torch

from conftest import wait_for
from tinylora.adapter_files import (CONFIG_NAME, MAX_UPLOAD_BYTES, WEIGHTS_NAME, Adapter, AdapterFileError,
                                    read_adapter)
from tinylora.adapter_writing import adapter_file_bytes, save_adapter, zip_adapter
from tinylora.config import RunConfig, TrainConfig
from tinylora.training import prepare_run
from tinylora.uploads import UploadSettings, base_seed_from_name, check_upload, store_upload
from tinylora.weights import base_model_name, save_trained

SMALL = TrainConfig(epochs=1, n_train=128, seed=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LoRA run trained in this process: its config, final accuracy and adapter directory."""
    config = RunConfig(train=SMALL)
    prepared = prepare_run(config)
    final_acc = [e for e in prepared.events() if e["type"] == "end"][0]["final_acc"]
    directory = tmp_path_factory.mktemp("trained")
    save_trained(prepared.model, directory, config)
    return config, final_acc, directory / "adapter"


def two_files(adapter: Adapter) -> dict[str, bytes]:
    return adapter_file_bytes(adapter)


def with_tensors(adapter: Adapter, change) -> Adapter:
    tensors = {key: t.clone() for key, t in adapter.tensors.items()}
    change(tensors)
    return Adapter(adapter.config, tensors, adapter.modules_to_save, adapter.base_model_name_or_path)


QKV_A = "base_model.model.blocks.0.qkv.lora_A.weight"
QKV_B = "base_model.model.blocks.0.qkv.lora_B.weight"


def pickle_bytes(adapter: Adapter) -> bytes:
    buffer = io.BytesIO()
    torch.save(adapter.tensors, buffer)
    return buffer.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


BAD_UPLOADS = {
    "wrong shape": (lambda a: two_files(with_tensors(a, lambda t: t.__setitem__(QKV_A, torch.zeros(4, 32)))),
                    "has shape \\(4, 32\\) but this base model needs \\(4, 64\\)"),
    "missing key": (lambda a: two_files(with_tensors(a, lambda t: t.pop(QKV_B))),
                    "is missing 1 tensor\\(s\\)"),
    "extra key": (lambda a: two_files(with_tensors(
        a, lambda t: t.__setitem__("base_model.model.blocks.0.extra.lora_A.weight", torch.zeros(4, 64)))),
                  "has 1 tensor\\(s\\) that this base model has no place for"),
    "pickle weights": (lambda a: {CONFIG_NAME: two_files(a)[CONFIG_NAME], WEIGHTS_NAME: pickle_bytes(a)},
                       "looks like a PyTorch pickle"),
    "bin alone": (lambda a: {"adapter_model.bin": pickle_bytes(a)}, "adapter_model.bin looks like a PyTorch pickle"),
    "bin with config": (lambda a: {CONFIG_NAME: two_files(a)[CONFIG_NAME], "adapter_model.bin": pickle_bytes(a)},
                        "adapter_model.bin looks like a PyTorch pickle"),
    "garbage weights": (lambda a: {CONFIG_NAME: two_files(a)[CONFIG_NAME], WEIGHTS_NAME: b"\x07" * 64},
                        "is not a valid safetensors file"),
    "pickle in zip": (lambda a: {"adapter.zip": zip_of({CONFIG_NAME: two_files(a)[CONFIG_NAME],
                                                        "adapter_model.bin": pickle_bytes(a)})},
                      "adapter_model.bin is pickle"),
    "non-finite": (lambda a: two_files(a) | {WEIGHTS_NAME: _nan_weights(a)}, "non-finite value"),
    "too large": (lambda a: {CONFIG_NAME: two_files(a)[CONFIG_NAME], WEIGHTS_NAME: b"\0" * (MAX_UPLOAD_BYTES + 1)},
                  "over the 10,485,760-byte \\(10 MiB\\) limit"),
    "config not json": (lambda a: {CONFIG_NAME: b"{r: 4", WEIGHTS_NAME: two_files(a)[WEIGHTS_NAME]},
                        "is not valid JSON"),
    "rank mismatch": (lambda a: {CONFIG_NAME: json.dumps({**json.loads(two_files(a)[CONFIG_NAME]), "r": 8}).encode(),
                                 WEIGHTS_NAME: two_files(a)[WEIGHTS_NAME]},
                      "which is rank 4, but adapter_config.json says r=8"),
    "three files": (lambda a: two_files(a) | {"notes.txt": b"hi"}, "upload either one zip archive or exactly two"),
}


def _nan_weights(adapter: Adapter) -> bytes:
    import safetensors.torch

    tensors = {key: t.clone() for key, t in adapter.tensors.items()}
    tensors[QKV_B][0, 0] = float("nan")
    return safetensors.torch.save(tensors)


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_upload_is_rejected_and_leaves_nothing(store, trained, case):
    make_files, message = BAD_UPLOADS[case]
    files = make_files(read_adapter(trained[2]))
    with pytest.raises(AdapterFileError, match=message):
        store_upload(store, files, UploadSettings(task="odd_majority"))
    assert store.list_runs() == []
    assert not (store.home / "runs").exists() or list((store.home / "runs").iterdir()) == []


@pytest.mark.parametrize("settings, message", [
    (UploadSettings(task="odd_majority", method="full"), "needs a LoRA method"),
    (UploadSettings(task="no_such_task"), "unknown task 'no_such_task'"),
    (UploadSettings(task="odd_majority", method="qlora-nf9"), "unknown method 'qlora-nf9'"),
    (UploadSettings(task="odd_majority", seed=2**31), "base seed must be between 0 and 2147483647, got 2147483648"),
    (UploadSettings(task="odd_majority", seed=-1), "base seed must be between 0 and 2147483647, got -1"),
])
def test_bad_settings_are_rejected(store, trained, settings, message):
    with pytest.raises(ValueError, match=message):
        store_upload(store, {"a.zip": zip_adapter(trained[2])}, settings)
    assert store.list_runs() == []


def test_adapter_for_another_model_size_is_rejected(store, tmp_path):
    from tinylora.model import ModelConfig

    config = RunConfig(model=ModelConfig(d_model=32, n_heads=2), train=TrainConfig(epochs=1, n_train=64))
    from tinylora.methods import build_model

    save_adapter(build_model(config), tmp_path / "small", config.lora)
    with pytest.raises(AdapterFileError, match="trained on a model of another size"):
        store_upload(store, {"small.zip": zip_adapter(tmp_path / "small")}, UploadSettings(task="odd_majority"))
    assert store.list_runs() == []


def test_seed_comes_from_base_name_unless_given(trained):
    config, _, directory = trained
    assert base_seed_from_name(base_model_name(config)) == 3
    assert base_seed_from_name("meta-llama/Llama-3.2-1B") is None
    files = {"a.zip": zip_adapter(directory)}
    assert check_upload(files, UploadSettings(task="odd_majority"))[1]["train"]["seed"] == 3
    assert check_upload(files, UploadSettings(task="odd_majority", seed=5))[1]["train"]["seed"] == 5


def test_valid_upload_is_stored_and_evaluated_to_training_accuracy(store, trained):
    config, final_acc, directory = trained
    files = {CONFIG_NAME: (directory / CONFIG_NAME).read_bytes(), WEIGHTS_NAME: (directory / WEIGHTS_NAME).read_bytes()}
    run_id = store_upload(store, files, UploadSettings(task="odd_majority"), owner="tester")
    run = store.get_run(run_id)
    assert run.kind == "upload"
    assert run.owner == "tester"
    assert run.config["lora"]["r"] == 4
    assert run.config["upload"]["files"] == sorted(files)
    # The stored adapter is a complete PEFT directory with the uploaded tensors.
    stored = read_adapter(store.run_dir(run_id) / "adapter")
    original = read_adapter(directory)
    assert sorted(stored.tensors) == sorted(original.tensors)
    assert all(torch.equal(stored.tensors[k], original.tensors[k]) for k in stored.tensors)

    run = wait_for(lambda: (r := store.get_run(run_id)) and not r.active and r, timeout=60,
                   message="the evaluation to finish")
    assert run.status == "finished", run.message
    # The same adapter on the same seeded base and validation set: exactly the training run's accuracy.
    assert run.final_acc == final_acc
    assert run.summary["trainable"] == 6_274
    assert [e["type"] for _, e in store.events(run_id)] == ["start", "eval", "end"]


def test_upload_evaluated_on_another_task(store, trained):
    run_id = store_upload(store, {"a.zip": zip_adapter(trained[2])}, UploadSettings(task="first_lt_last"))
    run = wait_for(lambda: (r := store.get_run(run_id)) and not r.active and r, timeout=60,
                   message="the evaluation to finish")
    assert run.status == "finished"
    assert run.config["task"] == "first_lt_last"
    assert 0.0 <= run.final_acc <= 1.0
    assert "first_lt_last" in run.message

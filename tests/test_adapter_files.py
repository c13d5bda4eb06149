"""Adapter files: the PEFT layout, exact round trips, loading in PEFT, upload checks and atomic writes."""

import dataclasses
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tinylora import atomic
from tinylora.adapter_files import (
    CONFIG_NAME, MAX_UPLOAD_BYTES, WEIGHTS_NAME, AdapterFileError, read_adapter, read_adapter_upload, read_adapter_zip,
)
from tinylora.adapter_loading import load_adapter, load_full_state, validate_adapter
from tinylora.adapter_writing import (
    adapter_file_bytes, adapter_from_model, save_adapter, save_full_state, write_adapter, zip_adapter,
)
from tinylora.config import RunConfig, TrainConfig
from tinylora.lora import TARGETABLE, LoRAConfig, lora_layers
from tinylora.model import ModelConfig, TinyClassifier
from tinylora.quant import QuantConfig, QuantizedLinear, quantize_model
from tinylora.tasks import make_data
from tinylora.training import prepare_run

ALL_TARGETS = LoRAConfig(r=8, lora_alpha=16.0, target_modules=TARGETABLE, use_rslora=True)
DROPOUT = LoRAConfig(r=2, lora_alpha=4.0, target_modules=("fc1", "fc2"), lora_dropout=0.1)
X = make_data("odd_majority", 64, seed=3)[0]


def train_briefly(method: str = "lora", lora: LoRAConfig = LoRAConfig(), seed: int = 0):
    """Train for 8 steps so that lora_B and the head move away from their initial values."""
    config = RunConfig(method=method, lora=lora,
                       train=TrainConfig(epochs=1, n_train=128, batch_size=16, n_val=16, seed=seed))
    run = prepare_run(config)
    for _ in run.events():
        pass
    return config, run.model.eval()


def fresh_base(config: RunConfig) -> torch.nn.Module:
    """The untrained base a run with `config` starts from, before any LoRA layer is added."""
    torch.manual_seed(config.train.seed)
    model = TinyClassifier(config.model)
    if config.quant_scheme is not None:
        quantize_model(model, QuantConfig(scheme=config.quant_scheme, modules=TARGETABLE))
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    """{(method, LoRAConfig): (RunConfig, trained model)}, trained on first use."""
    cache = {}

    def get(method: str = "lora", lora: LoRAConfig = LoRAConfig()):
        if (method, lora) not in cache:
            cache[(method, lora)] = train_briefly(method, lora)
        return cache[(method, lora)]
    return get


@pytest.fixture
def adapter_dir(trained, tmp_path):
    config, model = trained()
    return save_adapter(model, tmp_path / "adapter", config.lora, base_model_name_or_path="tinylora/TinyClassifier")


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(X)


# The PEFT layout


def test_layout_file_names(adapter_dir):
    assert sorted(os.listdir(adapter_dir)) == [CONFIG_NAME, WEIGHTS_NAME]


def test_layout_config_fields(adapter_dir):
    config = json.loads((adapter_dir / CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA"
    assert config["r"] == 4
    assert config["lora_alpha"] == 8.0
    assert config["target_modules"] == ["qkv", "proj"]
    assert config["lora_dropout"] == 0.0
    assert config["bias"] == "none"
    assert config["use_rslora"] is False
    assert config["task_type"] is None
    assert config["modules_to_save"] == ["head"]
    assert config["base_model_name_or_path"] == "tinylora/TinyClassifier"


def test_layout_key_names_and_shapes(adapter_dir):
    tensors = safetensors.torch.load_file(adapter_dir / WEIGHTS_NAME)
    expected = {"base_model.model.head.weight": (2, 64), "base_model.model.head.bias": (2,)}
    for block in range(4):
        expected[f"base_model.model.blocks.{block}.qkv.lora_A.weight"] = (4, 64)
        expected[f"base_model.model.blocks.{block}.qkv.lora_B.weight"] = (192, 4)
        expected[f"base_model.model.blocks.{block}.proj.lora_A.weight"] = (4, 64)
        expected[f"base_model.model.blocks.{block}.proj.lora_B.weight"] = (64, 4)
    assert {key: tuple(t.shape) for key, t in tensors.items()} == expected


def test_layout_metadata_and_dtype(adapter_dir):
    with safetensors.safe_open(adapter_dir / WEIGHTS_NAME, "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert all(f.get_tensor(key).dtype == torch.float32 for key in f.keys())


# Round trips


@pytest.mark.parametrize("method", ["lora", "qlora-int8"])
@pytest.mark.parametrize("lora", [LoRAConfig(), ALL_TARGETS, DROPOUT], ids=["default", "all-rslora", "dropout"])
def test_round_trip_exact(trained, tmp_path, method, lora):
    config, model = trained(method, lora)
    save_adapter(model, tmp_path / "adapter", config.lora)
    base = fresh_base(config)
    before = logits(base)

    load_adapter(tmp_path / "adapter", base)

    assert all(layer.lora_B["default"].weight.abs().max() > 0 for _, layer in lora_layers(model))
    assert not torch.equal(before, logits(model))
    assert torch.equal(logits(base), logits(model))
    assert {isinstance(layer.base_layer, QuantizedLinear) for _, layer in lora_layers(base)} == {method != "lora"}


def test_round_trip_config(trained, tmp_path):
    config, model = trained("lora", ALL_TARGETS)
    adapter = read_adapter(save_adapter(model, tmp_path / "adapter", config.lora, base_model_name_or_path="b"))
    assert adapter.config == ALL_TARGETS
    assert adapter.modules_to_save == ("head",)
    assert adapter.base_model_name_or_path == "b"


def test_round_trip_tensors(trained, tmp_path):
    config, model = trained()
    original = adapter_from_model(model, config.lora)
    loaded = read_adapter(write_adapter(original, tmp_path / "adapter"))
    assert loaded.tensors.keys() == original.tensors.keys()
    for key in original.tensors:
        assert torch.equal(loaded.tensors[key], original.tensors[key]), key


def test_load_leaves_rng_untouched(adapter_dir):
    base = fresh_base(RunConfig())
    state = torch.get_rng_state()
    load_adapter(adapter_dir, base)
    assert torch.equal(torch.get_rng_state(), state)


def test_load_onto_model_with_adapter(trained, tmp_path):
    """A second adapter on fc1/fc2 becomes the only active one, so the qkv/proj adapter stops contributing."""
    config, model = trained("lora", DROPOUT)
    save_adapter(model, tmp_path / "adapter", config.lora)
    other = fresh_base(config)
    torch.manual_seed(1)
    from tinylora.lora import inject_lora
    inject_lora(other, LoRAConfig())
    for _, layer in lora_layers(other):
        torch.nn.init.normal_(layer.lora_B["default"].weight)

    load_adapter(tmp_path / "adapter", other, adapter_name="upload")

    assert torch.equal(logits(other), logits(model))
    assert {layer.active_adapter for path, layer in lora_layers(other) if path.endswith(("qkv", "proj"))} == {None}


def test_load_rejects_existing_name(adapter_dir):
    model = fresh_base(RunConfig())
    load_adapter(adapter_dir, model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        load_adapter(adapter_dir, model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_save_rejects_mismatched_config(trained, tmp_path):
    config, model = trained()
    with pytest.raises(ValueError, match="r 4 \\(config 8\\)"):
        save_adapter(model, tmp_path / "adapter", LoRAConfig(r=8))
    with pytest.raises(ValueError, match="'proj' is not in target_modules"):
        save_adapter(model, tmp_path / "adapter", LoRAConfig(target_modules=("qkv",)))
    with pytest.raises(ValueError, match="\\['fc1'\\] have no LoRA layer"):
        save_adapter(model, tmp_path / "adapter", LoRAConfig(target_modules=("qkv", "proj", "fc1")))
    assert not (tmp_path / "adapter").exists()


# Hugging Face PEFT loads tinylora adapters


@pytest.mark.parametrize("lora", [LoRAConfig(), ALL_TARGETS, DROPOUT], ids=["default", "all-rslora", "dropout"])
def test_peft_loads_adapter(trained, tmp_path, lora):
    peft = pytest.importorskip("peft")
    config, model = trained("lora", lora)
    save_adapter(model, tmp_path / "adapter", config.lora)

    peft_model = peft.PeftModel.from_pretrained(fresh_base(config), tmp_path / "adapter").eval()

    # PEFT runs the same operations in the same order, so the logits agree to the last bit on this machine.
    # The atol of 1e-6 leaves room for a PEFT version that reorders them.
    torch.testing.assert_close(logits(peft_model), logits(model), atol=1e-6, rtol=0)


def test_peft_loads_int8_adapter_on_dequantized_base(trained, tmp_path):
    """PEFT has no int8 layer of tinylora's kind, but the same adapter on the dequantized weights matches."""
    peft = pytest.importorskip("peft")
    config, model = trained("qlora-int8")
    save_adapter(model, tmp_path / "adapter", config.lora)
    base = fresh_base(RunConfig())
    with torch.no_grad():
        for path, module in model.named_modules():
            if isinstance(module, QuantizedLinear):
                base.get_submodule(path.removesuffix(".base_layer")).weight.copy_(module.dequantize())

    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()

    torch.testing.assert_close(logits(peft_model), logits(model), atol=1e-6, rtol=0)


def test_peft_saved_adapter_loads_here(trained, tmp_path):
    """An adapter written by PEFT's save_pretrained reads back into tinylora with the same outputs."""
    peft = pytest.importorskip("peft")
    config, model = trained()
    save_adapter(model, tmp_path / "ours", config.lora)
    peft_model = peft.PeftModel.from_pretrained(fresh_base(config), tmp_path / "ours")
    peft_model.save_pretrained(tmp_path / "peft")

    theirs = read_adapter(tmp_path / "peft")
    ours = read_adapter(tmp_path / "ours")
    base = load_adapter(theirs, fresh_base(config))

    # PEFT keeps target_modules as a set, so the order it writes them in varies from run to run.
    assert sorted(theirs.config.target_modules) == sorted(ours.config.target_modules)
    assert dataclasses.replace(theirs.config, target_modules=ours.config.target_modules) == ours.config
    assert theirs.tensors.keys() == ours.tensors.keys()
    assert torch.equal(logits(base), logits(model))


# Uploads: each bad input raises AdapterFileError and changes nothing


def upload_files(adapter_dir: Path) -> dict[str, bytes]:
    return {name: (adapter_dir / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}


def edit_config(files, **changes):
    config = json.loads(files[CONFIG_NAME])
    config.update(changes)
    return {**files, CONFIG_NAME: json.dumps(config).encode()}


def edit_tensors(files, edit):
    tensors = safetensors.torch.load(files[WEIGHTS_NAME])
    edit(tensors)
    return {**files, WEIGHTS_NAME: safetensors.torch.save(tensors)}


def torch_save_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


QKV_A = "base_model.model.blocks.0.qkv.lora_A.weight"
PROJ_B = "base_model.model.blocks.3.proj.lora_B.weight"
BAD_UPLOADS = {
    "wrong shape": (lambda f: edit_tensors(f, lambda t: t.update({QKV_A: torch.zeros(4, 32)})),
                    "has shape (4, 32) but this base model needs (4, 64)"),
    "wrong head shape": (lambda f: edit_tensors(f, lambda t: t.update({"base_model.model.head.bias": torch.zeros(3)})),
                         "head.bias has shape (3,) but this base model needs (2,)"),
    "missing key": (lambda f: edit_tensors(f, lambda t: t.pop(PROJ_B)), "is missing 1 tensor(s)"),
    "missing head": (lambda f: edit_tensors(f, lambda t: t.pop("base_model.model.head.weight")),
                     "is missing 1 tensor(s)"),
    "extra key": (lambda f: edit_tensors(f, lambda t: t.update({
        "base_model.model.blocks.0.fc1.lora_A.weight": torch.zeros(4, 64)})), "has no place for"),
    "pickle upload": (lambda f: {**f, WEIGHTS_NAME: torch_save_bytes({QKV_A: torch.zeros(4, 64)})},
                      "looks like a PyTorch pickle"),
    "plain pickle": (lambda f: {**f, WEIGHTS_NAME: pickle.dumps({"a": [1, 2]}, protocol=2)},
                     "looks like a PyTorch pickle"),
    "random bytes": (lambda f: {**f, WEIGHTS_NAME: bytes(range(256)) * 4}, "is not a valid safetensors file"),
    "truncated": (lambda f: {**f, WEIGHTS_NAME: f[WEIGHTS_NAME][:-100]}, "is not a valid safetensors file"),
    "empty weights": (lambda f: {**f, WEIGHTS_NAME: b""}, "is not a valid safetensors file"),
    "nan": (lambda f: edit_tensors(f, lambda t: t[PROJ_B].__setitem__((0, 0), float("nan"))),
            f"tensor {PROJ_B} in {WEIGHTS_NAME} has 1 non-finite"),
    "inf": (lambda f: edit_tensors(f, lambda t: t["base_model.model.head.weight"].fill_(float("inf"))),
            "has 128 non-finite"),
    "integer dtype": (lambda f: edit_tensors(f, lambda t: t.update({QKV_A: t[QKV_A].to(torch.int32)})),
                      "has dtype torch.int32"),
    "too large": (lambda f: {**f, WEIGHTS_NAME: bytes(MAX_UPLOAD_BYTES + 1)}, "over the 10,485,760-byte (10 MiB) limit"),
    "bad json": (lambda f: {**f, CONFIG_NAME: b'{"peft_type": "LORA", "r": 4,,}'}, "is not valid JSON"),
    "json list": (lambda f: {**f, CONFIG_NAME: b"[1, 2]"}, "must hold a JSON object"),
    "not utf-8": (lambda f: {**f, CONFIG_NAME: b"\xff\xfe{}"}, "is not UTF-8"),
    "wrong r": (lambda f: edit_config(f, r=8), "which is rank 4, but adapter_config.json says r=8"),
    "r too large": (lambda f: edit_config(edit_tensors(f, lambda t: t.update({
        k: torch.zeros(65, v.shape[1]) if ".lora_A." in k else torch.zeros(v.shape[0], 65)
        for k, v in t.items() if ".lora_" in k})), r=65), "r=65 in adapter_config.json is larger than"),
    "r zero": (lambda f: edit_config(f, r=0), "r must be a positive integer"),
    "missing r": (lambda f: {**f, CONFIG_NAME: json.dumps({"peft_type": "LORA", "lora_alpha": 8,
                                                           "target_modules": ["qkv"]}).encode()},
                  "required field 'r' is missing"),
    "unknown target": (lambda f: edit_config(f, target_modules=["q_proj", "v_proj"]),
                       "names ['q_proj', 'v_proj'], which TinyClassifier does not have"),
    "regex target": (lambda f: edit_config(f, target_modules="all-linear"), "a single string is a regular expression"),
    "not lora": (lambda f: edit_config(f, peft_type="IA3"), "peft_type must be \"LORA\""),
    "dora": (lambda f: edit_config(f, use_dora=True), "use_dora=True asks for DoRA"),
    "rank pattern": (lambda f: edit_config(f, rank_pattern={"qkv": 8}), "per-layer r"),
    "pissa": (lambda f: edit_config(f, init_lora_weights="pissa"), "init_lora_weights='pissa' is not supported"),
    "bias all": (lambda f: edit_config(f, bias="all"), "bias must be \"none\""),
    "bad alpha": (lambda f: edit_config(f, lora_alpha=-1), "lora_alpha must be a positive finite number"),
    "other module saved": (lambda f: edit_config(f, modules_to_save=["classifier"]), "may list only 'head'"),
}


def upload_then_store(files: dict[str, bytes], model: torch.nn.Module, store: Path) -> None:
    """What the app does with an upload: read it, load it onto the base and keep a copy."""
    adapter = read_adapter_upload(files)
    load_adapter(adapter, model)
    write_adapter(adapter, store / "uploaded")


@pytest.mark.parametrize("form", ["files", "zip"])
@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_bad_upload(adapter_dir, tmp_path, case, form):
    make_files, message = BAD_UPLOADS[case]
    files = make_files(upload_files(adapter_dir))
    if form == "zip":
        files = {"adapter.zip": zip_bytes(files)}
    model = fresh_base(RunConfig())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    store = tmp_path / "store"
    store.mkdir()

    with pytest.raises(AdapterFileError) as error:
        upload_then_store(files, model, store)

    assert message in str(error.value)
    assert list(store.iterdir()) == []
    assert lora_layers(model) == []
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_good_upload_as_files_and_zip(adapter_dir, trained, tmp_path):
    _, model = trained()
    files = upload_files(adapter_dir)
    uploads = [files, {"my_config.json": files[CONFIG_NAME], "weights.safetensors": files[WEIGHTS_NAME]},
               {"a.zip": zip_adapter(adapter_dir)},
               {"nested.zip": zip_bytes({f"run-7/{n}": d for n, d in files.items()} | {"run-7/README.md": b"#"})}]
    for i, upload in enumerate(uploads):
        base = fresh_base(RunConfig())
        upload_then_store(upload, base, tmp_path / f"store-{i}")
        assert torch.equal(logits(base), logits(model)), sorted(upload)
        assert read_adapter(tmp_path / f"store-{i}" / "uploaded").config == LoRAConfig()


def test_upload_wrong_model_size(adapter_dir):
    adapter = read_adapter_upload(upload_files(adapter_dir))
    with pytest.raises(AdapterFileError, match="needs \\(4, 32\\)"):
        validate_adapter(adapter, TinyClassifier(ModelConfig(d_model=32)))


@pytest.mark.parametrize("files, message", [
    ({"a.json": b"{}"}, "upload either one zip archive or exactly two files"),
    ({"a.json": b"{}", "b.json": b"{}"}, "upload either one zip archive or exactly two files"),
    ({"a.json": b"{}", "b.safetensors": b"", "c.safetensors": b""},
     "upload either one zip archive or exactly two files"),
    ({"a.zip": b"PK\x03\x04 not really a zip"}, "is not a valid zip archive"),
    ({"a.zip": zip_bytes({CONFIG_NAME: b"{}"})}, f"has no {WEIGHTS_NAME}"),
    ({"a.zip": zip_bytes({CONFIG_NAME: b"{}", "adapter_model.bin": b""})}, "adapter_model.bin is pickle"),
    ({"a.zip": zip_bytes({f"x/{CONFIG_NAME}": b"{}", f"y/{CONFIG_NAME}": b"{}", WEIGHTS_NAME: b""})},
     f"has 2 files named {CONFIG_NAME}"),
    ({"model.pt": torch_save_bytes({"w": torch.zeros(2)})}, "looks like a PyTorch pickle"),
    ({"a.zip": zip_bytes({CONFIG_NAME: b"{}", WEIGHTS_NAME: bytes(MAX_UPLOAD_BYTES + 1)})}, "unpacks to 10,485,763 bytes"),
    ({"a.zip": bytes(MAX_UPLOAD_BYTES + 1)}, "the zip archive is 10,485,761 bytes, over"),
], ids=["one json", "two json", "three files", "bad zip", "zip no weights", "zip bin", "zip twice",
        "torch save alone", "zip bomb", "zip too large"])
def test_bad_upload_container(files, message):
    with pytest.raises(AdapterFileError) as error:
        read_adapter_upload(files)
    assert message in str(error.value)


# Files on disk: corrupt or missing files give AdapterFileError


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / WEIGHTS_NAME).write_bytes((d / WEIGHTS_NAME).read_bytes()[:50]), "is not a valid safetensors"),
    (lambda d: (d / CONFIG_NAME).write_text("{"), "is not valid JSON"),
    (lambda d: (d / CONFIG_NAME).unlink(), f"{CONFIG_NAME} is missing"),
    (lambda d: (d / WEIGHTS_NAME).unlink(), f"{WEIGHTS_NAME} is missing"),
], ids=["truncated weights", "bad json", "no config", "no weights"])
def test_corrupt_directory(adapter_dir, damage, message):
    damage(adapter_dir)
    with pytest.raises(AdapterFileError, match=message):
        read_adapter(adapter_dir)
    with pytest.raises(AdapterFileError, match=message):
        zip_adapter(adapter_dir)


def test_missing_directory(tmp_path):
    with pytest.raises(AdapterFileError, match="does not exist"):
        load_adapter(tmp_path / "nothing", fresh_base(RunConfig()))


# Zip download


def test_zip_round_trip(adapter_dir):
    data = zip_adapter(adapter_dir)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == [CONFIG_NAME, WEIGHTS_NAME]
    adapter = read_adapter_zip(data)
    original = read_adapter(adapter_dir)
    assert adapter.config == original.config
    assert all(torch.equal(adapter.tensors[k], original.tensors[k]) for k in original.tensors)


def test_zip_bytes_deterministic(adapter_dir):
    assert zip_adapter(adapter_dir) == zip_adapter(adapter_dir)


# Non-finite tensors are never saved


def test_save_rejects_nan(trained, tmp_path):
    config, model = trained()
    bad = adapter_from_model(model, config.lora)
    bad.tensors[QKV_A][1, 2] = float("nan")
    with pytest.raises(ValueError, match=f"tensor {QKV_A} in the adapter has 1 non-finite"):
        write_adapter(bad, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


def test_save_full_rejects_inf(tmp_path):
    model = TinyClassifier()
    with torch.no_grad():
        model.blocks[1].fc2.bias[3] = float("-inf")
    with pytest.raises(ValueError, match="tensor blocks.1.fc2.bias in the model has 1 non-finite"):
        save_full_state(model, tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


# Full-finetune state


def test_full_state_round_trip(tmp_path):
    config, model = train_briefly("full")
    save_full_state(model, tmp_path / "model.safetensors")
    torch.manual_seed(99)
    other = TinyClassifier().eval()
    load_full_state(tmp_path / "model.safetensors", other)
    assert torch.equal(logits(other), logits(model))
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


@pytest.mark.parametrize("content, model, message", [
    (lambda: torch_save_bytes(TinyClassifier().state_dict()), TinyClassifier, "looks like a PyTorch pickle"),
    (lambda: safetensors.torch.save(TinyClassifier().state_dict()), lambda: TinyClassifier(ModelConfig(d_model=32)),
     "the model needs torch.float32 (17, 32)"),
    (lambda: safetensors.torch.save({"tok.weight": torch.zeros(17, 64)}), TinyClassifier, "does not match the model"),
    (lambda: b"\x00" * 100, TinyClassifier, "is not a valid safetensors"),
], ids=["pickle", "wrong size", "missing keys", "garbage"])
def test_full_state_rejects_bad_file(tmp_path, content, model, message):
    (tmp_path / "model.safetensors").write_bytes(content())
    target = model()
    state = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(AdapterFileError) as error:
        load_full_state(tmp_path / "model.safetensors", target)
    assert message in str(error.value)
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in state.items())


# Atomic writes


def test_save_leaves_no_temp_files(trained, tmp_path):
    config, model = trained()
    save_adapter(model, tmp_path / "adapter", config.lora)
    save_full_state(TinyClassifier(), tmp_path / "model.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["adapter", "model.safetensors"]


def test_save_rejects_existing_directory(adapter_dir, trained):
    config, model = trained()
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        save_adapter(model, adapter_dir, config.lora)


def test_overwrite_replaces_directory(adapter_dir, trained):
    config, model = trained("lora", ALL_TARGETS)
    save_adapter(model, adapter_dir, config.lora, overwrite=True)
    assert read_adapter(adapter_dir).config == ALL_TARGETS
    assert sorted(os.listdir(adapter_dir.parent)) == ["adapter"]


def fail_on_second_file(monkeypatch):
    """Make the second file written into a staging directory fail after half of its bytes."""
    real = atomic.write_file_synced
    calls = []

    def write(path, data):
        calls.append(path)
        if len(calls) == 2:
            path.write_bytes(data[:len(data) // 2])
            raise OSError(28, "No space left on device")
        real(path, data)
    monkeypatch.setattr(atomic, "write_file_synced", write)


def test_failed_write_leaves_nothing(trained, tmp_path, monkeypatch):
    config, model = trained()
    fail_on_second_file(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        save_adapter(model, tmp_path / "adapter", config.lora)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old(adapter_dir, trained, monkeypatch):
    config, model = trained("lora", ALL_TARGETS)
    before = {name: (adapter_dir / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}
    fail_on_second_file(monkeypatch)
    with pytest.raises(OSError):
        save_adapter(model, adapter_dir, config.lora, overwrite=True)
    assert os.listdir(adapter_dir.parent) == ["adapter"]
    assert {name: (adapter_dir / name).read_bytes() for name in before} == before


def test_failed_swap_restores_old(adapter_dir, trained, monkeypatch):
    """The rename of the new directory into place fails after the old one was moved aside."""
    config, model = trained("lora", ALL_TARGETS)
    before = {name: (adapter_dir / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real(src, dst)
    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="Input/output"):
        save_adapter(model, adapter_dir, config.lora, overwrite=True)
    monkeypatch.undo()
    assert os.listdir(adapter_dir.parent) == ["adapter"]
    assert {name: (adapter_dir / name).read_bytes() for name in before} == before


def test_failed_file_write_keeps_old(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_full_state(TinyClassifier(), path)
    before = path.read_bytes()

    def fsync(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    torch.manual_seed(5)
    with pytest.raises(OSError):
        save_full_state(TinyClassifier(), path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x"])
def test_directory_rejects_path_names(tmp_path, name):
    with pytest.raises(ValueError, match="plain name"):
        atomic.write_directory_atomic(tmp_path / "d", {name: b"x"})
    assert list(tmp_path.iterdir()) == []


def test_file_bytes_reject_nan(trained):
    config, model = trained()
    adapter = adapter_from_model(model, config.lora)
    adapter.tensors["base_model.model.head.bias"][0] = float("inf")
    with pytest.raises(ValueError, match="head.bias"):
        adapter_file_bytes(adapter)


def test_reading_never_unpickles(adapter_dir, tmp_path, monkeypatch):
    """Every unpickling entry point raises AssertionError, which no reader turns into AdapterFileError."""
    def unpickle(*args, **kwargs):
        raise AssertionError("a reader unpickled its input")
    pickled = torch_save_bytes({QKV_A: torch.zeros(4, 64)})
    (tmp_path / "model.pt").write_bytes(pickled)
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, unpickle)
    monkeypatch.setattr(torch, "load", unpickle)

    for upload in [{"model.pt": pickled}, {**upload_files(adapter_dir), WEIGHTS_NAME: pickled}]:
        with pytest.raises(AdapterFileError, match="looks like a PyTorch pickle"):
            read_adapter_upload(upload)
    with pytest.raises(AdapterFileError, match="looks like a PyTorch pickle"):
        load_full_state(tmp_path / "model.pt", TinyClassifier())

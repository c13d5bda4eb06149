"""LoRA adapters as files in the Hugging Face PEFT layout, and the checks that guard reading them.

An adapter directory contains the two files PEFT's `save_pretrained` writes for LoRA (the PEFT checkpoint
format, https://huggingface.co/docs/peft/developer_guides/checkpoint; the key names below are those peft 0.21.2
writes for a TinyClassifier):

- `adapter_config.json`: `peft_type` "LORA", `r`, `lora_alpha`, `target_modules`, `lora_dropout`, `bias`,
  `use_rslora`, `modules_to_save`, `task_type`, `base_model_name_or_path` and a few more;
- `adapter_model.safetensors`: `base_model.model.<module path>.lora_A.weight` (r x in) and `.lora_B.weight`
  (out x r) for each adapted linear, plus the classifier head, which PEFT saves for `modules_to_save` under
  its plain path (`base_model.model.head.weight`, `base_model.model.head.bias`). The adapter name is not
  part of a key.

So `peft.PeftModel.from_pretrained(TinyClassifier(), directory)` rebuilds a tinylora-trained model on the same
seeded base. Reading accepts only safetensors, never pickle, and checks sizes, JSON, PEFT options, key names,
shapes and finiteness before any model is touched: every problem raises `AdapterFileError` (a `ValueError`)
naming the file, the value and the fix. Fully fine-tuned models are saved as one safetensors file of their
`state_dict`. Every write is atomic (see `tinylora.atomic`).
"""

import io
import json
import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn as nn
from safetensors import SafetensorError

from .atomic import write_directory_atomic, write_file_atomic
from .lora import DEFAULT_ADAPTER, TARGETABLE, LoRAConfig, LoRALinear, inject_lora, lora_layers
from .quant import QuantizedLinear

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FULL_STATE_NAME = "model.safetensors"  # the file name transformers uses for a full model's weights
KEY_PREFIX = "base_model.model."  # PEFT's prefix: PeftModel.base_model (LoraModel) .model (the wrapped model)
HEAD = "head"  # the classifier, trained alongside the adapters and saved as a PEFT `modules_to_save` entry

# NOTE: an adapter at the largest r (64) on all four targets of the default model is about 1 MB, so 10 MiB
# leaves room for larger ModelConfigs while keeping an upload cheap to hold in memory.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# File name endings of PyTorch pickles (torch.save, PEFT's older adapter_model.bin), rejected by name on upload.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_CONFIG_BYTES = 1024 * 1024
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# PEFT LoraConfig options (peft 0.21.2) that change which layers are adapted or how a layer computes.
# tinylora's LoRALinear implements none of them, so an adapter that sets one cannot be reproduced here.
UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA's magnitude vector",
    "lora_bias": "a bias on lora_B",
    "fan_in_fan_out": "transposed (Conv1D-style) base weights",
    "rank_pattern": "per-layer r",
    "alpha_pattern": "per-layer lora_alpha",
    "layers_to_transform": "adapting only some blocks",
    "exclude_modules": "excluding some matched modules",
    "layer_replication": "replicated layers",
    "target_parameters": "adapters on raw parameters",
    "trainable_token_indices": "trainable token embeddings",
    "alora_invocation_tokens": "activated LoRA",
    "use_qalora": "QA-LoRA pooling",
    "use_bdlora": "block-diagonal LoRA",
    "monteclora_config": "Monte Carlo LoRA",
    "kasa_config": "KaSA",
    "arrow_config": "Arrow routing",
    "loftq_config": "LoftQ, which changes the base weights",
}
# Values of init_lora_weights that leave the base weights untouched (PiSSA, OLoRA, CorDA and LoftQ change them).
PLAIN_INITS = (True, False, "gaussian")


class AdapterFileError(ValueError):
    """An adapter or model file is missing, unreadable, malformed or does not fit the base model."""


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter in memory: its settings and its tensors under PEFT's key names."""

    config: LoRAConfig
    tensors: dict[str, torch.Tensor] = field(repr=False)
    modules_to_save: tuple[str, ...] = (HEAD,)  # () when the adapter carries no classifier head
    base_model_name_or_path: str | None = None


# Writing


def peft_config_dict(config: LoRAConfig, modules_to_save: tuple[str, ...] = (HEAD,),
                     base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """Return the `adapter_config.json` contents PEFT's LoraConfig reads for `config`.

    `task_type` is None because TinyClassifier is a plain module: PEFT's task-specific wrappers
    (SEQ_CLS and others) expect a transformers model and its keyword arguments.
    """
    return {
        "peft_type": "LORA",
        "task_type": None,
        "auto_mapping": {"base_model_class": "TinyClassifier", "parent_library": "tinylora.model"},
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": list(config.target_modules),
        "bias": "none",
        "use_rslora": config.use_rslora,
        "modules_to_save": list(modules_to_save) or None,
        "init_lora_weights": True,
        "fan_in_fan_out": False,
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def adapter_from_model(model: nn.Module, config: LoRAConfig, adapter_name: str = DEFAULT_ADAPTER,
                       base_model_name_or_path: str | None = None) -> Adapter:
    """Collect adapter `adapter_name` and the classifier head of `model` under PEFT's key names.

    Raises ValueError when the model's LoRA layers disagree with `config` (targets, r, lora_alpha or scaling),
    since the written config would then describe a different adapter from the written weights.
    """
    layers = [(path, layer) for path, layer in lora_layers(model) if adapter_name in layer.lora_A]
    if not layers:
        raise ValueError(f"the model has no LoRA adapter named {adapter_name!r}; inject_lora() adds one")
    found_targets = set()
    tensors = {}
    for path, layer in layers:
        target = path.rsplit(".", 1)[-1]
        if target not in config.target_modules:
            raise ValueError(f"{path} carries adapter {adapter_name!r} but {target!r} is not in target_modules "
                             f"{list(config.target_modules)}; pass the LoRAConfig the model was built with")
        mismatches = [f"{name} {got} (config {want})" for name, got, want in [
            ("r", layer.r[adapter_name], config.r),
            ("lora_alpha", layer.lora_alpha[adapter_name], config.lora_alpha),
            ("scaling", layer.scaling[adapter_name], config.scaling),
        ] if not math.isclose(got, want, rel_tol=1e-9)]
        if mismatches:
            raise ValueError(f"{path} adapter {adapter_name!r} has {', '.join(mismatches)}; pass the LoRAConfig "
                             f"the model was built with")
        found_targets.add(target)
        tensors[f"{KEY_PREFIX}{path}.lora_A.weight"] = layer.lora_A[adapter_name].weight
        tensors[f"{KEY_PREFIX}{path}.lora_B.weight"] = layer.lora_B[adapter_name].weight
    missing = [t for t in config.target_modules if t not in found_targets]
    if missing:
        raise ValueError(f"target_modules {missing} have no LoRA layer with adapter {adapter_name!r} in the model; "
                         f"pass the LoRAConfig the model was built with")

    head = getattr(model, HEAD)
    tensors[f"{KEY_PREFIX}{HEAD}.weight"] = head.weight
    if head.bias is not None:
        tensors[f"{KEY_PREFIX}{HEAD}.bias"] = head.bias
    tensors = {key: t.detach().cpu().contiguous().clone() for key, t in tensors.items()}
    return Adapter(config, tensors, (HEAD,), base_model_name_or_path)


def adapter_file_bytes(adapter: Adapter) -> dict[str, bytes]:
    """Serialise `adapter` to {file name: contents}; raise ValueError naming any non-finite tensor."""
    _check_finite(adapter.tensors, "the adapter", "it comes from a diverged run, so train again with a lower "
                  "learning rate", error=ValueError)
    config = peft_config_dict(adapter.config, adapter.modules_to_save, adapter.base_model_name_or_path)
    return {
        CONFIG_NAME: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
        # PEFT writes the same {"format": "pt"} metadata.
        WEIGHTS_NAME: safetensors.torch.save(adapter.tensors, metadata={"format": "pt"}),
    }


def write_adapter(adapter: Adapter, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `adapter` as a PEFT adapter directory in one atomic rename; return the directory."""
    return write_directory_atomic(directory, adapter_file_bytes(adapter), overwrite=overwrite)


def save_adapter(model: nn.Module, directory: str | os.PathLike, config: LoRAConfig,
                 adapter_name: str = DEFAULT_ADAPTER, base_model_name_or_path: str | None = None,
                 overwrite: bool = False) -> Path:
    """Save adapter `adapter_name` of `model` and its classifier head as a PEFT adapter directory."""
    adapter = adapter_from_model(model, config, adapter_name, base_model_name_or_path)
    return write_adapter(adapter, directory, overwrite=overwrite)


def zip_adapter(directory: str | os.PathLike) -> bytes:
    """Return a zip archive of the adapter in `directory`, with both files at the archive root.

    The directory is read and checked first, so a corrupt adapter raises AdapterFileError instead of being
    offered for download. The member timestamps are fixed, so the same adapter always zips to the same bytes.
    """
    directory = Path(directory)
    read_adapter(directory)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (directory / name).read_bytes())
    return buffer.getvalue()


def zip_adapter_set(directory: str | os.PathLike) -> bytes:
    """Return a zip archive of an adapter set saved by `tinylora.adapters.save_adapters`, folders kept.

    Each adapter folder is read and checked first, as `zip_adapter` does for one adapter, and the member
    timestamps are fixed, so the same set always zips to the same bytes.
    """
    directory = Path(directory)
    folders = sorted(path for path in directory.iterdir() if path.is_dir())
    if not folders:
        raise AdapterFileError(f"{directory} contains no adapter folders")
    for folder in folders:
        read_adapter(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(directory).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


# Reading


def parse_adapter(config_bytes: bytes, weights_bytes: bytes, max_bytes: int | None = MAX_UPLOAD_BYTES) -> Adapter:
    """Parse the contents of `adapter_config.json` and `adapter_model.safetensors` into an `Adapter`.

    Checks everything that does not need the base model: sizes (`max_bytes` for the weights, None for no
    limit), JSON, PEFT options, safetensors format, dtypes, finiteness, and that each lora_A / lora_B has
    r rows / columns. Raises AdapterFileError naming the problem; returns without side effects.
    """
    if len(config_bytes) > MAX_CONFIG_BYTES:
        raise AdapterFileError(f"{CONFIG_NAME} is {len(config_bytes):,} bytes, over the {MAX_CONFIG_BYTES:,}-byte "
                               f"limit; PEFT writes about 1 KB, so upload the {CONFIG_NAME} saved with the adapter")
    if max_bytes is not None and len(weights_bytes) > max_bytes:
        raise AdapterFileError(f"{WEIGHTS_NAME} is {len(weights_bytes):,} bytes, over the "
                               f"{_limit(max_bytes)} for adapters; this is not a LoRA adapter for "
                               f"this model (check that you did not upload a full model)")
    config, modules_to_save, base_name = _parse_config(_parse_json(config_bytes))
    tensors = _parse_safetensors(weights_bytes, WEIGHTS_NAME)
    _check_float(tensors, WEIGHTS_NAME)
    _check_finite(tensors, WEIGHTS_NAME, "the adapter comes from a diverged run; train it again with a lower "
                                         "learning rate")
    _check_rank(tensors, config.r)
    tensors = {key: t.float() for key, t in tensors.items()}
    return Adapter(config, tensors, modules_to_save, base_name)


def read_adapter(directory: str | os.PathLike, max_bytes: int | None = None) -> Adapter:
    """Read and check the adapter directory `directory` (see `parse_adapter`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterFileError(f"adapter directory {directory} does not exist; save the adapter first or fix "
                               f"the path")
    contents = {}
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        path = directory / name
        try:
            contents[name] = path.read_bytes()
        except FileNotFoundError:
            raise AdapterFileError(f"{path} is missing; an adapter directory needs {CONFIG_NAME} and "
                                   f"{WEIGHTS_NAME}") from None
        except OSError as error:
            raise AdapterFileError(f"cannot read {path} ({error.strerror}); check its permissions") from error
    return parse_adapter(contents[CONFIG_NAME], contents[WEIGHTS_NAME], max_bytes)


def read_adapter_zip(data: bytes, max_bytes: int = MAX_UPLOAD_BYTES) -> Adapter:
    """Read an adapter from a zip archive holding `adapter_config.json` and `adapter_model.safetensors`.

    The two files may sit at the archive root or in one folder; other members (such as the README.md that
    PEFT writes) are ignored. Nothing is extracted to disk, and `max_bytes` bounds both the archive and
    what it decompresses to.
    """
    if len(data) > max_bytes:
        raise AdapterFileError(f"the zip archive is {len(data):,} bytes, over the {_limit(max_bytes)} for "
                               f"adapters; upload only {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise AdapterFileError(f"the upload is not a valid zip archive; zip the folder holding {CONFIG_NAME} "
                               f"and {WEIGHTS_NAME}, or upload the two files") from None
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        if any(info.filename.endswith("data.pkl") for info in infos):
            raise AdapterFileError(_pickle_message("the upload"))
        total = sum(info.file_size for info in infos)
        if total > max_bytes:
            raise AdapterFileError(f"the zip archive unpacks to {total:,} bytes, over the "
                                   f"{_limit(max_bytes)} for adapters; upload only {CONFIG_NAME} "
                                   f"and {WEIGHTS_NAME}")
        members = {}
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            matches = [info for info in infos if Path(info.filename).name == name]
            if not matches:
                found = sorted(info.filename for info in infos)[:10]
                hint = " (adapter_model.bin is pickle, which tinylora never loads)" if any(
                    f.endswith("adapter_model.bin") for f in found) else ""
                raise AdapterFileError(f"the zip archive has no {name}{hint}; it contains {found}. Zip the "
                                       f"folder that PEFT's save_pretrained or tinylora wrote")
            if len(matches) > 1:
                raise AdapterFileError(f"the zip archive has {len(matches)} files named {name} "
                                       f"({[m.filename for m in matches]}); zip one adapter at a time")
            members[name] = _read_member(archive, matches[0], max_bytes)
    return parse_adapter(members[CONFIG_NAME], members[WEIGHTS_NAME], max_bytes)


def read_adapter_upload(files: Mapping[str, bytes], max_bytes: int = MAX_UPLOAD_BYTES) -> Adapter:
    """Read an uploaded adapter: one zip archive, or the config (`*.json`) and the weights file.

    `files` maps each uploaded file name to its contents. Nothing is written and no model is touched;
    pass the result to `validate_adapter`, `load_adapter` or `write_adapter`. A file named like a pickle
    (`PICKLE_SUFFIXES`) is rejected by its name before any of its bytes are read.
    """
    pickles = [name for name in files if name.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise AdapterFileError(_pickle_message(pickles[0]))
    if len(files) == 1:
        (name, data), = files.items()
        if data[:4] == b"PK\x03\x04" or name.lower().endswith(".zip"):
            return read_adapter_zip(data, max_bytes)
    configs = [name for name in files if name.lower().endswith(".json")]
    weights = [name for name in files if not name.lower().endswith(".json")]
    if len(configs) != 1 or len(weights) != 1:
        raise AdapterFileError(f"upload either one zip archive or exactly two files, {CONFIG_NAME} and "
                               f"{WEIGHTS_NAME}; got {sorted(files)}")
    return parse_adapter(files[configs[0]], files[weights[0]], max_bytes)


# Checking against a base model and loading


def validate_adapter(adapter: Adapter, model: nn.Module) -> None:
    """Check that `adapter` fits `model`: every key present, none extra, every shape right, r in range.

    `model` is the base the adapter will be loaded onto: a TinyClassifier with float, quantized or
    LoRA-wrapped linears. Raises AdapterFileError naming the first problem; changes nothing.
    """
    expected = expected_shapes(model, adapter.config, adapter.modules_to_save)
    missing = sorted(set(expected) - set(adapter.tensors))
    if missing:
        raise AdapterFileError(f"{WEIGHTS_NAME} is missing {len(missing)} tensor(s) that {CONFIG_NAME} implies, "
                               f"for example {missing[:3]}; the file is incomplete or its target_modules differ "
                               f"from the config, so re-save the adapter")
    extra = sorted(set(adapter.tensors) - set(expected))
    if extra:
        raise AdapterFileError(f"{WEIGHTS_NAME} has {len(extra)} tensor(s) that this base model has no place for, "
                               f"for example {extra[:3]}; it was trained on another model or with other "
                               f"target_modules or modules_to_save than {CONFIG_NAME} lists")
    for key, shape in expected.items():
        got = tuple(adapter.tensors[key].shape)
        if got != shape:
            raise AdapterFileError(f"tensor {key} has shape {got} but this base model needs {shape}; the adapter "
                                   f"was trained on a model of another size (check d_model and n_classes)")


def expected_shapes(model: nn.Module, config: LoRAConfig,
                    modules_to_save: tuple[str, ...] = (HEAD,)) -> dict[str, tuple[int, ...]]:
    """Return {PEFT key: shape} of every tensor an adapter with `config` needs on `model`."""
    shapes = {}
    for target in config.target_modules:
        paths = [(path, module) for path, module in model.named_modules()
                 if path.rsplit(".", 1)[-1] == target and isinstance(module, (nn.Linear, QuantizedLinear, LoRALinear))]
        if not paths:
            raise AdapterFileError(f"target module {target!r} in {CONFIG_NAME} matches no linear layer of the base "
                                   f"model; choose from {', '.join(TARGETABLE)}")
        for path, module in paths:
            max_r = min(module.in_features, module.out_features)
            if config.r > max_r:
                raise AdapterFileError(f"r={config.r} in {CONFIG_NAME} is larger than {path} allows "
                                       f"({module.in_features} -> {module.out_features}, so r <= {max_r}); the "
                                       f"adapter was trained on a larger model")
            shapes[f"{KEY_PREFIX}{path}.lora_A.weight"] = (config.r, module.in_features)
            shapes[f"{KEY_PREFIX}{path}.lora_B.weight"] = (module.out_features, config.r)
    for name in modules_to_save:
        for key, tensor in getattr(model, name).state_dict().items():
            shapes[f"{KEY_PREFIX}{name}.{key}"] = tuple(tensor.shape)
    return shapes


def load_adapter(source: Adapter | str | os.PathLike, model: nn.Module,
                 adapter_name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Load an adapter (an `Adapter` or a directory) onto `model` as `adapter_name` and make it active.

    Everything is checked before the model changes, so on any error the model is left as it was. Loading
    wraps the targets with `inject_lora`, which also freezes the base and leaves the head trainable. It then
    copies lora_A, lora_B and the head. Every LoRA layer gets `adapter_name` as its active adapter, or none
    when the layer is outside the adapter's target_modules. The global random generator is left as it was.
    NOTE: the head is one module shared by all adapters, so loading replaces the head of earlier adapters.
    """
    adapter = source if isinstance(source, Adapter) else read_adapter(source)
    validate_adapter(adapter, model)
    for path, layer in lora_layers(model):
        if layer.merged:
            raise ValueError(f"{path} has a merged adapter; call unmerge() before loading another adapter")
        if adapter_name in layer.lora_A:
            raise ValueError(f"the model already has an adapter named {adapter_name!r} (at {path}); pass another "
                             f"adapter_name or delete_adapter() it first")

    # The loaded tensors replace A's random initialisation, so keep those draws off the caller's generator.
    with torch.random.fork_rng(devices=[]):
        inject_lora(model, adapter.config, adapter_name)
    model.train(model.training)  # new dropout modules start in training mode, so make them follow the model
    layers = dict(lora_layers(model))
    with torch.no_grad():
        for path, layer in layers.items():
            if adapter_name in layer.lora_A:
                layer.lora_A[adapter_name].weight.copy_(adapter.tensors[f"{KEY_PREFIX}{path}.lora_A.weight"])
                layer.lora_B[adapter_name].weight.copy_(adapter.tensors[f"{KEY_PREFIX}{path}.lora_B.weight"])
    for name in adapter.modules_to_save:
        module = getattr(model, name)
        module.load_state_dict({key: adapter.tensors[f"{KEY_PREFIX}{name}.{key}"] for key in module.state_dict()})
    for layer in layers.values():
        layer.set_adapter(adapter_name if adapter_name in layer.lora_A else None)
    return model


# Full-finetune models


def save_full_state(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write every parameter and buffer of a fully fine-tuned `model` to one safetensors file, atomically."""
    tensors = {key: t.detach().cpu().contiguous().clone() for key, t in model.state_dict().items()}
    _check_finite(tensors, "the model", "it comes from a diverged run, so train again with a lower learning rate",
                  error=ValueError)
    return write_file_atomic(path, safetensors.torch.save(tensors, metadata={"format": "pt"}))


def load_full_state(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a file written by `save_full_state` into `model`, whose keys, shapes and dtypes must all match.

    Raises AdapterFileError naming the problem before `model` changes.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AdapterFileError(f"model file {path} does not exist; save the model first or fix the path") from None
    except OSError as error:
        raise AdapterFileError(f"cannot read {path} ({error.strerror}); check its permissions") from error
    tensors = _parse_safetensors(data, path.name)
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    extra = sorted(set(tensors) - set(state))
    if missing or extra:
        raise AdapterFileError(f"{path.name} does not match the model: missing {missing[:3]}, unexpected "
                               f"{extra[:3]}; load it into a model built with the same ModelConfig and method")
    for key, want in state.items():
        tensor = tensors[key]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise AdapterFileError(f"tensor {key} in {path.name} is {tensor.dtype} {tuple(tensor.shape)} but the "
                                   f"model needs {want.dtype} {tuple(want.shape)}; load it into a model built "
                                   f"with the same ModelConfig")
    _check_finite({k: t for k, t in tensors.items() if t.is_floating_point()}, path.name,
                  "the model comes from a diverged run; train it again with a lower learning rate")
    model.load_state_dict(tensors)
    return model


# Helpers


def _parse_json(data: bytes) -> dict[str, Any]:
    try:
        config = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise AdapterFileError(f"{CONFIG_NAME} is not UTF-8 text; upload the {CONFIG_NAME} that PEFT or tinylora "
                               f"wrote") from None
    except json.JSONDecodeError as error:
        raise AdapterFileError(f"{CONFIG_NAME} is not valid JSON ({error.msg} at line {error.lineno}, column "
                               f"{error.colno}); fix the file or save the adapter again") from None
    if not isinstance(config, dict):
        raise AdapterFileError(f"{CONFIG_NAME} must hold a JSON object, got a {type(config).__name__}; upload "
                               f"the {CONFIG_NAME} that PEFT or tinylora wrote")
    return config


def _parse_config(data: dict[str, Any]) -> tuple[LoRAConfig, tuple[str, ...], str | None]:
    """Translate PEFT's LoraConfig fields into (LoRAConfig, modules_to_save, base_model_name_or_path)."""
    def invalid(message: str) -> AdapterFileError:
        return AdapterFileError(f"{CONFIG_NAME}: {message}")

    if data.get("peft_type") != "LORA":
        raise invalid(f"peft_type must be \"LORA\", got {data.get('peft_type')!r}; tinylora loads only LoRA adapters")
    for name in ("r", "lora_alpha", "target_modules"):
        if name not in data:
            raise invalid(f"the required field {name!r} is missing; save the adapter with PEFT or tinylora again")

    r = data["r"]
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise invalid(f"r must be a positive integer such as 4, got {r!r}")
    lora_alpha = data["lora_alpha"]
    if not _is_number(lora_alpha) or not (math.isfinite(lora_alpha) and lora_alpha > 0):
        raise invalid(f"lora_alpha must be a positive finite number such as 8, got {lora_alpha!r}")
    lora_dropout = data.get("lora_dropout", 0.0)
    if not _is_number(lora_dropout) or not 0 <= lora_dropout < 1:
        raise invalid(f"lora_dropout must be a number in [0, 1), got {lora_dropout!r}")
    use_rslora = data.get("use_rslora", False)
    if not isinstance(use_rslora, bool):
        raise invalid(f"use_rslora must be true or false, got {use_rslora!r}")

    targets = data["target_modules"]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise invalid(f"target_modules must be a non-empty list of module names from {', '.join(TARGETABLE)}, got "
                      f"{targets!r} (a single string is a regular expression in PEFT, which tinylora does not "
                      f"support)")
    unknown = [t for t in targets if t not in TARGETABLE]
    if unknown:
        raise invalid(f"target_modules names {unknown}, which TinyClassifier does not have; its targetable modules "
                      f"are {', '.join(TARGETABLE)}")
    if len(set(targets)) != len(targets):
        raise invalid(f"target_modules lists a module twice: {targets}; list each once")

    if data.get("bias", "none") != "none":
        raise invalid(f"bias must be \"none\", got {data['bias']!r}; with \"all\" or \"lora_only\" PEFT also trains "
                      f"base biases, which tinylora keeps frozen")
    for option, meaning in UNSUPPORTED_OPTIONS.items():
        if data.get(option):
            raise invalid(f"{option}={data[option]!r} asks for {meaning}, which tinylora does not implement; "
                          f"train the adapter without it")
    init = data.get("init_lora_weights", True)
    if init not in PLAIN_INITS:
        raise invalid(f"init_lora_weights={init!r} is not supported: tinylora loads adapters onto the unmodified "
                      f"base only, and initialisations such as PiSSA, OLoRA, CorDA and LoftQ change the base weights")

    modules_to_save = data.get("modules_to_save") or []
    if not isinstance(modules_to_save, list) or any(m != HEAD for m in modules_to_save):
        raise invalid(f"modules_to_save may list only {HEAD!r} (the classifier head), got {modules_to_save!r}")
    base_name = data.get("base_model_name_or_path")
    if base_name is not None and not isinstance(base_name, str):
        raise invalid(f"base_model_name_or_path must be a string or null, got {base_name!r}")

    config = LoRAConfig(r=r, lora_alpha=float(lora_alpha), target_modules=tuple(targets),
                        lora_dropout=float(lora_dropout), use_rslora=use_rslora)
    return config, tuple(dict.fromkeys(modules_to_save)), base_name


def _parse_safetensors(data: bytes, name: str) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load(data)
    except SafetensorError as error:
        # torch.save writes a zip archive, and older pickles start with the PROTO opcode 0x80 and a version.
        if data[:4] == b"PK\x03\x04" or (data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
            raise AdapterFileError(_pickle_message(name)) from None
        detail = str(error).removeprefix("Error while deserializing: ")
        raise AdapterFileError(f"{name} is not a valid safetensors file ({detail}); it is truncated, corrupt or "
                               f"in another format, so save it again with safetensors") from None


def _pickle_message(name: str) -> str:
    return (f"{name} looks like a PyTorch pickle (torch.save, .bin or .pt), not safetensors; tinylora never "
            f"unpickles files because unpickling can run arbitrary code. Save the adapter with PEFT's "
            f"save_pretrained (safetensors is its default) or safetensors.torch.save_file")


def _check_float(tensors: dict[str, torch.Tensor], name: str) -> None:
    for key, tensor in tensors.items():
        if tensor.dtype not in FLOAT_DTYPES:
            raise AdapterFileError(f"tensor {key} in {name} has dtype {tensor.dtype}; adapter weights must be "
                                   f"float32, float16, bfloat16 or float64")


def _check_finite(tensors: Mapping[str, torch.Tensor], where: str, fix: str,
                  error: type[ValueError] = AdapterFileError) -> None:
    """Raise `error` naming the first tensor with a NaN or infinity."""
    for key, tensor in tensors.items():
        bad = (~torch.isfinite(tensor)).sum().item()
        if bad:
            raise error(f"tensor {key} in {where} has {bad} non-finite value(s) (NaN or infinity) of "
                        f"{tensor.numel()}; {fix}")


def _check_rank(tensors: dict[str, torch.Tensor], r: int) -> None:
    for key, tensor in tensors.items():
        if key.endswith(".lora_A.weight") or key.endswith(".lora_B.weight"):
            if tensor.dim() != 2:
                raise AdapterFileError(f"tensor {key} has {tensor.dim()} dimensions, but LoRA weights are matrices; "
                                       f"save the adapter again")
            rank = tensor.shape[0] if key.endswith(".lora_A.weight") else tensor.shape[1]
            if rank != r:
                raise AdapterFileError(f"tensor {key} has shape {tuple(tensor.shape)}, which is rank {rank}, but "
                                       f"{CONFIG_NAME} says r={r}; the config and the weights come from different "
                                       f"adapters, so upload the pair that was saved together")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    try:
        with archive.open(info) as member:
            data = member.read(max_bytes + 1)  # bounded even when the member's size header is false
    except (zipfile.BadZipFile, RuntimeError, OSError, EOFError) as error:
        raise AdapterFileError(f"cannot read {info.filename} from the zip archive ({error}); the archive is "
                               f"corrupt or encrypted, so zip the adapter folder again without a password") from None
    if len(data) > max_bytes:
        raise AdapterFileError(f"{info.filename} unpacks to more than the {_limit(max_bytes)} for "
                               f"adapters; upload only {CONFIG_NAME} and {WEIGHTS_NAME}")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _limit(max_bytes: int) -> str:
    return f"{max_bytes:,}-byte ({max_bytes / 2**20:g} MiB) limit"

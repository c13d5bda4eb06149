"""LoRA adapter files in the Hugging Face PEFT layout, and reading and checking them.

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
seeded base. This module reads an adapter from a directory, a zip archive or an upload into an `Adapter`, and
checks everything that does not need the base model. Reading accepts only safetensors, never pickle, and checks
sizes, JSON, PEFT options, dtypes, ranks and finiteness. Every problem raises `AdapterFileError` (a
`ValueError`) naming the file, the value and the fix. `tinylora.adapter_writing` writes adapters, and
`tinylora.adapter_loading` checks an adapter against a base model and loads it.
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
from safetensors import SafetensorError

from .lora import TARGETABLE, LoRAConfig

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
    tensors = parse_safetensors(weights_bytes, WEIGHTS_NAME)
    _check_float(tensors, WEIGHTS_NAME)
    check_finite(tensors, WEIGHTS_NAME, "the adapter comes from a diverged run; train it again with a lower "
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


def parse_safetensors(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """Load the tensors of safetensors bytes; raise AdapterFileError naming file `name` when they are not."""
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


def check_finite(tensors: Mapping[str, torch.Tensor], where: str, fix: str,
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

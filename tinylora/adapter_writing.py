"""Writing LoRA adapters and fully fine-tuned models as files, and zipping saved adapters for download.

`save_adapter` collects an adapter and the classifier head of a model under PEFT's key names (the layout is
described in `tinylora.adapter_files`) and writes `adapter_config.json` and `adapter_model.safetensors`.
`zip_adapter` and `zip_adapter_set` read and check the saved files before they archive them. A fully fine-tuned
model is saved as one safetensors file of its `state_dict`. Every write is atomic (see `tinylora.atomic`), and
a tensor with a NaN or infinity raises ValueError before anything is written.
"""

import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch.nn as nn

from .adapter_files import (CONFIG_NAME, HEAD, KEY_PREFIX, WEIGHTS_NAME, Adapter, AdapterFileError, check_finite,
                            read_adapter)
from .atomic import write_directory_atomic, write_file_atomic
from .lora import DEFAULT_ADAPTER, LoRAConfig, lora_layers


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
    check_finite(adapter.tensors, "the adapter", "it comes from a diverged run, so train again with a lower "
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
    """Return a zip archive of an adapter set saved by `tinylora.adapter_sets.save_adapters`, folders kept.

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


def save_full_state(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write every parameter and buffer of a fully fine-tuned `model` to one safetensors file, atomically."""
    tensors = {key: t.detach().cpu().contiguous().clone() for key, t in model.state_dict().items()}
    check_finite(tensors, "the model", "it comes from a diverged run, so train again with a lower learning rate",
                  error=ValueError)
    return write_file_atomic(path, safetensors.torch.save(tensors, metadata={"format": "pt"}))

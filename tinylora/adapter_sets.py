"""A set of adapters on disk: `save_adapters` and `load_adapters` store an `AdapterModel` as a directory.

The directory has the frozen base in `base.safetensors`, each adapter in a subdirectory named after it in PEFT's
file layout (`tinylora.adapter_files`) and `manifest.json` listing the adapters, their tasks, the ModelConfig and
the quantization, all written atomically.
"""

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import safetensors.torch
import torch

from .adapter_files import read_adapter
from .adapter_writing import write_adapter
from .adapters import AdapterModel
from .atomic import write_file_atomic
from .model import ModelConfig, TinyClassifier
from .quant import QuantConfig

MANIFEST = "manifest.json"
BASE_FILE = "base.safetensors"


def save_adapters(model: AdapterModel, directory: str | os.PathLike, adapters: Sequence[str] | None = None) -> Path:
    """Write the base, the named adapters (all when None) and a manifest to `directory`; return the directory.

    Each adapter becomes a subdirectory named after it in Hugging Face PEFT's layout (`tinylora.adapter_files`).
    Every file and adapter directory is written atomically and the manifest last, so the manifest only lists
    adapters whose files are complete.
    """
    if model.merged_adapter is not None:
        raise ValueError(f"adapter {model.merged_adapter!r} is merged into the base; call unmerge_adapter() "
                         "before saving")
    names = model.adapter_names if adapters is None else list(adapters)
    peft_adapters = {name: model.to_peft_adapter(name) for name in names}
    directory = Path(directory)

    write_file_atomic(directory / BASE_FILE, safetensors.torch.save(model.base_state_dict(), {"format": "pt"}))
    for name, adapter in peft_adapters.items():
        write_adapter(adapter, directory / name, overwrite=True)
    manifest = {
        "model": dataclasses.asdict(model.config),
        "quant": None if model.quant is None else dataclasses.asdict(model.quant),
        "adapters": {name: {"path": name, "task": model.adapter_tasks[name]} for name in names},
    }
    write_file_atomic(directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return directory


def load_adapters(directory: str | os.PathLike) -> AdapterModel:
    """Rebuild the `AdapterModel` that `save_adapters` wrote; the first adapter listed is active.

    Loading does not draw from the global random generator.
    """
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        raise ValueError(f"{MANIFEST} is missing in {directory}; save adapters there with save_adapters() first")
    manifest = json.loads((directory / MANIFEST).read_text())
    quant = manifest["quant"]
    if quant is not None:
        quant = QuantConfig(**{**quant, "modules": tuple(quant["modules"])})

    with torch.random.fork_rng(devices=[]):
        model = AdapterModel(TinyClassifier(ModelConfig(**manifest["model"])), quant)
    model.load_base_state_dict(safetensors.torch.load((directory / BASE_FILE).read_bytes()))
    for name, entry in manifest["adapters"].items():
        model.load_peft_adapter(read_adapter(directory / entry["path"]), name, entry["task"])
    model.set_adapter(next(iter(manifest["adapters"]), None))
    return model

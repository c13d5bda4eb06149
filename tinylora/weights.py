"""A trained run's weights in its run directory: a PEFT-layout adapter, or a full model's state."""

from pathlib import Path

import torch.nn as nn

from .adapter_files import FULL_STATE_NAME
from .adapter_writing import save_adapter, save_full_state
from .config import RunConfig

ADAPTER_DIR = "adapter"


def base_model_name(config: RunConfig) -> str:
    """Name of the frozen base a run's adapter belongs to, written as PEFT's `base_model_name_or_path`."""
    return f"tinylora/TinyClassifier:{config.base}:seed={config.train.seed}"


def save_trained(model: nn.Module, run_dir: Path, config: RunConfig) -> Path:
    """Write a LoRA run's adapter (PEFT layout) or a full finetune's state to `run_dir`; return the path.

    Both writers are atomic and reject non-finite tensors.
    """
    if config.uses_lora:
        return save_adapter(model, run_dir / ADAPTER_DIR, config.lora, base_model_name_or_path=base_model_name(config),
                            overwrite=True)
    return save_full_state(model, run_dir / FULL_STATE_NAME)

"""Saving a trained run's weights to its run directory (safetensors, written atomically)."""

import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from .config import RunConfig


def save_trained(model: nn.Module, run_dir: Path, config: RunConfig) -> Path:
    """Write every trainable tensor of `model` to `run_dir/trainable.safetensors`; refuse non-finite values."""
    tensors = {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"refusing to save {name}: it contains NaN or infinite values")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "trainable.safetensors"
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"method": config.method, "task": config.task})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

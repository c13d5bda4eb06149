"""Frozen base checkpoints: the seed's random initialisation, or a base fully finetuned on one task.

A finetuned base ("finetuned:<task>") is trained once with a fixed recipe (`BaseRecipe`) and cached as a
safetensors file under `home / "bases"`, so later runs, pages and worker processes reuse it. The file name
carries a hash of the task, the model config and the recipe, so a changed recipe trains a new base instead of
loading a stale one. The write is atomic (a temporary file in the same directory, then `os.replace`), and an
exclusive `fcntl.flock` on a lock file makes a second process wait for the first one's base instead of
training its own. Loaded bases are also kept in memory for the life of the process.
"""

import dataclasses
import fcntl  # NOTE: POSIX only, so caching a finetuned base does not work on Windows
import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import RunConfig, TrainConfig, base_task
from .model import ModelConfig
from .paths import data_home
from .training import prepare_run

FORMAT_VERSION = 1  # part of the cache key: bump it when the stored layout changes


@dataclass(frozen=True)
class BaseRecipe:
    """Training recipe of a finetuned base: full finetuning of every parameter with AdamW."""

    lr: float = 1e-3
    epochs: int = 8
    batch_size: int = 64
    n_train: int = 2048
    n_val: int = 512
    seed: int = 0  # fixes the initial weights and the batch order
    train_data_seed: int = 101  # kept apart from the runs' training (1) and validation (2) data seeds
    val_data_seed: int = 102

    def train_config(self) -> TrainConfig:
        return TrainConfig(lr=self.lr, epochs=self.epochs, batch_size=self.batch_size, seed=self.seed,
                           n_train=self.n_train, n_val=self.n_val, train_data_seed=self.train_data_seed,
                           val_data_seed=self.val_data_seed)


_memory_cache: dict[Path, dict[str, torch.Tensor]] = {}
_memory_lock = threading.Lock()


def base_path(base: str, home: Path | None = None, model: ModelConfig = ModelConfig(),
              recipe: BaseRecipe = BaseRecipe()) -> Path | None:
    """Return the cache file of `base` (None for the random base, which is never stored)."""
    task = base_task(base)
    if task is None:
        return None
    key = json.dumps({"format": FORMAT_VERSION, "task": task, "model": dataclasses.asdict(model),
                      "recipe": dataclasses.asdict(recipe)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(home if home is not None else data_home()) / "bases" / f"finetuned-{task}-{digest}.safetensors"


def is_cached(base: str, home: Path | None = None, model: ModelConfig = ModelConfig(),
              recipe: BaseRecipe = BaseRecipe()) -> bool:
    """Return whether `base` can be loaded without training (the random base always can)."""
    path = base_path(base, home, model, recipe)
    return path is None or path.exists()


def load_base_state(base: str, home: Path | None = None, model: ModelConfig = ModelConfig(),
                    recipe: BaseRecipe = BaseRecipe()) -> dict[str, torch.Tensor] | None:
    """Return the state dict of `base`, training and caching it on first use; None for the random base.

    `home` defaults to `data_home()`. Training a base takes seconds and leaves the caller's global random
    generator as it was. The returned tensors are copies, so a caller may change them freely.
    """
    path = base_path(base, home, model, recipe)
    if path is None:
        return None
    with _memory_lock:
        cached = _memory_cache.get(path)
    if cached is None:
        cached = _load_or_train(path, base_task(base), model, recipe)
        with _memory_lock:
            _memory_cache[path] = cached
    return {name: tensor.clone() for name, tensor in cached.items()}


def base_metadata(path: Path) -> dict:
    """Return what a cached base file records about itself: task, model, recipe, validation accuracy, seconds."""
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["tinylora"])


def clear_memory_cache() -> None:
    """Forget the bases loaded by this process; the files on disk stay."""
    with _memory_lock:
        _memory_cache.clear()


def _load_or_train(path: Path, task: str, model: ModelConfig, recipe: BaseRecipe) -> dict[str, torch.Tensor]:
    if path.exists():
        return load_file(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            # Another process may have written the base while this one waited for the lock.
            if not path.exists():
                state, info = train_base(task, model, recipe)
                _write_atomically(path, state, info)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return load_file(str(path))


def train_base(task: str, model: ModelConfig = ModelConfig(),
               recipe: BaseRecipe = BaseRecipe()) -> tuple[dict[str, torch.Tensor], dict]:
    """Fully finetune a freshly initialised model on `task`; return its state dict and a summary.

    Runs inside `torch.random.fork_rng()`, so the caller's global random generator is left unchanged.
    """
    config = RunConfig(method="full", task=task, model=model, train=recipe.train_config())
    with torch.random.fork_rng():
        prepared = prepare_run(config)
        end = None
        for event in prepared.events():
            if event["type"] == "end":
                end = event
    if end is None or end["status"] != "finished":
        message = end["message"] if end else "no end event"
        raise RuntimeError(f"training the base for {task!r} failed ({message}); change BaseRecipe and retry")
    state = {name: tensor.detach().clone().contiguous() for name, tensor in prepared.model.state_dict().items()}
    info = {"task": task, "model": dataclasses.asdict(model), "recipe": dataclasses.asdict(recipe),
            "val_acc": end["final_acc"], "seconds": end["seconds"], "format": FORMAT_VERSION}
    return state, info


def _write_atomically(path: Path, state: dict[str, torch.Tensor], info: dict) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, temporary, metadata={"tinylora": json.dumps(info)})
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

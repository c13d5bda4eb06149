"""Uploaded LoRA adapters, stored as runs of kind "upload" and evaluated in a worker.

`store_upload` checks an upload before anything is written. `read_adapter_upload` parses it: safetensors only,
never pickle, with limits on sizes and checks of the JSON, the PEFT options and finiteness. `validate_adapter`
then compares its keys and shapes with a freshly built base. Only then is the adapter written, atomically, to
`runs/<id>/adapter/` and an "upload" job queued. The worker loads the adapter onto the same base and evaluates
it on the chosen task's validation set. Evaluation runs in a worker rather than in the page because 512
examples take about 0.07 s on an idle core and 0.17-0.19 s on a busy one (measured on a 2-core Xeon), too long
to block a page script.

The base is rebuilt from the method and seed with `build_model`, so an adapter that tinylora trained is
evaluated on exactly the base it was trained on. Its `base_model_name_or_path` records the seed.
"""

import logging
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from .adapter_files import Adapter, read_adapter, read_adapter_upload
from .adapter_loading import load_adapter, validate_adapter
from .adapter_writing import write_adapter
from .config import MAX_SEED, METHODS, RunConfig
from .jobs import JobContext, ensure_runner, submit
from .lora import DEFAULT_ADAPTER, lora_layers
from .methods import build_model
from .model import count_parameters
from .store import RunStore, new_run_id
from .tasks import make_data
from .training import evaluate
from .weights import ADAPTER_DIR

log = logging.getLogger("tinylora.uploads")

UPLOAD_KIND = "upload"
# `weights.base_model_name` writes "tinylora/TinyClassifier:<base>:seed=<seed>".
BASE_NAME = re.compile(r"tinylora/TinyClassifier:(?P<base>[^:]+):seed=(?P<seed>\d+)")
LORA_METHODS = tuple(method for method in METHODS if method != "full")


@dataclass(frozen=True)
class UploadSettings:
    task: str  # the task whose validation set measures the adapter's accuracy
    method: str = "lora"  # the base the adapter belongs on: "lora" for float32, a QLoRA method for a quantized one
    seed: int | None = None  # the base's seed; None takes it from base_model_name_or_path, else 0


def base_seed_from_name(name: str | None) -> int | None:
    """Return the seed in a tinylora `base_model_name_or_path`, or None for any other name."""
    match = BASE_NAME.fullmatch(name or "")
    return int(match["seed"]) if match else None


def upload_params(adapter: Adapter, settings: UploadSettings, file_names: list[str]) -> dict[str, Any]:
    """Return the stored config of an upload run: a training config's fields that apply, plus the upload's."""
    seed = settings.seed
    if seed is None:
        seed = base_seed_from_name(adapter.base_model_name_or_path) or 0
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"base seed must be between 0 and {MAX_SEED}, got {seed}; leave it empty to use the "
                         f"adapter's own")
    lora = asdict(adapter.config)
    lora["target_modules"] = list(lora["target_modules"])
    return {
        "method": settings.method,
        "task": settings.task,
        "lora": lora,
        "train": {"seed": seed},
        "upload": {"files": sorted(file_names), "base_model_name_or_path": adapter.base_model_name_or_path,
                   "modules_to_save": list(adapter.modules_to_save)},
    }


def upload_run_config(params: dict[str, Any]) -> RunConfig:
    """Return the validated `RunConfig` whose base an upload's adapter is evaluated on."""
    config = RunConfig.from_dict({key: value for key, value in params.items() if key != "upload"}).validate()
    if not config.uses_lora:
        raise ValueError(f"an uploaded adapter needs a LoRA method for its base, one of {', '.join(LORA_METHODS)}; "
                         f"got {config.method!r}")
    return config


def validate_upload_params(params: dict[str, Any]) -> dict[str, Any]:
    """Check an upload job's parameters before it is queued; return them unchanged."""
    upload_run_config(params)
    if not isinstance(params.get("upload"), dict):
        raise ValueError("an upload job needs an 'upload' entry naming its files; queue it with store_upload()")
    return params


def base_for(config: RunConfig) -> nn.Module:
    """Build the base a tinylora run with `config` trains on: LoRA layers in place, but with no adapter.

    The global random generator is left as it was, so calling this in a page changes nothing else.
    """
    with torch.random.fork_rng(devices=[]):
        model = build_model(config)
    for _, layer in lora_layers(model):
        layer.delete_adapter(DEFAULT_ADAPTER)
    return model


def check_upload(files: Mapping[str, bytes], settings: UploadSettings) -> tuple[Adapter, dict[str, Any]]:
    """Parse an upload and check it against its base; return the adapter and the run's stored config.

    Raises AdapterFileError (a ValueError) for a bad file and ValueError for bad settings; writes nothing.
    """
    adapter = read_adapter_upload(files)
    params = upload_params(adapter, settings, list(files))
    validate_adapter(adapter, base_for(upload_run_config(params)))
    return adapter, params


def store_upload(store: RunStore, files: Mapping[str, bytes], settings: UploadSettings, owner: str = "") -> str:
    """Check an uploaded adapter, store it as a run of kind "upload", queue its evaluation; return the run id.

    When it raises, nothing is left behind: no run row and no files.
    """
    adapter, params = check_upload(files, settings)
    run_id = new_run_id()
    write_adapter(adapter, store.run_dir(run_id) / ADAPTER_DIR)
    try:
        submit(store, UPLOAD_KIND, params, owner=owner, run_id=run_id, start_runner=False)
    except BaseException:
        shutil.rmtree(store.run_dir(run_id), ignore_errors=True)
        raise
    try:
        ensure_runner(store.home)
    except OSError as error:  # the run is stored; the next page load starts a runner for it
        log.warning("upload %s is queued but no runner could be started: %s", run_id, error)
    return run_id


def upload_job(params: dict[str, Any], ctx: JobContext) -> Iterator[dict]:
    """Evaluate a stored upload's adapter on its task's validation set (the "upload" job kind)."""
    start = time.perf_counter()
    config = upload_run_config(params)
    adapter = read_adapter(ctx.run_dir / ADAPTER_DIR)
    model = load_adapter(adapter, base_for(config))
    yield {"type": "start", "trainable": count_parameters(model, trainable_only=True),
           "total": count_parameters(model), "steps_total": 0}

    t = config.train
    val_data = make_data(config.task, t.n_val, t.val_data_seed, config.model)
    accuracy, loss = evaluate(model, val_data)
    seconds = time.perf_counter() - start
    yield {"type": "eval", "step": 0, "epoch": 0.0, "val/acc": accuracy, "val/loss": loss, "seconds": seconds}
    yield {"type": "end", "status": "finished", "step": 0, "seconds": seconds, "steps_per_second": 0.0,
           "final_acc": accuracy,
           "message": f"evaluated on {t.n_val} validation examples of {config.task}"}

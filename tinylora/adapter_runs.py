"""Adapters saved by runs, loaded back for evaluation: an adapters run's set, and a train run's single adapter.

An "adapters" job saves its frozen base and one adapter per task with `tinylora.adapter_sets.save_adapters`, so
`load_adapter_set` rebuilds the `AdapterModel` and the validation sets its matrix was computed on. A "train"
(or "upload") run saves one adapter in PEFT's layout under `runs/<id>/adapter`. `load_run_adapter` loads that
adapter over the run's own base. When that base is the adapter set's base (the same random initialisation,
model config and quantization), the adapter joins the set's model, so it is swapped like the others. Otherwise
it gets an `AdapterModel` of its own, because its LoRA weights only make sense over the base they were trained
on. Either way `matrix_rows` and `predictions` treat it like one more adapter.
"""

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .adapter_files import read_adapter
from .adapter_sets import load_adapters
from .adapters import AdapterModel
from .config import RANDOM_BASE, RunConfig
from .experiments import ADAPTERS_DIR, AdaptersSpec, cross_evaluate, predict_each_adapter
from .lora import TARGETABLE
from .model import ModelConfig, TinyClassifier
from .quant import QuantConfig
from .store import RunStore
from .tasks import make_data
from .training import Data
from .uploads import upload_run_config
from .weights import ADAPTER_DIR


@dataclass
class AdapterSet:
    """An adapters run's model with its validation sets, and any run adapter loaded next to it."""

    run_id: str
    model: AdapterModel
    spec: AdaptersSpec
    val_sets: dict[str, Data]  # the validation sets of the run's matrix, in task order
    extra: list["RunAdapter"] = field(default_factory=list)


@dataclass
class RunAdapter:
    """A train or upload run's adapter, loaded over its run's base."""

    run_id: str
    name: str  # its adapter name, in the set's model or in its own
    task: str
    model: AdapterModel  # the set's model when `shares_base`, else a model of its own
    shares_base: bool
    base_note: str  # the run's base in words, e.g. "random base of seed 3, int8"


def base_key(base: str, seed: int, model: ModelConfig, quant: QuantConfig | None) -> tuple:
    """Identify a frozen base: two adapters can share one model exactly when their keys are equal."""
    return base, seed, model, quant


def set_base_key(spec: AdaptersSpec) -> tuple:
    quant = None if spec.quant is None else QuantConfig(scheme=spec.quant)
    return base_key(RANDOM_BASE, spec.train.seed, ModelConfig(), quant)


def run_quant(config: RunConfig) -> QuantConfig | None:
    """Return the quantization of a run's frozen base, as `tinylora.methods.build_model` applies it."""
    if config.quant_scheme is None:
        return None
    modules = config.lora.target_modules if config.quant.modules == "targets" else TARGETABLE
    return QuantConfig(scheme=config.quant_scheme, modules=tuple(modules), block_size=config.quant.block_size,
                       double_quant=config.quant.double_quant)


def load_adapter_set(store: RunStore, run_id: str) -> AdapterSet:
    """Load a finished adapters run's saved base and adapters; raise ValueError when it saved none."""
    run = store.get_run(run_id)
    if run is None or run.kind != "adapters":
        raise ValueError(f"run {run_id!r} is not an adapters run; pick one from the list of adapter sets")
    directory = store.run_dir(run_id) / ADAPTERS_DIR
    model = load_adapters(directory)  # raises ValueError naming the missing manifest
    spec = AdaptersSpec.from_params({k: v for k, v in run.config.items() if k != "out_dir"})
    return AdapterSet(run_id, model, spec, spec.validation_sets())


def run_adapter_config(store: RunStore, run_id: str) -> RunConfig:
    """Return the RunConfig of a train or upload run that saved an adapter, or raise ValueError."""
    run = store.get_run(run_id)
    if run is None:
        raise ValueError(f"run {run_id!r} was not found; it may have been deleted")
    if run.kind not in ("train", "upload"):
        raise ValueError(f"run {run_id} is a {run.kind!r} run; only train and upload runs save a single adapter")
    if not (store.run_dir(run_id) / ADAPTER_DIR).is_dir():
        raise ValueError(f"run {run_id} has no adapter in {store.run_dir(run_id) / ADAPTER_DIR}; only finished or "
                         "stopped LoRA and QLoRA runs save one")
    return upload_run_config(run.config) if run.kind == "upload" else RunConfig.from_dict(run.config)


def describe_base(config: RunConfig) -> str:
    base = "random base" if config.base == RANDOM_BASE else f"base {config.base}"
    storage = "float32" if config.quant_scheme is None else f"{config.quant_scheme} quantized"
    return f"{base} of seed {config.train.seed}, {storage}"


def describe_set_base(spec: AdaptersSpec) -> str:
    """Describe an adapter set's frozen base in the words of `describe_base`."""
    storage = "float32" if spec.quant is None else f"{spec.quant} quantized"
    return f"random base of seed {spec.train.seed}, {storage}"


def build_run_base(config: RunConfig, home: Path | None) -> AdapterModel:
    """Build the frozen base a run trained its adapter on, without drawing from the global generator.

    A finetuned base must be cached already (`tinylora.checkpoints.is_cached`): loading never trains one.
    """
    from .checkpoints import is_cached, load_base_state

    if not is_cached(config.base, home, config.model):
        raise ValueError(f"the base {config.base} is not cached in {home}; train any run on it first, then "
                         "open the adapter again")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        base = TinyClassifier(config.model)
    state = load_base_state(config.base, home, config.model)
    if state is not None:
        base.load_state_dict(state)
    return AdapterModel(base, run_quant(config))


def load_run_adapter(store: RunStore, run_id: str, adapter_set: AdapterSet | None = None) -> RunAdapter:
    """Load a train or upload run's adapter: into `adapter_set`'s model when the bases match, else on its own.

    The adapter is named `run-<id>` and recorded with its run's task.
    """
    config = run_adapter_config(store, run_id)
    adapter = read_adapter(store.run_dir(run_id) / ADAPTER_DIR)
    name = f"run-{run_id}"
    key = base_key(config.base, config.train.seed, config.model, run_quant(config))
    shares = adapter_set is not None and key == set_base_key(adapter_set.spec)
    model = adapter_set.model if shares else build_run_base(config, store.home)
    if name not in model.adapter_names:
        previous = model.active_adapter
        model.load_peft_adapter(adapter, name, task=config.task)
        model.set_adapter(previous)
    run_adapter = RunAdapter(run_id, name, config.task, model, shares, describe_base(config))
    if adapter_set is not None and all(extra.run_id != run_id for extra in adapter_set.extra):
        adapter_set.extra.append(run_adapter)
    return run_adapter


def run_val_set(config: RunConfig) -> Data:
    t = config.train
    return make_data(config.task, t.n_val, t.val_data_seed, config.model)


def matrix_rows(adapter_set: AdapterSet | None, extra: Sequence[RunAdapter] = (),
                extra_val: dict[str, Data] | None = None) -> dict[str, Any]:
    """Cross-evaluate the set's adapters, each extra adapter and the plain base on every task.

    Returns `cross_evaluate`'s layout: {"adapters": [...], "tasks": [...], "acc": [[...], ...]}, with the extra
    adapters after the set's own and the base (None) last. The columns are the set's tasks followed by any
    extra adapter's task the set lacks, evaluated on `extra_val[task]` (the run's own validation set).
    """
    val_sets = dict(adapter_set.val_sets) if adapter_set is not None else {}
    for task, data in (extra_val or {}).items():
        val_sets.setdefault(task, data)
    rows: list[str | None] = []
    acc: list[list[float]] = []
    if adapter_set is not None:
        own = [name for name in adapter_set.model.adapter_names if name in adapter_set.spec.tasks]
        matrix = cross_evaluate(adapter_set.model, val_sets, own)
        rows += own
        acc += matrix["acc"]
    for run_adapter in extra:
        matrix = cross_evaluate(run_adapter.model, val_sets, [run_adapter.name])
        rows.append(run_adapter.name)
        acc += matrix["acc"]
    base_model = adapter_set.model if adapter_set is not None else extra[0].model
    rows.append(None)
    acc += cross_evaluate(base_model, val_sets, [None])["acc"]
    return {"adapters": rows, "tasks": list(val_sets), "acc": acc}


def predictions(adapter_set: AdapterSet | None, tokens: Sequence[int], extra: Sequence[RunAdapter] = ()) -> list[dict]:
    """Classify `tokens` with every adapter of the set, every extra adapter and the plain base.

    Rows follow `predict_each_adapter` and add `shares_base` (False for an extra adapter on its own base,
    whose swap is measured in its own model) and `median_swap_seconds` (see `median_swap_seconds`).
    """
    rows = []
    if adapter_set is not None:
        own = [name for name in adapter_set.model.adapter_names if name in adapter_set.spec.tasks]
        swaps = median_swap_seconds(adapter_set.model, own)
        rows += [{**row, "shares_base": True, "median_swap_seconds": swaps[row["adapter"]]}
                 for row in predict_each_adapter(adapter_set.model, tokens, adapters=own)]
    for run_adapter in extra:
        row = predict_each_adapter(run_adapter.model, tokens, adapters=[run_adapter.name])[0]
        swaps = median_swap_seconds(run_adapter.model, [run_adapter.name])
        rows.append({**row, "shares_base": run_adapter.shares_base,
                     "median_swap_seconds": swaps[run_adapter.name]})
    base_model = adapter_set.model if adapter_set is not None else extra[0].model
    swaps = median_swap_seconds(base_model, [None])
    rows += [{**row, "shares_base": True, "median_swap_seconds": swaps[None]}
             for row in predict_each_adapter(base_model, tokens, adapters=[None])]
    return rows


SWAP_REPEATS = 25  # timed swaps per adapter in `median_swap_seconds`


def median_swap_seconds(model: AdapterModel, adapters: Sequence[str | None], repeats: int = SWAP_REPEATS) -> dict:
    """Time `set_adapter` into each of `adapters` (None: the base) `repeats` times; return the median per adapter.

    One swap takes well under a millisecond, so a single timing is easily dominated by a busy machine's
    scheduler. The previously active adapter is active again afterwards.
    """
    previous = model.active_adapter
    timings: dict[str | None, list[float]] = {name: [] for name in adapters}
    try:
        for _ in range(repeats):
            for name in adapters:
                start = time.perf_counter()
                model.set_adapter(name)
                timings[name].append(time.perf_counter() - start)
    finally:
        model.set_adapter(previous)
    return {name: statistics.median(values) for name, values in timings.items()}


def random_tokens(seed: int | None = None, model_config: ModelConfig = ModelConfig()) -> list[int]:
    """Draw one sequence of `seq_len` tokens from its own generator (seeded from the clock when `seed` is None)."""
    generator = torch.Generator().manual_seed(time.time_ns() % 2**63 if seed is None else seed)
    return torch.randint(0, model_config.vocab_size, (model_config.seq_len,), generator=generator).tolist()


def parse_tokens(text: str, model_config: ModelConfig = ModelConfig()) -> list[int]:
    """Parse a sequence typed as whole numbers separated by spaces or commas; raise ValueError naming any fault."""
    parts = text.replace(",", " ").split()
    try:
        tokens = [int(part) for part in parts]
    except ValueError:
        bad = next(part for part in parts if not part.lstrip("-").isdigit())
        raise ValueError(f"tokens are whole numbers from 0 to {model_config.vocab_size - 1}, got {bad!r}") from None
    if len(tokens) != model_config.seq_len:
        raise ValueError(f"type {model_config.seq_len} tokens separated by spaces, got {len(tokens)}")
    bad = [t for t in tokens if not 0 <= t < model_config.vocab_size]
    if bad:
        raise ValueError(f"tokens are whole numbers from 0 to {model_config.vocab_size - 1}, got {bad}")
    return tokens

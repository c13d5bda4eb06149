"""Quantization reports on a frozen base: error statistics, NF4 blocks, accuracy, and QLoRA's recovery.

Every function returns plain data (dicts, numpy arrays, pandas DataFrames) for the Quantization lab page and
the `quant` command. The report functions are cached per argument tuple within the process and return
copies, so a page can call them on every rerun. `absorb_quantization_error` trains, so it yields events for a
worker process instead of returning.

Signal-to-quantization-noise ratio: SQNR = 10 log10(sum(W^2) / sum((W - dequantize(quantize(W)))^2)) in dB.
"""

import copy
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .checkpoints import load_base_state
from .config import METHODS, QuantOptions, RunConfig, TrainConfig, base_task
from .lora import TARGETABLE, lora_layers
from .model import ModelConfig, TinyClassifier
from .paths import data_home
from .quant import NF4, NF4_LEVELS, QuantConfig, QuantizedLinear, get_scheme, quantize_model
from .tasks import make_data
from .training import Data, evaluate, prepare_run

DEFAULT_TASK = "odd_majority"  # the task a random base is evaluated on


@dataclass(frozen=True)
class SchemeChoice:
    """One quantization scheme with its options, as the lab compares them."""

    scheme: str  # "int8", "int8-channel" or "nf4"
    block_size: int = 64  # NF4 only
    double_quant: bool = True  # NF4 only

    def build(self):
        return get_scheme(self.scheme, self.block_size, self.double_quant)

    @property
    def label(self) -> str:
        return self.build().label

    @property
    def method(self) -> str:
        """The QLoRA method whose frozen base uses this scheme."""
        return next(method for method, scheme in METHODS.items() if scheme == self.scheme)

    def quant_options(self, modules: str = "all") -> QuantOptions:
        return QuantOptions(modules=modules, block_size=self.block_size, double_quant=self.double_quant)


def lab_schemes(block_size: int = 64) -> tuple[SchemeChoice, ...]:
    """Return the schemes the lab compares: int8 per tensor and per channel, NF4 without and with double quant."""
    return (SchemeChoice("int8"), SchemeChoice("int8-channel"), SchemeChoice("nf4", block_size, False),
            SchemeChoice("nf4", block_size, True))


# Base weights

@functools.lru_cache(maxsize=16)
def _base_state(base: str, home: str, model: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    state = load_base_state(base, Path(home), model)
    if state is None:
        # The random base: the initialisation that `seed` gives, drawn without touching the caller's generator.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            state = TinyClassifier(model).state_dict()
    return state


def base_model(base: str = "random", home: Path | None = None, model: ModelConfig = ModelConfig(),
               seed: int = 0) -> TinyClassifier:
    """Return a fresh float32 TinyClassifier holding `base` (for "random", the initialisation of `seed`)."""
    with torch.random.fork_rng():
        classifier = TinyClassifier(model)  # its initial draws are overwritten by the base state just below
    classifier.load_state_dict(_base_state(base, _key(home), model, seed))
    return classifier.eval()


def linear_weights(base: str = "random", home: Path | None = None, model: ModelConfig = ModelConfig(),
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Return the weight of every block linear, keyed "blocks.<i>.<name>", in module order."""
    state = _base_state(base, _key(home), model, seed)
    return {f"blocks.{i}.{name}": state[f"blocks.{i}.{name}.weight"].clone()
            for i in range(model.n_layers) for name in TARGETABLE}


def _key(home: Path | None) -> str:
    """Return the cache key of a data directory, resolving the default now so that a changed one is noticed."""
    return str(home if home is not None else data_home())


# Error statistics

@functools.lru_cache(maxsize=64)
def _errors(base: str, home: str, model: ModelConfig, seed: int, choice: SchemeChoice) -> dict:
    scheme = choice.build()
    result = {}
    for layer, w in linear_weights(base, Path(home), model, seed).items():
        state = scheme.quantize(w)
        error = (w - scheme.dequantize(state, w.shape)).reshape(-1)
        result[layer] = (w.reshape(-1), error, sum(t.numel() * t.element_size() for t in state.values()))
    return result


def quantization_errors(base: str = "random", choice: SchemeChoice = SchemeChoice("nf4"), home: Path | None = None,
                        model: ModelConfig = ModelConfig(), seed: int = 0) -> dict[str, np.ndarray]:
    """Return `W - dequantize(quantize(W))` of every block linear as a flat float32 array, for histograms."""
    return {layer: error.numpy().copy() for layer, (_, error, _) in _errors(base, _key(home), model, seed,
                                                                             choice).items()}


def _statistics(w: torch.Tensor, error: torch.Tensor, nbytes: int) -> dict:
    signal, noise = w.double().pow(2).sum().item(), error.double().pow(2).sum().item()
    return {
        "numel": w.numel(),
        "bytes": nbytes,
        "float32_bytes": 4 * w.numel(),
        "bits_per_weight": 8 * nbytes / w.numel(),
        "mse": noise / w.numel(),
        "max_abs_error": error.abs().max().item(),
        # No noise at all (an exactly representable tensor) has no finite ratio; None stays JSON-friendly.
        "sqnr_db": 10 * math.log10(signal / noise) if noise > 0 and signal > 0 else None,
    }


def layer_error_table(base: str = "random", choices: tuple[SchemeChoice, ...] | None = None,
                      home: Path | None = None, model: ModelConfig = ModelConfig(), seed: int = 0) -> pd.DataFrame:
    """Return one row per (scheme, block linear) with its quantization error statistics.

    Columns: scheme, label, layer, numel, bytes (codes plus every scale), float32_bytes, bits_per_weight, mse,
    max_abs_error, sqnr_db.
    """
    rows = []
    for choice in choices or lab_schemes():
        for layer, (w, error, nbytes) in _errors(base, _key(home), model, seed, choice).items():
            rows.append({"scheme": choice.scheme, "label": choice.label, "layer": layer,
                         **_statistics(w, error, nbytes)})
    return pd.DataFrame(rows)


def scheme_summary(base: str = "random", choices: tuple[SchemeChoice, ...] | None = None,
                   home: Path | None = None, model: ModelConfig = ModelConfig(), seed: int = 0) -> pd.DataFrame:
    """Return one row per scheme with the statistics over all block linears together (columns as above)."""
    rows = []
    for choice in choices or lab_schemes():
        layers = _errors(base, _key(home), model, seed, choice).values()
        w = torch.cat([w for w, _, _ in layers])
        error = torch.cat([e for _, e, _ in layers])
        rows.append({"scheme": choice.scheme, "label": choice.label, "layer": "all block linears",
                     **_statistics(w, error, sum(n for _, _, n in layers))})
    return pd.DataFrame(rows)


def nf4_block(base: str = "random", layer: str = "blocks.0.qkv", block_index: int = 0, block_size: int = 64,
              double_quant: bool = False, home: Path | None = None, model: ModelConfig = ModelConfig(),
              seed: int = 0) -> dict:
    """Return one NF4 block of a layer: its weights, absmax, the 16 levels scaled by absmax, codes and values.

    Keys: layer, block_index, n_blocks, block_size, absmax (float, as the forward pass uses it), weights,
    levels (16 values: NF4_LEVELS * absmax), codes (level index per weight), dequantized and error.
    The arrays are numpy, and the last block of a layer may be shorter than block_size.
    """
    weights = linear_weights(base, home, model, seed)
    if layer not in weights:
        raise ValueError(f"unknown layer {layer!r}; choose one of {', '.join(weights)}")
    flat = weights[layer].reshape(-1)
    scheme = NF4(block_size, double_quant)
    n_blocks = math.ceil(flat.numel() / block_size)
    if not 0 <= block_index < n_blocks:
        raise ValueError(f"block_index must be between 0 and {n_blocks - 1} for {layer}, got {block_index}")
    state = scheme.quantize(flat)
    dequantized = scheme.dequantize(state, flat.shape)
    absmax = scheme.block_absmax(state)[block_index].item()
    span = slice(block_index * block_size, min((block_index + 1) * block_size, flat.numel()))
    packed = state["codes"]
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[span]
    return {"layer": layer, "block_index": block_index, "n_blocks": n_blocks, "block_size": block_size,
            "absmax": absmax, "weights": flat[span].numpy().copy(), "levels": (NF4_LEVELS * absmax).numpy(),
            "codes": codes.numpy().astype(np.int64), "dequantized": dequantized[span].numpy().copy(),
            "error": (flat[span] - dequantized[span]).numpy().copy()}


# Accuracy

def validation_data(task: str, model: ModelConfig = ModelConfig(), train: TrainConfig = TrainConfig()) -> Data:
    """Return the validation set the runs use for `task` (`train.n_val` examples from `train.val_data_seed`)."""
    return make_data(task, train.n_val, train.val_data_seed, model)


def quantized_base(base: str, choice: SchemeChoice, home: Path | None = None, model: ModelConfig = ModelConfig(),
                   seed: int = 0) -> TinyClassifier:
    """Return `base` with every block linear quantized by `choice` and no adapter."""
    config = QuantConfig(choice.scheme, TARGETABLE, choice.block_size, choice.double_quant)
    return quantize_model(base_model(base, home, model, seed), config)


@functools.lru_cache(maxsize=32)
def _accuracy_table(base: str, choices: tuple[SchemeChoice, ...], task: str, home: str, model: ModelConfig,
                    seed: int) -> pd.DataFrame:
    val = validation_data(task, model)
    float_model = base_model(base, Path(home), model, seed)
    float_predictions = _predict(float_model, val[0])
    models = [("float32", "float32", float_model)]
    models += [(c.scheme, c.label, quantized_base(base, c, Path(home), model, seed))
               for c in choices]
    rows = []
    for scheme, label, classifier in models:
        acc, loss = evaluate(classifier, val)
        linear_bytes = sum(m.nbytes if isinstance(m, QuantizedLinear) else m.weight.numel() * 4
                           for m in _block_linears(classifier))
        rows.append({"scheme": scheme, "label": label, "task": task, "val_acc": acc, "val_loss": loss,
                     "agreement": (_predict(classifier, val[0]) == float_predictions).float().mean().item(),
                     "linear_weight_bytes": linear_bytes})
    return pd.DataFrame(rows)


def accuracy_table(base: str = "random", choices: tuple[SchemeChoice, ...] | None = None, task: str | None = None,
                   home: Path | None = None, model: ModelConfig = ModelConfig(), seed: int = 0) -> pd.DataFrame:
    """Return the validation accuracy of the float base and of the base under each scheme, before any LoRA.

    `task` defaults to the base's own task (odd_majority for the random base). Columns: scheme ("float32"
    first), label, task, val_acc, val_loss, agreement (share of predictions equal to the float base's),
    linear_weight_bytes (the block linears' weights as stored).
    """
    task = task or base_task(base) or DEFAULT_TASK
    return _accuracy_table(base, tuple(choices or lab_schemes()), task, _key(home), model, seed).copy()


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(-1)


def _block_linears(model: nn.Module) -> list[nn.Module]:
    return [m for name, m in model.named_modules() if name.split(".")[-1] in TARGETABLE
            and isinstance(m, (nn.Linear, QuantizedLinear))]


# Merging into a quantized base

def merge_report(model: nn.Module, val_data: Data) -> dict:
    """Merge every adapter of a copy of `model`, then requantize the merged bases, measuring each step.

    Merging into a quantized base gives `dequantize(codes) + scaling * B @ A`, the weights the adapter was
    trained against, so the output should not change. Requantizing rounds that sum to new codes, which is
    where precision is lost. Keys: unmerged_acc, merged_acc, merged_max_logit_change, requantized_acc,
    requantized_max_logit_change, requantize_max_weight_change (requantized_* are None when no merged base
    is quantized, as with plain LoRA).
    """
    model = copy.deepcopy(model).eval()
    x = val_data[0]
    with torch.no_grad():
        unmerged_logits = model(x)
        for _, layer in lora_layers(model):
            layer.merge()
        merged_logits = model(x)
        report = {"unmerged_acc": _accuracy(unmerged_logits, val_data[1]),
                  "merged_acc": _accuracy(merged_logits, val_data[1]),
                  "merged_max_logit_change": (merged_logits - unmerged_logits).abs().max().item(),
                  "requantized_acc": None, "requantized_max_logit_change": None,
                  "requantize_max_weight_change": None}
        bases = [layer.base_layer for _, layer in lora_layers(model) if isinstance(layer.base_layer, QuantizedLinear)]
        if bases:
            weight_change = 0.0
            for base in bases:
                before = base.weight
                base.requantize()
                weight_change = max(weight_change, (base.weight - before).abs().max().item())
            requantized_logits = model(x)
            report.update(requantized_acc=_accuracy(requantized_logits, val_data[1]),
                          requantized_max_logit_change=(requantized_logits - unmerged_logits).abs().max().item(),
                          requantize_max_weight_change=weight_change)
    return report


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()


# QLoRA training over a quantized base

def lab_run_config(base: str, choice: SchemeChoice, task: str | None = None,
                   train: TrainConfig = TrainConfig()) -> RunConfig:
    """Return the QLoRA run that trains over `base` quantized by `choice` (task: the base's own by default)."""
    return RunConfig(method=choice.method, task=task or base_task(base) or DEFAULT_TASK, base=base,
                     quant=choice.quant_options(), train=train).validate()


def absorb_quantization_error(config: RunConfig, home: Path | None = None,
                              should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    """Train a QLoRA adapter over the quantized base of `config` and yield events, for a worker process.

    Before training: {"type": "baseline", "float_acc", "float_loss", "quantized_acc", "quantized_loss"}
    (the float base and the quantized base with B = 0, on the run's validation set). Then the training
    events of `tinylora.training.train`. Last: {"type": "result", "status", "float_acc", "quantized_acc",
    "qlora_acc", **merge_report(...)}. The random generator sequence is the same as a plain training run's.
    """
    if config.validate().quant_scheme is None:
        raise ValueError(f"method {config.method!r} has no quantized base; choose one of "
                         f"{', '.join(m for m, s in METHODS.items() if s)}")
    prepared = prepare_run(config, home=home)
    float_acc, float_loss = evaluate(base_model(config.base, home, config.model, config.train.seed),
                                     prepared.val_data)
    quantized_acc, quantized_loss = evaluate(prepared.model, prepared.val_data)
    yield {"type": "baseline", "float_acc": float_acc, "float_loss": float_loss, "quantized_acc": quantized_acc,
           "quantized_loss": quantized_loss}
    end = None
    for event in prepared.events(should_stop):
        if event["type"] == "end":
            end = event
        yield event
    yield {"type": "result", "status": end["status"], "float_acc": float_acc, "quantized_acc": quantized_acc,
           "qlora_acc": end["final_acc"], **merge_report(prepared.model, prepared.val_data)}

"""Parameter and memory accounting for full finetuning, LoRA and QLoRA.

Two ways to the same figures. `estimate_memory` is arithmetic over an `Architecture` (layer shapes plus the
storage rule of each quantization scheme), so it applies to the tiny classifier and to large published models
alike (see tinylora.calculator). `measure_training_memory` builds the real model, runs one AdamW step and adds
up the bytes of the tensors that exist: frozen parameters and quantized buffers, trainable parameters, their
gradients and the optimizer state. The tests hold the two to exact equality on the tiny model.

Parameters are counted as weights and bytes as bytes: a 4-bit code is one parameter stored in half a byte.
Activations are left out, because they depend on batch size and sequence length rather than on the method.
One buffer is counted although it is not a parameter: tinylora's fast training path keeps a float32 copy of a
quantized frozen base for the whole run (`TrainConfig.cache_dequantized`), which `dequantized_copy_bytes`
reports and `total_bytes` includes.
"""

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import METHOD_LABELS, METHODS, QuantOptions, RunConfig
from .fastpath import make_forward
from .lora import TARGETABLE, LoRAConfig
from .methods import build_model
from .model import ModelConfig, TinyClassifier, count_parameters
from .quant import QuantizedLinear, get_scheme
from .tasks import make_data

RANKS = (1, 2, 4, 8, 16, 32, 64)
TARGET_SETS = {"attention": ("qkv", "proj"), "mlp": ("fc1", "fc2"), "all": TARGETABLE}
ADAM_STATE_BYTES = 8  # AdamW keeps exp_avg and exp_avg_sq, one float32 each per trainable parameter
STEP_BYTES = 4  # and a float32 step counter per trainable tensor (torch.optim.AdamW, torch 2.x)


@dataclass(frozen=True)
class LinearSpec:
    """A linear layer inside every block: LoRA can target it and QLoRA can quantize its weight."""

    name: str
    in_features: int
    out_features: int
    bias: bool = False


@dataclass(frozen=True)
class Architecture:
    """The shapes that memory accounting needs: the block linears and everything else as counts."""

    name: str
    n_layers: int
    linears: tuple[LinearSpec, ...]  # the linears of one block
    other_parameters: int  # embeddings, norms, heads: stored as floats and never quantized
    n_tensors: int  # parameter tensors in the whole model, for AdamW's per-tensor step counter
    head_parameters: int = 0  # parameters trained alongside the adapters (the tiny classifier's head)
    head_tensors: int = 0
    float_bytes: int = 4  # bytes per float parameter of the frozen base (4 for float32, 2 for bfloat16)
    source: str = ""  # where the shapes come from

    @property
    def total_parameters(self) -> int:
        per_block = sum(l.in_features * l.out_features + (l.out_features if l.bias else 0) for l in self.linears)
        return self.n_layers * per_block + self.other_parameters

    def linear(self, name: str) -> LinearSpec:
        for spec in self.linears:
            if spec.name == name:
                return spec
        raise ValueError(f"{self.name} has no linear {name!r}; choose from {', '.join(l.name for l in self.linears)}")


def tiny_architecture(model: ModelConfig = ModelConfig()) -> Architecture:
    """Describe `TinyClassifier(model)` as an Architecture (202,114 parameters with the defaults)."""
    d = model.d_model
    linears = (LinearSpec("qkv", d, 3 * d), LinearSpec("proj", d, d, bias=True),
               LinearSpec("fc1", d, 4 * d, bias=True), LinearSpec("fc2", 4 * d, d, bias=True))
    embeddings = (model.vocab_size + 1) * d + (model.seq_len + 1) * d + model.n_task_ids * d
    norms = model.n_layers * 2 * (2 * d) + 2 * d  # ln1 and ln2 in each block, then the final ln
    head = d * model.n_classes + model.n_classes
    # tok, pos, (task_emb), 11 tensors per block (3 biased linears x 2, qkv, 2 norms x 2), ln x 2, head x 2
    n_tensors = 2 + (1 if model.n_task_ids else 0) + 11 * model.n_layers + 2 + 2
    return Architecture("TinyClassifier", model.n_layers, linears, embeddings + norms + head, n_tensors,
                        head_parameters=head, head_tensors=2, float_bytes=4, source="tinylora.model")


def lora_parameters(arch: Architecture, r: int, target_modules: tuple[str, ...]) -> int:
    """Return r * (in + out) summed over the targeted linears of every block (adapters only, no head)."""
    return arch.n_layers * sum(r * (arch.linear(m).in_features + arch.linear(m).out_features) for m in target_modules)


def keeps_dequantized_copy(config: RunConfig) -> bool:
    """Return whether training `config` keeps a float32 copy of its quantized base (QLoRA, fast path, cache on)."""
    return config.quant_scheme is not None and config.train.fast != "off" and config.train.cache_dequantized


def estimate_memory(arch: Architecture, method: str, r: int = 4, target_modules: tuple[str, ...] = ("qkv", "proj"),
                    quant: QuantOptions = QuantOptions(), dequantized_copy: bool = False) -> dict:
    """Return the parameter counts and training-memory bytes of `method` on `arch`, by arithmetic alone.

    Trainable weights, their gradients and AdamW state are float32. Full finetuning trains every parameter.
    LoRA methods train the adapters (and the head, where the architecture has one) and keep the base frozen:
    floats at `arch.float_bytes`, and under QLoRA the block linears' weights in the method's scheme
    (`quant.modules` "targets" quantizes only the adapted linears). Linear biases stay float. With
    `dequantized_copy`, a QLoRA method also holds every quantized weight as float32 while it trains, as
    tinylora's fast path does (see `keeps_dequantized_copy`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    base = arch.total_parameters
    if method == "full":
        adapters, trainable, tensors = 0, base, arch.n_tensors
        frozen_bytes = 0
    else:
        adapters = lora_parameters(arch, r, target_modules)
        trainable = adapters + arch.head_parameters
        tensors = 2 * arch.n_layers * len(target_modules) + arch.head_tensors
        frozen_bytes = _frozen_base_bytes(arch, METHODS[method], target_modules, quant)
    copy_bytes = 0
    if dequantized_copy and METHODS[method] is not None:
        quantized = target_modules if quant.modules == "targets" else [l.name for l in arch.linears]
        copy_bytes = 4 * arch.n_layers * sum(l.in_features * l.out_features for l in arch.linears
                                             if l.name in quantized)
    trainable_bytes = 4 * trainable
    optimizer_bytes = ADAM_STATE_BYTES * trainable + STEP_BYTES * tensors
    return _memory_row(base + adapters, trainable, base, frozen_bytes, trainable_bytes, trainable_bytes,
                       optimizer_bytes, base * arch.float_bytes, copy_bytes)


def _memory_row(parameters: int, trainable: int, base_parameters: int, frozen_bytes: int, trainable_bytes: int,
                gradient_bytes: int, optimizer_bytes: int, checkpoint_bytes: int, copy_bytes: int = 0) -> dict:
    return {
        "parameters": parameters,  # the base's plus the adapters'
        "trainable": trainable,
        "trainable_percent": 100 * trainable / parameters,
        "percent_of_full": 100 * trainable / base_parameters,  # of the parameters full finetuning trains
        "frozen_base_bytes": frozen_bytes,
        "trainable_bytes": trainable_bytes,
        "gradient_bytes": gradient_bytes,
        "optimizer_bytes": optimizer_bytes,
        "dequantized_copy_bytes": copy_bytes,  # float32 copy of a quantized base kept while training
        "total_bytes": frozen_bytes + trainable_bytes + gradient_bytes + optimizer_bytes + copy_bytes,
        "checkpoint_bytes": checkpoint_bytes,  # the whole base model stored in its float format
    }


def _frozen_base_bytes(arch: Architecture, scheme_name: str | None, target_modules: tuple[str, ...],
                       quant: QuantOptions) -> int:
    scheme = None if scheme_name is None else get_scheme(scheme_name, quant.block_size, quant.double_quant)
    quantized = target_modules if quant.modules == "targets" else [l.name for l in arch.linears]
    per_block = 0
    for spec in arch.linears:
        shape = (spec.out_features, spec.in_features)
        if scheme is not None and spec.name in quantized:
            per_block += scheme.storage_bytes(shape)
        else:
            per_block += math.prod(shape) * arch.float_bytes
        per_block += spec.out_features * arch.float_bytes if spec.bias else 0
    return arch.n_layers * per_block + (arch.other_parameters - arch.head_parameters) * arch.float_bytes


def measure_training_memory(config: RunConfig, batch_size: int = 64) -> dict:
    """Build the model for `config`, run one AdamW step and return the bytes of the tensors that exist.

    The step runs as training does, on the fast path that `config.train.fast` selects. Keys match
    `estimate_memory`. The caller's global random generator is left unchanged.
    """
    with torch.random.fork_rng():
        model = build_model(config)
        float_base = TinyClassifier(config.model)  # what full finetuning trains and a checkpoint stores
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.train.lr, weight_decay=config.train.weight_decay)
        x, y = make_data(config.task, batch_size, seed=0, config=config.model)
        forward = make_forward(model, config.train.fast, config.train.cache_dequantized)
        F.cross_entropy(forward(x), y).backward()
        optimizer.step()
    copy = getattr(forward, "dequantized", None)
    frozen = sum(_nbytes(p) for p in model.parameters() if not p.requires_grad)
    frozen += sum(_nbytes(b) for b in model.buffers())
    optimizer_bytes = sum(_nbytes(t) for state in optimizer.state.values() for t in state.values()
                          if isinstance(t, torch.Tensor))
    return _memory_row(count_parameters(model), count_parameters(model, trainable_only=True),
                       count_parameters(float_base), frozen, sum(_nbytes(p) for p in params),
                       sum(_nbytes(p.grad) for p in params if p.grad is not None), optimizer_bytes,
                       sum(_nbytes(t) for t in float_base.state_dict().values()), 0 if copy is None else copy.nbytes)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# The method variants the memory chart compares: (method, NF4 double quantization).
MEMORY_VARIANTS = (("full", True), ("lora", True), ("qlora-int8", True), ("qlora-int8-channel", True),
                   ("qlora-nf4", False), ("qlora-nf4", True))


def variant_label(method: str, double_quant: bool) -> str:
    label = METHOD_LABELS[method]
    if METHODS[method] == "nf4":
        label += ", double quant" if double_quant else ", no double quant"
    return label


@functools.lru_cache(maxsize=32)
def _training_memory_table(lora: LoRAConfig, model: ModelConfig, modules: str, block_size: int) -> pd.DataFrame:
    rows = []
    arch = tiny_architecture(model)
    for method, double_quant in MEMORY_VARIANTS:
        quant = QuantOptions(modules=modules, block_size=block_size, double_quant=double_quant)
        config = RunConfig(method=method, lora=lora, model=model, quant=quant)
        measured = measure_training_memory(config)
        estimated = estimate_memory(arch, method, lora.r, lora.target_modules, quant,
                                    dequantized_copy=keeps_dequantized_copy(config))
        rows.append({"method": method, "double_quant": double_quant, "label": variant_label(method, double_quant),
                     **measured, "estimated_total_bytes": estimated["total_bytes"]})
    return pd.DataFrame(rows)


def training_memory_table(lora: LoRAConfig = LoRAConfig(), model: ModelConfig = ModelConfig(),
                          quant: QuantOptions = QuantOptions()) -> pd.DataFrame:
    """Return one row per method variant (MEMORY_VARIANTS) with its measured training memory in bytes.

    Columns: method, double_quant, label, parameters, trainable, trainable_percent, percent_of_full,
    frozen_base_bytes, trainable_bytes, gradient_bytes, optimizer_bytes, dequantized_copy_bytes, total_bytes,
    checkpoint_bytes, estimated_total_bytes. Each run trains with the default `TrainConfig`, so a QLoRA row
    includes the float32 copy of its base that the fast path keeps.
    `quant.double_quant` is ignored because the table shows NF4 both with and without it.
    """
    return _training_memory_table(lora, model, quant.modules, quant.block_size).copy()


@functools.lru_cache(maxsize=16)
def _trainable_parameters_table(ranks: tuple[int, ...], target_sets: tuple[tuple[str, tuple[str, ...]], ...],
                                model: ModelConfig) -> pd.DataFrame:
    arch = tiny_architecture(model)
    full = arch.total_parameters
    rows = [{"method": "full", "label": METHOD_LABELS["full"], "r": None, "target_set": "all parameters",
             "target_modules": "", "trainable": full, "estimated": full, "percent_of_full": 100.0}]
    for set_name, modules in target_sets:
        for r in ranks:
            for method in ("lora", "qlora-nf4"):
                config = RunConfig(method=method, lora=LoRAConfig(r=r, target_modules=modules), model=model)
                with torch.random.fork_rng():
                    trainable = count_parameters(build_model(config), trainable_only=True)
                estimated = lora_parameters(arch, r, modules) + arch.head_parameters
                rows.append({"method": method, "label": METHOD_LABELS[method], "r": r, "target_set": set_name,
                             "target_modules": ",".join(modules), "trainable": trainable, "estimated": estimated,
                             "percent_of_full": 100 * trainable / full})
    return pd.DataFrame(rows)


def trainable_parameters_table(ranks: tuple[int, ...] = RANKS, target_sets: dict[str, tuple[str, ...]] = TARGET_SETS,
                               model: ModelConfig = ModelConfig()) -> pd.DataFrame:
    """Return the trainable parameters of full finetuning and of LoRA / QLoRA (NF4) at each rank and target set.

    Counts come from built models; `estimated` is r * (in + out) per adapted linear plus the head.
    Columns: method, label, r (None for full), target_set, target_modules, trainable, estimated,
    percent_of_full.
    """
    return _trainable_parameters_table(tuple(ranks), tuple((k, tuple(v)) for k, v in target_sets.items()),
                                       model).copy()


def parameter_breakdown(config: RunConfig = RunConfig()) -> pd.DataFrame:
    """Return one row per module with tensors of its own, for the model `config` builds.

    Columns: module (qualified name), kind (class name, or "LoRA A" / "LoRA B"), storage ("float32" or the
    quantization scheme's label), parameters (weights, a quantized weight counted by element), trainable,
    bytes (what the module stores: parameters, codes and scales).
    """
    with torch.random.fork_rng():
        model = build_model(config)
    rows = []
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        buffers = list(module.buffers(recurse=False))
        if not params and not buffers:
            continue
        quantized = isinstance(module, QuantizedLinear)
        rows.append({
            "module": name,
            "kind": _module_kind(name, module),
            "storage": module.scheme.label if quantized else "float32",
            "parameters": sum(p.numel() for p in params) + (module.frozen_numel if quantized else 0),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "bytes": sum(_nbytes(t) for t in params + buffers),
        })
    return pd.DataFrame(rows)


def _module_kind(name: str, module: nn.Module) -> str:
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] in ("lora_A", "lora_B"):
        return "LoRA " + parts[-2][-1]
    return type(module).__name__



def breakdown_by_layer(table: pd.DataFrame) -> pd.DataFrame:
    """Sum a `parameter_breakdown` table per layer and role, for a stacked chart of what each layer stores.

    A layer is a block linear with its base and adapters ("blocks.0.qkv"), another block module
    ("blocks.0.ln1") or a top-level module ("tok", "head"). The role of a module is "trainable float32" when
    all its parameters train, "frozen quantized" when it stores quantized codes (its float bias included),
    and "frozen float32" otherwise. Columns: layer, role, parameters, bytes, in model order.
    """
    parts = table.module.str.split(".")
    layer = parts.map(lambda p: ".".join(p[:3]) if p[0] == "blocks" else p[0])
    role = np.where(table.trainable == table.parameters, "trainable float32",
                    np.where(table.storage != "float32", "frozen quantized", "frozen float32"))
    grouped = table.assign(layer=layer, role=role).groupby(["layer", "role"], sort=False)
    return grouped[["parameters", "bytes"]].sum().reset_index()

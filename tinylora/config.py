"""The settings of one training run, their defaults and their validation.

`RunConfig` is what the Train page, the command line, the run store and the worker processes pass around.
Its defaults are the reference notebook's LoRA run: seed 0, task `odd_majority`, 1,024 training examples
from data seed 1 and 512 validation examples from data seed 2, r=4, lora_alpha=8 on qkv and proj, AdamW at
learning rate 5e-3, batches of 64, 8 epochs.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .fastpath import FAST_MODES
from .lora import TARGETABLE, LoRAConfig
from .model import ModelConfig
from .quant import BLOCK_SIZES
from .tasks import TASKS

# Each method names the scheme its frozen base is stored in (None: float32).
METHODS: dict[str, str | None] = {
    "full": None,
    "lora": None,
    "qlora-int8": "int8",
    "qlora-int8-channel": "int8-channel",
    "qlora-nf4": "nf4",
}
METHOD_LABELS = {
    "full": "Full finetune",
    "lora": "LoRA",
    "qlora-int8": "QLoRA (int8 base)",
    "qlora-int8-channel": "QLoRA (int8 per-channel base)",
    "qlora-nf4": "QLoRA (NF4 base)",
}
MAX_R = 64
# Upper bounds of the settings a person types: far above anything useful here, low enough that a typo does not
# queue a run of hours or a batch larger than the training set many times over.
MAX_EPOCHS = 500
MAX_BATCH_SIZE = 1024
MAX_LORA_ALPHA = 1024.0  # one cap for every run: Train and Adapters controls, the CLI and each sweep point
MAX_SEED = 2**31 - 1
MAX_EXAMPLES = 65536  # per training or validation set

# Frozen bases: the seed's random initialisation, or a base fully finetuned on one task and cached on disk
# (tinylora.checkpoints trains it once).
RANDOM_BASE = "random"
FINETUNED_PREFIX = "finetuned:"
BASES = (RANDOM_BASE, *(FINETUNED_PREFIX + task for task in TASKS))


def base_task(base: str) -> str | None:
    """Return the task a base was finetuned on, or None for the random base; raise ValueError for unknown names."""
    if base == RANDOM_BASE:
        return None
    if isinstance(base, str) and base.startswith(FINETUNED_PREFIX) and base[len(FINETUNED_PREFIX):] in TASKS:
        return base[len(FINETUNED_PREFIX):]
    raise ValueError(f"unknown base {base!r}; choose one of {', '.join(BASES)}")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 5e-3
    epochs: int = 8
    batch_size: int = 64
    weight_decay: float = 0.01  # torch.optim.AdamW's default
    seed: int = 0  # fixes model and adapter initialisation and the batch order
    n_train: int = 1024
    n_val: int = 512
    train_data_seed: int = 1
    val_data_seed: int = 2
    # "auto" runs tinylora.fastpath for LoRA and QLoRA and the eager modules for a full finetune. "fused" runs
    # the fast path for every method, "bf16" the fast path with bfloat16 matmuls in the linear layers. "off"
    # runs the eager modules, which match the reference bit for bit.
    fast: str = "auto"
    # The fast path keeps a float32 copy of a quantized frozen base for the whole run instead of dequantizing
    # it every step. The stored base stays quantized, and the results are the same either way.
    cache_dequantized: bool = True


@dataclass(frozen=True)
class QuantOptions:
    modules: str = "all"  # "all": every frozen block linear; "targets": only the LoRA targets, as the notebook does
    block_size: int = 64  # NF4: weights that share one absmax scale (32, 64, 128 or 256)
    double_quant: bool = True  # NF4: quantize the per-block absmax values again to 8 bits

    def validate(self) -> None:
        if self.modules not in ("all", "targets"):
            raise ValueError(f"quant.modules must be 'all' or 'targets', got {self.modules!r}")
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"quant.block_size must be one of {', '.join(map(str, BLOCK_SIZES))}, "
                             f"got {self.block_size!r}")
        if not isinstance(self.double_quant, bool):
            raise ValueError(f"quant.double_quant must be True or False, got {self.double_quant!r}")


@dataclass(frozen=True)
class RunConfig:
    method: str = "lora"
    task: str = "odd_majority"
    base: str = RANDOM_BASE  # the frozen base: "random" (the seed's initialisation) or "finetuned:<task>"
    quant: QuantOptions = field(default_factory=QuantOptions)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    @property
    def uses_lora(self) -> bool:
        return self.method != "full"

    @property
    def quant_scheme(self) -> str | None:
        return METHODS[self.method]

    def validate(self) -> "RunConfig":
        """Raise ValueError naming the first invalid setting and how to fix it; return self when valid."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        base_task(self.base)
        t = self.train
        # NOTE: no upper bound on lr, because a run whose loss blows up ends as "diverged", a result sweeps keep.
        if not (isinstance(t.lr, (int, float)) and math.isfinite(t.lr) and t.lr > 0):
            raise ValueError(f"learning rate must be a positive finite number such as 5e-3, got {t.lr!r}")
        if not 1 <= t.epochs <= MAX_EPOCHS:
            raise ValueError(f"epochs must be between 1 and {MAX_EPOCHS}, got {t.epochs}")
        if not 1 <= t.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch size must be between 1 and {MAX_BATCH_SIZE}, got {t.batch_size}")
        if not 0 <= t.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {t.seed}")
        if t.fast not in FAST_MODES:
            raise ValueError(f"train.fast must be one of {', '.join(FAST_MODES)}, got {t.fast!r}")
        if not isinstance(t.cache_dequantized, bool):
            raise ValueError(f"train.cache_dequantized must be True or False, got {t.cache_dequantized!r}")
        if not (1 <= t.n_train <= MAX_EXAMPLES and 1 <= t.n_val <= MAX_EXAMPLES):
            raise ValueError(f"training and validation sets need between 1 and {MAX_EXAMPLES} examples, got "
                             f"{t.n_train} and {t.n_val}")
        if not (math.isfinite(t.weight_decay) and t.weight_decay >= 0):
            raise ValueError(f"weight decay must be a finite number >= 0, got {t.weight_decay!r}")
        self.quant.validate()
        if self.uses_lora:
            self._validate_lora()
        return self

    def _validate_lora(self) -> None:
        lc = self.lora
        if not lc.target_modules:
            raise ValueError(f"{METHOD_LABELS[self.method]} needs at least one target module; choose from "
                             f"{', '.join(TARGETABLE)}")
        unknown = [m for m in lc.target_modules if m not in TARGETABLE]
        if unknown:
            raise ValueError(f"unknown target module(s) {unknown}; choose from {', '.join(TARGETABLE)}")
        shapes = target_shapes(self.model)
        smallest = min(lc.target_modules, key=lambda m: min(shapes[m]))
        max_r = min(MAX_R, min(shapes[smallest]))
        if not 1 <= lc.r <= max_r:
            d_in, d_out = shapes[smallest]
            raise ValueError(f"r must be between 1 and {max_r} for {smallest} ({d_in} -> {d_out}), got {lc.r}")
        if not (math.isfinite(lc.lora_alpha) and lc.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a positive finite number such as 8, got {lc.lora_alpha!r}")
        if lc.lora_alpha > MAX_LORA_ALPHA:
            raise ValueError(f"lora_alpha must be at most {MAX_LORA_ALPHA:g}, got {lc.lora_alpha:g}. Choose a smaller "
                             f"value such as 8 or 16.")
        if not 0 <= lc.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {lc.lora_dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Build a config from `to_dict()` output; missing fields take their defaults, unknown ones raise."""
        data = dict(data)
        parts = {"lora": LoRAConfig, "train": TrainConfig, "model": ModelConfig, "quant": QuantOptions}
        for key, part in parts.items():
            if key in data:
                values = dict(data[key])
                if key == "lora" and "target_modules" in values:
                    values["target_modules"] = tuple(values["target_modules"])
                data[key] = _build(part, values, key)
        return _build(cls, data, "run")


def _build(cls, values: dict[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {where} setting(s) {unknown}; known settings are {sorted(names)}")
    return cls(**values)


def target_shapes(model: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each targetable linear in a block."""
    d = model.d_model
    return {"qkv": (d, 3 * d), "proj": (d, d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}

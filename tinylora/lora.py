"""Low-rank adaptation (LoRA, Hu et al. 2021, arXiv:2106.09685).

A `LoRALinear` wraps a frozen base linear layer W (out x in) and adds a trainable update, so the layer computes
`W x + b + scaling * B(A(x))` with `lora_A` (r x in), `lora_B` (out x r) and `scaling = lora_alpha / r`
(or `lora_alpha / sqrt(r)` with rsLoRA, Kalajdzievski 2023, arXiv:2312.03732). A starts Kaiming-uniform and B
at zeros, so a freshly wrapped layer computes exactly what its base does. Names follow Hugging Face PEFT:
`base_layer`, `lora_A`, `lora_B`, `r`, `lora_alpha`, `scaling`, `merge()`, `unmerge()`, `get_delta_weight()`,
and adapters live in `ModuleDict`s keyed by adapter name ("default" unless named), so several adapters can
share one frozen base.

Merging is always an explicit call: `.eval()` and `.train()` never merge or unmerge.
"""

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils import skip_init

TARGETABLE = ("qkv", "proj", "fc1", "fc2")  # the linear layers inside each transformer block
DEFAULT_ADAPTER = "default"


@dataclass(frozen=True)
class LoRAConfig:
    r: int = 4
    lora_alpha: float = 8.0
    target_modules: tuple[str, ...] = ("qkv", "proj")
    lora_dropout: float = 0.0
    use_rslora: bool = False  # scale by lora_alpha / sqrt(r) instead of lora_alpha / r

    @property
    def scaling(self) -> float:
        return lora_scaling(self.r, self.lora_alpha, self.use_rslora)


def lora_scaling(r: int, lora_alpha: float, use_rslora: bool = False) -> float:
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


class LoRALinear(nn.Module):
    """A frozen linear layer plus one or more named low-rank adapters, at most one of them active."""

    def __init__(self, base_layer: nn.Module, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                 use_rslora: bool = False, adapter_name: str = DEFAULT_ADAPTER):
        super().__init__()
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad = False
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.merged_adapters: list[str] = []
        self.add_adapter(adapter_name, r, lora_alpha, lora_dropout, use_rslora)

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def add_adapter(self, adapter_name: str, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                    use_rslora: bool = False) -> None:
        """Add adapter `adapter_name` with B = 0 and make it active.

        Only A's initialisation draws from the global random generator (`kaiming_uniform_` with a = sqrt(5),
        the same draw as `nn.Linear`'s default), so adding an adapter consumes r * in_features draws.
        """
        max_r = min(self.in_features, self.out_features)
        if not 1 <= r <= max_r:
            raise ValueError(f"r must be between 1 and {max_r} for a {self.in_features} -> {self.out_features} "
                             f"layer, got {r}")
        if adapter_name in self.lora_A:
            raise ValueError(f"adapter {adapter_name!r} already exists; delete it first or choose another name")
        lora_A = skip_init(nn.Linear, self.in_features, r, bias=False)
        nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5))
        lora_B = skip_init(nn.Linear, r, self.out_features, bias=False)
        nn.init.zeros_(lora_B.weight)
        self.lora_A[adapter_name] = lora_A
        self.lora_B[adapter_name] = lora_B
        self.lora_dropout[adapter_name] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_scaling(r, lora_alpha, use_rslora)
        self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        self._check_adapter(adapter_name)
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged into the base; unmerge() before deleting it")
        for table in (self.lora_A, self.lora_B, self.lora_dropout):
            del table[adapter_name]
        for table in (self.r, self.lora_alpha, self.scaling):
            del table[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = None

    def set_adapter(self, adapter_name: str | None) -> None:
        """Make `adapter_name` the adapter the forward pass adds, or none with `None` (the plain base)."""
        if adapter_name is not None:
            self._check_adapter(adapter_name)
        if self.merged:
            raise ValueError("cannot switch adapters while one is merged into the base; call unmerge() first")
        self.active_adapter = adapter_name

    def get_delta_weight(self, adapter_name: str | None = None) -> torch.Tensor:
        """Return `scaling * B @ A` (out x in), the update this adapter adds to the base weight."""
        name = self._resolve(adapter_name)
        return self.scaling[name] * (self.lora_B[name].weight @ self.lora_A[name].weight)

    def merge(self, adapter_name: str | None = None) -> None:
        """Add the adapter's delta to the base weight; a second call for the same adapter does nothing."""
        name = self._resolve(adapter_name)
        if name in self.merged_adapters:
            warnings.warn(f"adapter {name!r} is already merged; merge() did nothing", stacklevel=2)
            return
        with torch.no_grad():
            self._add_to_base(self.get_delta_weight(name))
        self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract every merged delta from the base weight; does nothing when nothing is merged."""
        if not self.merged:
            warnings.warn("no adapter is merged; unmerge() did nothing", stacklevel=2)
            return
        with torch.no_grad():
            while self.merged_adapters:
                self._add_to_base(-self.get_delta_weight(self.merged_adapters.pop()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        name = self.active_adapter
        if name is None or self.merged:
            return result
        lora_out = self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x)))
        return result + lora_out * self.scaling[name]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, active={self.active_adapter!r}"

    def _add_to_base(self, delta: torch.Tensor) -> None:
        if isinstance(self.base_layer, nn.Linear):
            self.base_layer.weight += delta
        else:
            # A quantized base keeps its codes; it carries the merged update as a separate float tensor.
            self.base_layer.add_delta(delta)

    def _resolve(self, adapter_name: str | None) -> str:
        name = self.active_adapter if adapter_name is None else adapter_name
        if name is None:
            raise ValueError("no adapter is active; pass adapter_name or call set_adapter() first")
        self._check_adapter(name)
        return name

    def _check_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.lora_A:
            raise ValueError(f"unknown adapter {adapter_name!r}; this layer has {sorted(self.lora_A)}")


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """List (qualified name, layer) for every LoRA layer in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def inject_lora(model: nn.Module, config: LoRAConfig, adapter_name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Freeze `model`, wrap every linear named in `config.target_modules` and keep the classifier head trainable.

    Targets are wrapped in module order, so the adapters' initial weights depend only on the global seed.
    A module that is already a `LoRALinear` gets a further adapter named `adapter_name`.
    """
    unknown = sorted(set(config.target_modules) - set(TARGETABLE))
    if unknown:
        raise ValueError(f"unknown target module(s) {unknown}; choose from {list(TARGETABLE)}")
    if not config.target_modules:
        raise ValueError("LoRA needs at least one target module; choose from " + ", ".join(TARGETABLE))
    for p in model.parameters():
        p.requires_grad = False

    # Collect first: replacing children while iterating over modules() would skip some.
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if name in config.target_modules]
    for parent, name, child in targets:
        if isinstance(child, LoRALinear):
            child.add_adapter(adapter_name, config.r, config.lora_alpha, config.lora_dropout, config.use_rslora)
        else:
            setattr(parent, name, LoRALinear(child, config.r, config.lora_alpha, config.lora_dropout,
                                             config.use_rslora, adapter_name))
    for p in model.head.parameters():
        p.requires_grad = True
    return model

"""Many named LoRA adapters over one shared frozen base, each adapter with its own classifier head.

`AdapterModel` follows the multi-adapter model of Hugging Face PEFT (huggingface/peft, `PeftModel` and
`tuners/lora/model.py`). The LoRA layers of `tinylora.lora` keep every adapter in `ModuleDict`s keyed by name.
The classifier head is wrapped like PEFT's `ModulesToSaveWrapper`, which keeps the base head as
`original_module` and a trainable copy per adapter in `modules_to_save`. Activating an adapter therefore
switches its LoRA weights and its head together, and activating none gives back the plain base exactly.

The base stays frozen and may be stored quantized (`tinylora.quant`). Only the active adapter's LoRA weights and
head require grad, so training one adapter never touches another. `add_weighted_adapter` builds a new adapter
as a weighted sum of existing ones by concatenating their ranks (PEFT's `combination_type="cat"`), which makes
the combined update exactly the weighted sum of the updates.

An `AdapterModel` is saved to and loaded from a directory by `tinylora.adapter_sets`.
"""

import contextlib
import copy
import math
import re
import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn

from .adapter_files import HEAD, KEY_PREFIX, Adapter
from .lora import TARGETABLE, LoRAConfig, inject_lora, lora_layers
from .model import ModelConfig, TinyClassifier
from .quant import QuantConfig, quantize_model
from .tasks import get_task

# Module keys cannot contain ".", and saved adapters become directories named after them.
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ModulesToSaveWrapper(nn.Module):
    """The classifier head: the base head as `original_module` plus one trainable copy per adapter.

    The forward pass uses the active adapter's copy, or `original_module` when no adapter is active.
    """

    def __init__(self, original_module: nn.Module):
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None

    def add_adapter(self, adapter_name: str, module: nn.Module | None = None) -> None:
        """Add a head for `adapter_name`: `module`, or a copy of the base head when None."""
        head = copy.deepcopy(self.original_module) if module is None else module
        for p in head.parameters():
            p.requires_grad = True
        self.modules_to_save[adapter_name] = head

    def delete_adapter(self, adapter_name: str) -> None:
        del self.modules_to_save[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = None

    def set_adapter(self, adapter_name: str | None) -> None:
        self.active_adapter = adapter_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active_adapter is None:
            return self.original_module(x)
        return self.modules_to_save[self.active_adapter](x)


class AdapterModel(nn.Module):
    """A frozen `TinyClassifier` (float or quantized) carrying named LoRA adapters, at most one active.

    The model takes `base_model` over: it freezes it, quantizes it with `quant` when given and wraps its head.
    """

    def __init__(self, base_model: TinyClassifier, quant: QuantConfig | None = None):
        super().__init__()
        for p in base_model.parameters():
            p.requires_grad = False
        if quant is not None:
            quantize_model(base_model, quant)
        base_model.head = ModulesToSaveWrapper(base_model.head)
        self.base_model = base_model
        self.quant = quant
        self.peft_config: dict[str, LoRAConfig] = {}
        self.adapter_tasks: dict[str, str | None] = {}  # the task each adapter was trained for, if any
        self.active_adapter: str | None = None
        self.merged_adapter: str | None = None

    @property
    def config(self) -> ModelConfig:
        return self.base_model.config

    @property
    def adapter_names(self) -> list[str]:
        return list(self.peft_config)

    @property
    def head(self) -> ModulesToSaveWrapper:
        return self.base_model.head

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.base_model(x, task_ids)

    # Adding, switching and deleting adapters

    def add_adapter(self, adapter_name: str, config: LoRAConfig, task: str | None = None) -> None:
        """Add adapter `adapter_name` (B = 0, a copy of the base head) and make it the active one.

        Each new LoRA A draws from the global random generator in module order, as `inject_lora` does, so a
        seed followed by the same sequence of `add_adapter` calls gives the same weights.
        """
        self._check_new_name(adapter_name)
        self._check_config(config)
        if task is not None:
            get_task(task)
        inject_lora(self.base_model, config, adapter_name)
        self.head.add_adapter(adapter_name)
        self.peft_config[adapter_name] = config
        self.adapter_tasks[adapter_name] = task
        self.set_adapter(adapter_name)

    def set_adapter(self, adapter_name: str | None) -> None:
        """Activate `adapter_name` (its LoRA weights and head), or the plain base with None.

        Only the active adapter's parameters require grad afterwards.
        """
        if self.merged_adapter is not None:
            raise ValueError(f"adapter {self.merged_adapter!r} is merged into the base; call unmerge_adapter() "
                             "before switching adapters")
        if adapter_name is not None:
            self._check_adapter(adapter_name)
        for _, layer in lora_layers(self.base_model):
            layer.set_adapter(adapter_name if adapter_name in layer.lora_A else None)
        self.head.set_adapter(adapter_name)
        self.active_adapter = adapter_name

        for p in self.parameters():
            p.requires_grad = False
        if adapter_name is not None:
            for p in self.adapter_parameters(adapter_name):
                p.requires_grad = True

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the plain base inside the block, then reactivate the adapter that was active."""
        previous = self.active_adapter
        self.set_adapter(None)
        try:
            yield
        finally:
            self.set_adapter(previous)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove the adapter's LoRA weights and head; deleting the active adapter leaves the plain base active."""
        self._check_adapter(adapter_name)
        if self.merged_adapter == adapter_name:
            raise ValueError(f"adapter {adapter_name!r} is merged into the base; call unmerge_adapter() first")
        for _, layer in lora_layers(self.base_model):
            if adapter_name in layer.lora_A:
                layer.delete_adapter(adapter_name)
        self.head.delete_adapter(adapter_name)
        del self.peft_config[adapter_name]
        del self.adapter_tasks[adapter_name]
        if self.active_adapter == adapter_name:
            self.set_adapter(None)

    def adapter_parameters(self, adapter_name: str) -> list[nn.Parameter]:
        """Return the parameters of `adapter_name`: every LoRA A and B, then its head."""
        self._check_adapter(adapter_name)
        params = []
        for _, layer in lora_layers(self.base_model):
            if adapter_name in layer.lora_A:
                params += [layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight]
        return params + list(self.head.modules_to_save[adapter_name].parameters())

    # Merging

    def merge_adapter(self) -> None:
        """Add the active adapter's delta weights to the base layers; the adapter's head stays in use."""
        if self.active_adapter is None:
            raise ValueError("no adapter is active; call set_adapter(name) before merge_adapter()")
        if self.merged_adapter is not None:
            warnings.warn(f"adapter {self.merged_adapter!r} is already merged; merge_adapter() did nothing",
                          stacklevel=2)
            return
        for _, layer in lora_layers(self.base_model):
            if self.active_adapter in layer.lora_A:
                layer.merge(self.active_adapter)
        self.merged_adapter = self.active_adapter

    def unmerge_adapter(self) -> None:
        """Subtract the merged delta weights from the base layers again."""
        if self.merged_adapter is None:
            warnings.warn("no adapter is merged; unmerge_adapter() did nothing", stacklevel=2)
            return
        for _, layer in lora_layers(self.base_model):
            if layer.merged:
                layer.unmerge()
        self.merged_adapter = None

    # Weighted combination

    def add_weighted_adapter(self, adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
                             task: str | None = None) -> None:
        """Add `adapter_name` = sum of `weights[i]` times adapter `adapters[i]`, heads included, and activate it.

        In every LoRA layer the new adapter concatenates the ranks of the adapters with a nonzero weight:
        A = [A_1; A_2; ...] (sum of r x in) and B = [c_1 B_1, c_2 B_2, ...] (out x sum of r) with
        c_i = w_i * scaling_i / scaling, where `scaling` is the first of them. Then
        scaling * B @ A = sum_i w_i * scaling_i * B_i @ A_i, exactly the weighted sum of the delta weights,
        with no low-rank approximation. The head's weight and bias are the same weighted sums of the heads'.
        An adapter with weight 1.0 alone is copied bit for bit. Adapters with weight 0 are left out.
        """
        self._check_new_name(adapter_name)
        if task is not None:
            get_task(task)
        if len(adapters) != len(weights) or not adapters:
            raise ValueError(f"give one weight per adapter and at least one adapter, got adapters={list(adapters)} "
                             f"and weights={list(weights)}")
        for name in adapters:
            self._check_adapter(name)
        if len(set(adapters)) != len(adapters):
            raise ValueError(f"each adapter may appear once in a combination, got {list(adapters)}")
        for w in weights:
            if not (isinstance(w, (int, float)) and math.isfinite(w)):
                raise ValueError(f"combination weights must be finite numbers, got {list(weights)}")
        kept = [(name, float(w)) for name, w in zip(adapters, weights) if w != 0]
        if not kept:
            raise ValueError("at least one combination weight must be nonzero; all of them are 0")

        plans = []
        for layer_name, layer in lora_layers(self.base_model):
            present = [(name, w) for name, w in kept if name in layer.lora_A]
            if present:
                r = sum(layer.r[name] for name, _ in present)
                if r > min(layer.in_features, layer.out_features):
                    raise ValueError(f"the combined rank {r} exceeds {min(layer.in_features, layer.out_features)} "
                                     f"in {layer_name}; combine fewer adapters or adapters of lower r")
                plans.append((layer, present, r))
        # fork_rng keeps the random draw of add_adapter, whose A is overwritten, off the caller's generator.
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for layer, present, r in plans:
                scaling = layer.scaling[present[0][0]]
                # A is (sum of r, in) and B is (out, sum of r).
                lora_A = torch.cat([layer.lora_A[name].weight for name, _ in present], dim=0)
                lora_B = torch.cat([layer.lora_B[name].weight * (w * layer.scaling[name] / scaling)
                                    for name, w in present], dim=1)
                layer.add_adapter(adapter_name, r, scaling * r)
                layer.lora_A[adapter_name].weight.copy_(lora_A)
                layer.lora_B[adapter_name].weight.copy_(lora_B)
                layer.scaling[adapter_name] = scaling  # exact, where lora_alpha / r could round

            head = copy.deepcopy(self.head.original_module)
            for name, p in head.named_parameters():
                p.zero_()
                for adapter, w in kept:
                    p.add_(self.head.modules_to_save[adapter].get_parameter(name), alpha=w)
        self.head.add_adapter(adapter_name, head)

        # The recorded config: the union of the targets and the sum of the ranks (a layer may hold fewer).
        targets = tuple(m for m in TARGETABLE if any(m in self.peft_config[name].target_modules for name, _ in kept))
        r_total = sum(self.peft_config[name].r for name, _ in kept)
        scaling = self.peft_config[kept[0][0]].scaling
        self.peft_config[adapter_name] = LoRAConfig(r=r_total, lora_alpha=scaling * r_total, target_modules=targets)
        self.adapter_tasks[adapter_name] = task
        self.set_adapter(adapter_name)

    # Persistence

    def get_adapter_state_dict(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """Copy the adapter's tensors, keyed without its name (`blocks.0.qkv.lora_A.weight`, `head.weight`)."""
        self._check_adapter(adapter_name)
        return {key: p.detach().clone() for key, p in self._named_adapter_tensors(adapter_name).items()}

    def to_peft_adapter(self, adapter_name: str) -> Adapter:
        """Return adapter `adapter_name` and its head under PEFT's key names, ready for `write_adapter`.

        PEFT's layout has one r and one lora_alpha per adapter, so an adapter whose layers differ in r or
        scaling (a combination of adapters with different targets or ranks) raises ValueError.
        """
        self._check_adapter(adapter_name)
        config = self.peft_config[adapter_name]
        for layer_name, layer in lora_layers(self.base_model):
            if adapter_name not in layer.lora_A:
                continue
            if layer.r[adapter_name] != config.r or not math.isclose(layer.scaling[adapter_name], config.scaling,
                                                                     rel_tol=1e-9):
                raise ValueError(f"adapter {adapter_name!r} has r={layer.r[adapter_name]} and scaling "
                                 f"{layer.scaling[adapter_name]:g} in {layer_name} but r={config.r} and scaling "
                                 f"{config.scaling:g} overall, which PEFT's file layout cannot express; save the "
                                 "adapters it combines instead")
        tensors = {KEY_PREFIX + key: t for key, t in self.get_adapter_state_dict(adapter_name).items()}
        return Adapter(config, tensors, (HEAD,))

    def load_peft_adapter(self, adapter: Adapter, adapter_name: str, task: str | None = None) -> None:
        """Add `adapter` (read with `tinylora.adapter_files.read_adapter`) as `adapter_name` and activate it.

        Every key and shape is checked before the model changes. An adapter without a saved head gets a copy
        of the base head. The global random generator is left as it was.
        """
        self._check_new_name(adapter_name)
        self._check_config(adapter.config)
        expected = {}
        for block_name, block in self.base_model.blocks.named_children():
            for target in adapter.config.target_modules:
                module = getattr(block, target)
                prefix = f"{KEY_PREFIX}blocks.{block_name}.{target}"
                expected[f"{prefix}.lora_A.weight"] = (adapter.config.r, module.in_features)
                expected[f"{prefix}.lora_B.weight"] = (module.out_features, adapter.config.r)
        for name in adapter.modules_to_save:
            if name != HEAD:
                raise ValueError(f"modules_to_save may only list {HEAD!r} for a TinyClassifier, got {name!r}")
            for key, p in self.head.original_module.named_parameters():
                expected[f"{KEY_PREFIX}{HEAD}.{key}"] = tuple(p.shape)
        got = {key: tuple(t.shape) for key, t in adapter.tensors.items()}
        if got != expected:
            wrong = sorted(key for key in set(got) | set(expected) if got.get(key) != expected.get(key))
            raise ValueError(f"the adapter's tensors do not fit this model, starting with {wrong[:3]}; load it "
                             "into a model built with the same ModelConfig")

        with torch.random.fork_rng(devices=[]):
            self.add_adapter(adapter_name, adapter.config, task)
        with torch.no_grad():
            for key, p in self._named_adapter_tensors(adapter_name).items():
                if KEY_PREFIX + key in adapter.tensors:
                    p.copy_(adapter.tensors[KEY_PREFIX + key])

    def _named_adapter_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """Return the adapter's live parameters, keyed as in `get_adapter_state_dict`."""
        tensors = {}
        for layer_name, layer in lora_layers(self.base_model):
            if adapter_name in layer.lora_A:
                tensors[f"{layer_name}.lora_A.weight"] = layer.lora_A[adapter_name].weight
                tensors[f"{layer_name}.lora_B.weight"] = layer.lora_B[adapter_name].weight
        for name, p in self.head.modules_to_save[adapter_name].named_parameters():
            tensors[f"{HEAD}.{name}"] = p
        return tensors

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """Return the frozen base's tensors (quantized codes for a quantized base) under unwrapped names.

        The keys are those of a `TinyClassifier` quantized like this one, whatever adapters are attached:
        `blocks.0.qkv.weight`, not `blocks.0.qkv.base_layer.weight`.
        """
        state = self.base_model.state_dict()
        return {plain: state[key] for plain, key in self._base_keys().items()}

    def load_base_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy `base_state_dict()` output of an identically built model into this model's frozen base."""
        keys = self._base_keys()
        if set(state) != set(keys):
            missing, unexpected = sorted(set(keys) - set(state)), sorted(set(state) - set(keys))
            raise ValueError(f"the base state does not fit this model: missing {missing}, unexpected {unexpected}; "
                             "build the model with the same ModelConfig and quantization as the saved one")
        # strict=False because the adapters' tensors are not part of the base; every base key is present.
        self.base_model.load_state_dict({key: state[plain] for plain, key in keys.items()}, strict=False)

    def _base_keys(self) -> dict[str, str]:
        """Map each base tensor's unwrapped name to its current name."""
        keys = {}
        for key in self.base_model.state_dict():
            if ".lora_A." in key or ".lora_B." in key or key.startswith("head.modules_to_save."):
                continue
            plain = key.replace(".base_layer.", ".").replace("head.original_module.", "head.")
            keys[plain] = key
        return keys

    # Checks

    def _check_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(f"unknown adapter {adapter_name!r}; this model has {self.adapter_names}")

    def _check_new_name(self, adapter_name: str) -> None:
        if not (isinstance(adapter_name, str) and ADAPTER_NAME.fullmatch(adapter_name)):
            raise ValueError(f"adapter names use 1 to 64 letters, digits, '_' or '-', got {adapter_name!r}")
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} already exists; delete it first or choose another name")
        if self.merged_adapter is not None:
            raise ValueError(f"adapter {self.merged_adapter!r} is merged into the base; call unmerge_adapter() "
                             "before adding adapters")

    def _check_config(self, config: LoRAConfig) -> None:
        unknown = sorted(set(config.target_modules) - set(TARGETABLE))
        if unknown or not config.target_modules:
            raise ValueError(f"target_modules must name at least one of {list(TARGETABLE)}, got "
                             f"{list(config.target_modules)}")
        targets = [m for block in self.base_model.blocks for name, m in block.named_children()
                   if name in config.target_modules]
        max_r = min(min(m.in_features, m.out_features) for m in targets)
        if not 1 <= config.r <= max_r:
            raise ValueError(f"r must be between 1 and {max_r} for target_modules {list(config.target_modules)}, "
                             f"got {config.r}")
        if not (math.isfinite(config.lora_alpha) and config.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a positive finite number such as 8, got {config.lora_alpha!r}")
        if not 0 <= config.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {config.lora_dropout!r}")

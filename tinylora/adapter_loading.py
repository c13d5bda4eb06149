"""Checking a LoRA adapter against a base model and loading it, and loading fully fine-tuned models.

`validate_adapter` checks that an adapter has every tensor its config implies for the base model, none extra,
every shape right and an r that each target layer allows. `load_adapter` runs those checks before it wraps the
targets with LoRA layers and copies the weights, so on any error the model is left as it was. `load_full_state`
loads a file written by `tinylora.adapter_writing.save_full_state`, and checks every key, shape and dtype and
that every float value is finite before the model changes.
"""

import os
from pathlib import Path

import torch
import torch.nn as nn

from .adapter_files import (CONFIG_NAME, HEAD, KEY_PREFIX, WEIGHTS_NAME, Adapter, AdapterFileError, check_finite,
                            parse_safetensors, read_adapter)
from .lora import DEFAULT_ADAPTER, TARGETABLE, LoRAConfig, LoRALinear, inject_lora, lora_layers
from .quant import QuantizedLinear


def validate_adapter(adapter: Adapter, model: nn.Module) -> None:
    """Check that `adapter` fits `model`: every key present, none extra, every shape right, r in range.

    `model` is the base the adapter will be loaded onto: a TinyClassifier with float, quantized or
    LoRA-wrapped linears. Raises AdapterFileError naming the first problem; changes nothing.
    """
    expected = expected_shapes(model, adapter.config, adapter.modules_to_save)
    missing = sorted(set(expected) - set(adapter.tensors))
    if missing:
        raise AdapterFileError(f"{WEIGHTS_NAME} is missing {len(missing)} tensor(s) that {CONFIG_NAME} implies, "
                               f"for example {missing[:3]}; the file is incomplete or its target_modules differ "
                               f"from the config, so re-save the adapter")
    extra = sorted(set(adapter.tensors) - set(expected))
    if extra:
        raise AdapterFileError(f"{WEIGHTS_NAME} has {len(extra)} tensor(s) that this base model has no place for, "
                               f"for example {extra[:3]}; it was trained on another model or with other "
                               f"target_modules or modules_to_save than {CONFIG_NAME} lists")
    for key, shape in expected.items():
        got = tuple(adapter.tensors[key].shape)
        if got != shape:
            raise AdapterFileError(f"tensor {key} has shape {got} but this base model needs {shape}; the adapter "
                                   f"was trained on a model of another size (check d_model and n_classes)")


def expected_shapes(model: nn.Module, config: LoRAConfig,
                    modules_to_save: tuple[str, ...] = (HEAD,)) -> dict[str, tuple[int, ...]]:
    """Return {PEFT key: shape} of every tensor an adapter with `config` needs on `model`."""
    shapes = {}
    for target in config.target_modules:
        paths = [(path, module) for path, module in model.named_modules()
                 if path.rsplit(".", 1)[-1] == target and isinstance(module, (nn.Linear, QuantizedLinear, LoRALinear))]
        if not paths:
            raise AdapterFileError(f"target module {target!r} in {CONFIG_NAME} matches no linear layer of the base "
                                   f"model; choose from {', '.join(TARGETABLE)}")
        for path, module in paths:
            max_r = min(module.in_features, module.out_features)
            if config.r > max_r:
                raise AdapterFileError(f"r={config.r} in {CONFIG_NAME} is larger than {path} allows "
                                       f"({module.in_features} -> {module.out_features}, so r <= {max_r}); the "
                                       f"adapter was trained on a larger model")
            shapes[f"{KEY_PREFIX}{path}.lora_A.weight"] = (config.r, module.in_features)
            shapes[f"{KEY_PREFIX}{path}.lora_B.weight"] = (module.out_features, config.r)
    for name in modules_to_save:
        for key, tensor in getattr(model, name).state_dict().items():
            shapes[f"{KEY_PREFIX}{name}.{key}"] = tuple(tensor.shape)
    return shapes


def load_adapter(source: Adapter | str | os.PathLike, model: nn.Module,
                 adapter_name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Load an adapter (an `Adapter` or a directory) onto `model` as `adapter_name` and make it active.

    Everything is checked before the model changes, so on any error the model is left as it was. Loading
    wraps the targets with `inject_lora`, which also freezes the base and leaves the head trainable. It then
    copies lora_A, lora_B and the head. Every LoRA layer gets `adapter_name` as its active adapter, or none
    when the layer is outside the adapter's target_modules. The global random generator is left as it was.
    NOTE: the head is one module shared by all adapters, so loading replaces the head of earlier adapters.
    """
    adapter = source if isinstance(source, Adapter) else read_adapter(source)
    validate_adapter(adapter, model)
    for path, layer in lora_layers(model):
        if layer.merged:
            raise ValueError(f"{path} has a merged adapter; call unmerge() before loading another adapter")
        if adapter_name in layer.lora_A:
            raise ValueError(f"the model already has an adapter named {adapter_name!r} (at {path}); pass another "
                             f"adapter_name or delete_adapter() it first")

    # The loaded tensors replace A's random initialisation, so keep those draws off the caller's generator.
    with torch.random.fork_rng(devices=[]):
        inject_lora(model, adapter.config, adapter_name)
    model.train(model.training)  # new dropout modules start in training mode, so make them follow the model
    layers = dict(lora_layers(model))
    with torch.no_grad():
        for path, layer in layers.items():
            if adapter_name in layer.lora_A:
                layer.lora_A[adapter_name].weight.copy_(adapter.tensors[f"{KEY_PREFIX}{path}.lora_A.weight"])
                layer.lora_B[adapter_name].weight.copy_(adapter.tensors[f"{KEY_PREFIX}{path}.lora_B.weight"])
    for name in adapter.modules_to_save:
        module = getattr(model, name)
        module.load_state_dict({key: adapter.tensors[f"{KEY_PREFIX}{name}.{key}"] for key in module.state_dict()})
    for layer in layers.values():
        layer.set_adapter(adapter_name if adapter_name in layer.lora_A else None)
    return model


def load_full_state(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a file written by `save_full_state` into `model`, whose keys, shapes and dtypes must all match.

    Raises AdapterFileError naming the problem before `model` changes.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AdapterFileError(f"model file {path} does not exist; save the model first or fix the path") from None
    except OSError as error:
        raise AdapterFileError(f"cannot read {path} ({error.strerror}); check its permissions") from error
    tensors = parse_safetensors(data, path.name)
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    extra = sorted(set(tensors) - set(state))
    if missing or extra:
        raise AdapterFileError(f"{path.name} does not match the model: missing {missing[:3]}, unexpected "
                               f"{extra[:3]}; load it into a model built with the same ModelConfig and method")
    for key, want in state.items():
        tensor = tensors[key]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise AdapterFileError(f"tensor {key} in {path.name} is {tensor.dtype} {tuple(tensor.shape)} but the "
                                   f"model needs {want.dtype} {tuple(want.shape)}; load it into a model built "
                                   f"with the same ModelConfig")
    check_finite({k: t for k, t in tensors.items() if t.is_floating_point()}, path.name,
                  "the model comes from a diverged run; train it again with a lower learning rate")
    model.load_state_dict(tensors)
    return model

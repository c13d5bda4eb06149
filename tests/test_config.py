"""Run settings: validation messages and serialisation."""

import dataclasses

import pytest

from tinylora.config import RunConfig, TrainConfig
from tinylora.lora import LoRAConfig


def with_train(**changes) -> RunConfig:
    return RunConfig(train=dataclasses.replace(TrainConfig(), **changes))


def with_lora(method="lora", **changes) -> RunConfig:
    return RunConfig(method=method, lora=dataclasses.replace(LoRAConfig(), **changes))


@pytest.mark.parametrize("config, message", [
    (with_lora(r=0), r"r must be between 1 and 64 for qkv \(64 -> 192\), got 0"),
    (with_lora(r=65), "r must be between 1 and 64 .* got 65"),
    (with_lora(target_modules=()), "LoRA needs at least one target module"),
    (with_lora(method="qlora-int8", target_modules=()), r"QLoRA \(int8 base\) needs at least one target module"),
    (with_lora(target_modules=("qkv", "bogus")), r"unknown target module\(s\) \['bogus'\]"),
    (with_lora(lora_alpha=0.0), "lora_alpha must be a positive finite number"),
    (with_lora(lora_alpha=1025.0), "lora_alpha must be at most 1024, got 1025. Choose a smaller value"),
    (with_lora(lora_alpha=1e9), "lora_alpha must be at most 1024, got 1e[+]09"),
    (with_train(lr=0.0), "learning rate must be a positive finite number such as 5e-3, got 0.0"),
    (with_train(lr=-1e-3), "learning rate must be a positive finite number"),
    (with_train(lr=float("nan")), "learning rate must be a positive finite number .* got nan"),
    (with_train(lr=float("inf")), "learning rate must be a positive finite number .* got inf"),
    (with_train(epochs=0), "epochs must be between 1 and 500, got 0"),
    (with_train(batch_size=0), "batch size must be between 1 and 1024, got 0"),
    (RunConfig(method="lora-xl"), "unknown method 'lora-xl'; choose one of full, lora"),
    (RunConfig(task="parity"), "unknown task 'parity'; choose one of odd_majority"),
])
def test_invalid_settings_name_value_and_fix(config, message):
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_full_finetune_ignores_lora_settings():
    RunConfig(method="full", lora=LoRAConfig(r=0, target_modules=())).validate()


def test_round_trip_through_dict():
    config = RunConfig(method="qlora-int8", task="first_lt_last", lora=LoRAConfig(r=8, lora_alpha=16,
                       target_modules=("fc1", "fc2")), train=TrainConfig(lr=1e-3, epochs=3, seed=7))
    assert RunConfig.from_dict(config.to_dict()) == config


def test_unknown_field_is_rejected():
    data = RunConfig().to_dict()
    data["train"]["learning_rate"] = 0.1
    with pytest.raises(ValueError, match=r"unknown train setting\(s\) \['learning_rate'\]"):
        RunConfig.from_dict(data)

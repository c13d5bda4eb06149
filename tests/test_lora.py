"""LoRA layer invariants on the tiny model."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tinylora.lora import LoRAConfig, LoRALinear, inject_lora, lora_layers
from tinylora.model import TinyClassifier


def tokens(n=8, seed=0):
    return torch.randint(0, 16, (n, 24), generator=torch.Generator().manual_seed(seed))


def test_fresh_wrap_equals_base_exactly():
    torch.manual_seed(0)
    base = TinyClassifier()
    x = tokens()
    expected = base(x)
    wrapped = inject_lora(base, LoRAConfig(r=4, target_modules=("qkv", "proj", "fc1", "fc2")))
    assert torch.equal(wrapped(x), expected)


def test_one_backward_gives_b_grad_and_zero_a_grad():
    torch.manual_seed(0)
    model = inject_lora(TinyClassifier(), LoRAConfig())
    x = tokens()
    F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long)).backward()
    for name, layer in lora_layers(model):
        assert layer.lora_B["default"].weight.grad.abs().sum() > 0, name
        assert torch.count_nonzero(layer.lora_A["default"].weight.grad) == 0, name


def test_only_adapters_and_head_are_trainable():
    torch.manual_seed(0)
    model = inject_lora(TinyClassifier(), LoRAConfig(target_modules=("fc1",)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.fc1.lora_{ab}.default.weight" for i in range(4) for ab in "AB"} | {
        "head.weight", "head.bias"}


def test_merge_twice_unmerge_twice_restores_weight():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 12), r=4, lora_alpha=8)
    nn.init.normal_(layer.lora_B["default"].weight)
    original = layer.base_layer.weight.detach().clone()
    x = torch.randn(5, 16)
    unmerged_out = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer.merge()
        layer.merge()
        assert layer.merged
        merged_out = layer(x)
        layer.unmerge()
        layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(merged_out, unmerged_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.base_layer.weight, original, atol=1e-6, rtol=0)


def test_merge_adds_delta_weight_once():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 12), r=2, lora_alpha=4)
    nn.init.normal_(layer.lora_B["default"].weight)
    original = layer.base_layer.weight.detach().clone()
    delta = layer.get_delta_weight()
    assert delta.shape == (12, 16)
    torch.testing.assert_close(delta, 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
    layer.merge()
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, original + delta)


def test_eval_and_train_never_change_merge_state():
    torch.manual_seed(0)
    model = inject_lora(TinyClassifier(), LoRAConfig())
    layers = [layer for _, layer in lora_layers(model)]
    model.eval()
    model.train()
    assert not any(layer.merged for layer in layers)
    for layer in layers:
        layer.merge()
    model.eval()
    model.train()
    model.eval()
    assert all(layer.merged for layer in layers)


def test_scaling_is_alpha_over_r():
    layer = LoRALinear(nn.Linear(8, 8), r=4, lora_alpha=8)
    assert layer.scaling["default"] == 2.0
    rs = LoRALinear(nn.Linear(8, 8), r=4, lora_alpha=8, use_rslora=True)
    assert rs.scaling["default"] == 4.0


def test_only_a_init_draws_from_generator():
    torch.manual_seed(123)
    LoRALinear(nn.Linear(8, 6), r=3, lora_alpha=3)  # the base linear draws too, so compare after it
    torch.manual_seed(123)
    nn.Linear(8, 6)
    torch.empty(3, 8).uniform_()  # exactly r * in_features draws, as kaiming_uniform_ makes
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    LoRALinear(nn.Linear(8, 6), r=3, lora_alpha=3)
    assert torch.equal(torch.rand(1), expected_next)


@pytest.mark.parametrize("r", [0, 9, -1])
def test_rank_out_of_range_is_rejected(r):
    with pytest.raises(ValueError, match=f"r must be between 1 and 8 for a 8 -> 12 layer, got {r}"):
        LoRALinear(nn.Linear(8, 12), r=r, lora_alpha=8)


def test_unknown_target_is_rejected():
    with pytest.raises(ValueError, match="unknown target module"):
        inject_lora(TinyClassifier(), LoRAConfig(target_modules=("q_proj",)))


def test_adapters_are_swappable_by_name():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 8), r=2, lora_alpha=2)
    layer.add_adapter("other", r=2, lora_alpha=2)
    nn.init.normal_(layer.lora_B["other"].weight)
    x = torch.randn(3, 8)
    layer.set_adapter("default")
    assert torch.equal(layer(x), layer.base_layer(x))  # default's B is still zero
    layer.set_adapter("other")
    assert not torch.equal(layer(x), layer.base_layer(x))
    layer.set_adapter(None)
    assert torch.equal(layer(x), layer.base_layer(x))
    layer.delete_adapter("other")
    with pytest.raises(ValueError, match="unknown adapter 'other'"):
        layer.set_adapter("other")

"""Tests for the fused forward and hand-written backward of tinylora.fastpath against eager autograd."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tinylora.config import RunConfig, TrainConfig
from tinylora.fastpath import FAST_MODES, make_forward
from tinylora.lora import LoRAConfig
from tinylora.methods import build_model
from tinylora.model import ModelConfig
from tinylora.training import prepare_run

# Float32 sums in another order: logits and gradients agree to about 1e-6 relative on these inputs.
LOGITS_ATOL = 1e-5
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6

CASES = [
    ("lora", ("qkv", "proj")),
    ("lora", ("fc1",)),
    ("lora", ("fc2",)),
    ("lora", ("qkv", "proj", "fc1", "fc2")),
    ("qlora-int8", ("qkv", "proj")),
    ("full", ("qkv", "proj")),
]


def _model(method, targets, model_config=ModelConfig()):
    model = build_model(RunConfig(method=method, lora=LoRAConfig(target_modules=targets), model=model_config))
    # B starts at zero, which would hide mistakes in the adapter's backward; give it values.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


def _batch(n=4, seed=2):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 16, (n, 24), generator=generator), torch.randint(0, 2, (n,), generator=generator)


def _grads(forward, model, x, y, **kwargs):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(forward(x, **kwargs), y)
    return loss, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("method,targets", CASES)
def test_fused_logits_match_eager(method, targets):
    model = _model(method, targets)
    x, _ = _batch()

    torch.testing.assert_close(make_forward(model, "fused")(x), model(x), atol=LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize("method,targets", CASES)
def test_fused_gradients_match_autograd(method, targets):
    model = _model(method, targets)
    x, y = _batch()

    eager_loss, eager_grads = _grads(model, model, x, y)
    fused_loss, fused_grads = _grads(make_forward(model, "fused"), model, x, y)

    torch.testing.assert_close(fused_loss, eager_loss, atol=LOGITS_ATOL, rtol=0)
    assert len(fused_grads) == len(eager_grads)
    for fused, eager in zip(fused_grads, eager_grads):
        torch.testing.assert_close(fused, eager, rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_fused_eval_mode_matches_eager():
    model = _model("lora", ("qkv", "proj")).eval()
    x, _ = _batch(n=16)

    with torch.no_grad():
        torch.testing.assert_close(make_forward(model, "fused")(x), model(x), atol=LOGITS_ATOL, rtol=0)


def test_fused_task_ids_match_eager():
    model = _model("lora", ("qkv", "proj"), ModelConfig(n_task_ids=2))
    x, y = _batch()
    task_ids = torch.tensor([0, 1, 1, 0])

    eager_loss, eager_grads = _grads(model, model, x, y, task_ids=task_ids)
    fused_loss, fused_grads = _grads(make_forward(model, "fused"), model, x, y, task_ids=task_ids)

    torch.testing.assert_close(fused_loss, eager_loss, atol=LOGITS_ATOL, rtol=0)
    for fused, eager in zip(fused_grads, eager_grads):
        torch.testing.assert_close(fused, eager, rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_off_and_auto_full_use_eager_model():
    lora_model = _model("lora", ("qkv", "proj"))
    full_model = _model("full", ("qkv", "proj"))

    assert make_forward(lora_model, "off") is lora_model
    assert make_forward(full_model, "auto") is full_model
    assert make_forward(lora_model, "auto") is not lora_model


def test_lora_dropout_falls_back_to_eager():
    config = RunConfig(lora=LoRAConfig(lora_dropout=0.5))
    model = build_model(config).train()
    x, _ = _batch()

    torch.manual_seed(3)
    fused = make_forward(model, "fused")(x)
    torch.manual_seed(3)
    eager = model(x)

    assert torch.equal(fused, eager)


def test_unknown_mode_raises():
    model = _model("lora", ("qkv", "proj"))

    with pytest.raises(ValueError, match="unknown fast mode 'turbo'"):
        make_forward(model, "turbo")
    with pytest.raises(ValueError, match="train.fast must be one of"):
        RunConfig(train=TrainConfig(fast="turbo")).validate()


def test_fast_modes_listed():
    assert FAST_MODES == ("auto", "fused", "bf16", "off")


def test_default_lora_run_keeps_reference_log():
    """The default run (fast="auto", so the fused path) reproduces the reference notebook's accuracies."""
    accuracies = [e["val/acc"] for e in prepare_run(RunConfig()).events() if e["type"] == "eval"]

    assert [round(a, 3) for a in accuracies] == [0.742, 0.941, 0.994, 0.967, 0.988, 0.998, 0.965, 0.984]


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_first_epoch_losses_close_to_eager(mode):
    config = RunConfig(train=dataclasses.replace(TrainConfig(), epochs=1, fast=mode))
    eager = RunConfig(train=dataclasses.replace(TrainConfig(), epochs=1, fast="off"))

    losses = [e["train/loss"] for e in prepare_run(config).events() if e["type"] == "step"]
    reference = [e["train/loss"] for e in prepare_run(eager).events() if e["type"] == "step"]

    assert len(losses) == 16
    assert max(abs(a - b) for a, b in zip(losses, reference)) < 1e-4


def test_adapter_model_gradients_match_autograd():
    from tinylora.adapters import AdapterModel
    from tinylora.model import TinyClassifier
    from tinylora.quant import QuantConfig

    torch.manual_seed(0)
    model = AdapterModel(TinyClassifier(), QuantConfig(scheme="nf4"))
    model.add_adapter("a", LoRAConfig())
    model.add_adapter("b", LoRAConfig(r=8, target_modules=("qkv", "fc2")))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape) * 0.1)
    x, y = _batch()
    forward = make_forward(model, "auto")

    assert forward is not model
    eager_loss, eager_grads = _grads(model, model, x, y)
    fused_loss, fused_grads = _grads(forward, model, x, y)

    torch.testing.assert_close(fused_loss, eager_loss, atol=LOGITS_ATOL, rtol=0)
    for fused, eager in zip(fused_grads, eager_grads):
        torch.testing.assert_close(fused, eager, rtol=GRAD_RTOL, atol=GRAD_ATOL)

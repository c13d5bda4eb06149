"""Tests for the operators of tinylora.fastpath: each hand-written backward against autograd on tiny inputs."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tinylora.config import RunConfig, TrainConfig
from tinylora.fastpath import make_forward
from tinylora.fastpath.allocator import keep_freed_memory
from tinylora.fastpath.kernels import (AttentionShape, NoWorkspace, Workspace, attention_backward, attention_forward,
                                       linear_backward, linear_forward, prepare_linear)
from tinylora.fastpath.weights import DequantizedWeights, LinearParts
from tinylora.methods import build_model
from tinylora.quant import NF4, QuantizedLinear

ATOL, RTOL = 1e-5, 1e-4


def _parts(out_features, in_features, r, bias, trained_weight, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=g).requires_grad_(trained_weight)
    b = torch.randn(out_features, generator=g).requires_grad_(trained_weight) if bias else None
    lora_A = torch.randn(r, in_features, generator=g).requires_grad_() if r else None
    lora_B = torch.randn(out_features, r, generator=g).requires_grad_() if r else None
    return LinearParts(weight, b, lora_A, lora_B, scaling=2.0 if r else 1.0)


def _eager_linear(x, p):
    y = F.linear(x, p.weight, p.bias)
    if p.lora_A is not None:
        y = y + p.scaling * (x @ p.lora_A.t()) @ p.lora_B.t()
    return y


@pytest.mark.parametrize("out_features,in_features,r,bias,trained_weight", [
    (12, 8, 2, True, False),  # LoRA over a frozen base
    (12, 8, 0, True, True),  # full finetune
    (8, 16, 3, False, False),  # no bias, wider input
    (8, 8, 0, False, False),  # frozen, nothing trained: only dx
])
def test_linear_backward_matches_autograd(out_features, in_features, r, bias, trained_weight):
    p = _parts(out_features, in_features, r, bias, trained_weight)
    x = torch.randn(10, in_features, requires_grad=True)
    dy = torch.randn(10, out_features)
    tensors = [t for t in (x, *p.tensors()) if t is not None and t.requires_grad]

    expected = torch.autograd.grad(_eager_linear(x, p), tensors, dy)
    layer = prepare_linear(p)
    with torch.no_grad():
        y, xa = linear_forward(x.detach(), layer)
        dx, dweight, dbias, dA, dB = linear_backward(dy, x.detach(), xa, layer, needs_dx=True)
    got = dict(zip(["x", "weight", "bias", "A", "B"], [dx, dweight, dbias, dA, dB]))
    names = ["x", "weight", "bias", "A", "B"]
    computed = [got[name] for name, t in zip(names, (x, *p.tensors())) if t is not None and t.requires_grad]

    torch.testing.assert_close(y, _eager_linear(x, p).detach(), atol=ATOL, rtol=RTOL)
    for value, reference in zip(computed, expected):
        torch.testing.assert_close(value, reference, atol=ATOL, rtol=RTOL)


def test_linear_backward_skips_unneeded_input_gradient():
    p = _parts(6, 4, 2, True, False)
    x = torch.randn(5, 4)
    layer = prepare_linear(p)
    with torch.no_grad():
        _, xa = linear_forward(x, layer)
        dx, dweight, dbias, dA, dB = linear_backward(torch.randn(5, 6), x, xa, layer, needs_dx=False)

    assert dx is None
    assert dweight is None
    assert dbias is None
    assert dA.shape == (2, 4)
    assert dB.shape == (6, 2)


def test_bfloat16_linear_close_to_float32():
    p = _parts(16, 16, 2, True, False)
    x = torch.randn(8, 16)
    with torch.no_grad():
        y32, _ = linear_forward(x, prepare_linear(p))
        y16, _ = linear_forward(x, prepare_linear(p, torch.bfloat16))

    assert y16.dtype == torch.float32
    # bfloat16 keeps 8 significant bits: about 1% of the output's scale.
    torch.testing.assert_close(y16, y32, atol=0.05 * y32.abs().max().item(), rtol=0)


def _eager_attention(qkv, shape):
    B, T, nh, hs = shape.batch, shape.tokens, shape.n_heads, shape.head_size
    q, k, v = qkv.view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # (B, T, nh, hs)
    if shape.cls_only:
        out = out[:, :1]
    return out.reshape(B * shape.queries, nh * hs)


@pytest.mark.parametrize("cls_only", [False, True])
@pytest.mark.parametrize("workspace", [Workspace, NoWorkspace])
def test_attention_backward_matches_autograd(cls_only, workspace):
    shape = AttentionShape(batch=3, tokens=5, n_heads=2, head_size=4, cls_only=cls_only)
    qkv = torch.randn(15, 24, requires_grad=True)
    dout = torch.randn(3 * shape.queries, 8)
    expected_out = _eager_attention(qkv, shape)
    (expected,) = torch.autograd.grad(expected_out, qkv, dout)

    ws = workspace()
    with torch.no_grad():
        out, heads, probs = attention_forward(qkv.detach(), shape, ws, 0)
        dqkv = attention_backward(dout, heads, probs, shape, ws, 0)

    torch.testing.assert_close(out, expected_out.detach(), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(dqkv, expected, atol=ATOL, rtol=RTOL)


def test_workspace_reuses_buffer_of_same_shape():
    ws = Workspace()
    first = ws.get(("a",), (2, 3))
    assert ws.get(("a",), (2, 3)) is first
    assert ws.get(("a",), (3, 2)) is not first
    assert ws.nbytes == 6 * 4


def test_backward_after_second_forward_raises():
    model = build_model(RunConfig())
    forward = make_forward(model, "fused")
    x = torch.randint(0, 16, (4, 24))
    first = forward(x).sum()
    forward(x).sum()

    with pytest.raises(RuntimeError, match="overwritten by a later forward pass"):
        first.backward()


def test_dequantized_copy_made_once_and_invalidated():
    layer = QuantizedLinear(nn.Linear(8, 4), NF4(block_size=32))
    cache = DequantizedWeights()
    first = cache.weight(layer)

    assert cache.weight(layer) is first
    torch.testing.assert_close(first, layer.dequantize(), atol=0, rtol=0)
    layer.add_delta(torch.ones(4, 8))
    second = cache.weight(layer)
    assert second is not first
    torch.testing.assert_close(second, layer.dequantize() + 1, atol=0, rtol=0)
    with torch.no_grad():
        layer.q_codes.zero_()
    assert cache.weight(layer) is not second
    assert cache.nbytes == 4 * 8 * 4


@pytest.mark.parametrize("method", ["qlora-int8", "qlora-nf4"])
def test_cached_and_uncached_dequantization_give_same_logits(method):
    model = build_model(RunConfig(method=method))
    x = torch.randint(0, 16, (4, 24))

    cached = make_forward(model, "fused", cache_dequantized=True)(x)
    uncached = make_forward(model, "fused", cache_dequantized=False)(x)

    assert torch.equal(cached, uncached)


def test_bf16_mode_close_to_float32():
    model = build_model(RunConfig(method="lora"))
    x = torch.randint(0, 16, (8, 24))

    bf16 = make_forward(model, "bf16")(x)
    fp32 = make_forward(model, "fused")(x)

    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, fp32)
    torch.testing.assert_close(bf16, fp32, atol=0.05, rtol=0)


def test_keep_freed_memory_is_idempotent():
    first = keep_freed_memory()
    assert keep_freed_memory() == first


def test_cache_dequantized_must_be_bool():
    with pytest.raises(ValueError, match="train.cache_dequantized must be True or False"):
        RunConfig(train=TrainConfig(cache_dequantized="yes")).validate()

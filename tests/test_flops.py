"""Tests for the matmul operation count of a training step, against counts worked out by hand."""

import dataclasses

import pytest

from tinylora.config import RunConfig, TrainConfig
from tinylora.flops import training_step_flops
from tinylora.lora import LoRAConfig

TOKENS = 64 * 25  # a batch of 64 examples of 24 tokens plus [CLS]
QKV, PROJ, FC = 2 * TOKENS * 64 * 192, 2 * TOKENS * 64 * 64, 2 * TOKENS * 64 * 256  # fc1 and fc2 are equal
ATTENTION = 2 * (2 * 64 * 4 * 25 * 25 * 16)  # Q K^T and P V for 64 examples, 4 heads of width 16
HEAD = 2 * 64 * 64 * 2
LORA_QKV_DOWN, LORA_QKV_UP = 2 * TOKENS * 64 * 4, 2 * TOKENS * 4 * 192
LORA_PROJ_DOWN, LORA_PROJ_UP = 2 * TOKENS * 64 * 4, 2 * TOKENS * 4 * 64


def test_default_lora_step_matches_hand_count():
    block_forward = QKV + PROJ + 2 * FC + ATTENTION + LORA_QKV_DOWN + LORA_QKV_UP + LORA_PROJ_DOWN + LORA_PROJ_UP
    # Backward of one adapter: dB, the gradient of X A^T, and dA; plus dX through A when X needs a gradient.
    lora_qkv = 2 * LORA_QKV_UP + LORA_QKV_DOWN
    lora_proj = 2 * LORA_PROJ_UP + LORA_PROJ_DOWN
    # Block 0's input comes from frozen embeddings, so neither its qkv base nor its qkv adapter passes dX down.
    block0_backward = lora_qkv + 2 * ATTENTION + PROJ + lora_proj + LORA_PROJ_DOWN + 2 * FC
    block_backward = QKV + lora_qkv + LORA_QKV_DOWN + 2 * ATTENTION + PROJ + lora_proj + LORA_PROJ_DOWN + 2 * FC

    flops = training_step_flops(RunConfig())

    assert flops.forward == 4 * block_forward + HEAD
    assert flops.backward == block0_backward + 3 * block_backward + 2 * HEAD
    assert flops.total == 1_400_061_952


def test_full_finetune_doubles_backward_of_weights():
    block_forward = QKV + PROJ + 2 * FC + ATTENTION
    block_backward = 2 * (QKV + PROJ + 2 * FC) + 2 * ATTENTION  # dX and dW of every linear

    flops = training_step_flops(RunConfig(method="full"))

    assert flops.forward == 4 * block_forward + HEAD
    assert flops.backward == 4 * block_backward + 2 * HEAD


def test_quantized_base_counts_like_float_base():
    assert training_step_flops(RunConfig(method="qlora-int8")) == training_step_flops(RunConfig(method="lora"))


def test_fc2_only_skips_block0_attention_backward():
    config = RunConfig(lora=LoRAConfig(target_modules=("fc2",)))
    up, down = 2 * TOKENS * 4 * 64, 2 * TOKENS * 256 * 4
    block_forward = QKV + PROJ + 2 * FC + ATTENTION + down + up
    # Block 0 computes no gradient below its fc2; its fc2 adapter still needs dB, d(X A^T) and dA.
    block0_backward = 2 * up + down
    block_backward = QKV + 2 * ATTENTION + PROJ + 2 * FC + 2 * up + 2 * down

    flops = training_step_flops(config)

    assert flops.forward == 4 * block_forward + HEAD
    assert flops.backward == block0_backward + 3 * block_backward + 2 * HEAD


@pytest.mark.parametrize("method", ["full", "lora", "qlora-int8"])
def test_flops_scale_with_batch_size(method):
    config = RunConfig(method=method)
    small = training_step_flops(config, batch_size=8)
    large = training_step_flops(dataclasses.replace(config, train=TrainConfig(batch_size=32)))

    assert large.forward == 4 * small.forward
    assert large.backward == 4 * small.backward


@pytest.mark.parametrize("r", [1, 4, 16])
def test_flops_grow_with_rank(r):
    lower = training_step_flops(RunConfig(lora=LoRAConfig(r=r)))
    higher = training_step_flops(RunConfig(lora=LoRAConfig(r=2 * r, lora_alpha=16)))

    assert higher.forward > lower.forward
    assert higher.backward > lower.backward

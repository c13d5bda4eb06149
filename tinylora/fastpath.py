"""A faster forward and backward pass for `TinyClassifier`, with the same arithmetic up to float rounding.

The eager model runs a few hundred small operators per training step, each through autograd, and leaves the
step far from the matrix-multiply peak. This module computes each transformer block as one autograd node
(`BlockFunction`) whose backward is written by hand:

- linear layers call oneDNN's matmul (`torch.ops.mkldnn._linear_pointwise`), which reached about twice the
  throughput of the default BLAS call (MKL) for these small shapes on the AMD EPYC the benchmarks ran on,
  and fold the LoRA update into the base output with one `addmm`;
- attention is written out as two batched matmuls and a softmax, which at 25 tokens and a head width of 16
  is faster than the fused CPU kernel behind `scaled_dot_product_attention`;
- the last block computes attention, projection and MLP for the [CLS] position only, because the classifier
  reads no other row. Its keys and values still cover every token;
- the backward computes only the gradients something trains: no weight gradient for a frozen base and no
  input gradient below the lowest trained parameter.

The results equal the eager model's up to rounding: the sums run in a different order, so losses and logits
differ in their last bits (a tolerance test pins this), and a training run can drift apart from the eager one
over many steps. `make_forward` falls back to the eager model for anything it does not support.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .lora import LoRALinear
from .model import Block, TinyClassifier
from .quant import QuantizedLinear

# "auto" uses the fast path for the methods that train adapters over a frozen base and the eager modules for a
# full finetune, whose trajectory turns rounding differences into different accuracies within a few epochs.
FAST_MODES = ("auto", "fused", "off")

# NOTE: a private operator (the one torch.compile's CPU backend emits); builds without it use F.linear.
_onednn_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, in) @ weight (out, in)^T + bias, through oneDNN when this build of torch has it."""
    if _onednn_linear is None:
        return F.linear(x, weight, bias)
    return _onednn_linear(x, weight, bias, "none", [], "")


@dataclass
class LinearParts:
    """The tensors one linear layer computes with: y = x W^T + b + scaling * (x A^T) B^T."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    lora_A: torch.Tensor | None = None  # (r, in), None without an active unmerged adapter
    lora_B: torch.Tensor | None = None  # (out, r)
    scaling: float = 1.0

    def tensors(self) -> list:
        return [self.weight, self.bias, self.lora_A, self.lora_B]


def linear_parts(layer: nn.Module, training: bool) -> LinearParts | None:
    """Return the tensors of a plain, quantized or LoRA-wrapped linear, or None when the fast path cannot run it."""
    lora = None
    if isinstance(layer, LoRALinear):
        lora, layer = layer, layer.base_layer
    if type(layer) is nn.Linear:
        parts = LinearParts(layer.weight, layer.bias)
    elif isinstance(layer, QuantizedLinear):
        parts = LinearParts(layer.weight, layer.bias)  # dequantized now, once per forward pass, as eager does
    else:
        return None
    if lora is None or lora.active_adapter is None or lora.merged:
        return parts
    name = lora.active_adapter
    if training and not isinstance(lora.lora_dropout[name], nn.Identity):
        return None  # NOTE: dropout on the adapter input is left to the eager path.
    parts.lora_A = lora.lora_A[name].weight
    parts.lora_B = lora.lora_B[name].weight
    parts.scaling = lora.scaling[name]
    return parts


# Block parameters in the order BlockFunction receives them after the hidden states.
_LINEARS = ("qkv", "proj", "fc1", "fc2")


def _block_tensors(block: Block, training: bool) -> tuple[list, tuple[float, ...]] | None:
    parts = [linear_parts(getattr(block, name), training) for name in _LINEARS]
    if any(p is None for p in parts) or not (type(block.ln1) is nn.LayerNorm and type(block.ln2) is nn.LayerNorm):
        return None
    tensors = [block.ln1.weight, block.ln1.bias, *parts[0].tensors(), *parts[1].tensors(),
               block.ln2.weight, block.ln2.bias, *parts[2].tensors(), *parts[3].tensors()]
    return tensors, tuple(p.scaling for p in parts)


# Linear forward and backward

def _linear_forward(x, weight, bias, lora_A, lora_B, scaling):
    """Return (y, x A^T), where y is the base output plus the LoRA update and x A^T is kept for the backward."""
    y = _linear(x, weight, bias)
    if lora_A is None:
        return y, None
    xa = x.mm(lora_A.t())  # (N, r)
    return y.addmm_(xa, lora_B.t(), alpha=scaling), xa


def _linear_backward(dy, x, xa, weight, bias, lora_A, lora_B, scaling, needs_dx: bool):
    """Compute (dx, dW, db, dA, dB) for y = x W^T + b + scaling * (x A^T) B^T, with None for each unneeded one."""
    dx = _linear(dy, weight.t()) if needs_dx else None
    dweight = dy.t().mm(x) if weight.requires_grad else None
    dbias = dy.sum(0) if bias is not None and bias.requires_grad else None
    dA = dB = None
    if lora_A is not None:
        # Both products have a side of only r columns. Written this way they avoid BLAS paths that measured
        # several times slower for that shape (torch 2.13 with MKL 2024.2 on an AMD EPYC).
        dxa = _linear(dy, lora_B.t()).mul_(scaling)  # (N, r), the gradient of x A^T
        dB = xa.t().mm(dy).mul_(scaling).t()  # (out, r)
        dA = dxa.t().mm(x)  # (r, in)
        if needs_dx:
            dx.addmm_(dxa, lora_A)
    return dx, dweight, dbias, dA, dB


def _any_requires_grad(tensors) -> bool:
    return any(t is not None and t.requires_grad for t in tensors)


# The transformer block

@dataclass(frozen=True)
class BlockSpec:
    n_heads: int
    scalings: tuple[float, ...]  # LoRA scaling of qkv, proj, fc1, fc2
    cls_only: bool  # compute the output at position 0 only (the last block)
    eps: tuple[float, float]  # ln1 and ln2


def _layer_norm(x, weight, bias, eps):
    return torch.ops.aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)  # (y, mean, rstd)


def block_forward(spec: BlockSpec, h: torch.Tensor, tensors: list) -> tuple[torch.Tensor, tuple]:
    """Run one pre-norm block on h (B, T, D) and return its output and the activations the backward needs.

    The output is (B, T, D), or (B, D) for the [CLS] position alone when `spec.cls_only`.
    """
    ln1_w, ln1_b, *qkv, = tensors[:6]
    proj, (ln2_w, ln2_b), fc1, fc2 = tensors[6:10], tensors[10:12], tensors[12:16], tensors[16:20]
    s_qkv, s_proj, s_fc1, s_fc2 = spec.scalings
    B, T, D = h.shape
    nh, hs = spec.n_heads, D // spec.n_heads
    x = h.reshape(B * T, D)

    # Attention over (B * nh, T, hs) heads; with cls_only the queries are position 0 alone.
    z1, mean1, rstd1 = _layer_norm(x, ln1_w, ln1_b, spec.eps[0])
    qkv_out, xa_qkv = _linear_forward(z1, *qkv, s_qkv)
    heads = qkv_out.view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4).reshape(3, B * nh, T, hs)
    q, k, v = heads[0], heads[1], heads[2]
    if spec.cls_only:
        q = q[:, :1]  # (B * nh, 1, hs)
    tq = q.shape[1]
    scores = torch.bmm(q, k.transpose(1, 2)).mul_(1.0 / math.sqrt(hs))  # (B * nh, tq, T)
    probs = torch._softmax(scores, -1, False)
    attn = torch.bmm(probs, v).view(B, nh, tq, hs).transpose(1, 2).reshape(B * tq, D)  # (B * tq, D)

    # Residual, then the MLP
    residual = h[:, 0] if spec.cls_only else x  # (B * tq, D)
    proj_out, xa_proj = _linear_forward(attn, *proj, s_proj)
    x2 = proj_out.add_(residual)
    z2, mean2, rstd2 = _layer_norm(x2, ln2_w, ln2_b, spec.eps[1])
    u, xa_fc1 = _linear_forward(z2, *fc1, s_fc1)
    g = torch.ops.aten.gelu(u)
    y, xa_fc2 = _linear_forward(g, *fc2, s_fc2)
    out = y.add_(x2)

    saved = (x, z1, mean1, rstd1, xa_qkv, q, k, v, probs, attn, xa_proj, x2, z2, mean2, rstd2, u, xa_fc1, g, xa_fc2)
    return (out if spec.cls_only else out.view(B, T, D)), saved


def block_backward(spec: BlockSpec, needs_dh: bool, dout: torch.Tensor, h_shape, tensors: list, saved: tuple):
    """Compute the gradients of (h, *tensors) for `block_forward`, with None for each unneeded one."""
    x, z1, mean1, rstd1, xa_qkv, q, k, v, probs, attn, xa_proj, x2, z2, mean2, rstd2, u, xa_fc1, g, xa_fc2 = saved
    ln1_w, ln1_b, *qkv, = tensors[:6]
    proj, (ln2_w, ln2_b), fc1, fc2 = tensors[6:10], tensors[10:12], tensors[12:16], tensors[16:20]
    s_qkv, s_proj, s_fc1, s_fc2 = spec.scalings
    B, T, D = h_shape
    nh, hs = spec.n_heads, D // spec.n_heads
    tq = q.shape[1]

    # Which inputs of each layer need a gradient: those with anything trained below them.
    below_qkv = needs_dh or _any_requires_grad([ln1_w, ln1_b])
    below_proj = below_qkv or _any_requires_grad(qkv)
    below_ln2 = below_proj or _any_requires_grad(proj)
    below_fc1 = below_ln2 or _any_requires_grad([ln2_w, ln2_b])
    below_fc2 = below_fc1 or _any_requires_grad(fc1)

    # MLP
    dy = dout.reshape(-1, D)  # (B * tq, D)
    dg, *g_fc2 = _linear_backward(dy, g, xa_fc2, *fc2, s_fc2, needs_dx=below_fc2)
    g_fc1 = [None] * 4
    g_ln2 = [None, None]
    dx2 = dy
    if below_fc2:
        du = torch.ops.aten.gelu_backward(dg, u)
        dz2, *g_fc1 = _linear_backward(du, z2, xa_fc1, *fc1, s_fc1, needs_dx=below_fc1)
        if below_fc1:
            dx2_ln, *g_ln2 = torch.ops.aten.native_layer_norm_backward(
                dz2, x2, [D], mean2, rstd2, ln2_w, ln2_b, [below_ln2, ln2_w.requires_grad, ln2_b.requires_grad])
            if below_ln2:
                dx2 = dx2_ln.add_(dy)

    # Attention
    g_proj, g_qkv, g_ln1 = [None] * 4, [None] * 4, [None, None]
    dx = None
    if below_ln2:
        dattn, *g_proj = _linear_backward(dx2, attn, xa_proj, *proj, s_proj, needs_dx=below_proj)
    if below_ln2 and below_proj:
        d_o = dattn.view(B, tq, nh, hs).transpose(1, 2).reshape(B * nh, tq, hs)
        dprobs = torch.bmm(d_o, v.transpose(1, 2))  # (B * nh, tq, T)
        dscores = torch._softmax_backward_data(dprobs, probs, -1, probs.dtype).mul_(1.0 / math.sqrt(hs))
        # dQ, dK and dV go straight into one buffer laid out like the forward's heads.
        dheads = q.new_empty(3, B * nh, T, hs)
        torch.bmm(dscores.transpose(1, 2), q, out=dheads[1])
        torch.bmm(probs.transpose(1, 2), d_o, out=dheads[2])
        if spec.cls_only:
            dheads[0].zero_()[:, :tq] = torch.bmm(dscores, k)
        else:
            torch.bmm(dscores, k, out=dheads[0])
        dqkv = dheads.view(3, B, nh, T, hs).permute(1, 3, 0, 2, 4).reshape(B * T, 3 * D)  # (B * T, 3D)
        dz1, *g_qkv = _linear_backward(dqkv, z1, xa_qkv, *qkv, s_qkv, needs_dx=below_qkv)
        if below_qkv:
            dx, *g_ln1 = torch.ops.aten.native_layer_norm_backward(
                dz1, x, [D], mean1, rstd1, ln1_w, ln1_b, [needs_dh, ln1_w.requires_grad, ln1_b.requires_grad])

    # The residual stream into this block
    dh = None
    if needs_dh:
        if dx is None:
            dx = dx2.new_zeros(B * T, D)
        dh = dx.view(B, T, D)
        if spec.cls_only:
            dh[:, 0] += dx2
        else:
            dh += dx2.view(B, T, D)
    return (dh, *g_ln1, *g_qkv, *g_proj, *g_ln2, *g_fc1, *g_fc2)


class BlockFunction(torch.autograd.Function):
    """One transformer block as a single autograd node; see `block_forward` and `block_backward`."""

    @staticmethod
    def forward(ctx, spec: BlockSpec, h: torch.Tensor, *tensors):
        out, saved = block_forward(spec, h, list(tensors))
        ctx.spec, ctx.h_shape = spec, h.shape
        ctx.n_saved = len(saved)
        ctx.save_for_backward(*saved, *tensors)
        return out

    @staticmethod
    def backward(ctx, dout):
        stored = ctx.saved_tensors
        saved, tensors = stored[:ctx.n_saved], list(stored[ctx.n_saved:])
        grads = block_backward(ctx.spec, ctx.needs_input_grad[1], dout.contiguous(), ctx.h_shape, tensors, saved)
        return (None, *grads)


# The whole model

def make_forward(model: nn.Module, mode: str = "auto") -> Callable[..., torch.Tensor]:
    """Return a function with the model's call signature that computes its logits on the fast path.

    The function calls the model itself in three cases: with mode "off", with mode "auto" when the model has
    no LoRA layer (a full finetune), and for a model the fast path does not cover. The fast path does not
    cover models other than `TinyClassifier`, custom layers, or LoRA dropout while training.
    """
    if mode not in FAST_MODES:
        raise ValueError(f"unknown fast mode {mode!r}; choose one of {', '.join(FAST_MODES)}")
    if mode == "off" or type(model) is not TinyClassifier:
        return model
    if mode == "auto" and not any(isinstance(m, LoRALinear) for m in model.modules()):
        return model

    def forward(x: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        blocks = [_block_tensors(block, model.training) for block in model.blocks]
        if any(b is None for b in blocks) or not all(type(block) is Block for block in model.blocks):
            return model(x, task_ids)
        h = _embed(model, x, task_ids)
        last = len(model.blocks) - 1
        for i, (block, (tensors, scalings)) in enumerate(zip(model.blocks, blocks)):
            spec = BlockSpec(block.n_heads, scalings, cls_only=i == last, eps=(block.ln1.eps, block.ln2.eps))
            h = BlockFunction.apply(spec, h, *tensors)
        return model.head(model.ln(h))  # h is (B, D): the [CLS] position

    return forward


def _embed(model: TinyClassifier, x: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor:
    """Compute the input to block 0, (B, T + 1, D), as `TinyClassifier.forward` does."""
    B, T = x.shape
    cls = torch.full((B, 1), model.config.cls_id, dtype=x.dtype, device=x.device)
    x = torch.cat([cls, x], dim=1)
    h = model.tok(x) + model.pos(torch.arange(T + 1, device=x.device))[None]
    if task_ids is not None:
        if model.task_emb is None:
            raise ValueError("task_ids were given but the model was built with n_task_ids=0")
        h[:, 0] = h[:, 0] + model.task_emb(task_ids)
    return h

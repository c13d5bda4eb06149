"""The operators of the fused path, each with its hand-written backward: linear layers with LoRA, and attention.

Linear layers call oneDNN's matmul (`torch.ops.mkldnn._linear_pointwise`), which reached about twice the
throughput of the default BLAS call (MKL) for these small shapes on the AMD EPYC the benchmarks ran on. A
LoRA layer folds its update into the weight before the product, `W + scaling * B A`, and stacks A under it,
so that one product gives the output and x A^T. The input gradient likewise comes with the gradient of x A^T
from one product. That equals the eager `x W^T + scaling * (x A^T) B^T` up to float rounding.

Attention is written out as two batched matmuls and a softmax, which at 25 tokens and a head width of 16 is
faster than the fused CPU kernel behind `scaled_dot_product_attention`, most of all in the backward pass.
Large intermediate tensors go into a `Workspace` that keeps them from one step to the next: allocating them
afresh cost a page fault per 4 KiB on every step.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .weights import LinearParts

# NOTE: a private operator (the one torch.compile's CPU backend emits); builds without it use F.linear.
_onednn_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, in) @ weight (out, in)^T + bias, through oneDNN when this build of torch has it."""
    if _onednn_linear is None:
        return F.linear(x, weight, bias)
    return _onednn_linear(x, weight, bias, "none", [], "")


class Workspace:
    """Buffers kept from one call to the next under a name, so that large intermediates are not reallocated."""

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}

    def get(self, name: tuple, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            buffer = torch.empty(shape, dtype=dtype)
            self._buffers[name] = buffer
        return buffer

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


class NoWorkspace:
    """A stand-in for `Workspace` that allocates every tensor afresh (for calls whose results outlive the call)."""

    def get(self, name: tuple, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)


# Linear layers with LoRA

@dataclass
class PreparedLinear:
    """A linear layer ready for one forward and backward pass: its parts and the weights the products use.

    With an adapter, `weight` stacks A under the folded weight, so one product yields both the output and
    x A^T, which the gradient of B needs.
    """

    parts: LinearParts
    weight: torch.Tensor  # (out, in) = W + scaling * B A, or ((out + r), in) with A stacked; compute dtype
    bias: torch.Tensor | None  # (out,) or (out + r,), zero for the rows of A; compute dtype
    out_features: int

    @property
    def has_lora(self) -> bool:
        return self.parts.lora_A is not None

    def input_weight(self) -> torch.Tensor:
        """Return the weight of the input gradient's product: (in, out), or (in + r, out) with scaling * B^T.

        The extra rows give the gradient of x A^T in the same product as dx.
        """
        folded = self.weight[:self.out_features].t()
        if not self.has_lora:
            return folded
        lora_B = self.parts.lora_B.detach().t().to(self.weight.dtype)
        return torch.cat([folded, lora_B * self.parts.scaling])


def prepare_linear(parts: LinearParts, dtype: torch.dtype = torch.float32) -> PreparedLinear:
    """Fold the adapter into the weight and cast weight and bias to `dtype` (float32 or bfloat16) for the products."""
    weight = parts.weight.detach()
    bias = None if parts.bias is None else parts.bias.detach()
    out_features = weight.shape[0]
    if parts.lora_A is not None:
        lora_A = parts.lora_A.detach()
        folded = torch.addmm(weight, parts.lora_B.detach(), lora_A, alpha=parts.scaling)
        weight = torch.cat([folded, lora_A])
        if bias is not None:
            bias = torch.cat([bias, bias.new_zeros(lora_A.shape[0])])
    if dtype != torch.float32:
        weight = weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    return PreparedLinear(parts, weight, bias, out_features)


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T + bias in float32, computing the product in the weight's dtype."""
    if weight.dtype == torch.float32:
        return linear(x, weight, bias)
    return linear(x.to(weight.dtype), weight, bias).float()


def linear_forward(x: torch.Tensor, layer: PreparedLinear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return y = x W^T + b + scaling * (x A^T) B^T (N, out) and x A^T (N, r), or None without an adapter.

    With an adapter both are column slices of one (N, out + r) product, so neither is contiguous.
    """
    out = _product(x, layer.weight, layer.bias)
    if not layer.has_lora:
        return out, None
    return out[:, :layer.out_features], out[:, layer.out_features:]


def linear_backward(dy: torch.Tensor, x: torch.Tensor, xa: torch.Tensor | None, layer: PreparedLinear,
                    needs_dx: bool):
    """Compute (dx, dW, db, dA, dB) for `linear_forward`, with None for each unneeded one.

    `x` may be None when neither the weight nor an adapter trains. The gradients of trained weights are
    computed in float32; only dx uses the compute dtype.
    """
    parts = layer.parts
    dx = dxa = None
    if needs_dx or layer.has_lora:
        if layer.has_lora and not needs_dx:
            # (N, r), the gradient of x A^T. Through oneDNN: MKL measured several times slower for r columns.
            dxa = linear(dy, parts.lora_B.detach().t()).mul_(parts.scaling)
        else:
            dx = _product(dy, layer.input_weight())
            if layer.has_lora:
                in_features = parts.weight.shape[1]
                dx, dxa = dx[:, :in_features], dx[:, in_features:]
    # dW = dy^T x through oneDNN, which took the transposed views faster than MKL's mm (1,600 rows).
    dweight = linear(dy.t(), x.t()) if parts.weight.requires_grad else None
    dbias = dy.sum(0) if parts.bias is not None and parts.bias.requires_grad else None
    dA = dB = None
    if layer.has_lora:
        dB = xa.t().mm(dy).mul_(parts.scaling).t()  # (out, r)
        dA = dxa.t().mm(x)  # (r, in)
    return dx, dweight, dbias, dA, dB


# Attention

@dataclass(frozen=True)
class AttentionShape:
    batch: int
    tokens: int
    n_heads: int
    head_size: int
    cls_only: bool  # queries at position 0 only

    @property
    def queries(self) -> int:
        return 1 if self.cls_only else self.tokens


def attention_forward(qkv: torch.Tensor, shape: AttentionShape, ws: Workspace, block: int):
    """Multi-head attention over qkv (B * T, 3D); return the output (B * tq, D) and (heads, probs) for backward.

    `heads` is (3, B * nh, T, hs) and `probs` (B * nh, tq, T), where tq is 1 with `cls_only` and T otherwise.
    """
    B, T, nh, hs = shape.batch, shape.tokens, shape.n_heads, shape.head_size
    tq = shape.queries
    heads = ws.get((block, "heads"), (3, B * nh, T, hs))
    heads.view(3, B, nh, T, hs).copy_(qkv.view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4))
    q, k, v = heads[0, :, :tq], heads[1], heads[2]
    scores = ws.get((block, "scores"), (B * nh, tq, T))
    torch.baddbmm(scores, q, k.transpose(1, 2), beta=0.0, alpha=1.0 / math.sqrt(hs), out=scores)
    probs = ws.get((block, "probs"), (B * nh, tq, T))
    torch.ops.aten._softmax.out(scores, -1, False, out=probs)
    context = ws.get((block, "context"), (B * nh, tq, hs))
    torch.bmm(probs, v, out=context)
    attn = ws.get((block, "attn"), (B * tq, nh * hs))
    attn.view(B, tq, nh, hs).copy_(context.view(B, nh, tq, hs).transpose(1, 2))
    return attn, heads, probs


def attention_backward(dattn: torch.Tensor, heads: torch.Tensor, probs: torch.Tensor, shape: AttentionShape,
                       ws: Workspace, block: int) -> torch.Tensor:
    """Return the gradient of qkv (B * T, 3D) given that of the attention output (B * tq, D)."""
    B, T, nh, hs = shape.batch, shape.tokens, shape.n_heads, shape.head_size
    tq = shape.queries
    q, k, v = heads[0, :, :tq], heads[1], heads[2]
    dcontext = ws.get((block, "dcontext"), (B * nh, tq, hs))
    dcontext.view(B, nh, tq, hs).copy_(dattn.view(B, tq, nh, hs).transpose(1, 2))
    dprobs = ws.get((block, "dprobs"), (B * nh, tq, T))
    torch.bmm(dcontext, v.transpose(1, 2), out=dprobs)
    dscores = ws.get((block, "dscores"), (B * nh, tq, T))
    torch.ops.aten._softmax_backward_data.out(dprobs, probs, -1, probs.dtype, grad_input=dscores)
    dscores.mul_(1.0 / math.sqrt(hs))

    # dQ, dK and dV go into one buffer laid out like the forward's heads.
    dheads = ws.get((block, "dheads"), (3, B * nh, T, hs))
    if tq < T:
        dheads[0].zero_()[:, :tq] = torch.bmm(dscores, k)
    else:
        torch.bmm(dscores, k, out=dheads[0])
    torch.bmm(dscores.transpose(1, 2), q, out=dheads[1])
    torch.bmm(probs.transpose(1, 2), dcontext, out=dheads[2])
    dqkv = ws.get((block, "dqkv"), (B * T, 3 * nh * hs))
    dqkv.view(B, T, 3, nh, hs).copy_(dheads.view(3, B, nh, T, hs).permute(1, 3, 0, 2, 4))
    return dqkv

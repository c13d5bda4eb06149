"""The transformer blocks of `TinyClassifier` as one autograd node, with a hand-written backward.

`StackFunction` runs every block in its forward pass and every block's backward in its own, so autograd sees
one node for the whole stack. Its choices:

- the last block computes attention, projection and MLP for the [CLS] position only, because the classifier
  reads no other row. Its keys and values still cover every token;
- the backward computes only the gradients something trains: no weight gradient for a frozen base and no
  input gradient below the lowest trained parameter;
- the activations the backward needs live in a `Workspace` reused by the next step. A second forward pass
  in training mode overwrites them, so a backward after it raises instead of computing wrong gradients.
"""

from dataclasses import dataclass

import torch

from .kernels import (AttentionShape, NoWorkspace, PreparedLinear, Workspace, attention_backward,
                      attention_forward, linear_backward, linear_forward, prepare_linear)
from .weights import TENSORS_PER_BLOCK, LinearParts


@dataclass(frozen=True)
class BlockSpec:
    n_heads: int
    scalings: tuple[float, ...]  # LoRA scaling of qkv, proj, fc1, fc2
    cls_only: bool  # compute the output at position 0 only (the last block)
    eps: tuple[float, float]  # ln1 and ln2


@dataclass
class BlockWeights:
    """One block's layer norms and its four linears, prepared for one step."""

    ln1: tuple[torch.Tensor, torch.Tensor]
    qkv: PreparedLinear
    proj: PreparedLinear
    ln2: tuple[torch.Tensor, torch.Tensor]
    fc1: PreparedLinear
    fc2: PreparedLinear

    @classmethod
    def prepare(cls, tensors: list, scalings: tuple[float, ...], dtype: torch.dtype) -> "BlockWeights":
        linears = [prepare_linear(LinearParts(*tensors[i:i + 4], scaling), dtype)
                   for i, scaling in zip((2, 6, 12, 16), scalings)]
        return cls((tensors[0], tensors[1]), linears[0], linears[1], (tensors[10], tensors[11]), *linears[2:])


def _layer_norm(x, weight, bias, eps):
    return torch.ops.aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)  # (y, mean, rstd)


def _add(y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    # In place when y is a whole product of its own; a column slice (a layer with an adapter) needs a new tensor.
    return y.add_(residual) if y.is_contiguous() else torch.add(y, residual)


def _trains(layer: PreparedLinear) -> bool:
    return any(t is not None and t.requires_grad for t in layer.parts.tensors())


def block_forward(spec: BlockSpec, h: torch.Tensor, w: BlockWeights, ws, index: int):
    """Run one pre-norm block on h (B, T, D); return its output and the activations its backward needs.

    The output is (B, T, D), or (B, D) for the [CLS] position alone when `spec.cls_only`.
    """
    B, T, D = h.shape
    shape = AttentionShape(B, T, spec.n_heads, D // spec.n_heads, spec.cls_only)
    x = h.reshape(B * T, D)

    # Attention
    z1, mean1, rstd1 = _layer_norm(x, *w.ln1, spec.eps[0])
    qkv, xa_qkv = linear_forward(z1, w.qkv)  # (B * T, 3D)
    attn, heads, probs = attention_forward(qkv, shape, ws, index)  # attn is (B * tq, D)

    # Residual, then the MLP
    residual = h[:, 0] if spec.cls_only else x  # (B * tq, D)
    y, xa_proj = linear_forward(attn, w.proj)
    x2 = _add(y, residual)
    z2, mean2, rstd2 = _layer_norm(x2, *w.ln2, spec.eps[1])
    u, xa_fc1 = linear_forward(z2, w.fc1)
    g = torch.ops.aten.gelu(u)
    y, xa_fc2 = linear_forward(g, w.fc2)
    out = _add(y, x2)

    # A layer's input is kept only when its weights or adapter train: the input gradient needs none. Dropping
    # the others at once lets the allocator reuse their memory while it is still in the cache.
    z1, attn, z2, g = (t if _trains(layer) else None for t, layer in ((z1, w.qkv), (attn, w.proj), (z2, w.fc1),
                                                                      (g, w.fc2)))
    saved = (x, z1, mean1, rstd1, xa_qkv, heads, probs, attn, xa_proj, x2, z2, mean2, rstd2, u, xa_fc1, g, xa_fc2)
    return (out if spec.cls_only else out.view(B, T, D)), saved


def block_backward(spec: BlockSpec, needs_dh: bool, dout: torch.Tensor, h_shape, w: BlockWeights, saved: tuple,
                   ws, index: int):
    """Return dh and the gradients of the block's 20 tensors (None for each unneeded one)."""
    x, z1, mean1, rstd1, xa_qkv, heads, probs, attn, xa_proj, x2, z2, mean2, rstd2, u, xa_fc1, g, xa_fc2 = saved
    B, T, D = h_shape
    shape = AttentionShape(B, T, spec.n_heads, D // spec.n_heads, spec.cls_only)
    (ln1_w, ln1_b), (ln2_w, ln2_b) = w.ln1, w.ln2

    # Which inputs of each layer need a gradient: those with anything trained below them.
    below_qkv = needs_dh or ln1_w.requires_grad or ln1_b.requires_grad
    below_proj = below_qkv or _trains(w.qkv)
    below_ln2 = below_proj or _trains(w.proj)
    below_fc1 = below_ln2 or ln2_w.requires_grad or ln2_b.requires_grad
    below_fc2 = below_fc1 or _trains(w.fc1)

    # MLP
    dy = dout.reshape(-1, D)  # (B * tq, D)
    dg, *g_fc2 = linear_backward(dy, g, xa_fc2, w.fc2, needs_dx=below_fc2)
    g_fc1, g_ln2 = [None] * 4, [None, None]
    dx2 = dy
    if below_fc2:
        du = torch.ops.aten.gelu_backward(dg, u)
        dz2, *g_fc1 = linear_backward(du, z2, xa_fc1, w.fc1, needs_dx=below_fc1)
        if below_fc1:
            dx2_ln, *g_ln2 = torch.ops.aten.native_layer_norm_backward(
                dz2, x2, [D], mean2, rstd2, ln2_w, ln2_b, [below_ln2, ln2_w.requires_grad, ln2_b.requires_grad])
            if below_ln2:
                dx2 = dx2_ln.add_(dy)

    # Attention
    g_proj, g_qkv, g_ln1 = [None] * 4, [None] * 4, [None, None]
    dx = None
    if below_ln2:
        dattn, *g_proj = linear_backward(dx2, attn, xa_proj, w.proj, needs_dx=below_proj)
        if below_proj:
            dqkv = attention_backward(dattn, heads, probs, shape, ws, index)
            dz1, *g_qkv = linear_backward(dqkv, z1, xa_qkv, w.qkv, needs_dx=below_qkv)
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
    return dh, (*g_ln1, *g_qkv, *g_proj, *g_ln2, *g_fc1, *g_fc2)


class Stack:
    """The blocks of one model with the workspace their training steps share.

    `dtype` is the dtype of the linear layers' products: float32, or bfloat16 for the `bf16` mode.
    """

    def __init__(self, specs: list[BlockSpec], dtype: torch.dtype = torch.float32):
        self.specs = specs
        self.dtype = dtype
        self.workspace = Workspace()
        self.generation = 0  # forward passes in training mode so far; the latest one owns the workspace

    def prepare(self, tensors: list) -> list[BlockWeights]:
        n = TENSORS_PER_BLOCK
        return [BlockWeights.prepare(tensors[i * n:(i + 1) * n], spec.scalings, self.dtype)
                for i, spec in enumerate(self.specs)]

    def forward(self, h: torch.Tensor, weights: list[BlockWeights], ws) -> tuple[torch.Tensor, list]:
        saved = []
        for index, (spec, w) in enumerate(zip(self.specs, weights)):
            h, block_saved = block_forward(spec, h, w, ws, index)
            saved.append((h.shape, block_saved))
        return h, saved

    def __call__(self, h: torch.Tensor, tensors: list) -> torch.Tensor:
        """Return the [CLS] output (B, D) of the last block for the stack's input h (B, T, D)."""
        if torch.is_grad_enabled() and (h.requires_grad or any(t is not None and t.requires_grad for t in tensors)):
            return StackFunction.apply(self, h, *tensors)
        with torch.no_grad():
            return self.forward(h, self.prepare(tensors), NoWorkspace())[0]


class StackFunction(torch.autograd.Function):
    """Every block of the stack as a single autograd node; see `block_forward` and `block_backward`."""

    @staticmethod
    def forward(ctx, stack: Stack, h: torch.Tensor, *tensors):
        weights = stack.prepare(list(tensors))
        out, saved = stack.forward(h, weights, stack.workspace)
        stack.generation += 1
        ctx.stack, ctx.generation, ctx.weights, ctx.saved = stack, stack.generation, weights, saved
        ctx.h_shape = h.shape
        ctx.save_for_backward(h, *(t for t in tensors if t is not None))
        return out

    @staticmethod
    def backward(ctx, dout):
        stack = ctx.stack
        if ctx.generation != stack.generation:
            raise RuntimeError("the fast path's saved activations were overwritten by a later forward pass in "
                               "training mode; call backward() before the next forward pass")
        ctx.saved_tensors  # noqa: B018 (raises if an input was modified in place since the forward pass)
        grads = []
        dh = dout.contiguous()
        last = len(stack.specs) - 1
        for index in range(last, -1, -1):
            h_shape = ctx.h_shape if index == 0 else ctx.saved[index - 1][0]
            needs_dh = ctx.needs_input_grad[1] if index == 0 else True
            if index > 0:
                # Stop at the lowest block with anything to train unless the input itself needs a gradient.
                below = any(ctx.needs_input_grad[2:2 + index * TENSORS_PER_BLOCK])
                needs_dh = below or ctx.needs_input_grad[1]
            dh, block_grads = block_backward(stack.specs[index], needs_dh, dh, h_shape, ctx.weights[index],
                                             ctx.saved[index][1], stack.workspace, index)
            grads.append(block_grads)
            if dh is None:
                grads.extend([(None,) * TENSORS_PER_BLOCK] * index)
                break
        ordered = [g for block in reversed(grads) for g in block]
        return (None, dh if ctx.needs_input_grad[1] else None, *ordered)

"""Floating-point operations of one training step, counted from the model's shapes.

Only matrix multiplications are counted, at 2 operations per multiply-add: the four block linears, the LoRA
adapters, the classifier head and the two attention products (Q K^T and P V). Layer norms, GELU, softmax,
dequantization, embeddings and the optimizer are elementwise and left out. They are few operations but take
real time, so a step's achieved rate stays below the matrix-multiply peak.

The backward pass of a product Y = X W^T costs one product for dX and one for dW, each as much as the forward
one, and autograd computes each only when it is needed: dW when W is trained, dX when something trainable
lies below X. For LoRA that means no dW for frozen weights and no dX into block 0's first adapted layer.
"""

from dataclasses import dataclass

from .config import RunConfig

# The block linears in the order the forward pass runs them.
_LINEAR_ORDER = ("qkv", "proj", "fc1", "fc2")


@dataclass(frozen=True)
class StepFlops:
    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward


def linear_shapes(d_model: int) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each block linear."""
    return {"qkv": (d_model, 3 * d_model), "proj": (d_model, d_model), "fc1": (d_model, 4 * d_model),
            "fc2": (4 * d_model, d_model)}


def training_step_flops(config: RunConfig, batch_size: int | None = None) -> StepFlops:
    """Count the forward and backward matmul operations of one training step of `config`.

    `batch_size` defaults to `config.train.batch_size`; every example has `seq_len + 1` tokens with [CLS].
    """
    m = config.model
    b = config.train.batch_size if batch_size is None else batch_size
    tokens = b * (m.seq_len + 1)
    head_dim = m.d_model // m.n_heads
    shapes = linear_shapes(m.d_model)
    full = config.method == "full"
    adapted = set(config.lora.target_modules) if config.uses_lora else set()
    r = config.lora.r

    forward = backward = 0
    # Whether the activations flowing into the next layer depend on a trained parameter (so need a gradient).
    # In a full finetune the embeddings are trained; with LoRA nothing below block 0's first adapter is.
    needs_grad = full
    for _ in range(m.n_layers):
        for name in _LINEAR_ORDER:
            d_in, d_out = shapes[name]
            base = 2 * tokens * d_in * d_out
            forward += base
            if needs_grad:
                backward += base  # dX through the base weight
            if full:
                backward += base  # dW
            if name in adapted:
                down, up = 2 * tokens * d_in * r, 2 * tokens * r * d_out  # X A^T, then (X A^T) B^T
                forward += down + up
                backward += up + up + down  # dB, d(X A^T), dA
                if needs_grad:
                    backward += down  # dX through A
                needs_grad = True
            if name == "qkv":
                # Q K^T and P V, each (T x hs) by (hs x T) or (T x T) by (T x hs) per head and example.
                attention = 2 * 2 * b * m.n_heads * (m.seq_len + 1) ** 2 * head_dim
                forward += attention
                if needs_grad:
                    backward += 2 * attention  # dQ, dK, dP and dV

    head = 2 * b * m.d_model * m.n_classes
    forward += head
    backward += head  # dW of the head, which every method trains
    if needs_grad:
        backward += head  # dX into the final norm
    return StepFlops(forward, backward)

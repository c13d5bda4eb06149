"""A faster forward and backward pass for `TinyClassifier`, with the same arithmetic up to float rounding.

The eager model runs a few hundred small operators per training step, each through autograd, and leaves the
step far from the matrix-multiply peak. `make_forward` instead computes the embeddings and the classifier
head with the model's own modules and every transformer block in one autograd node with a hand-written
backward (`tinylora.fastpath.stack`, with the operators in `tinylora.fastpath.kernels`). A quantized frozen
base is dequantized once and kept as a float32 copy (`tinylora.fastpath.weights`).

The results equal the eager model's up to rounding: the sums run in a different order, so losses and logits
differ in their last bits (a tolerance test pins this), and a training run can drift apart from the eager one
over many steps. The `bf16` mode computes the linear layers' products in bfloat16, which changes results
further. `make_forward` falls back to the eager model for anything it does not support.
"""

from collections.abc import Callable

import torch
import torch.nn as nn

from ..lora import LoRALinear
from ..model import TinyClassifier
from .allocator import keep_freed_memory  # noqa: F401  (re-exported for the training loop)
from .stack import BlockSpec, Stack
from .weights import DequantizedWeights, block_tensors

# "auto" uses the fast path for the methods that train adapters over a frozen base and the eager modules for a
# full finetune, whose trajectory turns rounding differences into different accuracies within a few epochs.
# "bf16" is the fast path with bfloat16 products in the linear layers, float32 everywhere else.
FAST_MODES = ("auto", "fused", "bf16", "off")

# Evaluation runs the fast path on this many examples at a time, so that no intermediate tensor exceeds about
# 3 MiB (the MLP's hidden activations of 128 x 25 tokens). NOTE: picked from a few timings of the 512-example
# validation set on a 2-core AMD EPYC, not tuned for other machines.
EVAL_CHUNK = 128


def make_forward(model: nn.Module, mode: str = "auto", cache_dequantized: bool = True
                 ) -> Callable[..., torch.Tensor]:
    """Return a function with the model's call signature that computes its logits on the fast path.

    The function calls the model itself in three cases: with mode "off", with mode "auto" when the model has
    no LoRA layer (a full finetune), and for a model the fast path does not cover. The fast path covers a
    `TinyClassifier` and an `AdapterModel` over one (whose head is then the active adapter's), but not custom
    layers or LoRA dropout while training. With
    `cache_dequantized` (the default) a quantized base is dequantized once and the float32 copy reused while
    its stored codes are unchanged; without it, every forward pass dequantizes again, as the eager model does.
    """
    if mode not in FAST_MODES:
        raise ValueError(f"unknown fast mode {mode!r}; choose one of {', '.join(FAST_MODES)}")
    # Imported here: tinylora.adapters imports modules that import this package.
    from ..adapters import AdapterModel

    core = model.base_model if type(model) is AdapterModel else model
    if mode == "off" or type(core) is not TinyClassifier:
        return model
    if mode == "auto" and not any(isinstance(m, LoRALinear) for m in model.modules()):
        return model
    cache = DequantizedWeights() if cache_dequantized else None
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    stacks: dict[tuple, Stack] = {}

    def forward(x: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        blocks = [block_tensors(block, core.training, cache) for block in core.blocks]
        if any(b is None for b in blocks):
            return model(x, task_ids)
        specs = [BlockSpec(block.n_heads, scalings, cls_only=i == len(blocks) - 1, eps=(block.ln1.eps, block.ln2.eps))
                 for i, (block, (_, scalings)) in enumerate(zip(core.blocks, blocks))]
        key = tuple(specs)
        if key not in stacks:
            stacks.clear()
            stacks[key] = Stack(specs, dtype)
        stack = stacks[key]
        tensors = [t for tensors, _ in blocks for t in tensors]
        if torch.is_grad_enabled() or len(x) <= EVAL_CHUNK:
            return core.head(core.ln(stack(_embed(core, x, task_ids), tensors)))
        chunks = []
        for i in range(0, len(x), EVAL_CHUNK):
            ids = None if task_ids is None else task_ids[i:i + EVAL_CHUNK]
            chunks.append(core.head(core.ln(stack(_embed(core, x[i:i + EVAL_CHUNK], ids), tensors))))
        return torch.cat(chunks)

    forward.dequantized = cache  # the float32 copies of a quantized base, for memory reports
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

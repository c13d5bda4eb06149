"""The tensors the fused path computes with, gathered from the model's layers, and a cache of dequantized bases.

A QLoRA base is stored as integer codes and scales (`tinylora.quant`) and stays frozen while adapters train.
The eager `QuantizedLinear` dequantizes it on every forward pass, which repeats the same work every step.
`DequantizedWeights` instead keeps one float32 copy per layer for as long as the stored codes and any merged
delta are unchanged. The stored base stays quantized; the copy exists only inside the fast path, for the
lifetime of the function `make_forward` returned, and `tinylora.memory` reports it as training memory.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..lora import LoRALinear
from ..model import Block
from ..quant import QuantizedLinear


@dataclass
class LinearParts:
    """The tensors of one linear layer: y = x W^T + b + scaling * (x A^T) B^T."""

    weight: torch.Tensor  # (out, in), the dequantized copy for a quantized base
    bias: torch.Tensor | None
    lora_A: torch.Tensor | None = None  # (r, in), None without an active unmerged adapter
    lora_B: torch.Tensor | None = None  # (out, r)
    scaling: float = 1.0

    def tensors(self) -> list:
        return [self.weight, self.bias, self.lora_A, self.lora_B]


class DequantizedWeights:
    """Float32 copies of quantized frozen weights, made once and remade only when the stored weight changes.

    A copy is keyed by the layer and checked against the version counters of the layer's code and scale
    buffers and the identity of its merged delta, so `requantize()`, `merge()` and in-place edits of the
    codes all invalidate it.
    """

    def __init__(self):
        self._copies: dict[int, tuple[tuple, torch.Tensor]] = {}

    def weight(self, layer: QuantizedLinear) -> torch.Tensor:
        state = layer.quant_state
        key = (tuple((name, t.data_ptr(), t._version) for name, t in state.items()), id(layer.merged_delta))
        cached = self._copies.get(id(layer))
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            weight = layer.weight
        self._copies[id(layer)] = (key, weight)
        return weight

    @property
    def nbytes(self) -> int:
        return sum(w.numel() * w.element_size() for _, w in self._copies.values())


def linear_parts(layer: nn.Module, training: bool, cache: DequantizedWeights | None) -> LinearParts | None:
    """Return the tensors of a plain, quantized or LoRA-wrapped linear, or None when the fast path cannot run it.

    A quantized base is dequantized through `cache`, or on every call when `cache` is None (as eager does).
    """
    lora = None
    if isinstance(layer, LoRALinear):
        lora, layer = layer, layer.base_layer
    if type(layer) is nn.Linear:
        parts = LinearParts(layer.weight, layer.bias)
    elif isinstance(layer, QuantizedLinear):
        weight = cache.weight(layer) if cache is not None else layer.weight
        parts = LinearParts(weight, layer.bias)
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


# Block parameters in the order the fused stack receives them, 20 per block.
LINEARS = ("qkv", "proj", "fc1", "fc2")
TENSORS_PER_BLOCK = 20


def block_tensors(block: nn.Module, training: bool, cache: DequantizedWeights | None
                  ) -> tuple[list, tuple[float, ...]] | None:
    """Return a block's 20 tensors (ln1, qkv, proj, ln2, fc1, fc2) and the LoRA scaling of each linear."""
    if type(block) is not Block or not (type(block.ln1) is nn.LayerNorm and type(block.ln2) is nn.LayerNorm):
        return None
    parts = [linear_parts(getattr(block, name), training, cache) for name in LINEARS]
    if any(p is None for p in parts):
        return None
    tensors = [block.ln1.weight, block.ln1.bias, *parts[0].tensors(), *parts[1].tensors(),
               block.ln2.weight, block.ln2.bias, *parts[2].tensors(), *parts[3].tensors()]
    return tensors, tuple(p.scaling for p in parts)

"""Quantized storage for frozen linear weights, as used by QLoRA (Dettmers et al. 2023, arXiv:2305.14314).

A scheme turns a float weight into integer codes plus scales (`quantize`) and back (`dequantize`), and
reports the exact bytes it stores. `QuantizedLinear` keeps only that storage and dequantizes in the forward
pass, so the frozen base really lives in low precision while LoRA adapters on top of it stay float32.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

QuantState = dict[str, torch.Tensor]


class Int8PerTensor:
    """Symmetric int8 with one float32 scale for the whole tensor: codes in -127..127, scale = absmax / 127."""

    name = "int8"

    def quantize(self, w: torch.Tensor) -> QuantState:
        absmax = w.detach().abs().max().float()
        # An all-zero tensor would give scale 0 and 0 / 0 codes; any positive scale gives all-zero codes.
        scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
        codes = (w.detach().float() / scale).round().clamp(-127, 127).to(torch.int8)
        return {"codes": codes, "scale": scale.reshape(1)}

    def dequantize(self, state: QuantState, shape: torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (state["codes"].float() * state["scale"]).reshape(shape).to(dtype)


SCHEMES = {s.name: s for s in [Int8PerTensor()]}


def get_scheme(name: str):
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown quantization scheme {name!r}; choose one of {', '.join(SCHEMES)}") from None


def state_nbytes(state: QuantState) -> int:
    """Bytes stored by a quantized weight: every code and every scale."""
    return sum(t.numel() * t.element_size() for t in state.values())


class QuantizedLinear(nn.Module):
    """A frozen linear layer whose weight is stored quantized and dequantized on every forward pass.

    The bias stays float32 and frozen. A LoRA merge into this layer adds a float `merged_delta`, so the layer
    computes with `dequantize(codes) + delta`, the weight the adapter was trained against. `requantize()`
    folds that delta into new codes, which costs precision; it is a separate, explicit step.
    """

    def __init__(self, base: nn.Linear, scheme):
        super().__init__()
        self.scheme = scheme
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight_shape = base.weight.shape
        self.frozen_numel = base.weight.numel()  # counted as parameters by count_parameters
        self._store(scheme.quantize(base.weight.detach()))
        self.bias = None
        if base.bias is not None:
            self.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        self.merged_delta: torch.Tensor | None = None

    def _store(self, state: QuantState) -> None:
        self.state_keys = tuple(state)
        for key, tensor in state.items():
            self.register_buffer(f"q_{key}", tensor)

    @property
    def quant_state(self) -> QuantState:
        return {key: getattr(self, f"q_{key}") for key in self.state_keys}

    @property
    def nbytes(self) -> int:
        return state_nbytes(self.quant_state)

    def dequantize(self) -> torch.Tensor:
        return self.scheme.dequantize(self.quant_state, self.weight_shape)

    @property
    def weight(self) -> torch.Tensor:
        """The float weight the forward pass uses (the dequantized codes plus any merged delta)."""
        w = self.dequantize()
        return w if self.merged_delta is None else w + self.merged_delta

    def add_delta(self, delta: torch.Tensor) -> None:
        self.merged_delta = delta.detach().clone() if self.merged_delta is None else self.merged_delta + delta
        if not self.merged_delta.any():
            self.merged_delta = None

    def requantize(self) -> None:
        """Quantize `dequantize(codes) + merged_delta` into new codes and drop the float delta."""
        for key in self.state_keys:
            delattr(self, f"q_{key}")
        self._store(self.scheme.quantize(self.weight))
        self.merged_delta = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, scheme={self.scheme.name}, bytes={self.nbytes}"


@dataclass(frozen=True)
class QuantConfig:
    scheme: str = "int8"
    modules: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")  # the frozen linears to quantize


def quantize_model(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Replace every frozen `nn.Linear` named in `config.modules` with a `QuantizedLinear` in place."""
    scheme = get_scheme(config.scheme)
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if name in config.modules and isinstance(child, nn.Linear)]
    for parent, name, child in targets:
        setattr(parent, name, QuantizedLinear(child, scheme))
    return model

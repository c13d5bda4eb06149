"""Quantized storage for frozen linear weights, as used by QLoRA (Dettmers et al. 2023, arXiv:2305.14314).

A scheme turns a float weight into integer codes plus scales (`quantize`) and back (`dequantize`), and
reports the exact bytes it stores (`storage_bytes`). Three schemes:

- `int8`: symmetric, one float32 scale for the whole tensor, codes in -127..127;
- `int8-channel`: symmetric, one float32 scale per output row (dimension 0);
- `nf4`: blockwise 4-bit NormalFloat. Each block of `block_size` weights is divided by its absolute maximum
  (absmax) and rounded to the nearest of the 16 NF4 levels, two codes packed per byte. With double
  quantization the per-block absmax values, minus their mean, are quantized again to 8 bits in blocks of 256.

`QuantizedLinear` keeps only that storage and dequantizes in the forward pass, so the frozen base really lives
in low precision while LoRA adapters on top of it stay float32.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

QuantState = dict[str, torch.Tensor]

# The 16 NF4 levels published with bitsandbytes for QLoRA. They are spaced for normally distributed weights,
# span [-1, 1] and include an exact zero.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])
# A normalized weight rounds to level i when it lies between midpoints i - 1 and i.
NF4_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2
BLOCK_SIZES = (32, 64, 128, 256)
ABSMAX_BLOCK_SIZE = 256  # double quantization: absmax values per float32 scale, as in the QLoRA paper


def _check_quantizable(w: torch.Tensor, scheme: str) -> None:
    if w.numel() == 0:
        raise ValueError(f"cannot quantize an empty tensor of shape {tuple(w.shape)} with {scheme}")
    if not torch.isfinite(w).all():
        raise ValueError(f"cannot quantize a tensor of shape {tuple(w.shape)} with {scheme}: it contains NaN or "
                         f"infinity; quantize only finite weights")


def _safe_scale(absmax: torch.Tensor, levels: float) -> torch.Tensor:
    # A zero absmax would give 0 / 0 codes; any positive scale maps an all-zero group to all-zero codes.
    return torch.where(absmax > 0, absmax / levels, torch.ones_like(absmax))


class Int8PerTensor:
    """Symmetric int8 with one float32 scale for the whole tensor: codes in -127..127, scale = absmax / 127."""

    name = "int8"
    label = "int8 per tensor"

    def quantize(self, w: torch.Tensor) -> QuantState:
        _check_quantizable(w, self.name)
        w = w.detach().float()
        scale = _safe_scale(w.abs().max(), 127.0)
        codes = (w / scale).round().clamp(-127, 127).to(torch.int8)
        return {"codes": codes, "scale": scale.reshape(1)}

    def dequantize(self, state: QuantState, shape: torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (state["codes"].float() * state["scale"]).reshape(shape).to(dtype)

    def storage_bytes(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) + 4


class Int8PerChannel:
    """Symmetric int8 with one float32 scale per output row: row i is stored as codes * (absmax_i / 127).

    Dimension 0 is the output channel, as in `torch.quantize_per_channel(axis=0)`, so a 1-D tensor gets one
    scale per element and a 0-D tensor a single scale.
    """

    name = "int8-channel"
    label = "int8 per channel"

    def quantize(self, w: torch.Tensor) -> QuantState:
        _check_quantizable(w, self.name)
        rows = w.detach().float().reshape(_n_rows(w.shape), -1)  # (out, everything else)
        scale = _safe_scale(rows.abs().amax(dim=1), 127.0)  # (out,)
        codes = (rows / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        return {"codes": codes, "scale": scale}

    def dequantize(self, state: QuantState, shape: torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (state["codes"].float() * state["scale"][:, None]).reshape(shape).to(dtype)

    def storage_bytes(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) + 4 * _n_rows(shape)


def _n_rows(shape) -> int:
    return shape[0] if len(shape) else 1


class NF4:
    """Blockwise 4-bit NormalFloat with optional double quantization of the block scales (QLoRA, section 3).

    Storage per tensor of n weights in b = ceil(n / block_size) blocks:
    - `codes`: ceil(n / 2) uint8, the first of each pair of codes in the high nibble;
    - without double quantization, `absmax`: b float32;
    - with it, `absmax_codes`: b int8, `absmax_scale`: ceil(b / 256) float32 and `absmax_mean`: one float32.
    With blocks of 64 that is 4 + 32/64 = 4.5 bits per weight, or 4 + 8/64 + 32/(64 * 256) = 4.127 with double
    quantization, plus the 32-bit mean once per tensor.

    NOTE: the QLoRA paper stores the absmax values as 8-bit floats (bitsandbytes' dynamic map); this scheme uses
    symmetric linear int8 codes instead. The storage is the same 8 bits per block.
    """

    name = "nf4"

    def __init__(self, block_size: int = 64, double_quant: bool = True):
        if block_size not in BLOCK_SIZES:
            raise ValueError(f"NF4 block size must be one of {', '.join(map(str, BLOCK_SIZES))}, got {block_size!r}")
        self.block_size = block_size
        self.double_quant = bool(double_quant)

    @property
    def label(self) -> str:
        return f"NF4, blocks of {self.block_size}" + (", double quant" if self.double_quant else "")

    def quantize(self, w: torch.Tensor) -> QuantState:
        _check_quantizable(w, self.name)
        flat = w.detach().float().reshape(-1)
        blocks = self._blocks(flat)  # (n_blocks, block_size), the last block zero-padded
        absmax = blocks.abs().amax(dim=1)  # (n_blocks,)

        # Normalize each block to [-1, 1] and round to the nearest level. Bucketize returns the level's index.
        normalized = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]
        codes = torch.bucketize(normalized, NF4_MIDPOINTS).reshape(-1)[:flat.numel()].to(torch.uint8)

        # Pack two 4-bit codes per byte; an odd count gets one zero code of padding.
        if codes.numel() % 2:
            codes = torch.cat([codes, codes.new_zeros(1)])
        state = {"codes": (codes[0::2] << 4) | codes[1::2]}
        state.update(_quantize_absmax(absmax) if self.double_quant else {"absmax": absmax})
        return state

    def dequantize(self, state: QuantState, shape: torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n = math.prod(shape)
        packed = state["codes"]
        codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n].long()
        values = self._blocks(NF4_LEVELS[codes])  # (n_blocks, block_size)
        absmax = self.block_absmax(state)
        return (values * absmax[:, None]).reshape(-1)[:n].reshape(shape).to(dtype)

    def block_absmax(self, state: QuantState) -> torch.Tensor:
        """Return the absmax of every block as the forward pass uses it (after double quantization, if any)."""
        if "absmax" in state:
            return state["absmax"]
        return _dequantize_absmax(state)

    def storage_bytes(self, shape: tuple[int, ...]) -> int:
        n = math.prod(shape)
        n_blocks = math.ceil(n / self.block_size)
        if self.double_quant:
            scales = n_blocks + 4 * math.ceil(n_blocks / ABSMAX_BLOCK_SIZE) + 4
        else:
            scales = 4 * n_blocks
        return math.ceil(n / 2) + scales

    def _blocks(self, flat: torch.Tensor) -> torch.Tensor:
        n_blocks = math.ceil(flat.numel() / self.block_size)
        return F.pad(flat, (0, n_blocks * self.block_size - flat.numel())).view(n_blocks, self.block_size)


def _quantize_absmax(absmax: torch.Tensor) -> QuantState:
    """Double quantization: store `absmax - mean` as int8 codes with one float32 scale per 256 blocks."""
    # Float64 keeps the mean finite when absmax values are near the float32 maximum.
    mean = absmax.double().mean().float()
    centered = absmax.double() - mean.double()
    n_groups = math.ceil(centered.numel() / ABSMAX_BLOCK_SIZE)
    groups = F.pad(centered, (0, n_groups * ABSMAX_BLOCK_SIZE - centered.numel())).view(n_groups, -1)
    scale = _safe_scale(groups.abs().amax(dim=1), 127.0).float()  # (n_groups,)
    codes = (groups / scale.double()[:, None]).round().clamp(-127, 127).to(torch.int8)
    return {"absmax_codes": codes.reshape(-1)[:absmax.numel()], "absmax_scale": scale, "absmax_mean": mean.reshape(1)}


def _dequantize_absmax(state: QuantState) -> torch.Tensor:
    codes = state["absmax_codes"].float()
    scale = state["absmax_scale"].repeat_interleave(ABSMAX_BLOCK_SIZE)[:codes.numel()]
    # Rounding can push the dequantized absmax of an all-zero block just below zero; a scale is never negative.
    return (state["absmax_mean"] + codes * scale).clamp_min(0.0)


SCHEME_NAMES = ("int8", "int8-channel", "nf4")
SCHEMES = {s.name: s for s in [Int8PerTensor(), Int8PerChannel(), NF4()]}  # each scheme with its defaults


def get_scheme(name: str, block_size: int = 64, double_quant: bool = True):
    """Return the scheme `name`; `block_size` and `double_quant` apply to NF4 only."""
    if name == "nf4":
        return NF4(block_size, double_quant)
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown quantization scheme {name!r}; choose one of {', '.join(SCHEME_NAMES)}") from None


def state_nbytes(state: QuantState) -> int:
    """Bytes stored by a quantized weight: every code and every scale."""
    return sum(t.numel() * t.element_size() for t in state.values())


def roundtrip(scheme, w: torch.Tensor) -> torch.Tensor:
    """Return `dequantize(quantize(w))` with the shape and dtype of `w`."""
    return scheme.dequantize(scheme.quantize(w), w.shape, w.dtype)


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
        state = self.scheme.quantize(self.weight)
        for key in self.state_keys:
            delattr(self, f"q_{key}")
        self._store(state)
        self.merged_delta = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, scheme={self.scheme.name}, bytes={self.nbytes}"


@dataclass(frozen=True)
class QuantConfig:
    scheme: str = "int8"
    modules: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")  # the frozen linears to quantize
    block_size: int = 64  # NF4 only: weights per absmax scale
    double_quant: bool = True  # NF4 only: quantize the absmax values again to 8 bits


def quantize_model(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Replace every frozen `nn.Linear` named in `config.modules` with a `QuantizedLinear` in place."""
    scheme = get_scheme(config.scheme, config.block_size, config.double_quant)
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if name in config.modules and isinstance(child, nn.Linear)]
    for parent, name, child in targets:
        setattr(parent, name, QuantizedLinear(child, scheme))
    return model

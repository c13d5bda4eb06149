import math

import pytest
import torch

from tinylora.config import METHODS, QuantOptions, RunConfig
from tinylora.lora import LoRAConfig, inject_lora, lora_layers
from tinylora.methods import build_model
from tinylora.model import TinyClassifier, count_parameters
from tinylora.quant import (ABSMAX_BLOCK_SIZE, BLOCK_SIZES, NF4, NF4_LEVELS, Int8PerChannel, Int8PerTensor,
                            QuantConfig, QuantizedLinear, get_scheme, quantize_model, roundtrip, state_nbytes)

HALF_MAX_GAP = (NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max().item() / 2  # 0.152, between -1.0 and -0.696
SHAPES = [(192, 64), (64, 64), (64, 256), (37,), (5, 13), (1000,)]
QLORA_METHODS = [m for m, scheme in METHODS.items() if scheme is not None]


def weights(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05


def block_absmax(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """Absmax of each weight's block, expanded to one value per weight."""
    flat = w.reshape(-1)
    pad = (-flat.numel()) % block_size
    blocks = torch.cat([flat, flat.new_zeros(pad)]).view(-1, block_size)
    return blocks.abs().amax(dim=1).repeat_interleave(block_size)[:flat.numel()]


# Round-trip error bounds

@pytest.mark.parametrize("shape", SHAPES)
def test_int8_error_within_half_step(shape):
    w = weights(shape)
    error = (w - roundtrip(Int8PerTensor(), w)).abs()
    step = w.abs().max() / 127
    assert error.max() <= step / 2 + 1e-7


@pytest.mark.parametrize("shape", SHAPES)
def test_int8_channel_error_within_half_row_step(shape):
    w = weights(shape)
    rows = w.reshape(shape[0], -1)
    error = (rows - roundtrip(Int8PerChannel(), w).reshape(shape[0], -1)).abs()
    step = rows.abs().amax(dim=1, keepdim=True) / 127
    assert (error <= step / 2 + 1e-7).all()


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("shape", SHAPES)
def test_nf4_error_within_half_widest_gap(shape, block_size):
    w = weights(shape)
    error = (w - roundtrip(NF4(block_size, double_quant=False), w)).abs().reshape(-1)
    bound = HALF_MAX_GAP * block_absmax(w, block_size)
    assert (error <= bound + 1e-7).all()


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("shape", SHAPES)
def test_nf4_double_quant_error_adds_absmax_error(shape, block_size):
    # A weight w = level * absmax comes back as level * absmax', so the absmax error adds at most |absmax - absmax'|.
    w = weights(shape)
    scheme = NF4(block_size, double_quant=True)
    state = scheme.quantize(w)
    error = (w - scheme.dequantize(state, w.shape)).abs().reshape(-1)
    absmax = block_absmax(w, block_size)
    stored = scheme.block_absmax(state).repeat_interleave(block_size)[:w.numel()]
    assert (error <= HALF_MAX_GAP * absmax + (stored - absmax).abs() + 1e-7).all()


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_double_quant_absmax_within_half_step(block_size):
    w = weights((300, 70))  # 21,000 weights: several absmax groups of 256 for the small block sizes
    absmax = block_absmax(w, block_size)[::block_size]
    state = NF4(block_size, double_quant=True).quantize(w)
    centered = absmax - absmax.mean()
    groups = math.ceil(absmax.numel() / ABSMAX_BLOCK_SIZE)
    steps = torch.stack([centered[i * ABSMAX_BLOCK_SIZE:(i + 1) * ABSMAX_BLOCK_SIZE].abs().max() / 127
                         for i in range(groups)]).repeat_interleave(ABSMAX_BLOCK_SIZE)[:absmax.numel()]
    assert ((NF4(block_size).block_absmax(state) - absmax).abs() <= steps / 2 + 1e-7).all()


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("shape", SHAPES)
def test_nf4_block_absmax_element_exact(shape, block_size):
    w = weights(shape)
    restored = roundtrip(NF4(block_size, double_quant=False), w).reshape(-1)
    flat = w.reshape(-1)
    for start in range(0, flat.numel(), block_size):
        block = flat[start:start + block_size]
        i = start + block.abs().argmax().item()
        assert restored[i].item() == flat[i].item(), f"block at {start}: element {i}"


def test_nf4_levels_round_trip_exactly():
    scale = 0.37
    w = NF4_LEVELS * scale  # one block holding every level, absmax = scale
    restored = roundtrip(NF4(32, double_quant=False), w)
    assert torch.allclose(restored, w, rtol=0, atol=1e-7)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_nf4_rounds_to_nearest_level(block_size):
    w = torch.linspace(-1, 1, 2001) ** 3  # dense near zero, where the levels are closest
    absmax = block_absmax(w, block_size)
    restored = roundtrip(NF4(block_size, double_quant=False), w)
    nearest = NF4_LEVELS[((w / absmax)[:, None] - NF4_LEVELS[None]).abs().argmin(dim=1)] * absmax
    assert ((w - restored).abs() <= (w - nearest).abs() + 1e-7).all()


# Stored bytes

@pytest.mark.parametrize("shape,expected", [((192, 64), 192 * 64 + 4), ((37,), 37 + 4), ((5, 13), 65 + 4)])
def test_int8_bytes_exact(shape, expected):
    scheme = Int8PerTensor()
    assert state_nbytes(scheme.quantize(weights(shape))) == expected
    assert scheme.storage_bytes(shape) == expected


@pytest.mark.parametrize("shape,expected", [((192, 64), 192 * 64 + 4 * 192), ((37,), 37 + 4 * 37),
                                            ((5, 13), 65 + 4 * 5)])
def test_int8_channel_bytes_exact(shape, expected):
    scheme = Int8PerChannel()
    assert state_nbytes(scheme.quantize(weights(shape))) == expected
    assert scheme.storage_bytes(shape) == expected


@pytest.mark.parametrize("shape,block_size,double_quant,expected", [
    ((192, 64), 64, False, 6144 + 4 * 192),  # 12,288 codes in 6,144 bytes; 192 float32 absmax values
    ((192, 64), 64, True, 6144 + 192 + 4 + 4),  # 192 int8 absmax codes, one group scale, the mean
    ((64, 256), 32, True, 8192 + 512 + 2 * 4 + 4),  # 512 blocks need two absmax groups of 256
    ((37,), 32, False, 19 + 2 * 4),  # an odd count pads one code; 37 weights make two blocks
    ((37,), 32, True, 19 + 2 + 4 + 4),
    ((5, 13), 256, True, 33 + 1 + 4 + 4),
])
def test_nf4_bytes_exact(shape, block_size, double_quant, expected):
    scheme = NF4(block_size, double_quant)
    state = scheme.quantize(weights(shape))
    assert state_nbytes(state) == expected
    assert scheme.storage_bytes(shape) == expected
    assert state["codes"].dtype == torch.uint8
    assert state["codes"].numel() == math.ceil(math.prod(shape) / 2)


def model_linears_bits(scheme) -> float:
    model = TinyClassifier()
    linears = [m.weight for name, m in model.named_modules() if name.split(".")[-1] in ("qkv", "proj", "fc1", "fc2")]
    stored = sum(state_nbytes(scheme.quantize(w)) for w in linears)
    return 8 * stored / sum(w.numel() for w in linears)


def test_bits_per_weight_int8_on_model():
    bits = model_linears_bits(Int8PerTensor())
    assert 8.0 < bits < 8.01


def test_bits_per_weight_nf4_on_model():
    assert model_linears_bits(NF4(64, double_quant=False)) == 4.5


def test_bits_per_weight_nf4_double_quant_on_model():
    bits = model_linears_bits(NF4(64, double_quant=True))
    assert 4.125 < bits <= 4.15


def test_nf4_double_quant_large_tensor_bits():
    scheme = NF4(64, double_quant=True)
    bits = 8 * scheme.storage_bytes((4096, 4096)) / 4096 ** 2
    assert abs(bits - 4.127) < 0.0005


# Degenerate tensors

ALL_SCHEMES = [Int8PerTensor(), Int8PerChannel(), NF4(64, False), NF4(64, True), NF4(32, True), NF4(256, False)]


def degenerate_tensors():
    outlier = torch.full((8, 40), 1e-4)
    outlier[3, 7] = 1e30
    return {"zeros": torch.zeros(16, 64), "outlier": outlier, "odd size": weights((7, 11)),
            "1-D": weights((100,)), "one element": torch.tensor([0.5]), "scalar": torch.tensor(-2.0)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=lambda s: f"{s.name}-{getattr(s, 'label', '')}")
@pytest.mark.parametrize("kind", list(degenerate_tensors()))
def test_degenerate_tensor_round_trip(kind, scheme, dtype):
    w = degenerate_tensors()[kind]
    if dtype == torch.float16 and w.abs().max() > 6e4:
        pytest.skip("1e30 does not fit float16")
    w = w.to(dtype)
    restored = roundtrip(scheme, w)
    assert restored.shape == w.shape
    assert restored.dtype == w.dtype
    assert torch.isfinite(restored).all()


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=lambda s: f"{s.name}-{getattr(s, 'label', '')}")
def test_zeros_come_back_zero(scheme):
    assert torch.equal(roundtrip(scheme, torch.zeros(16, 64)), torch.zeros(16, 64))


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=lambda s: f"{s.name}-{getattr(s, 'label', '')}")
def test_outlier_comes_back_close(scheme):
    w = degenerate_tensors()["outlier"]
    restored = roundtrip(scheme, w)
    assert abs(restored[3, 7].item() - 1e30) / 1e30 < 1e-2


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=lambda s: f"{s.name}-{getattr(s, 'label', '')}")
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight_rejected(scheme, bad):
    w = weights((4, 64))
    w[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        scheme.quantize(w)


def test_per_channel_beats_per_tensor_on_outlier_row():
    w = weights((64, 64))
    w[5] *= 100  # one row of large weights sets the per-tensor scale
    tensor_mse = (w - roundtrip(Int8PerTensor(), w)).pow(2).mean()
    channel_mse = (w - roundtrip(Int8PerChannel(), w)).pow(2).mean()
    assert channel_mse < tensor_mse / 10


# Invalid options

@pytest.mark.parametrize("block_size", [0, 16, 48, 512, "64"])
def test_nf4_invalid_block_size(block_size):
    with pytest.raises(ValueError, match="block size must be one of 32, 64, 128, 256"):
        NF4(block_size)


@pytest.mark.parametrize("block_size", [16, 100])
def test_config_invalid_block_size(block_size):
    with pytest.raises(ValueError, match=f"quant.block_size must be one of 32, 64, 128, 256, got {block_size}"):
        RunConfig(method="qlora-nf4", quant=QuantOptions(block_size=block_size)).validate()


def test_config_invalid_double_quant():
    with pytest.raises(ValueError, match="quant.double_quant must be True or False"):
        RunConfig(quant=QuantOptions(double_quant="yes")).validate()


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown quantization scheme 'int4'; choose one of int8, int8-channel, nf4"):
        get_scheme("int4")


def test_config_round_trips_quant_options():
    config = RunConfig(method="qlora-nf4", quant=QuantOptions(block_size=128, double_quant=False))
    assert RunConfig.from_dict(config.to_dict()) == config


# Quantized models

@pytest.mark.parametrize("method", ["lora", *QLORA_METHODS])
def test_parameter_count_unchanged_by_quantization(method):
    model = build_model(RunConfig(method=method))
    assert count_parameters(model) == 208_258
    assert count_parameters(model, trainable_only=True) == 6_274


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("double_quant", [False, True])
def test_build_model_passes_nf4_options(block_size, double_quant):
    config = RunConfig(method="qlora-nf4", quant=QuantOptions(block_size=block_size, double_quant=double_quant))
    bases = [m for m in build_model(config).modules() if isinstance(m, QuantizedLinear)]
    assert len(bases) == 16
    assert all(b.scheme.block_size == block_size for b in bases)
    assert all(b.scheme.double_quant == double_quant for b in bases)


def test_quant_modules_targets_leaves_mlp_float():
    model = build_model(RunConfig(method="qlora-nf4", quant=QuantOptions(modules="targets")))
    assert isinstance(model.blocks[0].qkv.base_layer, QuantizedLinear)
    assert isinstance(model.blocks[0].fc1, torch.nn.Linear)


def trained_qlora(method: str) -> torch.nn.Module:
    model = build_model(RunConfig(method=method))
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B["default"].weight.normal_(0, 0.05)  # as if trained: B = 0 would make merging trivial
    return model.eval()


@pytest.mark.parametrize("method", QLORA_METHODS)
def test_merged_output_matches_unmerged(method):
    model = trained_qlora(method)
    x = torch.randint(0, 16, (32, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        unmerged = model(x)
        for _, layer in lora_layers(model):
            layer.merge()
        merged = model(x)
    assert torch.allclose(merged, unmerged, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", QLORA_METHODS)
def test_merge_uses_dequantized_weight(method):
    layer = trained_qlora(method).blocks[0].qkv
    dequantized = layer.base_layer.dequantize()
    delta = layer.get_delta_weight()
    layer.merge()
    assert torch.allclose(layer.base_layer.weight, dequantized + delta, rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", QLORA_METHODS)
def test_merge_then_unmerge_restores_forward(method):
    model = trained_qlora(method)
    x = torch.randint(0, 16, (32, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = model(x)
        for _, layer in lora_layers(model):
            layer.merge()
        for _, layer in lora_layers(model):
            layer.unmerge()
        after = model(x)
    assert torch.allclose(after, before, rtol=0, atol=1e-6)
    assert all(layer.base_layer.merged_delta is None for _, layer in lora_layers(model))


@pytest.mark.parametrize("method", QLORA_METHODS)
def test_requantize_folds_delta_into_codes(method):
    layer = trained_qlora(method).blocks[0].qkv
    layer.merge()
    merged = layer.base_layer.weight
    nbytes = layer.base_layer.nbytes
    layer.base_layer.requantize()
    assert layer.base_layer.merged_delta is None
    assert layer.base_layer.nbytes == nbytes
    assert not torch.equal(layer.base_layer.weight, merged)
    # Requantizing costs at most one rounding: half a step of the scheme's grid at the largest weight.
    half_step = {"int8": 0.5 / 127, "int8-channel": 0.5 / 127, "nf4": HALF_MAX_GAP + 0.01}[METHODS[method]]
    change = (layer.base_layer.weight - merged).abs().max().item()
    assert change <= half_step * merged.abs().max().item() + 1e-7


def test_quantize_model_keeps_bias_float():
    model = quantize_model(TinyClassifier(), QuantConfig("nf4"))
    proj = model.blocks[0].proj
    assert proj.bias.dtype == torch.float32
    assert not proj.bias.requires_grad


def test_lora_over_nf4_trains_adapters_only():
    torch.manual_seed(0)
    model = inject_lora(quantize_model(TinyClassifier(), QuantConfig("nf4")), LoRAConfig())
    x = torch.randint(0, 16, (8, 24))
    model(x).sum().backward()
    layer = model.blocks[0].qkv
    assert layer.lora_B["default"].weight.grad is not None
    assert all(not p.requires_grad for p in layer.base_layer.parameters())

import pytest
import torch

from tinylora.calculator import (ALL_LINEAR_TARGETS, ATTENTION_TARGETS, PRESETS, calculator_table, format_bytes,
                                 get_preset, llm_architecture)
from tinylora.config import METHODS, QuantOptions, RunConfig
from tinylora.lora import LoRAConfig
from tinylora.config import TrainConfig
from tinylora.memory import (RANKS, estimate_memory, keeps_dequantized_copy, measure_training_memory,
                             parameter_breakdown, tiny_architecture, trainable_parameters_table, training_memory_table)
from tinylora.methods import build_model
from tinylora.model import ModelConfig, TinyClassifier, count_parameters
from tinylora.quant import NF4

CASES = [
    RunConfig(method=method) for method in METHODS
] + [
    RunConfig(method="qlora-nf4", quant=QuantOptions(double_quant=False)),
    RunConfig(method="qlora-nf4", quant=QuantOptions(block_size=256, modules="targets")),
    RunConfig(method="qlora-int8", lora=LoRAConfig(r=16, target_modules=("qkv", "proj", "fc1", "fc2"))),
    RunConfig(method="lora", lora=LoRAConfig(r=1, target_modules=("fc2",))),
    RunConfig(method="qlora-int8-channel", model=ModelConfig(d_model=32, n_layers=2)),
    RunConfig(method="qlora-nf4", train=TrainConfig(cache_dequantized=False)),
    RunConfig(method="qlora-int8", train=TrainConfig(fast="off")),
]


@pytest.mark.parametrize("config", CASES, ids=lambda c: f"{c.method}-{c.lora.r}-{c.quant.block_size}")
def test_estimate_matches_measured(config):
    measured = measure_training_memory(config)
    estimated = estimate_memory(tiny_architecture(config.model), config.method, config.lora.r,
                                config.lora.target_modules, config.quant, keeps_dequantized_copy(config))
    for key in measured:
        assert measured[key] == pytest.approx(estimated[key], rel=1e-12), key


def test_tiny_architecture_parameter_count():
    assert tiny_architecture().total_parameters == 202_114
    assert tiny_architecture().total_parameters == count_parameters(TinyClassifier())


def test_tiny_architecture_tensor_count():
    config = ModelConfig(n_task_ids=3)
    assert tiny_architecture(config).n_tensors == len(list(TinyClassifier(config).parameters()))
    assert tiny_architecture(config).total_parameters == count_parameters(TinyClassifier(config))


def test_full_finetune_memory_sixteen_bytes_per_parameter():
    row = measure_training_memory(RunConfig(method="full"))
    n_tensors = len(list(TinyClassifier().parameters()))
    assert row["frozen_base_bytes"] == 0
    assert row["trainable_bytes"] == 4 * 202_114
    assert row["gradient_bytes"] == 4 * 202_114
    assert row["optimizer_bytes"] == 8 * 202_114 + 4 * n_tensors


@pytest.mark.parametrize("train,expected", [
    (TrainConfig(), 4 * 4 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64)),
    (TrainConfig(cache_dequantized=False), 0),
    (TrainConfig(fast="off"), 0),
])
def test_dequantized_copy_counted_while_training(train, expected):
    row = measure_training_memory(RunConfig(method="qlora-nf4", train=train))

    assert row["dequantized_copy_bytes"] == expected
    assert row["total_bytes"] == (row["frozen_base_bytes"] + row["trainable_bytes"] + row["gradient_bytes"]
                                  + row["optimizer_bytes"] + expected)


def test_lora_keeps_no_dequantized_copy():
    assert measure_training_memory(RunConfig(method="lora"))["dequantized_copy_bytes"] == 0


def test_quantized_base_smaller_than_float():
    frozen = {method: measure_training_memory(RunConfig(method=method))["frozen_base_bytes"]
              for method in ("lora", "qlora-int8", "qlora-nf4")}
    assert frozen["qlora-nf4"] < frozen["qlora-int8"] < frozen["lora"]


def test_measuring_leaves_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    measure_training_memory(RunConfig(method="qlora-nf4"))
    assert torch.equal(torch.rand(3), expected)


def test_training_memory_table_rows():
    table = training_memory_table()
    assert list(table.method) == ["full", "lora", "qlora-int8", "qlora-int8-channel", "qlora-nf4", "qlora-nf4"]
    assert (table.total_bytes == table.estimated_total_bytes).all()
    assert table.label.is_unique
    nf4 = table[table.method == "qlora-nf4"].set_index("double_quant")
    assert nf4.loc[True, "frozen_base_bytes"] < nf4.loc[False, "frozen_base_bytes"]


def test_training_memory_table_returns_copy():
    table = training_memory_table()
    table.loc[0, "total_bytes"] = -1
    assert training_memory_table().loc[0, "total_bytes"] > 0


def test_trainable_table_counts():
    table = trainable_parameters_table()
    assert (table.trainable == table.estimated).all()
    full = table[table.method == "full"].iloc[0]
    assert full.trainable == 202_114
    assert full.percent_of_full == 100.0
    row = table[(table.method == "lora") & (table.r == 4) & (table.target_set == "attention")].iloc[0]
    assert row.trainable == 6_274
    assert row.percent_of_full == pytest.approx(100 * 6_274 / 202_114)


def test_trainable_table_qlora_equals_lora():
    table = trainable_parameters_table()
    lora = table[table.method == "lora"].set_index(["target_set", "r"]).trainable
    qlora = table[table.method == "qlora-nf4"].set_index(["target_set", "r"]).trainable
    assert lora.equals(qlora)
    assert sorted(set(table.r.dropna().astype(int))) == list(RANKS)


def test_trainable_table_grows_with_rank():
    table = trainable_parameters_table()
    for _, group in table[table.method == "lora"].groupby("target_set"):
        assert group.sort_values("r").trainable.is_monotonic_increasing


@pytest.mark.parametrize("method", ["lora", "qlora-int8", "qlora-nf4"])
def test_breakdown_totals(method):
    config = RunConfig(method=method)
    table = parameter_breakdown(config)
    model = build_model(config)
    measured = measure_training_memory(config)
    assert table.parameters.sum() == count_parameters(model)
    assert table.trainable.sum() == count_parameters(model, trainable_only=True)
    assert table.bytes.sum() == measured["frozen_base_bytes"] + measured["trainable_bytes"]


def test_breakdown_kinds():
    table = parameter_breakdown(RunConfig(method="qlora-nf4"))
    assert (table.kind == "LoRA A").sum() == 8
    assert (table.kind == "LoRA B").sum() == 8
    assert (table.kind == "QuantizedLinear").sum() == 16
    assert set(table[table.kind == "QuantizedLinear"].storage) == {NF4(64, True).label}


# Published architectures

@pytest.mark.parametrize("name,total", [("Llama-2-7B", 6_738_415_616), ("Mistral-7B-v0.1", 7_241_732_096),
                                        ("Llama-3-8B", 8_030_261_248)])
def test_preset_parameter_counts(name, total):
    assert llm_architecture(get_preset(name)).total_parameters == total


def test_llama2_lora_r8_query_value():
    table = calculator_table("Llama-2-7B", r=8, target_modules=ATTENTION_TARGETS)
    lora = table[table.method == "lora"].iloc[0]
    assert lora.trainable == 4_194_304  # 32 layers x 2 linears x 8 x (4096 + 4096)
    assert lora.trainable_bytes == 4 * 4_194_304


def test_grouped_query_attention_shrinks_key_value():
    arch = llm_architecture(get_preset("Llama-3-8B"))
    assert arch.linear("k_proj").out_features == 1024  # 8 key/value heads of 128
    assert arch.linear("q_proj").out_features == 4096


@pytest.mark.parametrize("name", list(PRESETS))
def test_calculator_orders_methods(name):
    table = calculator_table(name, r=16, target_modules=ALL_LINEAR_TARGETS).set_index("label")
    totals = table.total_bytes
    assert totals["Full finetune"] > totals["LoRA"] > totals["QLoRA (int8 base)"]
    assert totals["QLoRA (int8 base)"] > totals["QLoRA (NF4 base), no double quant"]
    assert totals["QLoRA (NF4 base), no double quant"] > totals["QLoRA (NF4 base), double quant"]
    assert (table.checkpoint_bytes == table.parameters.iloc[0] * 2).all()


def test_calculator_nf4_base_near_paper_bits():
    table = calculator_table("Llama-2-7B").set_index("label")
    arch = llm_architecture(get_preset("Llama-2-7B"))
    linear_weights = arch.n_layers * sum(l.in_features * l.out_features for l in arch.linears)
    float_rest = (arch.total_parameters - linear_weights) * 2
    bits = 8 * (table.loc["QLoRA (NF4 base), double quant", "frozen_base_bytes"] - float_rest) / linear_weights
    assert abs(bits - 4.127) < 0.001


def test_calculator_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset 'GPT-5'"):
        calculator_table("GPT-5")


def test_calculator_unknown_target():
    with pytest.raises(ValueError, match="Llama-2-7B has no linear 'qkv'"):
        calculator_table("Llama-2-7B", target_modules=("qkv",))


@pytest.mark.parametrize("n,text", [(512, "512 B"), (1536, "1.5 KiB"), (16 * 2 ** 20, "16.0 MiB"),
                                    (13_476_831_232, "12.6 GiB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text

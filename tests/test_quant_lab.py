import json
import math

import numpy as np
import pytest
import torch

from tinylora import cli
from tinylora.config import RunConfig, TrainConfig
from tinylora.lora import lora_layers
from tinylora.methods import build_model
from tinylora.quant import NF4_LEVELS, roundtrip
from tinylora.quant_lab import (SchemeChoice, absorb_quantization_error, accuracy_table, base_model, lab_run_config,
                                lab_schemes, layer_error_table, linear_weights, merge_report, nf4_block,
                                quantization_errors, quantized_base, scheme_summary, validation_data)

LAYERS = [f"blocks.{i}.{name}" for i in range(4) for name in ("qkv", "proj", "fc1", "fc2")]
SMALL_TRAIN = TrainConfig(epochs=1, n_train=128, n_val=64)  # a training run of seconds


def test_lab_schemes_labels_unique():
    labels = [choice.label for choice in lab_schemes()]
    assert len(set(labels)) == 4
    assert [choice.method for choice in lab_schemes()] == ["qlora-int8", "qlora-int8-channel", "qlora-nf4",
                                                          "qlora-nf4"]


def test_linear_weights_match_random_base():
    torch.manual_seed(0)
    expected = build_model(RunConfig(method="full"))
    weights = linear_weights("random")
    assert list(weights) == LAYERS
    assert torch.equal(weights["blocks.2.fc1"], expected.blocks[2].fc1.weight)


@pytest.mark.parametrize("choice", lab_schemes(), ids=lambda c: c.label)
def test_errors_equal_weight_minus_round_trip(choice):
    errors = quantization_errors("random", choice)
    w = linear_weights("random")["blocks.1.proj"]
    assert list(errors) == LAYERS
    assert errors["blocks.1.proj"].dtype == np.float32
    assert np.array_equal(errors["blocks.1.proj"], (w - roundtrip(choice.build(), w)).reshape(-1).numpy())


def test_layer_table_statistics_consistent():
    table = layer_error_table("random")
    assert len(table) == 4 * 16
    weights = linear_weights("random")
    for row in table.itertuples():
        w = weights[row.layer].double()
        assert row.bits_per_weight == 8 * row.bytes / row.numel
        assert row.sqnr_db == pytest.approx(10 * math.log10(w.pow(2).mean().item() / row.mse))
        assert row.max_abs_error ** 2 >= row.mse


def test_layer_table_bits_per_scheme():
    table = layer_error_table("random").groupby("label").bits_per_weight
    assert table.max()["int8 per tensor"] < 8.01
    assert table.min()["NF4, blocks of 64"] == table.max()["NF4, blocks of 64"] == 4.5
    assert table.max()["NF4, blocks of 64, double quant"] <= 4.15


def test_summary_sqnr_order():
    summary = scheme_summary("random").set_index("label").sqnr_db
    assert summary["int8 per tensor"] > 40
    assert summary["NF4, blocks of 64"] < summary["int8 per tensor"] - 15
    assert summary["NF4, blocks of 64, double quant"] == pytest.approx(summary["NF4, blocks of 64"], abs=0.1)


def test_smaller_blocks_lower_error():
    mse = {size: scheme_summary("random", (SchemeChoice("nf4", size, False),)).mse[0] for size in (32, 256)}
    assert mse[32] < mse[256]


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_block_view(double_quant):
    block = nf4_block("random", "blocks.0.fc2", block_index=3, double_quant=double_quant)
    assert block["n_blocks"] == 16_384 // 64
    assert block["weights"].shape == (64,)
    assert np.allclose(block["levels"], NF4_LEVELS.numpy() * block["absmax"])
    assert np.allclose(block["dequantized"], block["levels"][block["codes"]])
    assert np.allclose(block["error"], block["weights"] - block["dequantized"])
    if not double_quant:
        assert np.abs(block["weights"]).max() == block["absmax"]


def test_nf4_block_rejects_bad_index():
    with pytest.raises(ValueError, match="block_index must be between 0 and 63 for blocks.0.proj, got 64"):
        nf4_block("random", "blocks.0.proj", block_index=64)


def test_nf4_block_rejects_unknown_layer():
    with pytest.raises(ValueError, match="unknown layer 'blocks.9.qkv'"):
        nf4_block("random", "blocks.9.qkv")


def test_accuracy_table_rows():
    table = accuracy_table("random")
    assert list(table.scheme) == ["float32", "int8", "int8-channel", "nf4", "nf4"]
    assert table.task.unique().tolist() == ["odd_majority"]
    assert table.agreement[0] == 1.0
    assert table.linear_weight_bytes[0] == 4 * 196_608
    assert (table.linear_weight_bytes[1:] < table.linear_weight_bytes[0]).all()


def test_accuracy_table_matches_evaluation():
    table = accuracy_table("random").set_index("label")
    model = quantized_base("random", SchemeChoice("int8-channel"))
    x, y = validation_data("odd_majority")
    with torch.no_grad():
        acc = (model(x).argmax(-1) == y).float().mean().item()
    assert table.loc["int8 per channel", "val_acc"] == acc


def test_accuracy_table_returns_copy():
    table = accuracy_table("random")
    table.loc[0, "val_acc"] = -1.0
    assert accuracy_table("random").loc[0, "val_acc"] >= 0


def test_base_model_leaves_global_generator_alone():
    torch.manual_seed(11)
    expected = torch.rand(2)
    torch.manual_seed(11)
    base_model("random", seed=3)
    assert torch.equal(torch.rand(2), expected)


def trained_qlora(method: str):
    model = build_model(RunConfig(method=method))
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B["default"].weight.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("method", ["qlora-int8", "qlora-nf4"])
def test_merge_report_quantized(method):
    model = trained_qlora(method)
    report = merge_report(model, validation_data("odd_majority", train=SMALL_TRAIN))
    assert report["merged_max_logit_change"] < 1e-5
    assert report["merged_acc"] == report["unmerged_acc"]
    assert report["requantize_max_weight_change"] > 0
    assert report["requantized_max_logit_change"] > report["merged_max_logit_change"]
    assert not any(layer.merged for _, layer in lora_layers(model))  # the caller's model is untouched


def test_merge_report_float_base_has_no_requantize():
    report = merge_report(trained_qlora("lora"), validation_data("odd_majority", train=SMALL_TRAIN))
    assert report["requantized_acc"] is None
    assert report["merged_max_logit_change"] < 1e-5


def test_absorb_events_in_order():
    config = lab_run_config("random", SchemeChoice("nf4"), train=SMALL_TRAIN)
    events = list(absorb_quantization_error(config))
    types = [event["type"] for event in events]
    assert types[0] == "baseline"
    assert types[1] == "start"
    assert types[-2:] == ["end", "result"]
    result = events[-1]
    assert result["status"] == "finished"
    assert result["qlora_acc"] == [e for e in events if e["type"] == "eval"][-1]["val/acc"]
    assert result["merged_max_logit_change"] < 1e-5


def test_absorb_baseline_is_quantized_base():
    config = lab_run_config("random", SchemeChoice("int8"), train=SMALL_TRAIN)
    baseline = next(absorb_quantization_error(config))
    x, y = validation_data("odd_majority", train=SMALL_TRAIN)
    with torch.no_grad():
        expected = (quantized_base("random", SchemeChoice("int8"))(x).argmax(-1) == y).float().mean().item()
    assert baseline["quantized_acc"] == expected


def test_absorb_rejects_float_method():
    with pytest.raises(ValueError, match="method 'lora' has no quantized base"):
        next(absorb_quantization_error(RunConfig(method="lora")))


def test_quant_command_json(capsys):
    assert cli.main(["quant", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["base"] == "random"
    assert [s["label"] for s in result["schemes"]] == [c.label for c in lab_schemes()]
    for scheme in result["schemes"]:
        assert len(scheme["layers"]) == 16
        assert 0 <= scheme["val_acc"] <= 1
    bits = {s["label"]: s["bits_per_weight"] for s in result["schemes"]}
    assert bits["NF4, blocks of 64"] == 4.5
    assert bits["NF4, blocks of 64, double quant"] <= 4.15


def test_quant_command_tables(capsys):
    assert cli.main(["quant", "--block-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "NF4, blocks of 128, double quant" in out
    assert "blocks.3.fc2" in out


def test_quant_command_rejects_block_size(capsys):
    with pytest.raises(SystemExit):
        cli.main(["quant", "--block-size", "48"])
    assert "invalid choice: 48" in capsys.readouterr().err

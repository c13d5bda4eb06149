"""The Parameters and memory page under AppTest: tables, charts that follow the settings, and the calculator."""

from apptest_support import chart_by_title, page, table

LAYERS = 16  # block linears of the default TinyClassifier


def test_parameters_tables_have_rows(home):
    at = page("parameters.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert len(table(at, "params_trainable_table")) == 1 + 3 * 7 * 2
    assert len(table(at, "params_memory_table")) == 6
    assert len(table(at, "calc_table")) == 6
    breakdown = table(at, "params_breakdown_table")
    assert (breakdown.kind == "QuantizedLinear").sum() == LAYERS
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["LoRA adapter (float32)"] == "16.0 MiB"  # 32 layers x 2 x 8 x 8192 x 4 bytes
    assert metrics["Full checkpoint (float16)"] == "12.6 GiB"


def test_parameters_charts_follow_settings(home):
    at = page("parameters.py").run()
    trainable = chart_by_title(at, "Trainable parameters")
    assert trainable["layout"]["yaxis"]["type"] == "log"
    assert trainable["data"][0]["text"] == ["100%"]
    before = chart_by_title(at, "Training memory of the tiny classifier")

    at.selectbox(key="params_r").set_value(16).run()
    after = chart_by_title(at, "Training memory of the tiny classifier")
    assert "r=16" in after["layout"]["title"]["text"]
    trainable_weights = [trace for trace in after["data"] if trace.get("name") == "trainable weights"][0]["y"]
    earlier = [trace for trace in before["data"] if trace.get("name") == "trainable weights"][0]["y"]
    assert trainable_weights[0] == earlier[0]  # full finetuning does not depend on r
    assert trainable_weights[1] > earlier[1]


def test_calculator_presets_and_custom_values(home):
    at = page("parameters.py").run()
    at.selectbox(key="calc_preset").set_value("Llama-3-8B").run()
    assert at.text_input(key="calc_vocab_size").value == "128256"
    assert at.text_input(key="calc_num_key_value_heads").value == "8"
    assert "Llama-3-8B" in chart_by_title(at, "Training memory of Llama")["layout"]["title"]["text"]

    at.text_input(key="calc_hidden_size").input("2048").run()
    assert chart_by_title(at, "Training memory of Custom")
    at.text_input(key="calc_num_key_value_heads").input("5").run()
    assert not at.exception
    assert any("must be a multiple of num_key_value_heads (5)" in error.value for error in at.error)
    # A value a number box with a minimum would have replaced silently is named.
    at.text_input(key="calc_num_key_value_heads").input("0").run()
    assert any("must be a whole number >= 1, got 0" in error.value for error in at.error), [e.value for e in at.error]
    at.text_input(key="calc_hidden_size").input("4k").run()
    assert any("hidden size '4k' is not a whole number" in error.value for error in at.error)

"""The Quantization lab page under AppTest: tables, charts that follow the settings, and the lab's jobs."""

from apptest_support import chart_by_title, page, table
from conftest import wait_for
from test_lab_jobs import BASE, write_cached_base

LAYERS = 16  # block linears of the default TinyClassifier


def test_quantization_tables_have_rows(home):
    at = page("quantization.py").run()
    assert not at.exception, [e.message for e in at.exception]
    summary = table(at, "quant_summary_table")
    assert list(summary.label) == ["int8 per tensor", "int8 per channel", "NF4, blocks of 64",
                                   "NF4, blocks of 64, double quant"]
    assert len(table(at, "quant_layer_table")) == 4 * LAYERS
    assert list(table(at, "quant_accuracy_table").label)[0] == "float32"
    assert len(table(at, "quant_accuracy_table")) == 5


def test_quantization_charts_follow_settings(home):
    at = page("quantization.py").run()
    histograms = chart_by_title(at, "Quantization error")
    assert len(histograms["data"]) == 4
    assert "blocks.0.qkv" in histograms["layout"]["title"]["text"]

    at.selectbox(key="quant_layer").set_value("blocks.3.fc2").run()
    assert "blocks.3.fc2" in chart_by_title(at, "Quantization error")["layout"]["title"]["text"]
    assert "blocks.3.fc2" in chart_by_title(at, "NF4 levels")["layout"]["title"]["text"]

    at.multiselect(key="quant_schemes").set_value([0, 3]).run()
    assert not at.exception
    assert [trace["name"] for trace in chart_by_title(at, "Quantization error")["data"]] == [
        "int8 per tensor", "NF4, blocks of 64, double quant"]
    assert len(table(at, "quant_layer_table")) == 2 * LAYERS

    at.selectbox(key="quant_block_size").set_value(256).run()
    assert list(table(at, "quant_summary_table").label) == ["int8 per tensor", "NF4, blocks of 256, double quant"]
    nf4 = chart_by_title(at, "NF4 levels")
    assert "of 64" in nf4["layout"]["title"]["text"]  # 16,384 weights of fc2 in blocks of 256


def test_quantization_block_index_resets_when_out_of_range(home):
    at = page("quantization.py").run()
    at.slider(key="quant_block_index").set_value(150).run()
    assert "block 150 of 192" in chart_by_title(at, "NF4 levels")["layout"]["title"]["text"]
    at.selectbox(key="quant_layer").set_value("blocks.0.proj").run()  # 64 blocks of 64
    assert not at.exception
    assert "block 0 of 64" in chart_by_title(at, "NF4 levels")["layout"]["title"]["text"]


def test_quantization_uncached_base_starts_base_job(home, store):
    at = page("quantization.py").run()
    at.selectbox(key="quant_base").set_value("finetuned:sum_high").run()
    assert not at.exception
    runs = store.list_runs(kind="base")
    assert [run.config for run in runs] == [{"base": "finetuned:sum_high"}]
    at.run()  # a rerun finds the same job instead of submitting another
    assert len(store.list_runs(kind="base")) == 1
    assert at.get("plotly_chart") == []


def test_quantization_cached_finetuned_base(home):
    write_cached_base(home)
    at = page("quantization.py")
    at.session_state["quant_base"] = BASE
    at.run()
    assert not at.exception
    assert "first_lt_last" in chart_by_title(at, "Validation accuracy on")["layout"]["title"]["text"]


def test_quantization_absorb_run_shows_results(home, store):
    at = page("quantization.py").run()
    at.multiselect(key="quant_schemes").set_value([3]).run()
    at.text_input(key="quant_epochs").input("1").run()
    at.button(key="quant_absorb_button").click().run()
    runs = store.list_runs(kind="absorb")
    assert len(runs) == 1
    assert runs[0].config["quant"]["double_quant"] is True
    wait_for(lambda: not store.get_run(runs[0].id).active, timeout=120, message="the absorb run to end")
    at.run()
    assert not at.exception
    results = table(at, "quant_absorb_table")
    assert list(results.label) == ["NF4, blocks of 64, double quant"]
    assert results.qlora_acc[0] == store.get_run(runs[0].id).final_acc
    stages = [trace["name"] for trace in chart_by_title(at, "Validation accuracy on")["data"]]
    assert stages == ["float32 base", "quantized, before LoRA", "after QLoRA training",
                      "merged into the quantized base", "merged, then re-quantized"]
    assert not at.button(key="quant_absorb_button").disabled


def test_quantization_out_of_range_epochs_named(home, store):
    at = page("quantization.py").run()
    at.text_input(key="quant_epochs").input("501").run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("epochs must be between 1 and 500, got 501" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="quant_absorb_button").disabled
    assert store.list_runs(kind="absorb") == []

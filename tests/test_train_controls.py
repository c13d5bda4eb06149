"""The Train page's base, NF4 block size and double quantization controls, the base status message, and loading
a run's settings on another page's request."""

import os

from streamlit.testing.v1 import AppTest

from conftest import ROOT
from tinylora.config import QuantOptions, RunConfig, TrainConfig
from tinylora.lora import LoRAConfig
from ui.controls import FAST_MODE_LABELS, LOAD_REQUEST


def app() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)


def keys(widgets) -> list[str]:
    return [widget.key for widget in widgets]


def test_nf4_settings_only_for_nf4(home):
    at = app().run()
    assert "train_block_size" not in keys(at.selectbox)
    assert "train_double_quant" not in keys(at.checkbox)
    at.selectbox(key="train_method").set_value("qlora-int8").run()
    assert "train_block_size" not in keys(at.selectbox)
    at.selectbox(key="train_method").set_value("qlora-nf4").run()
    assert at.selectbox(key="train_block_size").value == 64
    assert at.checkbox(key="train_double_quant").value is True


def test_nf4_settings_reach_the_config(home):
    at = app().run()
    at.selectbox(key="train_method").set_value("qlora-nf4").run()
    at.selectbox(key="train_block_size").set_value(128).run()
    at.checkbox(key="train_double_quant").uncheck().run()
    config = at.session_state["_train_config"]
    assert config.quant == QuantOptions(block_size=128, double_quant=False)


def test_base_choice_reaches_the_config(home):
    at = app().run()
    assert at.session_state["_train_config"].base == "random"
    at.selectbox(key="train_base").set_value("finetuned:sum_high").run()
    assert at.session_state["_train_config"].base == "finetuned:sum_high"
    assert any("not trained yet" in caption.value for caption in at.caption)


def test_run_url_restores_base_and_nf4_settings(home, store):
    config = RunConfig(method="qlora-nf4", base="finetuned:first_lt_last", train=TrainConfig(epochs=1),
                       quant=QuantOptions(block_size=256, double_quant=False))
    run_id = store.create_run("train", config.to_dict())
    store.finish_run(run_id, "stopped", "stopped before it started")
    at = app()
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception
    assert at.selectbox(key="train_base").value == "finetuned:first_lt_last"
    assert at.selectbox(key="train_block_size").value == 256
    assert at.checkbox(key="train_double_quant").value is False
    assert at.session_state["_train_config"] == config


def test_run_view_shows_base_status(home, store):
    config = RunConfig(base="finetuned:middle_high")
    run_id = store.create_run("train", config.to_dict())
    store.claim_next(os.getpid())  # running, as a worker would mark it
    store.append_events(run_id, [{"type": "status", "message": "preparing the base finetuned:middle_high"}])
    at = app()
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception
    texts = [bar.proto.text for bar in at.get("progress")]
    assert any(text.startswith("Preparing the base finetuned:middle_high") for text in texts), texts
    assert any("base finetuned:middle_high" in caption.value for caption in at.caption)


def test_load_request_waits_for_its_run(home, store):
    """A load request survives a Train script run that shows no run and applies once its run is shown."""
    config = RunConfig(task="sum_high", lora=LoRAConfig(r=8, lora_alpha=16.0), train=TrainConfig(epochs=1))
    run_id = store.create_run("train", config.to_dict())
    store.finish_run(run_id, "stopped", "stopped before it started")
    at = app().run()  # Train was shown before: its controls hold the defaults
    assert at.text_input(key="train_r").value == "4"
    at.session_state[LOAD_REQUEST] = run_id
    at.run()  # a script run of Train without the run in its URL
    assert at.session_state[LOAD_REQUEST] == run_id
    assert at.text_input(key="train_r").value == "4"
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception
    assert at.text_input(key="train_r").value == "8"
    assert at.number_input(key="train_lora_alpha").value == 16.0
    assert at.selectbox(key="train_task").value == "sum_high"
    assert LOAD_REQUEST not in at.session_state


def test_step_computation_reaches_the_run_config(home, store):
    from tinylora.fastpath import FAST_MODES

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    box = at.selectbox(key="train_fast")
    assert tuple(box.options) == tuple(FAST_MODE_LABELS[mode] for mode in FAST_MODES)
    at.selectbox(key="train_method").set_value("full").run()
    at.selectbox(key="train_fast").set_value("fused").run()
    at.text_input(key="train_epochs").input("1").run()
    at.button(key="train_button").click().run()
    assert not at.exception
    (run,) = store.list_runs()
    assert run.config["method"] == "full"
    assert run.config["train"]["fast"] == "fused"
    assert any("step computation fused" in caption.value for caption in at.caption)

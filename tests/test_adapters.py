"""AdapterModel: swapping, disabling, deleting, merging, combining, saving and per-adapter evaluation."""

import copy
import json
import os
import time

import pytest
import torch

from tinylora.adapter_loading import load_adapter
from tinylora.adapter_sets import load_adapters, save_adapters
from tinylora.adapters import AdapterModel
from tinylora.config import TrainConfig
from tinylora.experiments import cross_evaluate, mix_adapters, predict_each_adapter
from tinylora.lora import LoRAConfig, lora_layers
from tinylora.model import ModelConfig, TinyClassifier
from tinylora.quant import QuantConfig, quantize_model
from tinylora.tasks import make_data
from tinylora.training import evaluate, train

MERGE_ATOL = 1e-5  # merged vs unmerged logits: the same sums in another order, float32
QUANT_SCHEMES = [None, "int8"]


def plain_base(quant: str | None) -> TinyClassifier:
    torch.manual_seed(0)
    base = TinyClassifier()
    return base if quant is None else quantize_model(base, QuantConfig(scheme=quant))


def perturb(model: AdapterModel, name: str, seed: int) -> None:
    """Give adapter `name` nonzero B and a changed head, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter_parameters(name):
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def two_adapter_model(quant: str | None = None) -> AdapterModel:
    torch.manual_seed(0)
    model = AdapterModel(TinyClassifier(), None if quant is None else QuantConfig(scheme=quant))
    model.add_adapter("a", LoRAConfig(), task="odd_majority")
    perturb(model, "a", 1)
    model.add_adapter("b", LoRAConfig(r=2, lora_alpha=3, target_modules=("qkv", "fc1")), task="first_lt_last")
    perturb(model, "b", 2)
    return model


@pytest.fixture
def x() -> torch.Tensor:
    return make_data("odd_majority", 16, seed=5)[0]


@pytest.mark.parametrize("quant", QUANT_SCHEMES)
def test_switch_gives_exact_output(quant, x):
    model = two_adapter_model(quant)
    y_b = model(x)
    model.set_adapter("a")
    y_a = model(x)
    model.set_adapter("b")
    assert torch.equal(model(x), y_b)
    model.set_adapter("a")
    assert torch.equal(model(x), y_a)
    assert not torch.allclose(y_a, y_b)


@pytest.mark.parametrize("quant", QUANT_SCHEMES)
def test_disable_gives_exact_base(quant, x):
    model = two_adapter_model(quant)
    model.set_adapter(None)
    assert torch.equal(model(x), plain_base(quant)(x))


def test_disable_adapter_context_restores(x):
    model = two_adapter_model()
    y_b = model(x)
    with model.disable_adapter():
        assert model.active_adapter is None
        assert torch.equal(model(x), plain_base(None)(x))
    assert model.active_adapter == "b"
    assert torch.equal(model(x), y_b)


def test_only_active_adapter_trainable():
    model = two_adapter_model()
    model.set_adapter("a")
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.adapter_parameters("a")}
    model.set_adapter(None)
    assert not any(p.requires_grad for p in model.parameters())


def test_adapter_parameter_count():
    model = two_adapter_model()
    # r=4 on qkv (64 -> 192) and proj (64 -> 64) in 4 blocks, plus a 64 -> 2 head: the notebook's 6,274.
    assert sum(p.numel() for p in model.adapter_parameters("a")) == 6274


def test_delete_adapter_removes_it(x):
    model = two_adapter_model()
    model.set_adapter("b")
    y_b = model(x)
    model.delete_adapter("a")
    assert model.adapter_names == ["b"]
    assert all("a" not in layer.lora_A for _, layer in lora_layers(model.base_model))
    assert "a" not in model.head.modules_to_save
    assert torch.equal(model(x), y_b)


def test_delete_active_adapter_leaves_base(x):
    model = two_adapter_model()
    model.delete_adapter("b")
    assert model.active_adapter is None
    assert torch.equal(model(x), plain_base(None)(x))


def test_train_b_leaves_a_unchanged():
    model = two_adapter_model()
    before_a = model.get_adapter_state_dict("a")
    before_b = model.get_adapter_state_dict("b")
    before_base = {k: v.clone() for k, v in model.base_state_dict().items()}
    model.set_adapter("b")
    data = make_data("first_lt_last", 64, seed=3)
    for _ in train(model, data, None, TrainConfig(epochs=1, batch_size=16)):
        pass
    after_a = model.get_adapter_state_dict("a")
    for key, tensor in before_a.items():
        assert torch.equal(after_a[key], tensor), key
    for key, tensor in model.base_state_dict().items():
        assert torch.equal(tensor, before_base[key]), key
    after_b = model.get_adapter_state_dict("b")
    assert any(not torch.equal(after_b[key], tensor) for key, tensor in before_b.items())


@pytest.mark.parametrize("quant", QUANT_SCHEMES)
def test_merged_matches_unmerged(quant, x):
    model = two_adapter_model(quant)
    model.set_adapter("a")
    y = model(x)
    model.merge_adapter()
    assert model.merged_adapter == "a"
    assert torch.allclose(model(x), y, atol=MERGE_ATOL)
    assert torch.equal(model(x).argmax(-1), y.argmax(-1))
    model.unmerge_adapter()
    assert model.merged_adapter is None
    assert torch.allclose(model(x), y, atol=MERGE_ATOL)


def test_switch_while_merged_raises():
    model = two_adapter_model()
    model.merge_adapter()
    with pytest.raises(ValueError, match="unmerge_adapter"):
        model.set_adapter("a")
    with pytest.raises(ValueError, match="unmerge_adapter"):
        model.delete_adapter("b")


def test_merge_without_active_raises():
    model = two_adapter_model()
    model.set_adapter(None)
    with pytest.raises(ValueError, match="no adapter is active"):
        model.merge_adapter()


@pytest.mark.parametrize("quant", QUANT_SCHEMES)
@pytest.mark.parametrize("weights, expected", [((1.0, 0.0), "a"), ((0.0, 1.0), "b")])
def test_weighted_adapter_at_one_is_adapter(quant, weights, expected, x):
    model = two_adapter_model(quant)
    model.set_adapter(expected)
    y = model(x)
    model.add_weighted_adapter(["a", "b"], list(weights), "mix")
    assert torch.equal(model(x), y)


def test_weighted_adapter_sums_deltas():
    model = two_adapter_model()
    model.add_weighted_adapter(["a", "b"], [0.3, 0.7], "mix")
    for name, layer in lora_layers(model.base_model):
        expected = sum(w * layer.get_delta_weight(adapter) for adapter, w in [("a", 0.3), ("b", 0.7)]
                       if adapter in layer.lora_A)
        assert torch.allclose(layer.get_delta_weight("mix"), expected, atol=1e-6), name
    heads = model.head.modules_to_save
    assert torch.allclose(heads["mix"].weight, 0.3 * heads["a"].weight + 0.7 * heads["b"].weight, atol=1e-6)
    assert torch.allclose(heads["mix"].bias, 0.3 * heads["a"].bias + 0.7 * heads["b"].bias, atol=1e-6)


def test_weighted_adapter_keeps_rng():
    model = two_adapter_model()
    state = torch.random.get_rng_state()
    model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "mix")
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("adapters, weights, match", [
    (["a", "b"], [1.0], "one weight per adapter"),
    (["a", "b"], [0.0, 0.0], "nonzero"),
    (["a", "a"], [0.5, 0.5], "once"),
    (["a", "c"], [0.5, 0.5], "unknown adapter"),
    (["a", "b"], [float("nan"), 0.5], "finite"),
])
def test_weighted_adapter_rejects_bad_input(adapters, weights, match):
    model = two_adapter_model()
    with pytest.raises(ValueError, match=match):
        model.add_weighted_adapter(adapters, weights, "mix")


@pytest.mark.parametrize("name, config, match", [
    ("a", LoRAConfig(), "already exists"),
    ("has.dot", LoRAConfig(), "letters, digits"),
    ("", LoRAConfig(), "letters, digits"),
    ("c", LoRAConfig(r=65), "r must be between 1 and 64"),
    ("c", LoRAConfig(target_modules=("ln1",)), "target_modules"),
    ("c", LoRAConfig(lora_alpha=0), "lora_alpha"),
])
def test_add_adapter_rejects_bad_input(name, config, match):
    model = two_adapter_model()
    with pytest.raises(ValueError, match=match):
        model.add_adapter(name, config)
    assert model.adapter_names == ["a", "b"]


def test_set_unknown_adapter_raises():
    model = two_adapter_model()
    with pytest.raises(ValueError, match="unknown adapter 'c'"):
        model.set_adapter("c")


@pytest.mark.parametrize("quant", QUANT_SCHEMES)
def test_save_load_round_trip(quant, x, tmp_path):
    model = two_adapter_model(quant)
    model.add_adapter("c", LoRAConfig(), task="sum_high")
    perturb(model, "c", 3)
    model.add_weighted_adapter(["a", "c"], [0.5, 0.25], "mix")
    save_adapters(model, tmp_path)
    state = torch.random.get_rng_state()
    loaded = load_adapters(tmp_path)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert loaded.adapter_names == model.adapter_names
    assert loaded.adapter_tasks == model.adapter_tasks
    for name in [*model.adapter_names, None]:
        model.set_adapter(name)
        loaded.set_adapter(name)
        assert torch.equal(loaded(x), model(x)), name
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_save_writes_peft_layout(x, tmp_path):
    model = two_adapter_model()
    save_adapters(model, tmp_path, adapters=["b"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert list(manifest["adapters"]) == ["b"]
    assert manifest["adapters"]["b"]["task"] == "first_lt_last"
    assert sorted(os.listdir(tmp_path / "b")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not (tmp_path / "a").exists()

    plain = load_adapter(tmp_path / "b", plain_base(None))
    model.set_adapter("b")
    assert torch.equal(plain(x), model(x))


def test_save_mixed_ranks_raises(tmp_path):
    model = two_adapter_model()
    model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "mix")
    with pytest.raises(ValueError, match="save the adapters it combines"):
        save_adapters(model, tmp_path)
    assert not (tmp_path / "manifest.json").exists()


def test_load_peft_adapter_checks_shapes():
    model = two_adapter_model()
    adapter = model.to_peft_adapter("a")
    adapter.tensors["base_model.model.head.weight"] = torch.zeros(3, 64)
    with pytest.raises(ValueError, match="do not fit"):
        model.load_peft_adapter(adapter, "copy")
    assert model.adapter_names == ["a", "b"]


def test_load_missing_directory_raises(tmp_path):
    with pytest.raises(ValueError, match="manifest.json is missing"):
        load_adapters(tmp_path)


def test_task_ids_pass_through():
    torch.manual_seed(0)
    model = AdapterModel(TinyClassifier(ModelConfig(n_task_ids=2)))
    model.add_adapter("joint", LoRAConfig())
    x = make_data("odd_majority", 4, seed=1)[0]
    y0 = model(x, torch.zeros(4, dtype=torch.long))
    y1 = model(x, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(y0, y1)
    assert not model.base_model.task_emb.weight.requires_grad


def test_cross_evaluate_rows_and_restore():
    model = two_adapter_model()
    model.set_adapter("a")
    val = {"odd_majority": make_data("odd_majority", 32, 2), "first_lt_last": make_data("first_lt_last", 32, 4)}
    matrix = cross_evaluate(model, val)
    assert matrix["adapters"] == ["a", "b", None]
    assert matrix["tasks"] == ["odd_majority", "first_lt_last"]
    model.set_adapter("b")
    assert matrix["acc"][1][1] == evaluate(model, val["first_lt_last"])[0]
    with model.disable_adapter():
        assert matrix["acc"][2][0] == evaluate(model, val["odd_majority"])[0]
    assert all(0 <= acc <= 1 for row in matrix["acc"] for acc in row)


def test_cross_evaluate_keeps_active_adapter():
    model = two_adapter_model()
    model.set_adapter("a")
    cross_evaluate(model, {"odd_majority": make_data("odd_majority", 8, 2)})
    assert model.active_adapter == "a"


def test_predict_each_adapter_matches_model():
    model = two_adapter_model()
    tokens = make_data("first_lt_last", 1, seed=9)[0][0].tolist()
    rows = predict_each_adapter(model, tokens)
    assert [row["adapter"] for row in rows] == ["a", "b", None]
    for row in rows:
        model.set_adapter(row["adapter"])
        probs = torch.softmax(model(torch.tensor([tokens])), dim=-1)[0]
        assert row["prediction"] == int(probs.argmax())
        assert row["probability"] == pytest.approx(float(probs.max().detach()))
        assert row["swap_seconds"] >= 0
    assert rows[1]["label"] == int(tokens[0] < tokens[-1])
    assert rows[2]["label"] is None


def test_forward_time_is_a_warm_median():
    model = two_adapter_model()
    tokens = make_data("first_lt_last", 1, seed=9)[0][0].tolist()
    real_forward = model.forward
    calls = []

    def forward(*args, **kwargs):
        calls.append(None)
        if len(calls) == 1:
            time.sleep(0.2)  # a cold first pass, as after a swap on a busy machine
        return real_forward(*args, **kwargs)

    model.forward = forward
    rows = predict_each_adapter(model, tokens, adapters=["a"], repeats=5, warmup=1)
    assert len(calls) == 6  # one warm-up pass and five timed ones
    assert rows[0]["forward_seconds"] < 0.1


def test_forward_timing_rejects_no_repeats():
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        predict_each_adapter(two_adapter_model(), [1] * 24, repeats=0)


@pytest.mark.parametrize("tokens, match", [([1] * 23, "24 tokens"), ([16] + [1] * 23, "0 to 15"),
                                           ([-1] + [1] * 23, "0 to 15")])
def test_predict_rejects_bad_tokens(tokens, match):
    with pytest.raises(ValueError, match=match):
        predict_each_adapter(two_adapter_model(), tokens)


def test_mix_adapters_ends_are_adapters():
    model = two_adapter_model()
    model.set_adapter("b")
    val = {"odd_majority": make_data("odd_majority", 32, 2), "first_lt_last": make_data("first_lt_last", 32, 4)}
    curve = mix_adapters(model, "a", "b", val, weights=[0.0, 0.5, 1.0])
    assert [point["weight"] for point in curve] == [0.0, 0.5, 1.0]
    matrix = cross_evaluate(model, val, adapters=["a", "b"])
    assert list(curve[0]["acc"].values()) == matrix["acc"][0]
    assert list(curve[-1]["acc"].values()) == matrix["acc"][1]
    assert model.adapter_names == ["a", "b"]
    assert model.active_adapter == "b"


def test_model_copy_is_independent(x):
    model = two_adapter_model()
    clone = copy.deepcopy(model)
    perturb(clone, "b", 7)
    assert not torch.equal(clone(x), model(x))

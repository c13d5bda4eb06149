"""Sweep specs: parsing, validation messages, grid and random expansion, and point <-> config mapping."""

import json

import pytest

from tinylora.config import RunConfig, TrainConfig
from tinylora.sweep import MAX_RUNS_PER_SWEEP, Range, SweepSpec, load_spec_file, parse_axis_values
from tinylora.sweep_search import grid_points, point_config, point_from_config, point_key, random_points

TINY = {"train": {"epochs": 2, "n_train": 256, "n_val": 128}}


def spec(**values) -> SweepSpec:
    return SweepSpec.from_dict({"base": TINY, **values})


def test_grid_is_product_in_axis_order():
    s = spec(axes={"lora_alpha": [8, 16], "r": [2, 4, 8]}).validate()
    points = grid_points(s)
    assert len(points) == 6
    assert points[0] == {"r": 2, "lora_alpha": 8.0}
    assert points[1] == {"r": 2, "lora_alpha": 16.0}
    assert points[-1] == {"r": 8, "lora_alpha": 16.0}
    assert len({point_key(p) for p in points}) == 6


def test_full_finetuning_points_collapse_lora_axes():
    s = spec(axes={"method": ["lora", "full"], "r": [2, 8], "use_rslora": [False, True]}).validate()
    points = grid_points(s)
    full = [p for p in points if p["method"] == "full"]
    assert len(points) == 4 + 1
    assert full == [{"method": "full", "r": None, "use_rslora": None}]


def test_seeds_multiply_runs_not_points():
    s = spec(axes={"r": [2, 8], "seed": [0, 1, 2]}).validate()
    assert s.seeds == (0, 1, 2)
    assert s.point_axes == ("r",)
    assert s.planned_point_count() == 2


def test_seed_defaults_to_base_seed():
    s = SweepSpec(base=RunConfig(train=TrainConfig(seed=7)), axes={"r": (2,)})
    assert s.seeds == (7,)


def test_point_config_sets_every_axis():
    s = spec(axes={"method": ["qlora-int8"], "task": ["first_lt_last"], "r": [16], "lora_alpha": [32],
                   "lr": [1e-3], "target_modules": ["fc1+fc2"], "use_rslora": [True]}).validate()
    point = grid_points(s)[0]
    config = point_config(s, point, seed=5)
    assert config.method == "qlora-int8"
    assert config.task == "first_lt_last"
    assert config.lora.r == 16
    assert config.lora.lora_alpha == 32.0
    assert config.lora.target_modules == ("fc1", "fc2")
    assert config.lora.use_rslora is True
    assert config.train.lr == 1e-3
    assert config.train.seed == 5
    assert config.train.epochs == 2
    assert config.train.n_train == 256


@pytest.mark.parametrize("axes", [
    {"r": [2, 8], "lora_alpha": [8, 16]},
    {"method": ["lora", "full"], "r": [2], "target_modules": ["qkv+proj", "fc1"]},
    {"lr": [5e-3, 1e-3], "use_rslora": [False, True], "task": ["odd_majority", "sum_high"]},
])
def test_point_round_trips_through_run_config(axes):
    s = spec(axes={**axes, "seed": [0, 3]}).validate()
    for point in grid_points(s):
        for seed in s.seeds:
            stored = json.loads(json.dumps(point_config(s, point, seed).to_dict()))
            back, back_seed = point_from_config(s, stored)
            assert point_key(back, back_seed) == point_key(point, seed)


def test_random_points_are_reproducible_distinct_and_in_range():
    s = spec(search="random", budget=12, sampler_seed=3,
             axes={"r": "1..64 log", "lr": {"low": "1e-4", "high": 1e-2, "log": True}, "use_rslora": [False, True]})
    s.validate()
    first, again = random_points(s), random_points(s)
    assert first == again
    assert len(first) == 12
    assert len({point_key(p) for p in first}) == 12
    for point in first:
        assert isinstance(point["r"], int)
        assert 1 <= point["r"] <= 64
        assert 1e-4 <= point["lr"] <= 1e-2
    other = random_points(SweepSpec.from_dict({**s.to_dict(), "sampler_seed": 4}))
    assert other != first


def test_random_stops_when_space_is_smaller_than_budget():
    s = spec(search="random", budget=10, axes={"r": [2, 8]}).validate()
    assert sorted(p["r"] for p in random_points(s)) == [2, 8]


@pytest.mark.parametrize("name, text, expected", [
    ("r", "2, 8,16", (2, 8, 16)),
    ("lr", "5e-3,1e-3", (5e-3, 1e-3)),
    ("target_modules", "qkv+proj, qkv+proj+fc1+fc2", (("qkv", "proj"), ("qkv", "proj", "fc1", "fc2"))),
    ("use_rslora", "standard, rslora", (False, True)),
    ("use_rslora", "false,true", (False, True)),
    ("r", "1..64 log", Range(1, 64, True)),
    ("lr", "1e-4..1e-2", Range(1e-4, 1e-2, False)),
    ("method", "lora,full", ("lora", "full")),
])
def test_parse_axis_text(name, text, expected):
    assert parse_axis_values(name, text) == expected


@pytest.mark.parametrize("values, message", [
    ({"axes": {"r": []}}, "axis r has no values"),
    ({"axes": {"method": []}}, "axis method has no values"),
    ({"axes": {"r": [0, 4]}}, "r must be between 1 and 64 for qkv (64 -> 192), got 0"),
    ({"axes": {"r": [128]}}, "r must be between 1 and 64 for qkv (64 -> 192), got 128"),
    ({"axes": {"r": [2, 65], "target_modules": ["proj"]}}, "r must be between 1 and 64 for proj (64 -> 64), got 65"),
    ({"axes": {"lr": [-1e-3]}}, "learning rate must be a positive finite number"),
    ({"axes": {"lr": ["abc"]}}, "axis lr: 'abc' is not a number"),
    ({"axes": {"lora_alpha": [0]}}, "lora_alpha must be a positive finite number"),
    ({"axes": {"lora_alpha": [8, 1e9]}}, "sweep point lora_alpha=1e+09, seed 0: lora_alpha must be at most 1024"),
    ({"search": "random", "budget": 4, "axes": {"lora_alpha": "1..1e9 log"}}, "lora_alpha must be at most 1024"),
    ({"axes": {"r": [2, 2]}}, "axis r lists 2 more than once"),
    ({"axes": {"r": ["two"]}}, "axis r: 'two' is not a whole number"),
    ({"axes": {"seed": [-1]}}, "seed -1 is out of range"),
    ({"axes": {"method": ["lora", "dora"]}}, "unknown method 'dora'"),
    ({"axes": {"task": ["nope"]}}, "unknown task 'nope'"),
    ({"axes": {"target_modules": ["qkv+xyz"]}}, "unknown module 'xyz'"),
    ({"axes": {"target_modules": ["qkv+qkv"]}}, "names a module twice"),
    ({"axes": {"use_rslora": ["maybe"]}}, "is not a scaling rule"),
    ({"axes": {"rank": [4]}}, "unknown sweep axis 'rank'"),
    ({"axes": {"r": "1..8"}}, "grid search needs a list of values, not a range"),
    ({"axes": {"method": {"low": 1, "high": 2}}}, "axis method takes a list of values, not a range"),
    ({"search": "random", "axes": {"r": [2]}}, "random search needs a budget"),
    ({"search": "random", "budget": 0, "axes": {"r": [2]}}, "at least 1, got 0"),
    ({"search": "grid", "budget": 4, "axes": {"r": [2]}}, "grid search tries every combination"),
    ({"search": "random", "budget": 4, "axes": {"r": {"low": 8, "high": 2}}}, "range low 8 is above high 2"),
    ({"search": "random", "budget": 4, "axes": {"lr": {"low": 0, "high": 1e-2, "log": True}}}, "log range needs"),
    ({"search": "tpe", "budget": 4, "axes": {"r": {"low": 1, "high": 128}}}, "got 128"),
    ({"search": "bayes"}, "unknown search 'bayes'"),
    ({"executor": "ray"}, "needs the address of a running Ray cluster"),
    ({"executor": "slurm"}, "unknown executor 'slurm'"),
    ({"axes": {"r": list(range(1, 65)), "lora_alpha": list(range(1, 10))}}, f"limit of {MAX_RUNS_PER_SWEEP}"),
    ({"axes": {"r": [2]}, "colour": "red"}, "unknown sweep setting(s) ['colour']"),
])
def test_invalid_spec_message(values, message):
    with pytest.raises(ValueError) as error:
        spec(**values).validate()
    assert message in str(error.value)


def test_out_of_range_message_names_point():
    with pytest.raises(ValueError, match=r"sweep point r=128, seed 0: r must be"):
        spec(axes={"r": [2, 128]}).validate()


def test_spec_round_trips_through_dict():
    s = spec(search="random", budget=5, name="n", axes={"r": "1..64 log", "target_modules": ["qkv+proj", "fc1"],
                                                         "use_rslora": [True], "seed": [0, 1]}).validate()
    assert SweepSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_spec_file_yaml_and_json(tmp_path):
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text("search: grid\nbase:\n  train: {epochs: 2}\naxes:\n  r: [2, 8]\n"
                         "  lr: [1e-3, 5.0e-3]\n  target_modules: [qkv+proj, [fc1, fc2]]\n  seed: [0, 1]\n")
    loaded = load_spec_file(yaml_file).validate()
    assert loaded.axes["r"] == (2, 8)
    assert loaded.axes["lr"] == (1e-3, 5e-3)
    assert loaded.axes["target_modules"] == (("qkv", "proj"), ("fc1", "fc2"))
    assert loaded.base.train.epochs == 2
    json_file = tmp_path / "s.json"
    json_file.write_text(json.dumps(loaded.to_dict()))
    assert load_spec_file(json_file) == loaded


def test_spec_file_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        load_spec_file(broken)
    with pytest.raises(ValueError, match="cannot read the sweep spec"):
        load_spec_file(tmp_path / "missing.yaml")

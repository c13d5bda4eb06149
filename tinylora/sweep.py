"""Hyperparameter sweep specs: the axes over the Train settings, how they are parsed, and how a spec is checked.

A sweep varies some of a `RunConfig`'s settings, its axes, and keeps the rest at `SweepSpec.base`. An axis is
either a list of values or, for random and TPE search, a numeric `Range`. A point is one value per axis other
than `seed`. Every point trains once per seed, so several seeds give a mean and a spread per point. Each of
those trainings is an ordinary "train" run in the run store whose `group_id` is the sweep's id. This module
parses axes from spec files, flags and text boxes, and `SweepSpec.validate` checks every axis and every point
the sweep would train. `tinylora.sweep_search` generates the points, and `tinylora.sweep_store` records, starts
and stops sweeps.
"""

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import MAX_SEED, METHODS, RunConfig
from .lora import TARGETABLE
from .tasks import TASKS

AXES = ("method", "task", "r", "lora_alpha", "lr", "target_modules", "use_rslora", "seed")
RANGE_AXES = {"r": int, "lora_alpha": float, "lr": float}  # axes that random and TPE search can sample from a range
SEARCHES = ("grid", "random", "tpe")
EXECUTORS = ("local", "ray")
MAX_RUNS_PER_SWEEP = 512
AXIS_LABELS = {
    "method": "method",
    "task": "task",
    "r": "r",
    "lora_alpha": "lora_alpha",
    "lr": "learning rate",
    "target_modules": "target modules",
    "use_rslora": "scaling rule",
    "seed": "seed",
}
OPTUNA_INSTALL = "pip install optuna==5.1.0"


@dataclass(frozen=True)
class Range:
    """A numeric interval that random and TPE search sample from; `log` samples log-uniformly."""

    low: float
    high: float
    log: bool = False


AxisValues = tuple | Range


@dataclass(frozen=True)
class SweepSpec:
    base: RunConfig = field(default_factory=RunConfig)  # settings every point shares; axes override them
    axes: dict[str, AxisValues] = field(default_factory=dict)  # axis name (from AXES) -> values or Range
    search: str = "grid"
    budget: int | None = None  # points to try with random or TPE search; grid tries every combination
    sampler_seed: int = 0  # seeds random and TPE sampling, so a sweep proposes the same points again
    executor: str = "local"  # "local": this machine's runner; "ray": one Ray task per run on a cluster
    ray_address: str = ""  # the cluster to submit to with executor "ray", e.g. "127.0.0.1:6379"
    name: str = ""

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.axes.get("seed", (self.base.train.seed,)))

    @property
    def point_axes(self) -> tuple[str, ...]:
        """The axes that define a point, in `AXES` order: every given axis except seed."""
        return tuple(a for a in AXES if a in self.axes and a != "seed")

    @property
    def swept_axes(self) -> tuple[str, ...]:
        """The point axes with more than one value (or a range)."""
        return tuple(a for a in self.point_axes
                     if isinstance(self.axes[a], Range) or len(self.axes[a]) > 1)

    def validate(self) -> "SweepSpec":
        """Raise ValueError naming the first invalid axis, value or setting; return self when valid."""
        # sweep_search imports this module, so importing it at the top of this one would be circular.
        from .sweep_search import _points_to_validate, point_config

        self.base.validate()

        # Settings of the sweep itself
        if self.search not in SEARCHES:
            raise ValueError(f"unknown search {self.search!r}; choose one of {', '.join(SEARCHES)}")
        if not 0 <= self.sampler_seed <= MAX_SEED:
            raise ValueError(f"sampler seed must be between 0 and {MAX_SEED}, got {self.sampler_seed}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; choose one of {', '.join(EXECUTORS)}")
        if self.executor == "ray" and not self.ray_address.strip():
            raise ValueError("the Ray executor needs the address of a running Ray cluster, such as 127.0.0.1:6379 "
                             "(start one with `ray start --head`), or choose the local executor")

        # Each axis on its own
        unknown = sorted(set(self.axes) - set(AXES))
        if unknown:
            raise ValueError(f"unknown sweep axis {unknown[0]!r}; axes are {', '.join(AXES)}")
        for name, values in self.axes.items():
            _check_axis(name, values, self.search)

        # Budget and size
        if self.search == "grid":
            if self.budget is not None:
                raise ValueError(f"grid search tries every combination and takes no budget (got {self.budget}); "
                                 f"use random or tpe search for a budget")
        elif not isinstance(self.budget, int) or isinstance(self.budget, bool) or self.budget < 1:
            raise ValueError(f"{self.search} search needs a budget: the number of points to try, at least 1, "
                             f"got {self.budget!r}")
        if self.search == "tpe":
            require_optuna()
        runs = self.planned_point_count() * len(self.seeds)
        if runs > MAX_RUNS_PER_SWEEP:
            raise ValueError(f"this sweep would train {runs} runs, more than the limit of {MAX_RUNS_PER_SWEEP}; "
                             f"remove axis values, seeds or budget")
        swept = self.swept_axes
        for point in _points_to_validate(self):
            for seed in self.seeds:
                try:
                    point_config(self, point, seed).validate()
                except ValueError as error:
                    where = describe_point({a: v for a, v in point.items() if a in swept}) if swept else "every point"
                    raise ValueError(f"sweep point {where}, seed {seed}: {error}") from None
        return self

    def planned_point_count(self) -> int:
        from .sweep_search import grid_points  # imported here because sweep_search imports this module

        if self.search == "grid":
            return len(grid_points(self))
        return int(self.budget)

    def to_dict(self) -> dict[str, Any]:
        axes = {}
        for name, values in self.axes.items():
            if isinstance(values, Range):
                axes[name] = dataclasses.asdict(values)
            elif name == "target_modules":
                axes[name] = [list(v) for v in values]
            else:
                axes[name] = list(values)
        return {"name": self.name, "search": self.search, "budget": self.budget, "sampler_seed": self.sampler_seed,
                "executor": self.executor, "ray_address": self.ray_address, "base": self.base.to_dict(),
                "axes": axes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepSpec":
        """Build a spec from `to_dict()` output or a hand-written YAML/JSON file; values are parsed per axis."""
        if not isinstance(data, dict):
            raise ValueError(f"a sweep spec must be a mapping with keys such as axes, search and base, "
                             f"got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown sweep setting(s) {unknown}; known settings are {sorted(known)}")
        values = dict(data)
        base = values.get("base") or {}
        if not isinstance(base, dict):
            raise ValueError(f"base must be a mapping of Train settings such as {{train: {{epochs: 2}}}}, got {base!r}")
        values["base"] = RunConfig.from_dict(base)
        axes = values.get("axes") or {}
        if not isinstance(axes, dict):
            raise ValueError(f"axes must be a mapping from axis name to a list of values, got {axes!r}")
        values["axes"] = {name: parse_axis_values(name, raw) for name, raw in axes.items()}
        if values.get("budget") is not None:
            values["budget"] = _to_int("budget", values["budget"])
        if "sampler_seed" in values:
            values["sampler_seed"] = _to_int("sampler_seed", values["sampler_seed"])
        for key in ("search", "executor", "ray_address", "name"):
            if key in values and values[key] is not None:
                values[key] = str(values[key]).strip()
        return cls(**values)


# Axis values


def parse_axis_values(name: str, raw: Any) -> AxisValues:
    """Turn an axis as written in a spec file, a flag or a text box into a tuple of typed values or a Range.

    A list gives values; a mapping with low and high (and optionally log) gives a Range; a string is split at
    commas, or read as `low..high` (with an optional trailing ` log`) for a range.
    """
    if name not in AXES:
        raise ValueError(f"unknown sweep axis {name!r}; axes are {', '.join(AXES)}")
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - {"low", "high", "log"})
        if unknown or not {"low", "high"} <= set(raw):
            raise ValueError(f"axis {name}: a range needs exactly low, high and optionally log, got {sorted(raw)}")
        return _make_range(name, raw["low"], raw["high"], bool(raw.get("log", False)))
    if isinstance(raw, str):
        text = raw.strip()
        match = re.fullmatch(r"(\S+?)\s*\.\.\s*(\S+?)(\s+log)?", text)
        if match and name in RANGE_AXES:
            return _make_range(name, match[1], match[2], bool(match[3]))
        items = [t.strip() for t in text.split(",")] if text else []
        if any(not t for t in items):
            raise ValueError(f"axis {name}: {raw!r} has an empty entry; separate values with single commas")
        raw = items
    elif not isinstance(raw, (list, tuple)):
        raw = [raw]
    return tuple(_parse_value(name, v) for v in raw)


def _make_range(name: str, low: Any, high: Any, log: bool) -> Range:
    if name not in RANGE_AXES:
        raise ValueError(f"axis {name} takes a list of values, not a range; ranges work for "
                         f"{', '.join(RANGE_AXES)}")
    return Range(_parse_value(name, low), _parse_value(name, high), log)


def _parse_value(name: str, value: Any) -> Any:
    if name in ("r", "seed"):
        return _to_int(f"axis {name}", value)
    if name in ("lora_alpha", "lr"):
        if isinstance(value, bool):
            raise ValueError(f"axis {name}: {value!r} is not a number")
        try:
            return float(str(value).strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise ValueError(f"axis {name}: {value!r} is not a number; enter numbers such as 5e-3") from None
    if name == "use_rslora":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "rslora", "yes", "1"):
            return True
        if text in ("false", "standard", "no", "0"):
            return False
        raise ValueError(f"axis use_rslora: {value!r} is not a scaling rule; use false (lora_alpha / r) or true "
                         f"(rsLoRA, lora_alpha / sqrt(r))")
    if name == "target_modules":
        modules = value.split("+") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) \
            else None
        if modules is None:
            raise ValueError(f"axis target_modules: {value!r} is not a module set; write one as qkv+proj")
        modules = tuple(str(m).strip() for m in modules if str(m).strip())
        return modules
    return str(value).strip()


def _to_int(what: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not a whole number") from None


def _check_axis(name: str, values: AxisValues, search: str) -> None:
    """Check one axis on its own; range limits that depend on other settings are checked per point."""
    label = f"axis {name}"
    if isinstance(values, Range):
        if search == "grid":
            raise ValueError(f"{label}: grid search needs a list of values, not a range; use random or tpe search "
                             f"for ranges")
        if name == "seed":
            raise ValueError(f"{label} takes a list of seeds; every point trains once per seed")
        for bound in (values.low, values.high):
            if not math.isfinite(bound):
                raise ValueError(f"{label}: range bounds must be finite numbers, got {bound}")
        if values.low > values.high:
            raise ValueError(f"{label}: range low {values.low:g} is above high {values.high:g}; swap them")
        if values.log and values.low <= 0:
            raise ValueError(f"{label}: a log range needs low > 0, got {values.low:g}")
        return
    if len(values) == 0:
        raise ValueError(f"{label} has no values; give at least one value")
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise ValueError(f"{label} lists {format_value(name, repeated[0])} more than once; give each value once")
    for value in values:
        if name == "method" and value not in METHODS:
            raise ValueError(f"{label}: unknown method {value!r}; choose from {', '.join(METHODS)}")
        if name == "task" and value not in TASKS:
            raise ValueError(f"{label}: unknown task {value!r}; choose from {', '.join(TASKS)}")
        if name == "target_modules":
            if not value:
                raise ValueError(f"{label}: a module set is empty; name at least one of {', '.join(TARGETABLE)}")
            unknown = [m for m in value if m not in TARGETABLE]
            if unknown:
                raise ValueError(f"{label}: unknown module {unknown[0]!r}; choose from {', '.join(TARGETABLE)}")
            if len(set(value)) != len(value):
                raise ValueError(f"{label}: the set {'+'.join(value)} names a module twice")
        if name == "seed" and not 0 <= value <= MAX_SEED:
            raise ValueError(f"{label}: seed {value} is out of range; seeds go from 0 to {MAX_SEED}")


def format_value(name: str, value: Any) -> str:
    """Show one axis value as the page and the table write it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, str):
        return value
    if name == "target_modules":
        return "+".join(value)
    if name == "use_rslora":
        return "rsLoRA" if value else "standard"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# Names that a point's description uses for axes whose own names read badly there ("use_rslora=standard").
DESCRIBED_AS = {"use_rslora": "scaling"}


def describe_point(point: dict[str, Any]) -> str:
    return ", ".join(f"{DESCRIBED_AS.get(name, name)}={format_value(name, value)}"
                     for name, value in point.items()) or "(base settings)"


def load_spec_file(path: str | Path) -> SweepSpec:
    """Read a sweep spec from a JSON file (.json) or a YAML file (any other suffix)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"cannot read the sweep spec {path}: {error.strerror}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"the sweep spec {path} is not valid JSON: {error}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"the sweep spec {path} is not valid YAML: {error}") from None
    return SweepSpec.from_dict(data or {})


def require_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ValueError(f"TPE search needs Optuna, which is not installed; install it with `{OPTUNA_INSTALL}`, "
                         f"or choose grid or random search") from None


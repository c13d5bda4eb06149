"""Hyperparameter sweeps: a spec of axes over the Train settings, its points, and the sweep record.

A sweep varies some of a `RunConfig`'s settings, its axes, and keeps the rest at `SweepSpec.base`. An axis is
either a list of values or, for random and TPE search, a numeric `Range`. A point is one value per axis other
than `seed`. Every point trains once per seed, so several seeds give a mean and a spread per point. Each of
those trainings is an ordinary "train" run in the run store whose `group_id` is the sweep's id.

Search strategies:

- "grid": every combination of the axes' lists (the product, in `AXES` order);
- "random": `budget` points drawn from a generator seeded by `sampler_seed` (uniform over lists, uniform or
  log-uniform over ranges), so the same spec always draws the same points;
- "tpe": `budget` points proposed one batch at a time by Optuna's Tree-structured Parzen Estimator
  (Bergstra et al. 2011, "Algorithms for Hyper-Parameter Optimization"), which needs the results of earlier
  points, so the sweep's dispatcher asks for new points as runs finish.

Full finetuning trains no adapter, so its points carry None for the LoRA axes (r, lora_alpha, target_modules,
use_rslora), and grid points that differ only there collapse into one.

A sweep is recorded as `sweeps/<id>.json` in the data directory (its spec, owner and creation time). Starting or
resuming it queues a dispatcher run of kind "sweep" (see `tinylora.sweep_jobs`) that submits the points which
have no finished run yet.
"""

import dataclasses
import itertools
import json
import math
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_file_atomic
from .config import MAX_SEED, METHODS, RunConfig
from .lora import TARGETABLE
from .store import Run, RunStore
from .tasks import TASKS

AXES = ("method", "task", "r", "lora_alpha", "lr", "target_modules", "use_rslora", "seed")
LORA_AXES = ("r", "lora_alpha", "target_modules", "use_rslora")  # meaningless for full finetuning
RANGE_AXES = {"r": int, "lora_alpha": float, "lr": float}  # axes that random and TPE search can sample from a range
SEARCHES = ("grid", "random", "tpe")
EXECUTORS = ("local", "ray")
MAX_RUNS_PER_SWEEP = 512
DONE_STATUSES = ("finished", "diverged")  # a run with one of these is a result and is never trained again
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


# Points


def point_config(spec: SweepSpec, point: dict[str, Any], seed: int) -> RunConfig:
    """The base config with the point's axis values and `seed` put in."""
    config = spec.base
    lora, train = config.lora, config.train
    changes: dict[str, Any] = {}
    for name, value in point.items():
        if value is None:
            continue
        if name in ("method", "task"):
            changes[name] = value
        elif name == "lr":
            train = dataclasses.replace(train, lr=value)
        else:
            lora = dataclasses.replace(lora, **{name: value})
    train = dataclasses.replace(train, seed=seed)
    return dataclasses.replace(config, lora=lora, train=train, **changes)


def point_from_config(spec: SweepSpec, config: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Read a run's config back into (point, seed) over the spec's point axes."""
    run = RunConfig.from_dict(config)
    values = {"method": run.method, "task": run.task, "r": run.lora.r, "lora_alpha": run.lora.lora_alpha,
              "lr": run.train.lr, "target_modules": tuple(run.lora.target_modules), "use_rslora": run.lora.use_rslora}
    point = {name: values[name] for name in spec.point_axes}
    return normalize_point(spec, point), run.train.seed


def normalize_point(spec: SweepSpec, point: dict[str, Any]) -> dict[str, Any]:
    """Blank the LoRA axes of a full-finetuning point, which trains no adapter."""
    method = point.get("method", spec.base.method)
    if method == "full":
        return {name: (None if name in LORA_AXES else value) for name, value in point.items()}
    return dict(point)


def point_key(point: dict[str, Any], seed: int | None = None) -> str:
    """A string that identifies a point (and a seed) independently of how its values were written."""
    items = [[name, list(v) if isinstance(v, tuple) else v] for name, v in sorted(point.items())]
    return json.dumps([items, seed])


def _dedupe(spec: SweepSpec, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, unique = set(), []
    for point in points:
        point = normalize_point(spec, point)
        key = point_key(point)
        if key not in seen:
            seen.add(key)
            unique.append(point)
    return unique


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    names = spec.point_axes
    combos = itertools.product(*(spec.axes[n] for n in names))
    return _dedupe(spec, [dict(zip(names, combo)) for combo in combos])


def random_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Draw `spec.budget` distinct points; fewer when the space holds fewer distinct points."""
    rng = random.Random(spec.sampler_seed)
    points, seen = [], set()
    for _ in range(50 * spec.budget):
        point = normalize_point(spec, {name: sample_axis(spec.axes[name], name, rng) for name in spec.point_axes})
        key = point_key(point)
        if key not in seen:
            seen.add(key)
            points.append(point)
            if len(points) == spec.budget:
                break
    return points


def sample_axis(values: AxisValues, name: str, rng: random.Random) -> Any:
    if not isinstance(values, Range):
        return values[rng.randrange(len(values))]
    if values.log:
        x = math.exp(rng.uniform(math.log(values.low), math.log(values.high)))
    else:
        x = rng.uniform(values.low, values.high)
    return round_to_axis(name, x, values)


def round_to_axis(name: str, x: float, values: Range) -> int | float:
    """Round a sampled number to a whole r, or to 3 significant digits, kept inside the range."""
    if RANGE_AXES[name] is int:
        return int(min(max(round(x), math.ceil(values.low)), math.floor(values.high)))
    return min(max(float(f"{x:.3g}"), values.low), values.high)


def planned_points(spec: SweepSpec) -> list[dict[str, Any]] | None:
    """The points a grid or random sweep trains, in order; None for TPE, which proposes them as it goes."""
    if spec.search == "grid":
        return grid_points(spec)
    if spec.search == "random":
        return random_points(spec)
    return None


def _points_to_validate(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every planned point, or for TPE every combination of list values and range ends."""
    points = planned_points(spec)
    if points is not None:
        return points
    names = spec.point_axes
    choices = [(spec.axes[n].low, spec.axes[n].high) if isinstance(spec.axes[n], Range) else spec.axes[n]
               for n in names]
    ends = [dict(zip(names, (RANGE_AXES[n](v) if n in RANGE_AXES else v for n, v in zip(names, combo))))
            for combo in itertools.product(*choices)]
    return _dedupe(spec, ends)


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


# The sweep record


@dataclass(frozen=True)
class SweepRecord:
    id: str
    created: float
    owner: str
    spec: SweepSpec


def sweeps_dir(store: RunStore) -> Path:
    return store.home / "sweeps"


def _check_sweep_id(sweep_id: Any) -> None:
    if not isinstance(sweep_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", sweep_id):
        raise ValueError(f"sweep id {sweep_id!r} is not valid; sweep ids contain letters, digits, - and _")


def _record_path(store: RunStore, sweep_id: str) -> Path:
    _check_sweep_id(sweep_id)
    return sweeps_dir(store) / f"{sweep_id}.json"


def save_sweep(store: RunStore, spec: SweepSpec, owner: str = "") -> SweepRecord:
    """Validate `spec` and write a new sweep record; return it. Nothing is queued."""
    spec.validate()
    record = SweepRecord(f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}", time.time(), owner, spec)
    data = {"id": record.id, "created": record.created, "owner": owner, "spec": spec.to_dict()}
    write_file_atomic(_record_path(store, record.id), json.dumps(data, indent=2).encode())
    return record


def load_sweep(store: RunStore, sweep_id: str) -> SweepRecord:
    path = _record_path(store, sweep_id)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise _sweep_not_found(store, sweep_id) from None
    return SweepRecord(data["id"], data["created"], data.get("owner", ""), SweepSpec.from_dict(data["spec"]))


def _sweep_not_found(store: RunStore, sweep_id: str, max_listed: int = 10) -> ValueError:
    """Build the error for a missing sweep id, listing up to `max_listed` stored ids, newest first."""
    where = sweeps_dir(store)
    # Ids begin with the local start time (sweep-YYYYmmdd-HHMMSS-...), so reverse name order is newest first.
    ids = sorted((path.stem for path in where.glob("*.json")), reverse=True)
    if not ids:
        return ValueError(f"sweep {sweep_id!r} was not found, because {where} contains no sweeps. Start a sweep first.")
    listed = ", ".join(ids[:max_listed])
    if len(ids) > max_listed:
        listed += f" and {len(ids) - max_listed} more"
    return ValueError(f"sweep {sweep_id!r} was not found in {where}. Choose one of the stored sweeps, newest first: "
                      f"{listed}")


def list_sweeps(store: RunStore) -> list[SweepRecord]:
    """Every readable sweep record, newest first."""
    records = []
    for path in sweeps_dir(store).glob("*.json"):
        try:
            records.append(load_sweep(store, path.stem))
        except (ValueError, KeyError, OSError):
            continue
    return sorted(records, key=lambda r: r.created, reverse=True)


def validate_sweep_job(params: dict[str, Any]) -> dict[str, Any]:
    """Check a dispatcher job's parameters: exactly a well-formed sweep id (its record is read when it starts)."""
    if set(params) != {"sweep_id"}:
        raise ValueError(f"a sweep job takes exactly one parameter, sweep_id, got {sorted(params)}")
    _check_sweep_id(params["sweep_id"])
    return dict(params)


# Starting, stopping and resuming


def existing_runs(store: RunStore, spec: SweepSpec, sweep_id: str) -> dict[str, Run]:
    """For each (point, seed) key, the run that counts: the newest finished or diverged one, else the newest."""
    chosen: dict[str, Run] = {}
    for run in reversed(store.list_runs(kind="train", group_id=sweep_id)):  # oldest first, so newer runs win
        try:
            point, seed = point_from_config(spec, run.config)
        except ValueError:
            continue
        key = point_key(point, seed)
        old = chosen.get(key)
        if old is None or run.status in DONE_STATUSES or old.status not in DONE_STATUSES:
            chosen[key] = run
    return chosen


def dispatchers(store: RunStore, sweep_id: str) -> list[Run]:
    return store.list_runs(kind="sweep", group_id=sweep_id)


def start_sweep(store: RunStore, spec: SweepSpec, owner: str = "") -> SweepRecord:
    """Record a sweep and queue its dispatcher, which submits every point; return the record."""
    record = save_sweep(store, spec, owner)
    _queue_dispatcher(store, record.id, owner)
    return record


def resume_sweep(store: RunStore, sweep_id: str, owner: str = "") -> str:
    """Queue a new dispatcher for a sweep that is not active; it trains only points without a finished run."""
    load_sweep(store, sweep_id)
    active = [r for r in dispatchers(store, sweep_id) if r.active]
    if active:
        raise ValueError(f"sweep {sweep_id} is still {active[0].status}; stop it before resuming it")
    return _queue_dispatcher(store, sweep_id, owner)


def _queue_dispatcher(store: RunStore, sweep_id: str, owner: str) -> str:
    from . import jobs

    run_id = store.create_run("sweep", {"sweep_id": sweep_id}, owner=owner, group_id=sweep_id)
    jobs.ensure_runner(store.home)
    return run_id


def stop_sweep(store: RunStore, sweep_id: str) -> int:
    """Ask the sweep's dispatcher and every active run of the sweep to stop; return how many were asked."""
    active = store.list_runs(group_id=sweep_id, statuses=("queued", "running"))
    for run in active:
        store.request_stop(run.id)
    return len(active)

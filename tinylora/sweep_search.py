"""Points of a sweep: the run config of each point, and the grid and random search that plan them.

A point maps each of a spec's point axes to one value, and `point_config` turns a point and a seed into the
`RunConfig` of one training run. `point_key` identifies a point (and a seed) however its values were written,
and `point_from_config` reads a stored run's config back into its point and seed. The search strategies:

- "grid": every combination of the axes' lists (the product, in `AXES` order);
- "random": `budget` points drawn from a generator seeded by `sampler_seed` (uniform over lists, uniform or
  log-uniform over ranges), so the same spec always draws the same points;
- "tpe": `budget` points proposed one batch at a time by Optuna's Tree-structured Parzen Estimator
  (Bergstra et al. 2011, "Algorithms for Hyper-Parameter Optimization"), which needs the results of earlier
  points, so the sweep's dispatcher (`tinylora.sweep_jobs`) requests new points as runs finish.

Full finetuning trains no adapter, so its points carry None for the LoRA axes (r, lora_alpha, target_modules,
use_rslora), and grid points that differ only there collapse into one.
"""

import dataclasses
import itertools
import json
import math
import random
from typing import Any

from .config import RunConfig
from .sweep import RANGE_AXES, AxisValues, Range, SweepSpec

LORA_AXES = ("r", "lora_alpha", "target_modules", "use_rslora")  # meaningless for full finetuning


def point_config(spec: SweepSpec, point: dict[str, Any], seed: int) -> RunConfig:
    """Return the base config with the point's axis values and `seed` put in."""
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
    """Return a string that identifies a point (and a seed) independently of how its values were written."""
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
    """Draw `spec.budget` distinct points, or fewer when the space contains fewer."""
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
    """Return the points a grid or random sweep trains, in order, or None for TPE, which proposes them as it goes."""
    if spec.search == "grid":
        return grid_points(spec)
    if spec.search == "random":
        return random_points(spec)
    return None


def _points_to_validate(spec: SweepSpec) -> list[dict[str, Any]]:
    """Return every planned point, or for TPE every combination of list values and range ends."""
    points = planned_points(spec)
    if points is not None:
        return points
    names = spec.point_axes
    choices = [(spec.axes[n].low, spec.axes[n].high) if isinstance(spec.axes[n], Range) else spec.axes[n]
               for n in names]
    ends = [dict(zip(names, (RANGE_AXES[n](v) if n in RANGE_AXES else v for n, v in zip(names, combo))))
            for combo in itertools.product(*choices)]
    return _dedupe(spec, ends)


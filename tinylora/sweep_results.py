"""A sweep's results as pandas tables: one row per run, one row per point, and grids for heatmaps.

The run table has a row for every (point, seed) of a grid or random sweep, "pending" until its run is
submitted, and a row for every run a TPE sweep has proposed so far. Accuracies are the final validation
accuracy of finished runs; the spread over seeds is the sample standard deviation (ddof=1), so a point with a
single finished seed has no spread.
"""

from dataclasses import dataclass
from typing import Any

import pandas as pd

from .store import RunStore
from .sweep import Range, SweepSpec, format_value
from .sweep_search import planned_points, point_from_config, point_key
from .sweep_store import DONE_STATUSES, SweepRecord, existing_runs

RESULT_COLUMNS = ["status", "final_acc", "trainable", "seconds", "run_id"]


def _cell(name: str, value: Any) -> Any:
    """Format a point's value as a table cell: module sets as "qkv+proj", everything else unchanged."""
    if name == "target_modules" and value is not None:
        return "+".join(value)
    return value


def runs_table(store: RunStore, record: SweepRecord) -> pd.DataFrame:
    """Build one row per (point, seed): the axis values, then status, final_acc, trainable, seconds and run_id."""
    spec = record.spec
    chosen = existing_runs(store, spec, record.id)
    planned = planned_points(spec)
    slots: list[tuple[dict, int]] = []
    if planned is not None:
        slots = [(point, seed) for point in planned for seed in spec.seeds]
    keys = {point_key(point, seed) for point, seed in slots}
    for run in chosen.values():  # points a TPE sweep proposed, which no plan lists
        point, seed = point_from_config(spec, run.config)
        if point_key(point, seed) not in keys:
            slots.append((point, seed))
            keys.add(point_key(point, seed))

    rows = []
    for point, seed in slots:
        run = chosen.get(point_key(point, seed))
        row = {name: _cell(name, point[name]) for name in spec.point_axes}
        row["seed"] = seed
        if run is None:
            row.update(status="pending", final_acc=None, trainable=None, seconds=None, run_id=None)
        else:
            row.update(status=run.status, final_acc=run.final_acc if run.status == "finished" else None,
                       trainable=run.summary.get("trainable"), seconds=run.seconds, run_id=run.id)
        rows.append(row)
    columns = [*spec.point_axes, "seed", *RESULT_COLUMNS]
    # Object columns keep the axis values as Python ints, floats, strings, bools and None (full finetuning's
    # missing r stays None instead of turning the column into floats).
    table = pd.DataFrame(rows, columns=columns, dtype=object)
    for name in ("final_acc", "seconds"):
        table[name] = pd.to_numeric(table[name], errors="coerce").astype("float64")
    table["trainable"] = pd.to_numeric(table["trainable"], errors="coerce").astype("Int64")
    return table


def points_table(runs: pd.DataFrame, spec: SweepSpec) -> pd.DataFrame:
    """Summarize each point in a row: acc_mean, acc_std, acc_min, acc_max over its finished seeds, and counts.

    `best_run_id` is the point's most accurate finished run; `seeds_done` counts finished or diverged seeds.
    """
    axes = list(spec.point_axes)
    frame = runs.assign(_point=_point_labels(runs, axes))
    rows = []
    for _, group in frame.groupby("_point", sort=False):
        first = group.iloc[0]
        finished = group[group["status"] == "finished"]
        accs = finished["final_acc"].dropna()
        row = {name: first[name] for name in axes}
        row.update(
            acc_mean=accs.mean() if len(accs) else None,
            acc_std=accs.std(ddof=1) if len(accs) > 1 else None,
            acc_min=accs.min() if len(accs) else None,
            acc_max=accs.max() if len(accs) else None,
            seeds_finished=len(accs),
            seeds_done=int(group["status"].isin(DONE_STATUSES).sum()),
            seeds=len(group),
            trainable=group["trainable"].dropna().max() if group["trainable"].notna().any() else None,
            seconds_mean=finished["seconds"].mean() if len(finished) else None,
            best_run_id=finished.loc[finished["final_acc"].idxmax(), "run_id"] if len(accs) else None,
        )
        rows.append(row)
    columns = [*axes, "acc_mean", "acc_std", "acc_min", "acc_max", "seeds_finished", "seeds_done", "seeds",
               "trainable", "seconds_mean", "best_run_id"]
    table = pd.DataFrame(rows, columns=columns, dtype=object)
    for name in ("acc_mean", "acc_std", "acc_min", "acc_max", "seconds_mean"):
        table[name] = pd.to_numeric(table[name], errors="coerce").astype("float64")
    table["trainable"] = pd.to_numeric(table["trainable"], errors="coerce").astype("Int64")
    for name in ("seeds_finished", "seeds_done", "seeds"):
        table[name] = table[name].astype("int64")
    return table


def _point_labels(runs: pd.DataFrame, axes: list[str]) -> pd.Series:
    if not axes:
        return pd.Series(["(base)"] * len(runs), index=runs.index)
    return pd.Series(["|".join(map(str, row)) for row in runs[axes].itertuples(index=False)], index=runs.index)


def best_point(points: pd.DataFrame) -> pd.Series | None:
    """Return the point with the highest mean accuracy over its finished seeds, or None before any finished."""
    scored = points[points["acc_mean"].notna()]
    if scored.empty:
        return None
    return scored.loc[scored["acc_mean"].idxmax()]


def axis_order(spec: SweepSpec, runs: pd.DataFrame, name: str) -> list[Any]:
    """List an axis's values in display order: the spec's order for lists, ascending for sampled ranges."""
    present = [v for v in runs[name].tolist() if v is not None and not (isinstance(v, float) and pd.isna(v))]
    values = spec.axes.get(name) if name != "seed" else spec.seeds
    if values is not None and not isinstance(values, Range):
        ordered = [_cell(name, v) for v in values]
        ordered = [v for v in ordered if v in present]
    else:
        ordered = sorted(set(present))
    if len(present) < len(runs[name]):  # full finetuning's n/a
        ordered.append(None)
    return list(dict.fromkeys(ordered))


@dataclass
class HeatmapData:
    x: str
    y: str
    x_values: list[Any]
    y_values: list[Any]
    mean: list[list[float | None]]  # [y index][x index]
    std: list[list[float | None]]
    count: list[list[int]]  # finished runs averaged into each cell


def heatmap_data(runs: pd.DataFrame, spec: SweepSpec, x: str, y: str,
                 fixed: dict[str, Any] | None = None) -> HeatmapData:
    """Mean final accuracy of finished runs per (x, y) cell, over seeds and every axis not in `fixed`."""
    for name in (x, y):
        if name not in runs.columns:
            raise ValueError(f"axis {name!r} is not in this sweep; choose from {', '.join(spec.point_axes)}")
    if x == y:
        raise ValueError(f"choose two different axes for the heatmap, got {x!r} twice")
    frame = runs[runs["status"] == "finished"]
    for name, value in (fixed or {}).items():
        frame = frame[_matches(frame[name], value)]
    x_values, y_values = axis_order(spec, runs, x), axis_order(spec, runs, y)
    mean, std, count = [], [], []
    for yv in y_values:
        row_mean, row_std, row_count = [], [], []
        for xv in x_values:
            accs = frame[_matches(frame[x], xv) & _matches(frame[y], yv)]["final_acc"].dropna()
            row_mean.append(float(accs.mean()) if len(accs) else None)
            row_std.append(float(accs.std(ddof=1)) if len(accs) > 1 else None)
            row_count.append(int(len(accs)))
        mean.append(row_mean)
        std.append(row_std)
        count.append(row_count)
    return HeatmapData(x, y, x_values, y_values, mean, std, count)


def _matches(column: pd.Series, value: Any) -> pd.Series:
    if value is None:
        return column.isna()
    return column == value


def label(name: str, value: Any) -> str:
    """Format an axis value as charts and tables show it ("n/a" for full finetuning's LoRA axes)."""
    if isinstance(value, str) or value is None:
        return "n/a" if value is None else value
    if isinstance(value, float) and pd.isna(value):
        return "n/a"
    return format_value(name, value)


def results_csv(runs: pd.DataFrame) -> str:
    return runs.to_csv(index=False)


@dataclass
class SweepProgress:
    runs_total: int  # planned runs; for TPE, budget times seeds
    counts: dict[str, int]  # status -> runs ("pending": not submitted yet)
    dispatcher_status: str | None  # the newest dispatcher's status, None before it was queued

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in DONE_STATUSES)

    @property
    def active(self) -> bool:
        return self.dispatcher_status in ("queued", "running") or self.counts.get("queued", 0) + \
            self.counts.get("running", 0) > 0


def sweep_progress(store: RunStore, record: SweepRecord, runs: pd.DataFrame | None = None) -> SweepProgress:
    runs = runs_table(store, record) if runs is None else runs
    spec = record.spec
    total = len(planned_points(spec)) * len(spec.seeds) if spec.search != "tpe" else int(spec.budget) * len(spec.seeds)
    counts = runs["status"].value_counts().to_dict()
    if spec.search == "tpe":
        counts["pending"] = max(0, total - len(runs))
    dispatchers = store.list_runs(kind="sweep", group_id=record.id)
    return SweepProgress(total, {k: int(v) for k, v in counts.items()},
                         dispatchers[0].status if dispatchers else None)


def accuracy_by_r(runs: pd.DataFrame, series: str | None = None) -> pd.DataFrame:
    """Mean and spread of finished runs' final accuracy per r, one series per value of `series` (or one).

    Columns: series (a label, "all" without `series`), r, acc_mean, acc_std, runs.
    """
    frame = runs[(runs["status"] == "finished") & runs["r"].notna()] if "r" in runs else runs.iloc[0:0]
    rows = []
    keys = [series, "r"] if series else ["r"]
    for values, group in frame.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        accs = group["final_acc"].dropna()
        rows.append({"series": label(series, values[0]) if series else "all", "r": int(values[-1]),
                     "acc_mean": float(accs.mean()), "acc_std": float(accs.std(ddof=1)) if len(accs) > 1 else None,
                     "runs": len(accs)})
    return pd.DataFrame(rows, columns=["series", "r", "acc_mean", "acc_std", "runs"])


def trainable_by_r(runs: pd.DataFrame) -> pd.DataFrame:
    """Trainable parameters per r for each target-module set (and method) that the runs report.

    Columns: series (the module set when it varies, prefixed by the method when methods differ, else ""), r,
    trainable.
    """
    frame = runs[runs["trainable"].notna() & runs["r"].notna()] if "r" in runs else runs.iloc[0:0]
    methods = frame["method"].nunique() > 1 if "method" in frame else False
    rows = []
    for _, row in frame.iterrows():
        name = label("target_modules", row["target_modules"]) if "target_modules" in frame else ""
        if methods:
            name = f"{row['method']}: {name}" if name else row["method"]
        rows.append({"series": name, "r": int(row["r"]), "trainable": int(row["trainable"])})
    table = pd.DataFrame(rows, columns=["series", "r", "trainable"])
    return table.drop_duplicates().sort_values(["series", "r"]).reset_index(drop=True)

"""Comparing runs: one table row per run, filters over the table, and several runs' events as one CSV.

The table and the CSV are pandas DataFrames built from the run store, so the Runs page, the tests and a
notebook all read the same numbers.
"""

import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from .store import Run, RunStore

TABLE_COLUMNS = ["run", "created", "kind", "method", "task", "r", "lora_alpha", "targets", "lr", "epochs",
                 "fast", "status", "final_acc", "seconds"]
# The metrics CSV starts with these columns; any other event fields follow in the order they first appear.
METRIC_COLUMNS = ["run_id", "seq", "type", "step", "epoch", "train/loss", "val/acc", "val/loss", "seconds"]


def run_seconds(run: Run, now: float | None = None) -> float | None:
    """Seconds a run trained: its recorded duration, the time so far while it runs, None while queued."""
    if run.seconds is not None:
        return run.seconds
    if run.started is None:
        return None
    end = run.ended
    if end is None:
        end = time.time() if now is None else now
    return max(0.0, end - run.started)


def runs_frame(runs: Sequence[Run], now: float | None = None) -> pd.DataFrame:
    """Return one row per run with the columns of `TABLE_COLUMNS`, in the order of `runs`.

    `r`, `lora_alpha` and `targets` are empty for full finetunes, and `lr` and `epochs` are empty for
    uploaded adapters, which were not trained here.
    """
    rows = []
    for run in runs:
        config = run.config
        lora = config.get("lora") or {}
        train = config.get("train") or {}
        uses_lora = config.get("method") != "full" and bool(lora)
        rows.append({
            "run": run.id,
            "created": datetime.fromtimestamp(run.created),
            "kind": run.kind,
            "method": config.get("method"),
            "task": config.get("task"),
            "r": lora.get("r") if uses_lora else None,
            "lora_alpha": lora.get("lora_alpha") if uses_lora else None,
            "targets": "+".join(lora.get("target_modules", [])) if uses_lora else "",
            "lr": train.get("lr"),
            "epochs": train.get("epochs"),
            "fast": train.get("fast", "auto") if run.kind == "train" else "",
            "status": run.status,
            "final_acc": run.final_acc,
            "seconds": run_seconds(run, now),
        })
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return frame.astype({"r": "Int64", "epochs": "Int64", "lora_alpha": "Float64", "lr": "Float64",
                         "final_acc": "Float64", "seconds": "Float64"})


def filter_runs(frame: pd.DataFrame, methods: Iterable[str] = (), tasks: Iterable[str] = (),
                statuses: Iterable[str] = (), kinds: Iterable[str] = ()) -> pd.DataFrame:
    """Keep the rows whose method, task, status and kind are in the given lists; an empty list keeps all."""
    mask = pd.Series(True, index=frame.index)
    for column, allowed in (("method", methods), ("task", tasks), ("status", statuses), ("kind", kinds)):
        allowed = list(allowed)
        if allowed:
            mask &= frame[column].isin(allowed)
    return frame[mask].reset_index(drop=True)


def metrics_frame(store: RunStore, run_ids: Sequence[str]) -> pd.DataFrame:
    """Return one row per stored event of the given runs, in run order and then event order.

    Columns: `METRIC_COLUMNS` first, then every other event field (such as `trainable`, `status`,
    `final_acc`) in the order it first appears. A field an event does not have is empty. A column whose
    values are all integers (counts such as `step` or `trainable`) has the nullable dtype Int64, so an
    empty cell does not turn it into floats and the CSV writes 6274, not 6274.0.
    """
    rows = []
    for run_id in run_ids:
        for seq, event in store.events(run_id):
            rows.append({"run_id": run_id, "seq": seq, **event})
    extra = []
    for row in rows:
        extra.extend(key for key in row if key not in METRIC_COLUMNS and key not in extra)
    columns = METRIC_COLUMNS + extra
    frame = pd.DataFrame(rows, columns=columns)
    integer_columns = [column for column in columns if _all_integers(row.get(column) for row in rows)]
    return frame.astype(dict.fromkeys(integer_columns, "Int64"))


def _all_integers(values: Iterable[Any]) -> bool:
    """Return True when the values that are not None include at least one and are all ints (bools excluded)."""
    present = [value for value in values if value is not None]
    return bool(present) and all(isinstance(value, int) and not isinstance(value, bool) for value in present)


def metrics_csv(store: RunStore, run_ids: Sequence[str]) -> bytes:
    """Return `metrics_frame` as UTF-8 CSV with a header row and no index column."""
    return metrics_frame(store, run_ids).to_csv(index=False).encode()

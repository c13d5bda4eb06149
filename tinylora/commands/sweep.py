"""`python -m tinylora sweep`: run a hyperparameter sweep headless and print its results.

The sweep goes through the same run store and job runner as the app (its runs appear on the Sweep page), or
through a Ray cluster with --ray-address. Axes come from flags, from a YAML/JSON spec (--spec), or both, the
flags winning. Ctrl-C stops the sweep; --resume continues one.
"""

import argparse
import dataclasses
import json
import sys
import time

import pandas as pd

from ..config import METHODS, QuantOptions, TrainConfig
from ..lora import TARGETABLE
from ..ray_executor import RAY_ADDRESS_ENV, default_ray_address
from ..store import RunStore, StoreError
from ..sweep import AXES, SEARCHES, SweepSpec, describe_point, format_value, load_spec_file, parse_axis_values
from ..sweep_store import load_sweep, resume_sweep, start_sweep, stop_sweep
from ..sweep_results import best_point, points_table, runs_table, sweep_progress
from ..tasks import TASKS

POLL_SECONDS = 0.5
AXIS_FLAGS = {  # axis -> (flag, help)
    "method": ("--method", f"comma-separated methods from {','.join(METHODS)}"),
    "task": ("--task", f"comma-separated tasks from {','.join(TASKS)}"),
    "r": ("--r", "comma-separated ranks, or low..high [log] for random/tpe search"),
    "lora_alpha": ("--lora-alpha", "comma-separated lora_alpha values, or low..high [log]"),
    "lr": ("--lr", "comma-separated learning rates, or low..high [log], e.g. 1e-4..1e-2 log"),
    "target_modules": ("--targets", f"comma-separated module sets, modules joined by +, from "
                                    f"{'+'.join(TARGETABLE)}; e.g. qkv+proj,qkv+proj+fc1+fc2"),
    "use_rslora": ("--use-rslora", "comma-separated scaling rules: false (lora_alpha / r) and/or true "
                                   "(rsLoRA, lora_alpha / sqrt(r))"),
    "seed": ("--seeds", "comma-separated seeds; every point trains once per seed"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", help="a YAML or JSON sweep spec (keys: axes, search, budget, base, ...)")
    for axis in AXES:
        flag, help_text = AXIS_FLAGS[axis]
        parser.add_argument(flag, dest=f"axis_{axis}", help=help_text)
    parser.add_argument("--search", choices=SEARCHES, help="grid (default), random or tpe (needs Optuna)")
    parser.add_argument("--budget", type=int, help="points to try with random or tpe search")
    parser.add_argument("--sampler-seed", type=int, help="seed of random and tpe sampling (default 0)")
    parser.add_argument("--epochs", type=int, help=f"epochs per run (default {TrainConfig().epochs})")
    parser.add_argument("--batch-size", type=int, help=f"batch size (default {TrainConfig().batch_size})")
    parser.add_argument("--n-train", type=int, help=f"training examples (default {TrainConfig().n_train})")
    parser.add_argument("--n-val", type=int, help=f"validation examples (default {TrainConfig().n_val})")
    parser.add_argument("--quant-modules", choices=["all", "targets"],
                        help=f"QLoRA: which frozen linears are quantized (default {QuantOptions().modules})")
    parser.add_argument("--ray-address", default=None,
                        help=f"run every point as a Ray task on this cluster (host:port); default "
                             f"${RAY_ADDRESS_ENV} when set, else this machine")
    parser.add_argument("--local", action="store_true", help=f"run on this machine even if ${RAY_ADDRESS_ENV} is set")
    parser.add_argument("--name", help="a name shown on the Sweep page")
    parser.add_argument("--resume", metavar="SWEEP_ID", help="continue a stopped sweep: train only points without "
                                                             "a finished run")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    """Combine the spec file (if any) with the flags; flags win."""
    spec = load_spec_file(args.spec) if args.spec else SweepSpec()
    axes = dict(spec.axes)
    for axis in AXES:
        raw = getattr(args, f"axis_{axis}")
        if raw is not None:
            axes[axis] = parse_axis_values(axis, raw)
    train_changes = {name: getattr(args, name) for name in ("epochs", "batch_size", "n_train", "n_val")
                     if getattr(args, name) is not None}
    base = dataclasses.replace(spec.base, train=dataclasses.replace(spec.base.train, **train_changes))
    if args.quant_modules:
        base = dataclasses.replace(base, quant=QuantOptions(modules=args.quant_modules))
    changes = {"axes": axes, "base": base}
    for name in ("search", "budget", "sampler_seed", "name"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    ray_address = args.ray_address if args.ray_address is not None else (spec.ray_address or default_ray_address())
    if args.local:
        changes.update(executor="local", ray_address="")
    elif ray_address:
        changes.update(executor="ray", ray_address=ray_address)
    return dataclasses.replace(spec, **changes)


def run(args: argparse.Namespace) -> int:
    try:
        store = RunStore()
        if args.resume:
            record = load_sweep(store, args.resume)
            resume_sweep(store, record.id, owner="cli")
        else:
            record = start_sweep(store, spec_from_args(args).validate(), owner="cli")
    except (ValueError, StoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # Report runs as they end until the sweep is over; Ctrl-C stops it
    total = sweep_progress(store, record).runs_total
    print(f"sweep {record.id}: {total} runs on {_where(record.spec)}; Ctrl-C stops it", file=sys.stderr)
    interrupted = False
    reported: set[str] = set()
    while True:
        try:
            runs = runs_table(store, record)
            _report_ended(runs, reported, total)
            progress = sweep_progress(store, record, runs)
            if progress.dispatcher_status not in (None, "queued", "running") and not progress.active:
                break
            time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            if interrupted:
                break
            interrupted = True
            stop_sweep(store, record.id)
            print("stopping the sweep (Ctrl-C again to leave it stopping in the background)", file=sys.stderr)

    # Results
    runs = runs_table(store, record)
    progress = sweep_progress(store, record, runs)
    points = points_table(runs, record.spec)
    dispatcher = store.list_runs(kind="sweep", group_id=record.id)[0]
    best = best_point(points)
    if args.json:
        print(json.dumps({"sweep_id": record.id, "status": dispatcher.status, "message": dispatcher.message,
                          "spec": record.spec.to_dict(), "runs": _records(runs), "points": _records(points),
                          "best": _records(best.to_frame().T)[0] if best is not None else None}, indent=2))
    else:
        print(_format_points(points, record.spec))
        if best is not None:
            axes = {name: best[name] for name in record.spec.point_axes}
            print(f"\nbest: {describe_point(axes)}: mean val_acc {best['acc_mean']:.3f} over "
                  f"{best['seeds_finished']} seed(s), run {best['best_run_id']}")
        print(f"{dispatcher.status}: {dispatcher.message}")

    if interrupted:
        return 130
    return 0 if dispatcher.status == "finished" and progress.done == total else 1


def _where(spec: SweepSpec) -> str:
    return f"the Ray cluster at {spec.ray_address}" if spec.executor == "ray" else "this machine"


def _report_ended(runs: pd.DataFrame, reported: set[str], total: int) -> None:
    ended = runs[runs["run_id"].notna() & ~runs["status"].isin(["queued", "running", "pending"])]
    for _, row in ended.iterrows():
        if row["run_id"] in reported:
            continue
        reported.add(row["run_id"])
        axes = {c: row[c] for c in runs.columns if c not in ("seed", "status", "final_acc", "trainable", "seconds",
                                                             "run_id")}
        acc = f", val_acc {row['final_acc']:.3f}" if pd.notna(row["final_acc"]) else ""
        print(f"[{len(reported)}/{total}] {describe_point(axes)}, seed {row['seed']}: {row['status']}{acc}",
              file=sys.stderr)


def _format_points(points: pd.DataFrame, spec: SweepSpec) -> str:
    table = points[[*spec.point_axes, "acc_mean", "acc_std", "seeds_finished", "seeds", "trainable"]].copy()
    for column in ("acc_mean", "acc_std"):
        table[column] = table[column].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    for name in spec.point_axes:
        table[name] = table[name].map(lambda v, name=name: format_value(name, v))
    return table.to_string(index=False)


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: NaN and <NA> become null, numpy numbers plain numbers."""
    return json.loads(frame.to_json(orient="records"))

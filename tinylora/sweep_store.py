"""Sweeps in the run store: the sweep record, and starting, resuming and stopping a sweep.

A sweep is recorded as `sweeps/<id>.json` in the data directory (its spec, owner and creation time). Starting or
resuming it queues a dispatcher run of kind "sweep" (see `tinylora.sweep_jobs`) that submits the points which
have no finished run yet. `existing_runs` finds, for each point and seed, the run that counts as its result.
"""

import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import write_file_atomic
from .store import Run, RunStore
from .sweep import SweepSpec
from .sweep_search import point_from_config, point_key

DONE_STATUSES = ("finished", "diverged")  # a run with one of these is a result and is never trained again


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
    """Return every readable sweep record, newest first."""
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

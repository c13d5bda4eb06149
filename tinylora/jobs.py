"""The job runner: training happens in worker processes, never in the Streamlit script.

`submit()` validates a job, stores it as a queued run and makes sure a runner is alive. The runner
(`python -m tinylora.runner`, one per data directory, guarded by a file lock) imports torch once. It then forks
a worker for each queued run while the store counts fewer than `max_runs()` running, so a click reaches a warm
process and the first chart point arrives quickly. Counting in the store, not the runner's own children,
keeps the cap when a restarted runner finds workers of its predecessor still training. A worker streams the
job's events into the run store in small batches, refreshes the run's heartbeat from a background thread,
checks for a stop request a few times a second and records the final status. Pages only read the store, so a
rerun, a page switch, a refresh or a server restart never stops or duplicates a run.

A job kind is a generator function `fn(params: dict, ctx: JobContext) -> Iterator[dict]` named in `JOB_KINDS`.
Kinds in `COORDINATOR_KINDS` (a sweep's dispatcher) only queue and watch other runs, so they start at once
and take none of the `max_runs()` training slots.
"""

import fcntl
import importlib
import logging
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .capacity import step_processes_per_run, threads_per_run
from .live_log import LiveLog
from .store import RunStore, StoreError

log = logging.getLogger("tinylora.jobs")

# Job kind -> "module:function" of a generator that yields the job's events.
JOB_KINDS = {
    "train": "tinylora.jobs:train_job",
    "base": "tinylora.jobs:base_job",
    "absorb": "tinylora.jobs:absorb_job",
    "upload": "tinylora.uploads:upload_job",
    "sweep": "tinylora.sweep_jobs:sweep_job",
    "adapters": "tinylora.experiments:adapters_job",
    "forgetting": "tinylora.forgetting:forgetting_job",
    "learns_less": "tinylora.learns_less:learns_less_job",
}
COORDINATOR_KINDS = ("sweep",)  # kinds that start other runs and train nothing themselves

FLUSH_SECONDS = 0.1  # how often a worker writes buffered events to the store
STOP_POLL_SECONDS = 0.2  # how often a worker reads the stop flag
HEARTBEAT_SECONDS = 2.0


def busy_slots(store: RunStore) -> int:
    """Count the training slots in use on this machine (coordinator runs take none)."""
    return store.count_running(exclude_kinds=COORDINATOR_KINDS)


@dataclass
class JobContext:
    """Services a job function receives besides its parameters."""

    run_id: str
    store: RunStore
    run_dir: Path  # a directory of the job's own for files it saves
    should_stop: Callable[[], bool]


def train_job(params: dict[str, Any], ctx: JobContext) -> Iterator[dict]:
    """Train one `RunConfig` and save its trainable weights in the run's directory."""
    from .config import RunConfig
    from .training import prepare_run
    from .weights import save_trained

    config = RunConfig.from_dict(params)
    yield from _base_status(config.base, config.model, ctx.store.home)
    prepared = prepare_run(config, home=ctx.store.home)
    for event in prepared.events(ctx.should_stop):
        if event["type"] == "end" and event["status"] in ("finished", "stopped"):
            save_trained(prepared.model, ctx.run_dir, prepared.config)
        yield event


def base_job(params: dict[str, Any], ctx: JobContext) -> Iterator[dict]:
    """Train and cache the finetuned base `params["base"]`, or only load it when it is cached already.

    The end event's `final_acc` is the base's validation accuracy on its own task, read from the cache file.
    NOTE: training a base cannot be stopped part way; it runs to the end of its recipe (seconds).
    """
    from .checkpoints import base_metadata, base_path, load_base_state
    from .model import ModelConfig

    start = time.perf_counter()
    model = ModelConfig(**params.get("model", {}))
    yield from _base_status(params["base"], model, ctx.store.home)
    load_base_state(params["base"], ctx.store.home, model)
    info = base_metadata(base_path(params["base"], ctx.store.home, model))
    yield {"type": "end", "status": "finished", "final_acc": info["val_acc"],
           "seconds": time.perf_counter() - start,
           "message": f"the base {params['base']} is cached (validation accuracy {info['val_acc']:.3f})"}


def absorb_job(params: dict[str, Any], ctx: JobContext) -> Iterator[dict]:
    """Train QLoRA over the quantized base of a `RunConfig`: the events of `absorb_quantization_error`.

    The library yields its "result" event after the training's "end" event, but the worker finishes a run at
    its end event, so this job yields "end" after "result".
    """
    from .config import RunConfig
    from .quant_lab import absorb_quantization_error

    config = RunConfig.from_dict(params)
    yield from _base_status(config.base, config.model, ctx.store.home)
    end = None
    for event in absorb_quantization_error(config, ctx.store.home, ctx.should_stop):
        if event["type"] == "end":
            end = event
        else:
            yield event
    yield end


def _base_status(base: str, model, home: Path) -> Iterator[dict]:
    """Yield a "status" event when `base` must be trained before the job can go on."""
    from .checkpoints import is_cached

    if not is_cached(base, home, model):
        yield {"type": "status", "message": f"preparing the base {base} (trained once, then loaded from the cache)"}


def _job_function(kind: str) -> Callable[[dict, JobContext], Iterator[dict]]:
    try:
        module, name = JOB_KINDS[kind].split(":")
    except KeyError:
        raise ValueError(f"unknown job kind {kind!r}; known kinds are {sorted(JOB_KINDS)}") from None
    return getattr(importlib.import_module(module), name)


def validate_job(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check a job's parameters before it is queued; return them normalised."""
    _job_function(kind)
    from .config import METHODS, RunConfig, base_task

    if kind == "train":
        return RunConfig.from_dict(params).validate().to_dict()
    if kind == "absorb":
        config = RunConfig.from_dict(params).validate()
        if config.quant_scheme is None:
            raise ValueError(f"an absorb job needs a QLoRA method, got {config.method!r}; choose one of "
                             f"{', '.join(m for m, scheme in METHODS.items() if scheme)}")
        return config.to_dict()
    if kind == "base":
        unknown = sorted(set(params) - {"base", "model"})
        if unknown:
            raise ValueError(f"unknown base job setting(s) {unknown}; known settings are ['base', 'model']")
        if base_task(params.get("base", "")) is None:
            raise ValueError(f"a base job trains a finetuned base such as 'finetuned:odd_majority', "
                             f"got {params.get('base')!r}; the random base needs no training")
        return params
    if kind == "upload":
        from .uploads import validate_upload_params
        return validate_upload_params(params)
    if kind == "sweep":
        from .sweep_store import validate_sweep_job
        return validate_sweep_job(params)
    if kind == "adapters":
        from .experiments import validate_adapters_params
        return validate_adapters_params(params)
    if kind == "forgetting":
        from .forgetting import validate_forgetting_params
        return validate_forgetting_params(params)
    if kind == "learns_less":
        from .learns_less import validate_learns_less_params
        return validate_learns_less_params(params)
    return params


def submit(store: RunStore, kind: str, params: dict[str, Any], owner: str = "", group_id: str = "",
           start_runner: bool = True, run_id: str | None = None) -> str:
    """Validate and queue a job, start a runner if none is alive, and return the new run's id.

    Pass `run_id` (from `store.new_run_id()`) to write files into the run's directory before it is queued.
    """
    params = validate_job(kind, params)
    run_id = store.create_run(kind, params, owner=owner, group_id=group_id, run_id=run_id)
    log.info("queued run %s (%s) for owner %r", run_id, kind, owner)
    if start_runner:
        ensure_runner(store.home)
    return run_id


# The runner


def lock_path(home: Path) -> Path:
    return home / "runner.lock"


def runner_alive(home: Path) -> bool:
    """Check whether a process holds the runner lock of `home`."""
    path = lock_path(home)
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def runner_pid(home: Path) -> int | None:
    """Return the pid of the live runner of `home`, or None when no runner holds the lock."""
    if not runner_alive(home):
        return None
    try:
        return int(lock_path(home).read_text().strip())
    except (OSError, ValueError):
        return None


# Runner processes this process started, by data directory. A runner takes its lock a moment after it starts,
# so `runner_pid` cannot see it before then; `started_runner` can, for example to stop it.
_started: dict[Path, subprocess.Popen] = {}


def ensure_runner(home: Path) -> None:
    """Start a runner for `home` in its own session unless one is alive; a second one would exit at once."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if runner_alive(home):
        return
    previous = _started.get(home)
    if previous is not None and previous.poll() is None:
        return  # started earlier and still taking its lock
    with open(home / "runner.log", "ab") as log_file:
        _started[home] = subprocess.Popen(
            [sys.executable, "-m", "tinylora.runner", "--home", str(home)], stdout=log_file,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent))


def started_runner(home: Path) -> subprocess.Popen | None:
    """Return the runner process this process last started for `home`, if it has not exited."""
    process = _started.get(Path(home).resolve())
    return process if process is not None and process.poll() is None else None


def throttled_stop_flag(read: Callable[[], bool]) -> Callable[[], bool]:
    """Return a function that calls `read` at most every STOP_POLL_SECONDS and stays True once `read` was."""
    last_poll, stop = 0.0, False

    def should_stop() -> bool:
        nonlocal last_poll, stop
        now = time.monotonic()
        if not stop and now - last_poll >= STOP_POLL_SECONDS:
            last_poll = now
            stop = read()
        return stop

    return should_stop


def execute(store: RunStore, run_id: str, kind: str, params: dict[str, Any]) -> int:
    """Run one job in this process, streaming its events into the store; return the process exit code."""
    import torch

    from .split_step import set_step_processes

    threads = threads_per_run()
    torch.set_num_threads(threads)
    run = store.get_run(run_id)
    processes = step_processes_per_run(grouped=run is not None and bool(run.group_id))
    set_step_processes(processes)
    store.append_events(run_id, [], summary={"threads": threads, "step_processes": processes})
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    should_stop = throttled_stop_flag(lambda: store.stop_requested(run_id))

    beating = threading.Event()

    def heartbeat() -> None:
        while not beating.wait(HEARTBEAT_SECONDS):
            try:
                store.append_events(run_id, [])
            except StoreError as error:  # keep beating: the database may recover, and training goes on
                log.error("run %s: heartbeat failed: %s", run_id, error)

    threading.Thread(target=heartbeat, daemon=True).start()
    # Only the Train page reads a live file: other pages draw their runs from the store.
    live = LiveLog(store.live_path(run_id)) if kind == "train" else None
    try:
        return record_events(store, run_id, kind,
                             lambda: _job_function(kind)(params, JobContext(run_id, store, run_dir, should_stop)),
                             live=live)
    finally:
        beating.set()
        if live is not None:
            live.close()


def record_events(store: RunStore, run_id: str, kind: str, make_events: Callable[[], Iterable[dict]],
                  on_event: Callable[[dict], None] | None = None, live: LiveLog | None = None) -> int:
    """Store the events of `make_events()` in small batches and the run's final status; return an exit code.

    The "start" and "end" events' fields are merged into the run's summary, and the "end" event finishes
    the run. An exception, raised while making or iterating the events, fails the run with its message.
    Each batch, once stored, also goes to `live` when it is given.
    """
    buffer: list[dict] = []
    last_flush = time.monotonic()

    def append(events: list[dict], summary: dict | None = None) -> None:
        store.append_events(run_id, events, summary=summary)
        if live is not None:
            live.write(events)
    try:
        for event in make_events():
            if on_event is not None:
                on_event(event)
            buffer.append(event)
            if event["type"] == "start":
                append(buffer, summary={k: v for k, v in event.items() if k != "type"})
                buffer, last_flush = [], time.monotonic()
            elif event["type"] == "end":
                summary = {k: v for k, v in event.items() if k != "type"}
                append(buffer, summary=summary)
                buffer = []
                store.finish_run(run_id, event["status"], event.get("message", ""), event.get("final_acc"),
                                 event.get("seconds"))
                log.info("run %s %s", run_id, event["status"])
                return 0
            elif (event["type"] in ("eval", "status") or event.get("step") == 1
                  or time.monotonic() - last_flush >= FLUSH_SECONDS):
                # The first step, every evaluation and every status message go out at once, so pages show
                # them without delay (a status often precedes a long silent step such as training a base).
                append(buffer)
                buffer, last_flush = [], time.monotonic()
        if buffer:
            append(buffer)
        store.finish_run(run_id, "failed", f"the {kind} job ended without an end event", only_if_active=True)
        return 1
    except Exception as error:
        log.error("run %s failed:\n%s", run_id, traceback.format_exc())
        if buffer:
            append(buffer)
        store.finish_run(run_id, "failed", f"{type(error).__name__}: {error}", only_if_active=True)
        return 1

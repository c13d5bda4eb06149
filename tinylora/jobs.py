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
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    "learns_less": "tinylora.forgetting:learns_less_job",
}
COORDINATOR_KINDS = ("sweep",)  # kinds that start other runs and train nothing themselves

FLUSH_SECONDS = 0.1  # how often a worker writes buffered events to the store
STOP_POLL_SECONDS = 0.2  # how often a worker reads the stop flag
HEARTBEAT_SECONDS = 2.0
INTERRUPTED_CHECK_SECONDS = 2.0  # how often the runner looks for running runs whose worker is gone
CLAIM_CHECK_SECONDS = 1.0  # maximum time between two looks for queued runs


def _count_from_env(name: str) -> int | None:
    """Return the whole number >= 1 in environment variable `name`; None, with a warning if set, otherwise."""
    value = os.environ.get(name)
    if not value:
        return None
    try:
        n = int(value)
        if n >= 1:
            return n
    except ValueError:
        pass
    log.warning("ignoring %s=%r: it must be a whole number >= 1", name, value)
    return None


def max_runs() -> int:
    """Concurrent runs allowed: `$TINYLORA_MAX_RUNS`, or one per CPU core."""
    return _count_from_env("TINYLORA_MAX_RUNS") or max(1, os.cpu_count() or 1)


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
        from .forgetting import validate_learns_less_params
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


def _lock_path(home: Path) -> Path:
    return home / "runner.lock"


def runner_alive(home: Path) -> bool:
    """Check whether a process holds the runner lock of `home`."""
    path = _lock_path(home)
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
        return int(_lock_path(home).read_text().strip())
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


class Runner:
    """Starts queued runs in forked workers, at most `max_runs()` training runs at a time, and reaps them."""

    def __init__(self, home: Path, idle_exit: float = 600.0, poll: float = 0.05):
        self.store = RunStore(home)
        self.idle_exit = idle_exit
        self.poll = poll
        self.children: dict[int, str] = {}  # worker pid -> run id
        self.coordinators: set[int] = set()  # pids of the children that run a coordinator kind
        self.lock = None

    def acquire_lock(self) -> bool:
        """Take the data directory's runner lock and record this pid in it; False when another runner holds it.

        Call this before any slow import: until a runner holds the lock, every page load starts another one.
        """
        lock = open(_lock_path(self.store.home), "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            log.info("another runner holds %s; exiting", _lock_path(self.store.home))
            return False
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        self.lock = lock
        return True

    def run_forever(self) -> None:
        if self.lock is None and not self.acquire_lock():
            return
        log.info("runner %d started for %s (max %d runs)", os.getpid(), self.store.home, max_runs())
        self.store.mark_interrupted()
        idle_since = last_check = last_claim = time.monotonic()
        last_signature = None
        while True:
            reaped = self.reap()
            if time.monotonic() - last_check >= INTERRUPTED_CHECK_SECONDS:
                # Workers of a runner that died are nobody's children: find the ones that are gone too.
                for run_id in self.store.mark_interrupted():
                    log.warning("run %s interrupted: its worker process is gone", run_id)
                last_check = time.monotonic()
            # Look for queued runs only when the database changed or a slot freed up (and once a second in any
            # case): the queries cost a share of a core at this polling rate, which a training worker lacks.
            signature = self.store.file_signature()
            started = False
            if reaped or signature != last_signature or time.monotonic() - last_claim >= CLAIM_CHECK_SECONDS:
                last_signature, last_claim = signature, time.monotonic()
                started = self.start_queued()
            if self.children or started:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > self.idle_exit:
                log.info("runner %d idle for %.0f s; exiting", os.getpid(), self.idle_exit)
                return
            time.sleep(self.poll)

    def start_queued(self) -> bool:
        started = False
        while (run := self.store.claim_next(os.getpid(), kinds=COORDINATOR_KINDS)) is not None:
            self.coordinators.add(self._fork(run))
            started = True
        while busy_slots(self.store) < max_runs():
            run = self.store.claim_next(os.getpid(), exclude_kinds=COORDINATOR_KINDS)
            if run is None:
                break
            self._fork(run)
            started = True
        return started

    def _fork(self, run) -> int:
        pid = os.fork()
        if pid == 0:
            # The worker must not keep the runner's lock alive after the runner exits.
            self.lock.close()
            code = 1
            try:
                code = execute(self.store, run.id, run.kind, run.config)
            finally:
                os._exit(code)
        self.store.set_pid(run.id, pid)
        self.children[pid] = run.id
        log.info("run %s (%s) started in worker %d", run.id, run.kind, pid)
        return pid

    def reap(self) -> bool:
        """Collect the workers that exited, failing any run whose worker ended before it did; True if any did."""
        reaped = False
        for pid, run_id in list(self.children.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
            reaped = True
            del self.children[pid]
            self.coordinators.discard(pid)
            if os.WIFSIGNALED(status):
                reason = f"the worker process was killed by signal {os.WTERMSIG(status)}"
            else:
                reason = f"the worker process exited with code {os.WEXITSTATUS(status)}"
            if self.store.finish_run(run_id, "failed", reason + " before the run ended", only_if_active=True):
                log.error("run %s failed: %s", run_id, reason)
        return reaped


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


def threads_per_run() -> int:
    """Intra-op threads of each worker: `$TINYLORA_THREADS`, or the cores divided among `max_runs()` runs.

    The count is fixed by configuration, never by the load of the moment, because the fast training path's
    float sums (and so a run's low bits) depend on it: the same seed on the same settings gives the same
    numbers. With the defaults on 2 cores every run gets one thread, which also leaves a core for the
    browser and the server; two OpenMP threads on a busy core were measured several times slower than one.
    """
    return _count_from_env("TINYLORA_THREADS") or max(1, (os.cpu_count() or 1) // max_runs())


def step_processes_per_run(grouped: bool = False) -> int:
    """Processes that share each training step of a run: `$TINYLORA_STEP_PROCESSES` (1 or 2), or the default.

    By default a run that has one thread on a machine with two or more cores splits its steps over two
    processes (see tinylora.split_step). A run in a group keeps one process, because the group's runs (a
    sweep's points, the Forgetting page's strategies, the Quantization page's schemes) already train side by
    side. Like the thread count, this follows from configuration only, because it changes a run's last bits.
    """
    count = _count_from_env("TINYLORA_STEP_PROCESSES")
    if count is not None and count > 2:
        log.warning("ignoring TINYLORA_STEP_PROCESSES=%d: it must be 1 or 2", count)
        count = None
    if count is not None:
        return count
    forks = hasattr(os, "fork")  # the helper process is a fork
    return 2 if forks and not grouped and threads_per_run() == 1 and (os.cpu_count() or 1) >= 2 else 1


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
    try:
        return record_events(store, run_id, kind,
                             lambda: _job_function(kind)(params, JobContext(run_id, store, run_dir, should_stop)))
    finally:
        beating.set()


def record_events(store: RunStore, run_id: str, kind: str, make_events: Callable[[], Iterable[dict]],
                  on_event: Callable[[dict], None] | None = None) -> int:
    """Store the events of `make_events()` in small batches and the run's final status; return an exit code.

    The "start" and "end" events' fields are merged into the run's summary, and the "end" event finishes
    the run. An exception, raised while making or iterating the events, fails the run with its message.
    """
    buffer: list[dict] = []
    last_flush = time.monotonic()
    try:
        for event in make_events():
            if on_event is not None:
                on_event(event)
            buffer.append(event)
            if event["type"] == "start":
                store.append_events(run_id, buffer, summary={k: v for k, v in event.items() if k != "type"})
                buffer, last_flush = [], time.monotonic()
            elif event["type"] == "end":
                summary = {k: v for k, v in event.items() if k != "type"}
                store.append_events(run_id, buffer, summary=summary)
                buffer = []
                store.finish_run(run_id, event["status"], event.get("message", ""), event.get("final_acc"),
                                 event.get("seconds"))
                log.info("run %s %s", run_id, event["status"])
                return 0
            elif (event["type"] in ("eval", "status") or event.get("step") == 1
                  or time.monotonic() - last_flush >= FLUSH_SECONDS):
                # The first step, every evaluation and every status message go out at once, so pages show
                # them without delay (a status often precedes a long silent step such as training a base).
                store.append_events(run_id, buffer)
                buffer, last_flush = [], time.monotonic()
        if buffer:
            store.append_events(run_id, buffer)
        store.finish_run(run_id, "failed", f"the {kind} job ended without an end event", only_if_active=True)
        return 1
    except Exception as error:
        log.error("run %s failed:\n%s", run_id, traceback.format_exc())
        if buffer:
            store.append_events(run_id, buffer)
        store.finish_run(run_id, "failed", f"{type(error).__name__}: {error}", only_if_active=True)
        return 1

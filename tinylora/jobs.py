"""The job runner: training happens in worker processes, never in the Streamlit script.

`submit()` validates a job, stores it as a queued run and makes sure a runner is alive. The runner
(`python -m tinylora.runner`, one per data directory, guarded by a file lock) imports torch once. It then forks
a worker for each queued run while fewer than `max_runs()` are running, so a click reaches a warm process and
the first chart point arrives quickly. A worker streams the job's events into the run store in small
batches, refreshes the run's heartbeat from a background thread, checks for a stop request a few times a
second and records the final status. Pages only read the store, so a rerun, a page switch, a refresh or a
server restart never stops or duplicates a run.

A job kind is a generator function `fn(params: dict, ctx: JobContext) -> Iterator[dict]` named in `JOB_KINDS`.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import RunStore

log = logging.getLogger("tinylora.jobs")

# Job kind -> "module:function" of a generator that yields the job's events.
JOB_KINDS = {
    "train": "tinylora.jobs:train_job",
}

FLUSH_SECONDS = 0.1  # how often a worker writes buffered events to the store
STOP_POLL_SECONDS = 0.2  # how often a worker reads the stop flag
HEARTBEAT_SECONDS = 2.0


def max_runs() -> int:
    """Concurrent runs allowed: `$TINYLORA_MAX_RUNS`, or one per CPU core."""
    value = os.environ.get("TINYLORA_MAX_RUNS")
    if value:
        try:
            n = int(value)
            if n >= 1:
                return n
        except ValueError:
            pass
        log.warning("ignoring TINYLORA_MAX_RUNS=%r: it must be a whole number >= 1", value)
    return max(1, os.cpu_count() or 1)


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

    prepared = prepare_run(RunConfig.from_dict(params))
    for event in prepared.events(ctx.should_stop):
        if event["type"] == "end" and event["status"] in ("finished", "stopped"):
            save_trained(prepared.model, ctx.run_dir, prepared.config)
        yield event


def _job_function(kind: str) -> Callable[[dict, JobContext], Iterator[dict]]:
    try:
        module, name = JOB_KINDS[kind].split(":")
    except KeyError:
        raise ValueError(f"unknown job kind {kind!r}; known kinds are {sorted(JOB_KINDS)}") from None
    return getattr(importlib.import_module(module), name)


def validate_job(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check a job's parameters before it is queued; return them normalised."""
    _job_function(kind)
    if kind == "train":
        from .config import RunConfig
        return RunConfig.from_dict(params).validate().to_dict()
    return params


def submit(store: RunStore, kind: str, params: dict[str, Any], owner: str = "", group_id: str = "",
           start_runner: bool = True) -> str:
    """Validate and queue a job, start a runner if none is alive, and return the new run's id."""
    params = validate_job(kind, params)
    run_id = store.create_run(kind, params, owner=owner, group_id=group_id)
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


def ensure_runner(home: Path) -> None:
    """Start a runner for `home` in its own session unless one is alive; a second one would exit at once."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    if runner_alive(home):
        return
    with open(home / "runner.log", "ab") as log_file:
        subprocess.Popen([sys.executable, "-m", "tinylora.runner", "--home", str(home)], stdout=log_file,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                         cwd=str(Path(__file__).resolve().parent.parent))


class Runner:
    """Starts queued runs in forked workers, at most `max_runs()` at a time, and reaps them."""

    def __init__(self, home: Path, idle_exit: float = 600.0, poll: float = 0.05):
        self.store = RunStore(home)
        self.idle_exit = idle_exit
        self.poll = poll
        self.children: dict[int, str] = {}  # worker pid -> run id
        self.lock = None

    def run_forever(self) -> None:
        lock = self.lock = open(_lock_path(self.store.home), "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another runner holds %s; exiting", _lock_path(self.store.home))
            return
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        log.info("runner %d started for %s (max %d runs)", os.getpid(), self.store.home, max_runs())
        self.store.mark_interrupted()
        idle_since = time.monotonic()
        while True:
            self.reap()
            started = self.start_queued()
            if self.children or started:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > self.idle_exit:
                log.info("runner %d idle for %.0f s; exiting", os.getpid(), self.idle_exit)
                return
            time.sleep(self.poll)

    def start_queued(self) -> bool:
        started = False
        while len(self.children) < max_runs():
            run = self.store.claim_next(os.getpid())
            if run is None:
                break
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
            log.info("run %s started in worker %d", run.id, pid)
            started = True
        return started

    def reap(self) -> None:
        for pid, run_id in list(self.children.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
            del self.children[pid]
            if os.WIFSIGNALED(status):
                reason = f"the worker process was killed by signal {os.WTERMSIG(status)}"
            else:
                reason = f"the worker process exited with code {os.WEXITSTATUS(status)}"
            if self.store.finish_run(run_id, "failed", reason + " before the run ended", only_if_active=True):
                log.error("run %s failed: %s", run_id, reason)


def _max_threads_for_new_run(store: RunStore) -> int:
    """Share the cores among the runs that are running, so concurrent runs do not oversubscribe them."""
    return max(1, (os.cpu_count() or 1) // max(1, store.count_running()))


class ThreadTuner:
    """Pick the intra-op thread count that trains fastest right now, and re-check it as load changes.

    On a machine shared with a browser, the server and other runs, two OpenMP threads can be several times
    slower than one, while on an idle machine two are faster. So the worker measures instead of guessing. It
    times `window` steps with each candidate count, keeps the fastest for `exploit` steps, then measures again.
    The thread count does not change the numbers a run computes (tested on the default run), only its speed.
    """

    def __init__(self, max_threads: int, window: int = 8, exploit: int = 96):
        import torch

        self._torch = torch
        self.candidates = list(range(1, max_threads + 1))
        self.window, self.exploit = window, exploit
        self.timings: dict[int, float] = {}
        self.index = 0  # position in the measuring cycle; len(candidates) means exploiting
        self.steps_in_phase = 0
        self.phase_start = time.perf_counter()
        self._set(self.candidates[0])

    def _set(self, threads: int) -> None:
        self.threads = threads
        self._torch.set_num_threads(threads)

    def on_event(self, event: dict) -> None:
        if len(self.candidates) == 1:
            return
        if event["type"] != "step":
            self.steps_in_phase = 0  # an evaluation falls in this window: start timing it again
            self.phase_start = time.perf_counter()
            return
        self.steps_in_phase += 1
        measuring = self.index < len(self.candidates)
        if self.steps_in_phase < (self.window if measuring else self.exploit):
            return
        if measuring:
            self.timings[self.threads] = (time.perf_counter() - self.phase_start) / self.steps_in_phase
            self.index += 1
        else:
            self.index, self.timings = 0, {}
        if self.index < len(self.candidates):
            self._set(self.candidates[self.index])
        else:
            self._set(min(self.timings, key=self.timings.get))
        self.steps_in_phase = 0
        self.phase_start = time.perf_counter()


def execute(store: RunStore, run_id: str, kind: str, params: dict[str, Any]) -> int:
    """Run one job in this process, streaming its events into the store; return the process exit code."""
    tuner = ThreadTuner(_max_threads_for_new_run(store))
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    last_poll, stop = 0.0, False

    def should_stop() -> bool:
        nonlocal last_poll, stop
        now = time.monotonic()
        if not stop and now - last_poll >= STOP_POLL_SECONDS:
            last_poll = now
            stop = store.stop_requested(run_id)
        return stop

    beating = threading.Event()

    def heartbeat() -> None:
        while not beating.wait(HEARTBEAT_SECONDS):
            store.append_events(run_id, [])

    threading.Thread(target=heartbeat, daemon=True).start()
    buffer: list[dict] = []
    last_flush = time.monotonic()
    try:
        for event in _job_function(kind)(params, JobContext(run_id, store, run_dir, should_stop)):
            tuner.on_event(event)
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
            elif event["type"] == "eval" or event.get("step") == 1 or time.monotonic() - last_flush >= FLUSH_SECONDS:
                # The first step and every evaluation go out at once, so charts show them without delay.
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
    finally:
        beating.set()

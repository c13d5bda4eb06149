"""`python -m tinylora.runner --home DIR`: the process that starts queued runs in forked workers.

`Runner` holds the data directory's runner lock, forks a worker (`tinylora.jobs.execute`) for each queued
run while fewer than `max_runs()` train, and fails a run whose worker exits before the run ends.
"""

import argparse
import fcntl
import logging
import os
import time
from pathlib import Path

from .capacity import max_runs
from .jobs import COORDINATOR_KINDS, busy_slots, execute, lock_path
from .store import RunStore

log = logging.getLogger("tinylora.jobs")

INTERRUPTED_CHECK_SECONDS = 2.0  # how often the runner looks for running runs whose worker is gone
CLAIM_CHECK_SECONDS = 1.0  # maximum time between two looks for queued runs


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
        lock = open(lock_path(self.store.home), "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            log.info("lock %s is taken by another runner; exiting", lock_path(self.store.home))
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


def main() -> None:
    parser = argparse.ArgumentParser(description="Start queued tinylora runs in worker processes.")
    parser.add_argument("--home", type=Path, required=True, help="the data directory holding runs.db")
    parser.add_argument("--idle-exit", type=float, default=600.0,
                        help="seconds with nothing queued or running after which the runner exits")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")

    runner = Runner(args.home, idle_exit=args.idle_exit)
    if runner.acquire_lock():
        warm_up()
        runner.run_forever()


def warm_up() -> None:
    """Import now what every run needs, so that forked workers start warm.

    Besides torch and the training code, constructing `torch.optim.AdamW` imports torch._dynamo (828 modules
    with torch 2.13; 2.6 s measured on a busy 2-core Xeon), which each worker would otherwise pay before its
    first step. No tensor math runs here, so no OpenMP thread pool exists yet when the runner forks.
    """
    import torch

    from . import training  # noqa: F401

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)


if __name__ == "__main__":
    main()

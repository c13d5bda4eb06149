"""How many runs train at once and how many threads and processes each uses.

The counts follow from environment variables and the machine's core count only, never from the load of the
moment (see `threads_per_run`).
"""

import logging
import os

log = logging.getLogger("tinylora.jobs")


def count_from_env(name: str) -> int | None:
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
    return count_from_env("TINYLORA_MAX_RUNS") or max(1, os.cpu_count() or 1)


def threads_per_run() -> int:
    """Intra-op threads of each worker: `$TINYLORA_THREADS`, or the cores divided among `max_runs()` runs.

    The count is fixed by configuration, never by the load of the moment, because the fast training path's
    float sums (and so a run's low bits) depend on it: the same seed on the same settings gives the same
    numbers. With the defaults on 2 cores every run gets one thread, which also leaves a core for the
    browser and the server. Two OpenMP threads on a busy core were measured several times slower than one.
    """
    return count_from_env("TINYLORA_THREADS") or max(1, (os.cpu_count() or 1) // max_runs())


def step_processes_per_run(grouped: bool = False) -> int:
    """Processes that share each training step of a run: `$TINYLORA_STEP_PROCESSES` (1 or 2), or the default.

    By default a run that has one thread on a machine with two or more cores splits its steps over two
    processes (see tinylora.split_step). A run in a group keeps one process, because the group's runs (a
    sweep's points, the Forgetting page's strategies, the Quantization page's schemes) already train side by
    side. Like the thread count, this follows from configuration only, because it changes a run's last bits.
    """
    count = count_from_env("TINYLORA_STEP_PROCESSES")
    if count is not None and count > 2:
        log.warning("ignoring TINYLORA_STEP_PROCESSES=%d: it must be 1 or 2", count)
        count = None
    if count is not None:
        return count
    forks = hasattr(os, "fork")  # the helper process is a fork
    return 2 if forks and not grouped and threads_per_run() == 1 and (os.cpu_count() or 1) >= 2 else 1

"""Train sweep runs as Ray tasks on a cluster and stream their events back into the run store.

Ray (https://docs.ray.io) is optional: it is imported only when a sweep names a Ray cluster address, and this
module never starts a cluster. The sweep's dispatcher connects to the cluster as a Ray driver and ships the
`tinylora` package to the workers with `runtime_env={"py_modules": [...]}`, so worker nodes need Python with
torch but not this checkout. Each run is a Ray generator task holding one CPU: it trains with the same
`prepare_run` code as a local worker and yields batches of the training loop's events, then the files of the
trained weights. A relay thread in the dispatcher writes those events into the run store and the files into
the run's directory, so the Train page and the sweep page show remote runs live, like local ones.

A stop request reaches a task through a small `StopFlags` actor that the task polls a few times a second, so
a stopped remote run, like a local one, evaluates once more and keeps its weights.

NOTE: only a single-node cluster on 127.0.0.1 is tested. A multi-machine cluster also needs the same Python
minor version and torch 2.13.0 on every node, and network paths both ways between the dispatcher's machine
(a Ray driver) and the nodes.
"""

import importlib.util
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from . import jobs
from .atomic import write_directory_atomic, write_file_atomic
from .config import RunConfig
from .store import RunStore

log = logging.getLogger("tinylora.ray")

RAY_INSTALL = "pip install ray==2.60.0"
RAY_ADDRESS_ENV = "TINYLORA_RAY_ADDRESS"
CONNECT_TIMEOUT_SECONDS = 5.0  # for the plain TCP check of the address before Ray's own, much longer retries
FLUSH_SECONDS = 0.1  # how often a task sends buffered events


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def default_ray_address() -> str:
    """Return the cluster address in `$TINYLORA_RAY_ADDRESS`, or "" when unset."""
    return os.environ.get(RAY_ADDRESS_ENV, "").strip()


def require_ray() -> None:
    if not ray_installed():
        raise ValueError(f"the Ray executor needs Ray, which is not installed; install it with `{RAY_INSTALL}` "
                         f"or run the sweep on this machine")


def split_address(address: str) -> tuple[str, int]:
    """Split "host:port" and check it; raise ValueError naming the address and the expected form."""
    host, _, port = address.strip().removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"Ray address {address!r} is not host:port, e.g. 127.0.0.1:6379")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StopFlags:
    """The ids of runs with a stop request, kept in a Ray actor that tasks poll (it reserves no CPU)."""

    def __init__(self):
        self.stopped: set[str] = set()

    def stop(self, run_id: str) -> None:
        self.stopped.add(run_id)

    def is_stopped(self, run_id: str) -> bool:
        return run_id in self.stopped


def train_on_worker(config: dict[str, Any], run_id: str, flags) -> Iterator[dict]:
    """Train `config` as a Ray task, yielding {"events": [...]} batches and then {"files": {path: bytes}}.

    The weights' files come before the batch holding the "end" event, so a run is never marked ended before
    its weights are in place.
    """
    import tempfile

    import ray
    import torch

    from .training import prepare_run
    from .weights import save_trained

    torch.set_num_threads(1)  # the task reserves one CPU of the cluster
    should_stop = jobs.throttled_stop_flag(lambda: ray.get(flags.is_stopped.remote(run_id)))

    if should_stop():
        return
    prepared = prepare_run(RunConfig.from_dict(config))
    buffer: list[dict] = []
    last_flush = time.monotonic()
    for event in prepared.events(should_stop):
        if event["type"] == "end":
            if event["status"] in ("finished", "stopped"):
                with tempfile.TemporaryDirectory() as tmp:
                    save_trained(prepared.model, Path(tmp), prepared.config)
                    yield {"files": {p.relative_to(tmp).as_posix(): p.read_bytes()
                                     for p in Path(tmp).rglob("*") if p.is_file()}}
            yield {"events": buffer + [event]}
            return
        buffer.append(event)
        if event["type"] == "start" or time.monotonic() - last_flush >= FLUSH_SECONDS:
            yield {"events": buffer}
            buffer, last_flush = [], time.monotonic()
    if buffer:
        yield {"events": buffer}


def write_run_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """Write a task's weight files into `run_dir`: top-level files one by one, each subdirectory in one rename."""
    groups: dict[str, dict[str, bytes]] = {}
    for name, data in files.items():
        parts = PurePosixPath(name).parts
        if not parts or len(parts) > 2 or any(p in ("", ".", "..") for p in parts) or name.startswith("/"):
            raise ValueError(f"a remote run sent the file name {name!r}; expected a file or directory/file name")
        if len(parts) == 1:
            write_file_atomic(run_dir / parts[0], data)
        else:
            groups.setdefault(parts[0], {})[parts[1]] = data
    for directory, contents in groups.items():
        write_directory_atomic(run_dir / directory, contents, overwrite=True)


class RayExecutor:
    """Submits a sweep's runs to a Ray cluster, one generator task per run, and relays their events."""

    name = "ray"

    def __init__(self, store: RunStore, address: str, group_id: str, owner: str):
        require_ray()
        host, port = split_address(address)
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS).close()
        except OSError as error:
            raise RuntimeError(f"no Ray cluster answers at {address} ({error}); start one with `ray start --head` "
                               f"or correct the address") from None
        # Ray turns a loopback address into the host's network address unless multi-node mode is off, and a
        # cluster started on 127.0.0.1 listens only there.
        if _is_loopback(host):
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        self.ray = ray
        package = str(Path(__file__).resolve().parent)
        try:
            ray.init(address=f"{host}:{port}", runtime_env={"py_modules": [package]}, namespace="tinylora",
                     log_to_driver=False, logging_level=logging.WARNING)
        except Exception as error:  # Ray raises ConnectionError, RuntimeError or its own AuthenticationError
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RuntimeError(f"could not connect to the Ray cluster at {address}: {first_line}. If the cluster "
                               f"uses token authentication, set RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN_PATH) where "
                               f"the app runs") from None
        self.store, self.group_id, self.owner = store, group_id, owner
        self.flags = ray.remote(StopFlags).options(num_cpus=0).remote()
        self.task = ray.remote(train_on_worker).options(num_cpus=1)
        self.relays: dict[str, tuple[Any, threading.Thread]] = {}  # run id -> (object ref generator, relay thread)
        self.flagged: set[str] = set()
        log.info("connected to the Ray cluster at %s for sweep %s", address, group_id)

    def slots(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def submit(self, config: RunConfig) -> str:
        run_id = self.store.create_run("train", config.validate().to_dict(), owner=self.owner, group_id=self.group_id,
                                       executor=self.name, pid=os.getpid())
        generator = self.task.remote(config.to_dict(), run_id, self.flags)
        thread = threading.Thread(target=self._relay, args=(run_id, generator), daemon=True,
                                  name=f"ray-relay-{run_id}")
        self.relays[run_id] = (generator, thread)
        thread.start()
        return run_id

    def _relay(self, run_id: str, generator) -> None:
        jobs.record_events(self.store, run_id, "train", lambda: self._events(run_id, generator))

    def _events(self, run_id: str, generator) -> Iterator[dict]:
        ray = self.ray
        started = False
        try:
            for ref in generator:
                item = ray.get(ref)
                if not started:
                    started = True
                    if not self.store.start_run(run_id, os.getpid()):  # stopped while it waited for a CPU
                        self._flag(run_id)
                        return
                if "files" in item:
                    write_run_files(self.store.run_dir(run_id), item["files"])
                else:
                    yield from item["events"]
        except ray.exceptions.RayError as error:
            lines = [line for line in str(error).strip().splitlines() if line.strip()]
            raise RuntimeError(f"the Ray task failed: {lines[-1] if lines else type(error).__name__}") from None

    def _flag(self, run_id: str) -> None:
        if run_id not in self.flagged:
            self.flagged.add(run_id)
            self.flags.stop.remote(run_id)

    def poll(self) -> None:
        """Pass stop requests from the store on to the tasks; cancel tasks whose run was stopped while queued."""
        for run_id, (generator, thread) in list(self.relays.items()):
            if not thread.is_alive():
                del self.relays[run_id]
                continue
            if run_id in self.flagged or not self.store.stop_requested(run_id):
                continue
            self._flag(run_id)
            run = self.store.get_run(run_id)
            if run is not None and run.status == "stopped" and not run.started:
                self.ray.cancel(generator)

    def close(self) -> None:
        for _, thread in self.relays.values():
            thread.join(timeout=5)
        try:
            self.ray.kill(self.flags)
        finally:
            self.ray.shutdown()

"""Sweeps on a real Ray cluster: a local head node on 127.0.0.1 with 2 CPUs, started once for the module.

The head runs `ray start --head --block` in its own process group, with token authentication from a token
file of its own, no usage statistics and listeners on 127.0.0.1 only. Teardown ends that process group.
"""

import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("ray")

from browser_support import free_port  # noqa: E402
from conftest import wait_for  # noqa: E402
from tinylora.config import RunConfig  # noqa: E402
from tinylora.sweep import SweepSpec  # noqa: E402
from tinylora.sweep_store import dispatchers, start_sweep, stop_sweep  # noqa: E402
from tinylora.sweep_results import runs_table  # noqa: E402
from tinylora.training import prepare_run  # noqa: E402

TINY = {"train": {"epochs": 2, "n_train": 256, "n_val": 128}}
GRID = {"base": TINY, "axes": {"r": [2, 8], "lora_alpha": [8, 16]}}
STARTUP_SECONDS = 120


@dataclass(frozen=True)
class RayHead:
    address: str
    process_group: int


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head on 127.0.0.1 that lives as long as this module's tests."""
    temp = Path(tempfile.mkdtemp(prefix="tlray-", dir="/tmp"))  # short: Ray's socket paths must stay short
    token = temp / "token"
    token.write_text(secrets.token_hex(32))
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port = free_port()
    log = open(temp / "head.log", "wb")
    head = subprocess.Popen(
        [shutil.which("ray") or "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", f"--dashboard-port={free_port()}", "--disable-usage-stats",
         f"--temp-dir={temp / 'ray'}"],
        env={**os.environ, **env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # the runner, and so the sweep's dispatcher, inherit these
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while b"Ray runtime started" not in (temp / "head.log").read_bytes():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start:\n{(temp / 'head.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield RayHead(f"127.0.0.1:{port}", head.pid)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        head.terminate()  # `ray start --block` stops the processes it started when it gets SIGTERM
        try:
            head.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of the group is still there
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def dispatcher_ended(store, sweep_id):
    runs = dispatchers(store, sweep_id)
    return runs[0] if runs and not runs[0].active else None


def in_process_accuracy(config: RunConfig) -> float:
    return [e for e in prepare_run(config).events() if e["type"] == "end"][0]["final_acc"]


def test_ray_grid_matches_local_accuracies(store, ray_cluster):
    spec = SweepSpec.from_dict({**GRID, "executor": "ray", "ray_address": ray_cluster.address})
    record = start_sweep(store, spec)
    dispatcher = wait_for(lambda: dispatcher_ended(store, record.id), timeout=180, message="the Ray sweep to end")
    assert dispatcher.status == "finished", dispatcher.message
    runs = store.list_runs(kind="train", group_id=record.id)
    assert len(runs) == 4
    assert {r.executor for r in runs} == {"ray"}
    assert {r.status for r in runs} == {"finished"}
    for run in runs:
        config = RunConfig.from_dict(run.config)
        assert run.final_acc == in_process_accuracy(config)
        assert len(store.events(run.id, types=("step",))) == 8
        assert run.summary["trainable"] == 4 * config.lora.r * (256 + 128) + 130
        assert run.started is not None
        assert (store.run_dir(run.id) / "adapter" / "adapter_model.safetensors").is_file()
        assert (store.run_dir(run.id) / "adapter" / "adapter_config.json").is_file()
    table = runs_table(store, record)
    assert table["status"].tolist() == ["finished"] * 4


def test_ray_sweep_stops(store, ray_cluster):
    long = {"train": {"epochs": 400, "n_train": 256, "n_val": 128}}
    spec = SweepSpec.from_dict({"base": long, "axes": {"r": [2, 4, 8]}, "executor": "ray",
                                "ray_address": ray_cluster.address})
    record = start_sweep(store, spec)
    wait_for(lambda: any(store.events(r.id, types=("step",))
                         for r in store.list_runs(kind="train", group_id=record.id, statuses=("running",))),
             timeout=120, message="a Ray run to report steps")
    stop_sweep(store, record.id)
    dispatcher = wait_for(lambda: dispatcher_ended(store, record.id), timeout=90, message="the Ray sweep to stop")
    assert dispatcher.status == "stopped"
    runs = store.list_runs(kind="train", group_id=record.id)
    assert len(runs) == 3
    assert {r.status for r in runs} == {"stopped"}
    started = [r for r in runs if r.started is not None]
    assert started  # at least one trained before the stop
    for run in started:  # a stopped remote run evaluates once more and keeps its weights, like a local one
        assert run.final_acc is not None
        assert run.summary["step"] < 400 * 4
        assert (store.run_dir(run.id) / "adapter" / "adapter_model.safetensors").is_file()


def test_cluster_listens_on_loopback_only(ray_cluster):
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    group = {int(pid) for pid in subprocess.run(["pgrep", "-g", str(ray_cluster.process_group)],
                                                capture_output=True, text=True).stdout.split()}
    listeners = []
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if pids & group:
            listeners.append(line.split()[3])
    assert listeners  # the head's GCS and raylet at least
    for address in listeners:
        host = address.rsplit(":", 1)[0].strip("[]")
        assert host in ("127.0.0.1", "::ffff:127.0.0.1", "::1"), address

import os
import signal
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinylora import jobs  # noqa: E402
from tinylora.store import RunStore  # noqa: E402


def stop_runner(home: Path) -> None:
    """Kill the runner of `home` and its workers (they share the runner's process group)."""
    pid = jobs.runner_pid(home)
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while jobs.runner_alive(home) and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh data directory set as TINYLORA_HOME; its runner is killed at teardown."""
    path = tmp_path / "data"
    path.mkdir()
    monkeypatch.setenv("TINYLORA_HOME", str(path))
    yield path
    stop_runner(path)


@pytest.fixture
def store(home):
    return RunStore(home)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value and return it; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {message}")

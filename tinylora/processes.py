"""Whether the process recorded for a running run still exists, is a zombie, or is an unrelated process.

Linux exposes a process's state, parent and start time in `/proc/<pid>/stat` (fields 3, 4 and 22, see
proc(5)). Elsewhere only `os.kill(pid, 0)` is available, so a zombie counts as alive and a reused pid cannot
be distinguished from the original process.
"""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessInfo:
    state: str  # the one-letter state of proc(5): "R" running, "S" sleeping, "Z" zombie, ...
    ppid: int | None  # None when /proc is not available
    started: float | None  # seconds since the epoch; None when /proc is not available

    @property
    def zombie(self) -> bool:
        return self.state == "Z"


def process_info(pid: int | None) -> ProcessInfo | None:
    """Return the state, parent and start time /proc reports for `pid`, or None when no such process exists."""
    if not pid or pid < 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists but belongs to another user
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may contain spaces and parentheses, so split after its last ")".
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ProcessInfo(state="?", ppid=None, started=None)
    started = None
    boot = _boot_time()
    if boot is not None:
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return ProcessInfo(state=fields[0], ppid=int(fields[1]), started=started)


def pid_alive(pid: int | None) -> bool:
    """Check whether `pid` is a process that has not exited (a zombie has exited)."""
    info = process_info(pid)
    return info is not None and not info.zombie


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None

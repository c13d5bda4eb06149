"""The run store: one SQLite database (WAL mode) with a row per run and the run's metric events.

Statuses: queued, running, finished, stopped, diverged, failed, interrupted. A run's row contains its config,
timings and final metrics; its events are the training loop's plain dicts in order. Every call opens its own
short-lived connection, so the store is safe to use from Streamlit's script threads, the runner and any
number of worker processes at once.
"""

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import data_home

STATUSES = ("queued", "running", "finished", "stopped", "diverged", "failed", "interrupted")
ACTIVE = ("queued", "running")
HEARTBEAT_TIMEOUT = 15.0  # seconds without a heartbeat after which a running run whose process is gone is interrupted

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    started REAL,
    ended REAL,
    seconds REAL,
    final_acc REAL,
    summary TEXT NOT NULL DEFAULT '{}',
    pid INTEGER,
    heartbeat REAL,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT '',
    group_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status, created);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"""


class StoreError(RuntimeError):
    """The run database cannot be opened, read or written."""


@dataclass(frozen=True)
class Run:
    id: str
    kind: str
    created: float
    config: dict[str, Any]
    status: str
    message: str
    started: float | None
    ended: float | None
    seconds: float | None
    final_acc: float | None
    summary: dict[str, Any]
    pid: int | None
    heartbeat: float | None
    stop_requested: bool
    owner: str
    group_id: str

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def _run_from_row(row: sqlite3.Row) -> Run:
    values = dict(row)
    values["config"] = json.loads(values["config"])
    values["summary"] = json.loads(values["summary"])
    values["stop_requested"] = bool(values["stop_requested"])
    return Run(**values)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie process still passes kill(0), but its state in /proc shows that it has exited.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class RunStore:
    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home is not None else data_home()
        self.path = self.home / "runs.db"
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
        except (OSError, sqlite3.Error, StoreError) as error:
            cause = error.__cause__ if isinstance(error, StoreError) and error.__cause__ else error
            raise StoreError(f"cannot open the run database {self.path}: {cause}. Check that the directory is "
                             f"writable, or move the file aside (or set TINYLORA_HOME to another directory) "
                             f"to start a new one") from error

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open the run database {self.path}: {error}") from error
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        except sqlite3.DatabaseError as error:
            raise StoreError(f"the run database {self.path} failed: {error}. If the file is corrupt, move it "
                             f"aside to start a new one") from error
        finally:
            db.close()

    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / run_id

    # Writing runs

    def create_run(self, kind: str, config: dict[str, Any], owner: str = "", group_id: str = "") -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        with self._connect() as db:
            db.execute("INSERT INTO runs (id, kind, created, config, status, owner, group_id) "
                       "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                       (run_id, kind, time.time(), json.dumps(config), owner, group_id))
        return run_id

    def claim_next(self, pid: int) -> Run | None:
        """Mark the oldest queued run as running under `pid` and return it, or None when the queue is empty."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT id FROM runs WHERE status = 'queued' ORDER BY created, rowid LIMIT 1").fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            now = time.time()
            db.execute("UPDATE runs SET status = 'running', pid = ?, started = ?, heartbeat = ? WHERE id = ?",
                       (pid, now, now, row["id"]))
            db.execute("COMMIT")
        return self.get_run(row["id"])

    def set_pid(self, run_id: str, pid: int) -> None:
        with self._connect() as db:
            db.execute("UPDATE runs SET pid = ?, heartbeat = ? WHERE id = ?", (pid, time.time(), run_id))

    def append_events(self, run_id: str, events: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> None:
        """Store `events` after the run's last one, refresh its heartbeat and merge `summary` into its row."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]
            db.executemany("INSERT INTO events (run_id, seq, type, data) VALUES (?, ?, ?, ?)",
                           [(run_id, last + i + 1, e["type"], json.dumps(e)) for i, e in enumerate(events)])
            if summary:
                old = json.loads(db.execute("SELECT summary FROM runs WHERE id = ?", (run_id,)).fetchone()[0])
                db.execute("UPDATE runs SET summary = ? WHERE id = ?", (json.dumps({**old, **summary}), run_id))
            db.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time(), run_id))
            db.execute("COMMIT")

    def finish_run(self, run_id: str, status: str, message: str = "", final_acc: float | None = None,
                   seconds: float | None = None, only_if_active: bool = False) -> bool:
        """Record a run's final status; with `only_if_active`, leave a run that already ended untouched."""
        if status not in STATUSES or status in ACTIVE:
            raise ValueError(f"a finished run's status must be one of {STATUSES[2:]}, got {status!r}")
        query = ("UPDATE runs SET status = ?, message = ?, final_acc = COALESCE(?, final_acc), "
                 "seconds = COALESCE(?, seconds), ended = ? WHERE id = ?")
        if only_if_active:
            query += " AND status IN ('queued', 'running')"
        with self._connect() as db:
            return db.execute(query, (status, message, final_acc, seconds, time.time(), run_id)).rowcount > 0

    def request_stop(self, run_id: str) -> None:
        """Ask a running run to stop; a queued run is stopped at once and never starts."""
        with self._connect() as db:
            db.execute("UPDATE runs SET stop_requested = 1 WHERE id = ?", (run_id,))
            db.execute("UPDATE runs SET status = 'stopped', message = 'stopped before it started', ended = ? "
                       "WHERE id = ? AND status = 'queued'", (time.time(), run_id))

    def stop_requested(self, run_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT stop_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row[0])

    def delete_run(self, run_id: str) -> None:
        """Delete an ended run with its events; an active run must be stopped first."""
        run = self.get_run(run_id)
        if run is None:
            raise ValueError(f"run {run_id!r} not found")
        if run.active:
            raise ValueError(f"run {run_id} is {run.status}; stop it before deleting it")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            db.execute("COMMIT")

    # Reading runs

    def get_run(self, run_id: str) -> Run | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _run_from_row(row) if row else None

    def list_runs(self, kind: str | None = None, group_id: str | None = None, statuses: tuple[str, ...] = (),
                  limit: int = 10_000) -> list[Run]:
        """Return runs, newest first, filtered by kind, group and status."""
        query, args = "SELECT * FROM runs WHERE 1=1", []
        if kind is not None:
            query += " AND kind = ?"
            args.append(kind)
        if group_id is not None:
            query += " AND group_id = ?"
            args.append(group_id)
        if statuses:
            query += f" AND status IN ({','.join('?' * len(statuses))})"
            args.extend(statuses)
        query += " ORDER BY created DESC, rowid DESC LIMIT ?"
        with self._connect() as db:
            rows = db.execute(query, (*args, limit)).fetchall()
        return [_run_from_row(r) for r in rows]

    def events(self, run_id: str, after_seq: int = 0, types: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
        """Return (seq, event) pairs of a run after `after_seq`, in order."""
        query, args = "SELECT seq, data FROM events WHERE run_id = ? AND seq > ?", [run_id, after_seq]
        if types:
            query += f" AND type IN ({','.join('?' * len(types))})"
            args.extend(types)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY seq", args).fetchall()
        return [(seq, json.loads(data)) for seq, data in rows]

    def queue_position(self, run_id: str) -> int | None:
        """Return 1 for the next queued run to start, 2 for the one after it, and None when not queued."""
        with self._connect() as db:
            row = db.execute("SELECT created, status, rowid FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row["status"] != "queued":
                return None
            ahead = db.execute("SELECT COUNT(*) FROM runs WHERE status = 'queued' AND "
                               "(created < ? OR (created = ? AND rowid < ?))",
                               (row["created"], row["created"], row["rowid"])).fetchone()[0]
        return ahead + 1

    def count_running(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM runs WHERE status = 'running'").fetchone()[0]

    def mark_interrupted(self, now: float | None = None) -> list[str]:
        """Mark running runs whose worker is gone and whose heartbeat is stale as interrupted; return their ids."""
        now = time.time() if now is None else now
        stale = [r for r in self.list_runs(statuses=("running",))
                 if (r.heartbeat or 0) < now - HEARTBEAT_TIMEOUT and not pid_alive(r.pid)]
        for run in stale:
            self.finish_run(run.id, "interrupted", "the worker process stopped without finishing the run "
                            "(the server or machine was restarted); start it again", only_if_active=True)
        return [r.id for r in stale]

"""The run store: one SQLite database (WAL mode) with a row per run and the run's metric events.

Statuses: queued, running, finished, stopped, diverged, failed, interrupted. A run's row contains its config,
timings and final metrics. Its events are the training loop's plain dicts in order, and its files live in
`runs/<id>/` under the data directory. Every call opens its own short-lived connection, so the store is safe
to use from Streamlit's script threads, the runner and any number of worker processes at once. Every
database problem, including a corrupt file or a row that is not valid JSON, raises `StoreError`.

A run's `executor` names where it trains: "" (this machine's runner, which claims it from the queue) or the
name of a remote executor such as "ray", whose dispatcher process starts it elsewhere and records its events
here; the runner never claims those.
"""

import json
import os
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import data_home
from .processes import pid_alive, process_info

STATUSES = ("queued", "running", "finished", "stopped", "diverged", "failed", "interrupted")
ACTIVE = ("queued", "running")
HEARTBEAT_TIMEOUT = 15.0  # seconds without a heartbeat after which an unreaped worker counts as gone
PID_CLOCK_SLACK = 2.0  # /proc's boot time has whole-second precision, so process start times are this rough
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # ids name directories, so they must be plain file names

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
    group_id TEXT NOT NULL DEFAULT '',
    executor TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status, created);
CREATE INDEX IF NOT EXISTS runs_group ON runs(group_id);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"""


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a database written by an older tinylora up to SCHEMA's columns."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    if columns and "executor" not in columns:
        db.execute("ALTER TABLE runs ADD COLUMN executor TEXT NOT NULL DEFAULT ''")


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
    executor: str = ""  # "": this machine's runner; otherwise the remote executor that trains the run

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def new_run_id() -> str:
    """Return a fresh run id: its creation time (sortable, readable) and 24 random bits."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r} is invalid; a run id has 1 to 64 letters, digits, '-' or '_'")
    return run_id


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as error:
        raise StoreError(f"{what} in the run database is not valid JSON ({error}); the file is damaged, so "
                         f"move it aside to start a new one") from None


def _run_from_row(row: sqlite3.Row) -> Run:
    values = dict(row)
    values["config"] = _loads(values["config"], f"the config of run {values['id']}")
    values["summary"] = _loads(values["summary"], f"the summary of run {values['id']}")
    values["stop_requested"] = bool(values["stop_requested"])
    return Run(**values)


def worker_gone(run: Run, now: float) -> bool:
    """Decide whether the process recorded for a running run can no longer finish or report it."""
    info = process_info(run.pid)
    if info is None:
        return True
    if info.started is not None and run.heartbeat is not None and info.started > run.heartbeat + PID_CLOCK_SLACK:
        return True  # the pid now names a process started after the worker's last heartbeat: it was reused
    if info.zombie:
        # A live runner reaps its worker within one poll and records how it exited, which is more specific than
        # "interrupted". Without a live parent (init adopted it) or when nobody reaps it, the run is gone.
        has_runner = info.ppid is not None and info.ppid > 1 and pid_alive(info.ppid)
        return not has_runner or (run.heartbeat or 0) < now - HEARTBEAT_TIMEOUT
    return False


class RunStore:
    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home is not None else data_home()
        self.path = self.home / "runs.db"
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                _add_missing_columns(db)
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

    def file_signature(self) -> tuple:
        """Return the modification times and sizes of the database and its write-ahead log.

        In WAL mode every commit writes to the log, so a changed signature means that a connection may have
        committed. An unchanged one almost always means that none did. Reading it costs two stat calls, far
        less than opening a connection.
        """
        signature = []
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                stat = path.stat()
                signature.append((stat.st_mtime_ns, stat.st_size))
            except OSError:
                signature.append(None)
        return tuple(signature)

    def check(self) -> None:
        """Read every page of the runs table once, so a corrupt table raises `StoreError` here and not mid-page."""
        with self._connect() as db:
            db.execute("SELECT COUNT(*), SUM(LENGTH(config)), SUM(LENGTH(summary)) FROM runs").fetchone()

    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / check_run_id(run_id)

    def live_path(self, run_id: str) -> Path:
        """Return the path of a training run's events file while it trains (see `tinylora.live_log`). The
        file has a directory of its own because the app serves that directory over HTTP."""
        return self.home / "live" / f"{check_run_id(run_id)}.jsonl"

    def remove_live_file(self, run_id: str) -> None:
        try:
            self.live_path(run_id).unlink(missing_ok=True)
        except OSError:
            pass  # a stale live file is never read: the page draws an ended run from the store

    # Writing runs

    def create_run(self, kind: str, config: dict[str, Any], owner: str = "", group_id: str = "",
                   run_id: str | None = None, executor: str = "", pid: int | None = None) -> str:
        """Insert a queued run and return its id: `run_id` when given (to write its files first), else a new one.

        A remote `executor` passes the `pid` of its dispatcher process.
        """
        run_id = new_run_id() if run_id is None else check_run_id(run_id)
        now = time.time()
        with self._connect() as db:
            db.execute("INSERT INTO runs (id, kind, created, config, status, owner, group_id, executor, pid, heartbeat) "
                       "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                       (run_id, kind, now, json.dumps(config), owner, group_id, executor, pid,
                        now if pid is not None else None))
        return run_id

    def claim_next(self, pid: int, kinds: tuple[str, ...] = (), exclude_kinds: tuple[str, ...] = ()) -> Run | None:
        """Mark the oldest queued local run as running under `pid` and return it, or None when none is queued.

        `kinds` limits the claim to those job kinds and `exclude_kinds` skips those; runs of a remote executor
        are never claimed.
        """
        query, args = "SELECT id FROM runs WHERE status = 'queued' AND executor = ''", []
        if kinds:
            query += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(kinds)
        if exclude_kinds:
            query += f" AND kind NOT IN ({','.join('?' * len(exclude_kinds))})"
            args.extend(exclude_kinds)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(query + " ORDER BY created, rowid LIMIT 1", args).fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            now = time.time()
            db.execute("UPDATE runs SET status = 'running', pid = ?, started = ?, heartbeat = ? WHERE id = ?",
                       (pid, now, now, row["id"]))
            db.execute("COMMIT")
        return self.get_run(row["id"])

    def start_run(self, run_id: str, pid: int) -> bool:
        """Mark a queued run as running under `pid`; return False when it is no longer queued (stopped meanwhile)."""
        now = time.time()
        with self._connect() as db:
            return db.execute("UPDATE runs SET status = 'running', pid = ?, started = ?, heartbeat = ? "
                              "WHERE id = ? AND status = 'queued'", (pid, now, now, run_id)).rowcount > 0

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
        """Delete an ended run, its events and its directory of files; an active run must be stopped first.

        The rows go first, in one transaction, so a crash in between leaves at most an orphaned directory,
        never a listed run whose files are gone.
        """
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row["status"] in ACTIVE:
                db.execute("ROLLBACK")
                if row is None:
                    raise ValueError(f"run {run_id!r} not found; it may have been deleted already")
                raise ValueError(f"run {run_id} is {row['status']}; stop it before deleting it")
            db.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            db.execute("COMMIT")
        self.remove_live_file(run_id)
        directory = self.run_dir(run_id)
        if directory.exists():
            # Rename first so that no reader finds a half-deleted directory under the run's name.
            trash = directory.with_name(f".{run_id}.{secrets.token_hex(4)}.deleted.tmp")
            os.replace(directory, trash)
            shutil.rmtree(trash, ignore_errors=True)

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
        return [(seq, _loads(data, f"event {seq} of run {run_id}")) for seq, data in rows]

    def queue_position(self, run_id: str) -> int | None:
        """Return 1 for the next queued run of its executor to start, 2 for the one after it, None when not queued."""
        with self._connect() as db:
            row = db.execute("SELECT created, status, rowid, executor FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row["status"] != "queued":
                return None
            ahead = db.execute("SELECT COUNT(*) FROM runs WHERE status = 'queued' AND executor = ? AND "
                               "(created < ? OR (created = ? AND rowid < ?))",
                               (row["executor"], row["created"], row["created"], row["rowid"])).fetchone()[0]
        return ahead + 1

    def count_running(self, exclude_kinds: tuple[str, ...] = ()) -> int:
        """Count the runs running on this machine's runner, leaving out the job kinds in `exclude_kinds`."""
        query, args = "SELECT COUNT(*) FROM runs WHERE status = 'running' AND executor = ''", []
        if exclude_kinds:
            query += f" AND kind NOT IN ({','.join('?' * len(exclude_kinds))})"
            args.extend(exclude_kinds)
        with self._connect() as db:
            return db.execute(query, args).fetchone()[0]

    def mark_interrupted(self, now: float | None = None) -> list[str]:
        """Mark runs whose process is gone as interrupted (see `worker_gone`); return their ids.

        That covers running runs, and queued runs of a remote executor whose dispatcher process is gone.
        """
        now = time.time() if now is None else now
        candidates = self.list_runs(statuses=("running",)) + [
            r for r in self.list_runs(statuses=("queued",)) if r.executor]
        gone = [r for r in candidates if worker_gone(r, now)]
        marked = []
        for run in gone:
            message = (f"its worker process {run.pid} ended without recording a result (the runner was killed or "
                       f"the machine restarted); start the run again")
            if self.finish_run(run.id, "interrupted", message, only_if_active=True):
                marked.append(run.id)
                self.remove_live_file(run.id)
        return marked

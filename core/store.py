"""The run store: every training run recorded in SQLite as it goes, so no run is ever lost.

`workspace_dir()/runs.sqlite` holds one row per run (data fingerprint, backbone, freezing, hyperparameters,
status, error text) and its per-step and per-epoch metrics and checkpoints. The database is in WAL mode and each
write is one short transaction, so a crash, a stopped run or a closed browser tab leaves a complete record up to
the last write, and readers (the Train and Test pages) never block the training thread. SQLite connections may
not cross threads, so the store keeps one connection per thread.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.paths import workspace_dir

log = logging.getLogger(__name__)

#: "cancelled": its worker was killed on request; "interrupted": its worker was gone after a server restart.
STATUSES = ("running", "completed", "stopped", "failed", "cancelled", "interrupted")
#: What a run whose process vanished (a killed server or worker) says; its epoch checkpoints make it resumable.
ABANDONED_MESSAGE = ("The training process ended before the run did (a server restart or a killed worker); Resume "
                     "continues it from its last finished epoch, if it finished one.")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    status TEXT NOT NULL,
    backbone TEXT NOT NULL,
    modality TEXT NOT NULL,
    dataset_name TEXT NOT NULL,
    dataset_fingerprint TEXT NOT NULL,
    frozen_groups INTEGER,
    config_json TEXT NOT NULL,
    classes_json TEXT NOT NULL,
    run_dir TEXT,
    error TEXT,
    summary_json TEXT NOT NULL DEFAULT '{}',
    host TEXT,
    pid INTEGER,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    metrics_json TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    metrics_json TEXT NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    path TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at);
"""
#: Columns added after the first release, with their type: a file written before them gets them on opening.
_ADDED_COLUMNS = {"owner": "TEXT"}


class RunNotFound(KeyError):
    """Raised when a run id is not in the store."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_run_id(label: str = "") -> str:
    """A sortable, unique run id: UTC time, the label if any (the backbone a run trains), a few random characters.

    `20250101-120000-a1b2c3`, or `20250101-120000-resnet18-a1b2c3` with a label; the id is also the run's folder
    name, so the label keeps only letters, digits, `-` and `_`.
    """
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in label)[:40]
    parts = (time.strftime("%Y%m%d-%H%M%S", time.gmtime()), safe, secrets.token_hex(3))
    return "-".join(part for part in parts if part)


def default_store_path() -> Path:
    """Where the run database lives: `runs.sqlite` in the workspace."""
    return workspace_dir() / "runs.sqlite"


class RunStore:
    """Records runs and their metrics in SQLite; safe to use from several threads and processes.

    Args:
        path: the database file; defaults to `workspace_dir()/runs.sqlite` (resolved when the store is made,
            so tests that move the workspace get their own database).
        timeout: seconds a writer waits for another writer's lock before giving up.
    """

    def __init__(self, path: str | Path | None = None, timeout: float = 30.0) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._local = threading.local()
        self._connection().executescript(_SCHEMA)
        self._migrate()

    # -- connections ---------------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
            self._local.connection = connection
        return connection

    class _Tx:
        def __init__(self, connection: sqlite3.Connection) -> None:
            self.connection = connection

        def __enter__(self) -> sqlite3.Connection:
            self.connection.execute("BEGIN IMMEDIATE")
            return self.connection

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            self.connection.execute("ROLLBACK" if exc_type else "COMMIT")

    def _transaction(self) -> RunStore._Tx:
        return RunStore._Tx(self._connection())

    def _migrate(self) -> None:
        """Bring a database written by an older version up to `_SCHEMA`: add the columns it lacks.

        Checked again inside a write transaction, so two processes opening the same old file do not both add one.
        """
        if _missing_columns(self._connection()):
            with self._transaction() as connection:
                for name in _missing_columns(connection):
                    connection.execute(f"ALTER TABLE runs ADD COLUMN {name} {_ADDED_COLUMNS[name]}")
                    log.info("Run store %s: added the column %r", self.path, name)
        self._connection().execute("CREATE INDEX IF NOT EXISTS runs_owner ON runs(owner, created_at)")

    def close(self) -> None:
        """Close this thread's connection (other threads' connections close when their thread ends)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    # -- writing -------------------------------------------------------------------------------------------------

    def create_run(
        self,
        *,
        backbone: str,
        modality: str,
        dataset_name: str,
        dataset_fingerprint: str,
        frozen_groups: int | None,
        config: Mapping[str, Any],
        classes: list[str],
        run_dir: str | Path | None = None,
        run_id: str | None = None,
    ) -> str:
        """Record a new run as `running` and return its id (a fresh one unless `run_id` is given)."""
        run_id = run_id or new_run_id()
        now = _now()
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO runs (run_id, created_at, updated_at, status, backbone, modality, dataset_name, "
                "dataset_fingerprint, frozen_groups, config_json, classes_json, run_dir, host, pid) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id, now, now, backbone, modality, dataset_name, dataset_fingerprint, frozen_groups,
                    json.dumps(dict(config), default=str), json.dumps(list(classes)),
                    str(run_dir) if run_dir is not None else None, socket.gethostname(), os.getpid(),
                ),
            )
        return run_id

    def mark_running(self, run_id: str) -> None:
        """A resumed run is running again (in this process)."""
        self._update(run_id, status="running", error=None, pid=os.getpid(), host=socket.gethostname())

    def set_owner(self, run_dir: str | Path, owner: str) -> str | None:
        """Record who started the run in `run_dir`: an opaque id of a browser, so a page lists that person's runs.

        The job that runs the engine knows its owner; the engine, which creates the record, does not.

        Returns the run's id, or None when no run of that folder is recorded (it failed before its record).
        An owner once recorded is kept: a run never changes hands.
        """
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT run_id, owner FROM runs WHERE run_dir = ? ORDER BY created_at DESC LIMIT 1",
                (str(Path(run_dir)),),
            ).fetchone()
            if row is None:
                return None
            if row["owner"] is None:
                connection.execute("UPDATE runs SET owner = ? WHERE run_id = ?", (owner, row["run_id"]))
            return row["run_id"]

    def log_step(self, run_id: str, step: int, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Record one optimisation step's metrics (loss, learning rate, ...)."""
        self.log_steps(run_id, [(step, epoch, metrics)])

    def log_steps(self, run_id: str, rows: Iterable[tuple[int, int, Mapping[str, Any]]]) -> None:
        """Record several steps in one transaction; training buffers steps and flushes them a few times a second."""
        values = [(run_id, int(step), int(epoch), json.dumps(dict(metrics))) for step, epoch, metrics in rows]
        if not values:
            return
        with self._transaction() as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO steps (run_id, step, epoch, metrics_json) VALUES (?, ?, ?, ?)", values
            )
            connection.execute("UPDATE runs SET updated_at = ? WHERE run_id = ?", (_now(), run_id))

    def log_epoch(self, run_id: str, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Record one epoch's metrics (a resumed run may rewrite an epoch; the last write wins)."""
        with self._transaction() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO epochs (run_id, epoch, metrics_json) VALUES (?, ?, ?)",
                (run_id, int(epoch), json.dumps(dict(metrics))),
            )
            connection.execute("UPDATE runs SET updated_at = ? WHERE run_id = ?", (_now(), run_id))

    def log_checkpoint(self, run_id: str, epoch: int, path: str | Path) -> None:
        """Record that a checkpoint for `epoch` was written to `path`."""
        with self._transaction() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO checkpoints (run_id, epoch, path, created_at) VALUES (?, ?, ?, ?)",
                (run_id, int(epoch), str(path), _now()),
            )

    def update_summary(self, run_id: str, **summary: Any) -> None:
        """Merge values into the run's summary (best epoch, accuracies, cache mode, device, ...)."""
        with self._transaction() as connection:
            row = connection.execute("SELECT summary_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"No run {run_id!r} in {self.path}.")
            merged = {**json.loads(row["summary_json"]), **summary}
            connection.execute(
                "UPDATE runs SET summary_json = ?, updated_at = ? WHERE run_id = ?",
                (json.dumps(merged, default=str), _now(), run_id),
            )

    def finish(self, run_id: str, status: str, error: str | None = None, **summary: Any) -> None:
        """Close a run: `completed`, `stopped`, `failed`, `cancelled` or `interrupted` (with the error text), plus any
        summary values."""
        if status not in STATUSES:
            raise ValueError(f"Run status must be one of {', '.join(STATUSES)}, not {status!r}.")
        if summary:
            self.update_summary(run_id, **summary)
        self._update(run_id, status=status, error=error)

    def _update(self, run_id: str, **columns: Any) -> None:
        columns["updated_at"] = _now()
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._transaction() as connection:
            cursor = connection.execute(
                f"UPDATE runs SET {assignments} WHERE run_id = ?", (*columns.values(), run_id)
            )
            if cursor.rowcount == 0:
                raise RunNotFound(f"No run {run_id!r} in {self.path}.")

    def delete_run(self, run_id: str) -> None:
        """Forget a run and its metrics (its folder on disk is left alone)."""
        with self._transaction() as connection:
            connection.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    # -- reading -------------------------------------------------------------------------------------------------

    @staticmethod
    def _run_from_row(row: sqlite3.Row) -> dict[str, Any]:
        run = {key: row[key] for key in row.keys() if not key.endswith("_json")}
        run["config"] = json.loads(row["config_json"])
        run["classes"] = json.loads(row["classes_json"])
        run["summary"] = json.loads(row["summary_json"])
        return run

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run's record (config, classes and summary decoded); raises `RunNotFound` if unknown."""
        row = self._connection().execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"No run {run_id!r} in {self.path}.")
        return self._run_from_row(row)

    def list_runs(
        self,
        limit: int | None = None,
        status: str | None = None,
        owner: str | None = None,
        dataset_fingerprint: str | None = None,
    ) -> list[dict[str, Any]]:
        """Runs, newest first; optionally only those with one status, of one owner, or on one data set."""
        conditions = {"status": status, "owner": owner, "dataset_fingerprint": dataset_fingerprint}
        wanted = {column: value for column, value in conditions.items() if value is not None}
        query = "SELECT * FROM runs"
        params: list[Any] = list(wanted.values())
        if wanted:
            query += " WHERE " + " AND ".join(f"{column} = ?" for column in wanted)
        query += " ORDER BY created_at DESC, rowid DESC"
        if limit is not None:
            query += " LIMIT ?"
            params.append(int(limit))
        return [self._run_from_row(row) for row in self._connection().execute(query, params)]

    def history(self, run_id: str) -> list[dict[str, Any]]:
        """Per-epoch metrics of a run, in epoch order (each dict includes `epoch`)."""
        rows = self._connection().execute(
            "SELECT epoch, metrics_json FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,)
        )
        return [{**json.loads(row["metrics_json"]), "epoch": row["epoch"]} for row in rows]

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        """Per-step metrics of a run, in step order (each dict includes `step` and `epoch`)."""
        rows = self._connection().execute(
            "SELECT step, epoch, metrics_json FROM steps WHERE run_id = ? ORDER BY step", (run_id,)
        )
        return [{**json.loads(row["metrics_json"]), "step": row["step"], "epoch": row["epoch"]} for row in rows]

    def checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        """The checkpoints written for a run, in epoch order."""
        rows = self._connection().execute(
            "SELECT epoch, path, created_at FROM checkpoints WHERE run_id = ? ORDER BY epoch", (run_id,)
        )
        return [dict(row) for row in rows]

    def mark_abandoned(self) -> list[str]:
        """Runs left `running` by a process on this host that no longer exists are marked `failed`.

        A killed server cannot close its runs; call this at start-up so the run list tells the truth.
        Returns the ids it changed.
        """
        host = socket.gethostname()
        rows = self._connection().execute(
            "SELECT run_id, pid FROM runs WHERE status = 'running' AND host = ?", (host,)
        ).fetchall()
        changed = []
        for row in rows:
            if row["pid"] is not None and not pid_alive(int(row["pid"])):
                self._update(row["run_id"], status="failed", error=ABANDONED_MESSAGE)
                changed.append(row["run_id"])
        return changed


def _missing_columns(connection: sqlite3.Connection) -> list[str]:
    present = {row["name"] for row in connection.execute("PRAGMA table_info(runs)")}
    return [name for name in _ADDED_COLUMNS if name not in present]


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id runs on this machine (one that ended but was not yet reaped counts as ended)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a child that ended but was not reaped yet still answers signal 0
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True

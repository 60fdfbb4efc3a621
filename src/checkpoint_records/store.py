"""The embedded store: records and their delivery outbox in one SQLite file.

Why SQLite: it is in the standard library, a committed transaction survives ``kill -9`` a moment later,
and several training jobs on one machine can write at once (writers queue on SQLite's lock; each write
is one short transaction). A record and its outbox entries are written in the same transaction, so a
record is never stored without being queued for delivery, nor queued without being stored.

Network filesystems: SQLite's WAL mode needs shared memory that NFS/Lustre/GPFS cannot provide across
hosts, so on such mounts the store falls back to the rollback journal (``journal_mode=DELETE``), which
relies only on POSIX byte-range locks. The default location is a per-user cache directory on local disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigurationError
from .record import CheckpointRecord

DATABASE_NAME = "records.db"
_NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "glusterfs", "ceph", "9p"}
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_name ON records(name);
CREATE INDEX IF NOT EXISTS records_by_job ON records(job_id, step);
CREATE TABLE IF NOT EXISTS outbox (
    sink TEXT NOT NULL,
    record_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (sink, record_id)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(sink, state, next_attempt_at);
"""

DeliveryState = Literal["pending", "delivered", "dead"]


@dataclass(frozen=True)
class Delivery:
    """One record's delivery to one sink."""

    sink: str
    record_id: str
    revision: int
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None


@dataclass(frozen=True)
class StoredRecord:
    record: CheckpointRecord
    revision: int


def default_home() -> Path:
    """``$CHECKPOINT_RECORDS_HOME``, else the per-user cache directory."""
    explicit = os.environ.get("CHECKPOINT_RECORDS_HOME")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "checkpoint-records"


def filesystem_type(path: Path) -> str:
    """The type of the mount holding ``path`` (Linux ``/proc/self/mounts``), or ``""`` if unknown."""
    best, best_type = "", ""
    target = str(path.resolve())
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount_point = parts[1].replace("\\040", " ")
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, best_type = mount_point, parts[2]
    except OSError:
        return ""
    return best_type


class RecordStore:
    """Records and outbox in ``<home>/records.db``; safe across threads, processes and forks."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.path = self.home / DATABASE_NAME
        self._local = threading.local()
        self._check_writable()

    def _check_writable(self) -> None:
        """Fail now, not at the first save; without creating the database (non-main ranks never write)."""
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self._unwritable(error.strerror or str(error))
        target = self.path if self.path.exists() else self.home
        if not os.access(target, os.W_OK):
            self._unwritable("permission denied")

    def _unwritable(self, why: str) -> None:
        raise ConfigurationError(
            f"checkpoint-records cannot write its store at {self.path} ({why}). "
            "Point it at a writable directory with store=... or CHECKPOINT_RECORDS_HOME."
        )

    def _connection(self) -> sqlite3.Connection:
        owner = (os.getpid(), threading.get_ident())
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None or getattr(self._local, "owner", None) != owner:
            # A connection inherited through fork() must never be used: open a fresh one.
            connection = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            network = filesystem_type(self.home) in _NETWORK_FILESYSTEMS
            connection.execute(f"PRAGMA journal_mode={'DELETE' if network else 'WAL'}")
            connection.execute("PRAGMA synchronous=FULL")
            connection.executescript(_SCHEMA)
            self._local.connection, self._local.owner = connection, owner
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None and getattr(self._local, "owner", None) == (
            os.getpid(),
            threading.get_ident(),
        ):
            connection.close()
        self._local.connection = None

    # -- records -------------------------------------------------------------------------------------

    def put(self, record: CheckpointRecord, sinks: Sequence[str] = ()) -> StoredRecord:
        """Store ``record`` and queue it for ``sinks``, durably, in one transaction.

        The same content again is a no-op (a re-emitted record is recognised by its deterministic id);
        changed content becomes the next revision, keeping the first ``createdAt``.
        """
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT body, revision FROM records WHERE id = ?", (record.id,)
            ).fetchone()
            if row is not None:
                existing = CheckpointRecord.from_json(row[0])
                if _content(existing) == _content(record):
                    return StoredRecord(existing, row[1])
                revision = int(row[1]) + 1
                record = _as_revision(record, revision, created_at=existing.status.created_at)
            else:
                revision = 1
                record = _as_revision(record, revision, created_at=record.status.created_at)
            connection.execute(
                "INSERT OR REPLACE INTO records (id, name, job_id, step, revision, body, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.name,
                    record.metadata.job_id,
                    record.training.step,
                    revision,
                    record.to_json(),
                    record.status.created_at,
                    record.status.updated_at,
                ),
            )
            now = time.time()
            connection.executemany(
                "INSERT OR REPLACE INTO outbox"
                " (sink, record_id, revision, state, attempts, next_attempt_at, last_error, updated_at)"
                " VALUES (?, ?, ?, 'pending', 0, ?, NULL, ?)",
                [(sink, record.id, revision, now, now) for sink in sinks],
            )
        return StoredRecord(record, revision)

    def get(self, name_or_id: str) -> StoredRecord | None:
        """A record by id or name (the newest one when several jobs used the same name)."""
        row = (
            self._connection()
            .execute(
                "SELECT body, revision FROM records WHERE id = ? OR name = ? ORDER BY created_at DESC LIMIT 1",
                (name_or_id, name_or_id),
            )
            .fetchone()
        )
        return None if row is None else StoredRecord(CheckpointRecord.from_json(row[0]), row[1])

    def records(self, job_id: str | None = None) -> list[StoredRecord]:
        """All records, oldest first (optionally of one job)."""
        query = "SELECT body, revision FROM records"
        params: tuple[Any, ...] = ()
        if job_id is not None:
            query, params = query + " WHERE job_id = ?", (job_id,)
        rows = self._connection().execute(query + " ORDER BY created_at, step", params).fetchall()
        return [StoredRecord(CheckpointRecord.from_json(body), revision) for body, revision in rows]

    # -- outbox --------------------------------------------------------------------------------------

    def deliveries(self, record_id: str | None = None) -> list[Delivery]:
        query = "SELECT sink, record_id, revision, state, attempts, next_attempt_at, last_error FROM outbox"
        params: tuple[Any, ...] = ()
        if record_id is not None:
            query, params = query + " WHERE record_id = ?", (record_id,)
        return [Delivery(*row) for row in self._connection().execute(query + " ORDER BY sink", params)]


def _content(record: CheckpointRecord) -> str:
    """The record's content, without what changes on every write (timestamps and revision)."""
    data = record.to_dict()
    data["metadata"].pop("revision", None)
    data["status"].pop("createdAt", None)
    data["status"].pop("updatedAt", None)
    return json.dumps(data, sort_keys=True)


def _as_revision(record: CheckpointRecord, revision: int, created_at: str) -> CheckpointRecord:
    return record.model_copy(
        update={
            "metadata": record.metadata.model_copy(update={"revision": revision}),
            "status": record.status.model_copy(update={"created_at": created_at}),
        }
    )

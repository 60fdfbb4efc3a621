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
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigurationError
from .formats.training_job import JobSnapshot
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
    claimed_by TEXT,
    claimed_until REAL,
    PRIMARY KEY (sink, record_id)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(sink, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    revision INTEGER NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    body TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    record_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    remote TEXT NOT NULL,
    source TEXT NOT NULL,
    staging TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    claimed_by TEXT,
    claimed_until REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (record_id, path)
);
CREATE INDEX IF NOT EXISTS uploads_due ON uploads(state, next_attempt_at);
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


_DELIVERY_COLUMNS = "sink, record_id, revision, state, attempts, next_attempt_at, last_error"


@dataclass(frozen=True)
class Claimed:
    """A pending delivery this process has claimed, with the record's stored body."""

    sink: str
    record_id: str
    revision: int
    body: str


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: the delivery's next state, when to try again, and why."""

    claim: Claimed
    state: DeliveryState
    next_attempt_at: float
    error: str | None = None


@dataclass(frozen=True)
class StoredJob:
    job: JobSnapshot
    revision: int
    #: The process that last ran it (``host/pid/...``), to tell an interrupted attempt.
    owner: str | None


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
            _set_up(connection, "delete" if network else "wal")
            self._local.synchronous = "FULL"
            self._local.connection, self._local.owner = connection, owner
        return connection

    @contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction. ``durable`` ones are fsynced at commit (they survive a power loss);
        the others (outbox bookkeeping, job progress) only survive the process, which a crash or
        ``kill -9`` never loses either, and cost the training thread no disk flush."""
        connection = self._connection()
        level = "FULL" if durable else "NORMAL"
        if getattr(self._local, "synchronous", "FULL") != level:
            connection.execute(f"PRAGMA synchronous={level}")
            self._local.synchronous = level
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

    def put(self, record: CheckpointRecord, sinks: Sequence[str] = (), durable: bool = True) -> StoredRecord:
        """Store ``record`` and queue it for ``sinks``, durably, in one transaction.

        The same content again is a no-op (a re-emitted record is recognised by its deterministic id);
        changed content becomes the next revision, keeping the first ``createdAt``.
        """
        with self._transaction(durable) as connection:
            row = connection.execute(
                "SELECT body, revision FROM records WHERE id = ?", (record.id,)
            ).fetchone()
            if row is not None:
                existing = CheckpointRecord.from_json(row[0])
                if _content(existing) == _content(record):
                    _queue(connection, "INSERT OR IGNORE", sinks, record.id, row[1])  # a sink added since
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
            _queue(connection, "INSERT OR REPLACE", sinks, record.id, revision)
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

    # -- jobs --------------------------------------------------------------------------------------

    def put_job(
        self, job: JobSnapshot, sinks: Sequence[str] = (), owner: str | None = None, durable: bool = True
    ) -> int:
        """Store the job's latest snapshot and queue it for ``sinks``; returns its revision.

        ``owner`` (see :func:`claim_owner`) names the process running the job, so a later run can tell
        that an attempt which never finished was interrupted. Unchanged content is a no-op.
        """
        body = job.model_dump_json()
        with self._transaction(durable) as connection:
            row = connection.execute("SELECT body, revision FROM jobs WHERE id = ?", (job.id,)).fetchone()
            if row is not None and _job_content(row[0]) == _job_content(body):
                return int(row[1])
            revision = 1 if row is None else int(row[1]) + 1
            connection.execute(
                "INSERT OR REPLACE INTO jobs (id, name, revision, status, owner, body, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.name, revision, job.status, owner, body, time.time()),
            )
            _queue(connection, "INSERT OR REPLACE", sinks, job.id, revision)
        return revision

    def job(self, job_id: str) -> StoredJob | None:
        row = (
            self._connection()
            .execute("SELECT body, revision, owner FROM jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        return None if row is None else StoredJob(JobSnapshot.model_validate_json(row[0]), row[1], row[2])

    def jobs(self) -> list[StoredJob]:
        """Every job, oldest update first."""
        rows = self._connection().execute("SELECT body, revision, owner FROM jobs ORDER BY updated_at")
        return [
            StoredJob(JobSnapshot.model_validate_json(body), revision, owner)
            for body, revision, owner in rows
        ]

    # -- outbox --------------------------------------------------------------------------------------

    def deliveries(self, record_id: str | None = None) -> list[Delivery]:
        query = f"SELECT {_DELIVERY_COLUMNS} FROM outbox"
        params: tuple[Any, ...] = ()
        if record_id is not None:
            query, params = query + " WHERE record_id = ?", (record_id,)
        return [Delivery(*row) for row in self._connection().execute(query + " ORDER BY sink", params)]

    def claim_due(self, sink: str, owner: str, lease: float, limit: int) -> list[Claimed]:
        """Claim up to ``limit`` pending deliveries to ``sink`` that are due, for ``lease`` seconds.

        A claim keeps other processes (another job, ``checkpoint-records flush``) from sending the same
        record at the same time; it lapses on its own if its owner dies.
        """
        now = time.time()
        with self._transaction(durable=False) as connection:
            rows = connection.execute(
                "SELECT o.record_id, o.revision, COALESCE(r.body, j.body) FROM outbox o"
                " LEFT JOIN records r ON r.id = o.record_id LEFT JOIN jobs j ON j.id = o.record_id"
                " WHERE o.sink = ? AND o.state = 'pending' AND o.next_attempt_at <= ?"
                " AND (o.claimed_until IS NULL OR o.claimed_until < ?)"
                " AND COALESCE(r.body, j.body) IS NOT NULL"
                " ORDER BY o.next_attempt_at, COALESCE(r.step, 0) LIMIT ?",
                (sink, now, now, limit),
            ).fetchall()
            connection.executemany(
                "UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE sink = ? AND record_id = ?",
                [(owner, now + lease, sink, record_id) for record_id, *_ in rows],
            )
        return [Claimed(sink, record_id, revision, body) for record_id, revision, body in rows]

    def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Write what came of claimed deliveries, in one transaction, and release their claims.

        An outcome for a revision that has since been superseded changes nothing: the newer revision
        stays pending and is sent under its own idempotency key.
        """
        if not outcomes:
            return
        now = time.time()
        with self._transaction(durable=False) as connection:
            connection.executemany(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, next_attempt_at = ?, last_error = ?,"
                " updated_at = ?, claimed_by = NULL, claimed_until = NULL"
                " WHERE sink = ? AND record_id = ? AND revision = ?",
                [
                    (
                        o.state,
                        o.next_attempt_at,
                        o.error,
                        now,
                        o.claim.sink,
                        o.claim.record_id,
                        o.claim.revision,
                    )
                    for o in outcomes
                ],
            )

    def release(self, sink: str, owner: str | None = None) -> None:
        """Drop claims on ``sink``: those of ``owner``, or of every owner that is no longer running."""
        with self._transaction(durable=False) as connection:
            if owner is not None:
                connection.execute(
                    "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE sink = ? AND claimed_by = ?",
                    (sink, owner),
                )
                return
            owners = connection.execute(
                "SELECT DISTINCT claimed_by FROM outbox WHERE sink = ? AND claimed_by IS NOT NULL", (sink,)
            ).fetchall()
            gone = [(sink, name) for (name,) in owners if not owner_is_alive(name)]
            connection.executemany(
                "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE sink = ? AND claimed_by = ?",
                gone,
            )

    def next_due(self, sink: str) -> float | None:
        """When the earliest pending delivery to ``sink`` is due (it may be claimed), or None."""
        row = (
            self._connection()
            .execute("SELECT MIN(next_attempt_at) FROM outbox WHERE sink = ? AND state = 'pending'", (sink,))
            .fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    def counts(self, sinks: Sequence[str] | None = None) -> dict[DeliveryState, int]:
        """How many deliveries are pending, delivered and dead (to ``sinks``, or to any sink)."""
        query, params = "SELECT state, COUNT(*) FROM outbox", list(sinks or ())
        if sinks is not None:
            query += f" WHERE sink IN ({_marks(params)})"
        found: dict[DeliveryState, int] = {"pending": 0, "delivered": 0, "dead": 0}
        for state, count in self._connection().execute(query + " GROUP BY state", params):
            found[state] = count
        return found

    def requeue(
        self,
        states: Sequence[DeliveryState],
        sinks: Sequence[str] | None = None,
        record_ids: Sequence[str] | None = None,
    ) -> int:
        """Make deliveries in ``states`` pending and due now (``resend`` revives dead ones); how many."""
        query = f"UPDATE outbox SET state = 'pending', next_attempt_at = ? WHERE state IN ({_marks(states)})"
        params: list[Any] = [time.time(), *states]
        for column, values in (("sink", sinks), ("record_id", record_ids)):
            if values is not None:
                query += f" AND {column} IN ({_marks(values)})"
                params += list(values)
        with self._transaction(durable=False) as connection:
            return connection.execute(query, params).rowcount

    def sinks_with(self, state: DeliveryState) -> list[str]:
        """The sink keys that have deliveries in ``state``."""
        rows = self._connection().execute(
            "SELECT DISTINCT sink FROM outbox WHERE state = ? ORDER BY sink", (state,)
        )
        return [sink for (sink,) in rows]


def _set_up(connection: sqlite3.Connection, journal_mode: str, attempts: int = 200) -> None:
    """Journal mode, durability and tables. Switching the journal mode does not wait on SQLite's busy
    timeout when another connection holds a lock, so that step is retried here for up to ~10 s."""
    connection.execute("PRAGMA synchronous=FULL")
    for attempt in range(attempts):
        try:
            if connection.execute("PRAGMA journal_mode").fetchone()[0] != journal_mode:
                connection.execute(f"PRAGMA journal_mode={journal_mode}")
            connection.executescript(_SCHEMA)
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


def _marks(values: Sequence[Any]) -> str:
    """SQL placeholders for ``values``."""
    return ",".join("?" * len(values))


def _queue(
    connection: sqlite3.Connection, verb: str, sinks: Sequence[str], record_id: str, revision: int
) -> None:
    now = time.time()
    connection.executemany(
        f"{verb} INTO outbox (sink, record_id, revision, state, attempts, next_attempt_at, updated_at)"
        " VALUES (?, ?, ?, 'pending', 0, ?, ?)",
        [(sink, record_id, revision, now, now) for sink in sinks],
    )


def claim_owner() -> str:
    """Who holds a claim: this host and process, and a random part for this holder."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def owner_is_alive(owner: str) -> bool:
    """False only when the owner ran on this host and its process is gone; other hosts' claims lapse."""
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _content(record: CheckpointRecord) -> str:
    """The record's content, without what changes on every write (timestamps and revision)."""
    data = record.to_dict()
    data["metadata"].pop("revision", None)
    data["status"].pop("createdAt", None)
    data["status"].pop("updatedAt", None)
    return json.dumps(data, sort_keys=True)


def _job_content(body: str) -> str:
    """A job snapshot's content without its update time."""
    data = json.loads(body)
    data.pop("updated_at", None)
    return json.dumps(data, sort_keys=True)


def _as_revision(record: CheckpointRecord, revision: int, created_at: str) -> CheckpointRecord:
    return record.model_copy(
        update={
            "metadata": record.metadata.model_copy(update={"revision": revision}),
            "status": record.status.model_copy(update={"created_at": created_at}),
        }
    )

"""The embedded store: records and their delivery outbox in one SQLite file.

Why SQLite: it is in the standard library, a committed transaction survives ``kill -9`` a moment later,
and several training jobs on one machine can write at once (writers queue on SQLite's lock; each write
is one short transaction). A record and its outbox entries are written in the same transaction, so a
record is never stored without being queued for delivery, nor queued without being stored.

Network filesystems: SQLite's WAL mode needs shared memory that NFS/Lustre/GPFS cannot provide across
hosts, so on such mounts the store falls back to the rollback journal (``journal_mode=DELETE``), which
relies only on POSIX byte-range locks. The default location is a per-user cache directory on local disk.

Schema versions: the store's version is SQLite's ``PRAGMA user_version`` (0 for a store written before
versions existed). ``_SCHEMA`` always describes the latest tables and is applied on every open
(``CREATE ... IF NOT EXISTS``: a new table needs nothing else). A change that cannot be said that way (a
new column on an existing table, rewritten rows) is a *step* appended to ``_MIGRATIONS``: step ``n``
takes a store from version ``n - 1`` to ``n``, runs (before ``_SCHEMA``) inside the one transaction that
also sets the new version, and must be harmless on a new, empty store too (use :func:`add_column`, which
does nothing when the table does not exist yet or has the column). Never edit or reorder a released step.
A store of a newer version than this release knows is refused, never written.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from .errors import ConfigurationError
from .history import LogEntry, downsample
from .job import JobSnapshot
from .logs import logger, warn_once
from .record import CheckpointRecord
from .settings import resolve_settings

DATABASE_NAME = "records.db"
T = TypeVar("T")
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
    kind TEXT NOT NULL DEFAULT 'record',
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
CREATE TABLE IF NOT EXISTS log_entries (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    step INTEGER NOT NULL,
    loss REAL,
    eval_loss REAL,
    logged_at REAL,
    body TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

-- The registry server (``checkpoint-records serve``): newest-first pages of a job's checkpoints, and
-- the idempotency keys of what it received, with the receipts it answered.
CREATE INDEX IF NOT EXISTS records_by_job_step_id ON records(job_id, step, id);
CREATE TABLE IF NOT EXISTS received_keys (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    receipts TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS received_keys_by_time ON received_keys(received_at);

-- The web page: every revision of a record in brief, kept by a trigger on each write of a record (by any
-- writer, old or new), so a checkpoint's page can tell when it was deleted or the best moved.
CREATE TABLE IF NOT EXISTS record_revisions (
    id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    status TEXT,
    ready INTEGER,
    best INTEGER,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (id, revision)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS record_revisions_kept AFTER INSERT ON records BEGIN
    INSERT OR REPLACE INTO record_revisions (id, revision, status, ready, best, updated_at) VALUES (
        NEW.id, NEW.revision, json_extract(NEW.body, '$.status.status'),
        json_extract(NEW.body, '$.status.metadata.inferenceReady'),
        json_extract(NEW.body, '$.status.metadata.best'), NEW.updated_at
    );
END;

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
#: What an outbox entry delivers: a checkpoint record (``records``) or a job snapshot (``jobs``).
DocumentKind = Literal["record", "job"]


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
    kind: DocumentKind = "record"


_DELIVERY_COLUMNS = "sink, record_id, revision, state, attempts, next_attempt_at, last_error, kind"


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
class RecordRevision:
    """One revision of a record in brief: when it was written, and its status, readiness and best flag."""

    revision: int
    status: str | None
    ready: bool | None
    best: bool | None
    updated_at: str


@dataclass(frozen=True)
class CheckpointStats:
    """A job's checkpoints in numbers, counted by SQLite without parsing a record (the page's jobs table
    must stay fast with 100,000 records in the store)."""

    job_id: str
    job_name: str
    checkpoints: int
    ready: int
    best_eval_loss: float | None
    last_eval_loss: float | None
    last_step: int
    first_created_at: str
    last_updated_at: str


@dataclass(frozen=True)
class StoredRecord:
    record: CheckpointRecord
    revision: int


@dataclass(frozen=True)
class Receipt:
    """What became of one received document: ``stored`` is False when the store already held this
    revision or a newer one (then ``revision`` is the one it holds)."""

    id: str
    kind: Literal["record", "job"]
    revision: int
    stored: bool


@dataclass(frozen=True)
class Submission:
    """Documents received in one request, stored all or none; ``key`` is its ``Idempotency-Key`` and
    ``digest`` a hash of its body, so a key reused for other content is told apart from a replay."""

    documents: Sequence[CheckpointRecord | JobSnapshot]
    key: str | None = None
    digest: str = ""


@dataclass(frozen=True)
class JobSummary:
    """A job's checkpoints at a glance: how many, the first creation and last update (ISO 8601)."""

    job_id: str
    checkpoints: int
    first_created_at: str | None
    last_updated_at: str | None


#: How long a received idempotency key is remembered (a sender retries for far less).
RECEIVED_KEY_SECONDS = 7 * 24 * 3600.0
#: Expired keys are deleted at most this often: once per write round was a statement per request.
RECEIVED_KEY_PURGE_SECONDS = 60.0
#: Job statuses that end a job.
FINISHED_JOB_STATUSES: frozenset[str] = frozenset({"Success", "Failed", "TimedOut", "Cancelled"})


def default_home() -> Path:
    """``$CHECKPOINT_RECORDS_HOME``, else the per-user cache directory (resolved by the settings table)."""
    return resolve_settings().home


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
        #: Set once the file was deleted under this process (see :meth:`_deleted`).
        self._replaced = False
        #: Writes that found the disk full, in order, kept until there is room (see :meth:`_write`).
        self._kept: list[Callable[[], object]] = []
        self._kept_lock = threading.RLock()
        self._keys_purged_at = 0.0  # when received idempotency keys past their time were last deleted
        self._check_writable()
        self._check_readable()

    def _check_writable(self) -> None:
        """Fail now, not at the first save; without creating the database (non-main ranks never write)."""
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self._unwritable(error.strerror or str(error))
        target = self.path if self.path.exists() else self.home
        if not os.access(target, os.W_OK):
            self._unwritable("permission denied")

    def _check_readable(self) -> None:
        """Fail now on a store this release cannot use (not SQLite, damaged, or newer), touching nothing."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        try:
            with closing(sqlite3.connect(self.path, timeout=1.0)) as connection:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
                version = schema_version(connection)
        except sqlite3.DatabaseError as error:
            if "locked" in str(error) or "busy" in str(error):
                return  # a writer is busy with it: it is a database, in use
            raise ConfigurationError(
                f"checkpoint-records cannot read its store {self.path}: {error}. It was left as it is. "
                f"To start a new store, move it aside (mv {self.path} {self.path}.broken); or point "
                "store=/CHECKPOINT_RECORDS_HOME at another directory."
            ) from None
        _refuse_newer(version, self.path)

    def _unwritable(self, why: str) -> None:
        raise ConfigurationError(
            f"checkpoint-records cannot write its store at {self.path} ({why}). "
            "Point it at a writable directory with store=... or CHECKPOINT_RECORDS_HOME."
        )

    def _connection(self) -> sqlite3.Connection:
        owner = (os.getpid(), threading.get_ident())
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None and getattr(self._local, "owner", None) == owner:
            if _file_identity(self.path) == self._local.identity:
                return connection
            self._deleted(connection)
        # A connection inherited through fork() must never be used: open a fresh one.
        self.home.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        network = filesystem_type(self.home) in _NETWORK_FILESYSTEMS
        _set_up(connection, self.path, None if self._replaced else "delete" if network else "wal")
        self._local.synchronous = "FULL"
        self._local.connection, self._local.owner = connection, owner
        self._local.identity = _file_identity(self.path)
        return connection

    def _deleted(self, connection: sqlite3.Connection) -> None:
        """The file under this thread's connection was deleted (or replaced): say so, and move on to a
        new file at the same path, so what follows is recorded. This process then keeps that file in
        SQLite's rollback-journal mode: closing the old connections deletes ``records.db-wal`` by name,
        which must not be the new file's."""
        self._replaced = True
        warn_once(
            f"store-deleted:{self.path}",
            "checkpoint-records: the store %s was deleted (or replaced) while this process was using it. "
            "Recording goes on in a new store file at that path; what the old file held is gone from it "
            "(the checkpoints on disk still have it).",
            self.path,
        )
        connection.close()
        self._local.connection = None

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
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:  # SQLite may have rolled back itself (a full disk)
                connection.execute("ROLLBACK")
            raise

    def _write(self, write: Callable[[], T], kept: T) -> T:
        """``write()``, after any earlier writes kept in memory; when the disk is full, keep it (and
        return ``kept``) to be written, in order, once there is room: nothing is lost, nothing waits."""
        if self._kept:
            with self._kept_lock:
                if not self.write_kept():
                    self._kept.append(write)
                    return kept
        try:
            return write()
        except (sqlite3.OperationalError, OSError) as error:
            if not _disk_full(error):
                raise
            with self._kept_lock:
                self._kept.append(write)
            warn_once(
                f"store-full:{self.path}",
                "checkpoint-records: the disk holding %s is full (%s). Records are kept in memory and "
                "written as soon as there is room (tried again at each save and every second); training "
                "goes on. Free some space.",
                self.path,
                error,
            )
            return kept

    def write_kept(self) -> bool:
        """Write what a full disk kept in memory, oldest first; whether all of it is on disk now."""
        if not self._kept:  # the common case costs no lock
            return True
        with self._kept_lock:
            written = 0
            try:
                while self._kept:
                    self._kept[0]()
                    self._kept.pop(0)
                    written += 1
            except (sqlite3.Error, OSError) as error:  # still full, or locked meanwhile: kept, in order
                logger.debug("checkpoint-records: kept writes wait for %s: %r", self.path, error)
            if written:
                logger.warning(
                    "checkpoint-records: %d write(s) kept while the disk was full are now in %s%s",
                    written,
                    self.path,
                    f"; {len(self._kept)} still waiting for room" if self._kept else "",
                )
            return not self._kept

    def close(self) -> None:
        if not self.write_kept():
            warn_once(
                f"store-full-left:{self.path}",
                "checkpoint-records: %d write(s) could not reach %s: its disk is still full. They are "
                "not in the store; the checkpoints on disk still have what they recorded.",
                len(self._kept),
                self.path,
            )
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
        changed content becomes the next revision, keeping the first ``createdAt``. On a full disk the
        record is kept in memory until there is room (and returned as given).
        """
        kept = StoredRecord(record, record.metadata.revision or 1)
        return self._write(lambda: self._put(record, sinks, durable), kept)

    def _put(self, record: CheckpointRecord, sinks: Sequence[str], durable: bool) -> StoredRecord:
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
            _write_record(connection, record, revision)
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

    def find(self, name_or_id: str) -> list[StoredRecord]:
        """Every record with this id or name, newest first: names repeat across jobs with one run_name."""
        rows = self._connection().execute(
            "SELECT body, revision FROM records WHERE id = ? OR name = ? ORDER BY created_at DESC",
            (name_or_id, name_or_id),
        )
        return [StoredRecord(CheckpointRecord.from_json(body), revision) for body, revision in rows]

    def record_revisions(self, record_id: str) -> list[RecordRevision]:
        """The revisions of a record that this store saw written, oldest first."""
        rows = self._connection().execute(
            "SELECT revision, status, ready, best, updated_at FROM record_revisions WHERE id = ? ORDER BY revision",
            (record_id,),
        )
        return [
            RecordRevision(
                revision,
                status,
                None if ready is None else bool(ready),
                None if best is None else bool(best),
                at,
            )
            for revision, status, ready, best, at in rows
        ]

    def checkpoint_stats(self, job_id: str | None = None) -> list[CheckpointStats]:
        """Per job (or for ``job_id`` only): checkpoints, how many ready, best and last eval loss."""
        eval_loss = "json_extract(body, '$.status.metadata.evalLoss')"
        only = "job_id = ?" if job_id is not None else "1"
        params = (job_id,) if job_id is not None else ()
        connection = self._connection()
        # SQLite gives the other columns of the row that holds MAX(step): the last eval loss.
        last_eval = {
            job: loss
            for job, loss, _ in connection.execute(
                f"SELECT job_id, {eval_loss}, MAX(step) FROM records"
                f" WHERE {only} AND {eval_loss} IS NOT NULL GROUP BY job_id",
                params,
            )
        }
        rows = connection.execute(
            f"SELECT job_id, json_extract(body, '$.metadata.jobName'), COUNT(*),"
            f" TOTAL(json_extract(body, '$.status.metadata.inferenceReady')), MIN({eval_loss}), MAX(step),"
            f" MIN(created_at), MAX(updated_at) FROM records WHERE {only} GROUP BY job_id",
            params,
        )
        return [
            CheckpointStats(job, name, count, int(ready), best, last_eval.get(job), step, first, last)
            for job, name, count, ready, best, step, first, last in rows
        ]

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
        that an attempt which never finished was interrupted. Unchanged content is a no-op. On a full
        disk it is kept in memory until there is room (revision 0 until then).
        """
        return self._write(lambda: self._put_job(job, sinks, owner, durable), 0)

    def _put_job(self, job: JobSnapshot, sinks: Sequence[str], owner: str | None, durable: bool) -> int:
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
            _queue(connection, "INSERT OR REPLACE", sinks, job.id, revision, "job")
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

    # -- the job's log -------------------------------------------------------------------------------

    def append_log(self, job_id: str, entries: Sequence[LogEntry], durable: bool = False) -> None:
        """Add (or replace, by position) logged entries of ``job_id``: the new ones since the last save."""
        if not entries:
            return
        with self._transaction(durable) as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO log_entries (job_id, seq, step, loss, eval_loss, logged_at, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(job_id, e.seq, e.step, e.loss, e.eval_loss, e.logged_at, e.body()) for e in entries],
            )

    def truncate_log(self, job_id: str, keep: int) -> None:
        """Forget entries from position ``keep`` on: a resumed run logs them again from its checkpoint."""
        with self._transaction(durable=False) as connection:
            connection.execute("DELETE FROM log_entries WHERE job_id = ? AND seq >= ?", (job_id, keep))

    def log_series(
        self, job_id: str, max_points: int | None = None, having: str | None = None
    ) -> list[dict[str, Any]]:
        """The job's logged entries, oldest first, each with ``step`` (and ``logged_at``, Unix seconds,
        when known); at most ``max_points`` of them, chosen by :func:`~.history.downsample` on the
        training loss (the eval loss when no training loss was logged), keeping the checkpoints' steps.
        ``having`` (``"loss"`` or ``"eval_loss"``) keeps only entries with that finite loss."""
        if having not in (None, "loss", "eval_loss"):
            raise ValueError(f"having={having!r}: use 'loss', 'eval_loss' or None")
        connection = self._connection()
        where = "job_id = ?" + (f" AND {having} IS NOT NULL" if having else "")
        rows = connection.execute(
            f"SELECT seq, step, COALESCE(loss, eval_loss) FROM log_entries WHERE {where} ORDER BY seq",
            (job_id,),
        ).fetchall()
        checkpoints = [
            step for (step,) in connection.execute("SELECT step FROM records WHERE job_id = ?", (job_id,))
        ]
        chosen = downsample([row[1] for row in rows], [row[2] for row in rows], max_points, checkpoints)
        wanted = [rows[index][0] for index in chosen]
        series = []
        for start in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
            part = wanted[start : start + 500]
            series += connection.execute(
                f"SELECT body, logged_at FROM log_entries WHERE job_id = ? AND seq IN ({_marks(part)})"
                " ORDER BY seq",
                (job_id, *part),
            ).fetchall()
        return [_logged(body, logged_at) for body, logged_at in series]

    def log_length(self, job_id: str, before_step: int | None = None) -> int:
        """The position after the job's last stored entry (of a step before ``before_step``, if given)."""
        query = "SELECT MAX(seq) FROM log_entries WHERE job_id = ?"
        params: list[Any] = [job_id]
        if before_step is not None:
            query, params = query + " AND step < ?", [job_id, before_step]
        row = self._connection().execute(query, params).fetchone()
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    # -- received from other processes (the registry server) ----------------------------------------

    def receive(self, submissions: Sequence[Submission]) -> list[list[Receipt] | None]:
        """Store documents sent by other jobs, keeping their own revisions, in one durable transaction.

        Per submission, in order: a known idempotency key with the same digest changes nothing and
        gives the receipts answered the first time; with another digest it gives None (refused, nothing
        stored). A record is stored when its ``metadata.revision`` is newer than the one held; a job
        snapshot when it is newer by update time (in whole seconds, as ``TrainingJobDetail`` has it),
        then by a finished status over a running one, then by step. Older or equal ones change nothing.
        Received documents are not queued for any sink.
        """
        now = time.time()
        answers: list[list[Receipt] | None] = []
        with self._transaction() as connection:
            if now - self._keys_purged_at > RECEIVED_KEY_PURGE_SECONDS:
                connection.execute(
                    "DELETE FROM received_keys WHERE received_at < ?", (now - RECEIVED_KEY_SECONDS,)
                )
                self._keys_purged_at = now
            for submission in submissions:
                if submission.key is not None:
                    row = connection.execute(
                        "SELECT digest, receipts FROM received_keys WHERE key = ?", (submission.key,)
                    ).fetchone()
                    if row is not None:
                        answers.append(_receipts(row[1]) if row[0] == submission.digest else None)
                        continue
                receipts = [
                    _receive_record(connection, document)
                    if isinstance(document, CheckpointRecord)
                    else _receive_job(connection, document)
                    for document in submission.documents
                ]
                if submission.key is not None:
                    connection.execute(
                        "INSERT INTO received_keys (key, digest, receipts, received_at) VALUES (?, ?, ?, ?)",
                        (submission.key, submission.digest, _receipts_json(receipts), now),
                    )
                answers.append(receipts)
        return answers

    def job_ids(self) -> list[str]:
        """Every job the store knows, from its job snapshots or its records."""
        rows = self._connection().execute("SELECT id FROM jobs UNION SELECT DISTINCT job_id FROM records")
        return [job_id for (job_id,) in rows]

    def job_summary(self, job_id: str) -> JobSummary:
        count, first, last = (
            self._connection()
            .execute(
                "SELECT COUNT(*), MIN(created_at), MAX(updated_at) FROM records WHERE job_id = ?", (job_id,)
            )
            .fetchone()
        )
        return JobSummary(job_id, count, first, last)

    def record_ids(self, job_id: str) -> list[str]:
        rows = self._connection().execute("SELECT id FROM records WHERE job_id = ?", (job_id,))
        return [record_id for (record_id,) in rows]

    def records_newest_first(
        self, job_id: str | None, limit: int, before: CheckpointRecord | None = None
    ) -> list[StoredRecord]:
        """Up to ``limit`` records of ``job_id`` (of every job when None), highest step first, after
        ``before`` in that order."""
        conditions: list[str] = []
        params: list[Any] = []
        if job_id is not None:
            conditions.append("job_id = ?")
            params.append(job_id)
        if before is not None:
            conditions.append("(step, id) < (?, ?)")
            params += [before.training.step, before.id]
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._connection().execute(
            f"SELECT body, revision FROM records{where} ORDER BY step DESC, id DESC LIMIT ?", [*params, limit]
        )
        return [StoredRecord(CheckpointRecord.from_json(body), revision) for body, revision in rows]

    def last_ready(self, job_id: str) -> CheckpointRecord | None:
        """The job's highest-step checkpoint that is available and ready for inference, if any."""
        row = (
            self._connection()
            .execute(
                "SELECT body FROM records WHERE job_id = ?"
                " AND json_extract(body, '$.status.status') = 'available'"
                " AND json_extract(body, '$.status.metadata.inferenceReady')"
                " ORDER BY step DESC, id DESC LIMIT 1",
                (job_id,),
            )
            .fetchone()
        )
        return None if row is None else CheckpointRecord.from_json(row[0])

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
                " LEFT JOIN records r ON o.kind = 'record' AND r.id = o.record_id"
                " LEFT JOIN jobs j ON o.kind = 'job' AND j.id = o.record_id"
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

    def extend_claims(self, sink: str, owner: str, until: float) -> set[str]:
        """Hold ``owner``'s claims on ``sink`` until ``until``; the record ids it still holds."""
        with self._transaction(durable=False) as connection:
            connection.execute(
                "UPDATE outbox SET claimed_until = ? WHERE sink = ? AND claimed_by = ?", (until, sink, owner)
            )
            rows = connection.execute(
                "SELECT record_id FROM outbox WHERE sink = ? AND claimed_by = ?", (sink, owner)
            ).fetchall()
        return {record_id for (record_id,) in rows}

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

    def release(self, sink: str, owner: str | None = None) -> int:
        """Drop claims on ``sink``: those of ``owner``, or of every owner that is no longer running;
        how many claims were dropped."""
        drop = "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE sink = ? AND claimed_by = ?"
        with self._transaction(durable=False) as connection:
            if owner is not None:
                return connection.execute(drop, (sink, owner)).rowcount
            owners = connection.execute(
                "SELECT DISTINCT claimed_by FROM outbox WHERE sink = ? AND claimed_by IS NOT NULL", (sink,)
            ).fetchall()
            return sum(
                connection.execute(drop, (sink, name)).rowcount
                for (name,) in owners
                if not owner_is_alive(name)
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


def _file_identity(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` names now (device, inode), or None when there is none."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return "database or disk is full" in str(error)


def _set_up(
    connection: sqlite3.Connection, path: Path, journal_mode: str | None, attempts: int = 200
) -> None:
    """Journal mode (None: leave it), durability, tables and schema version. Switching the journal mode
    does not wait on SQLite's busy timeout when another connection holds a lock, so that step is retried
    for up to ~10 s."""
    connection.execute("PRAGMA synchronous=FULL")
    for attempt in range(attempts):
        try:
            if journal_mode and connection.execute("PRAGMA journal_mode").fetchone()[0] != journal_mode:
                connection.execute(f"PRAGMA journal_mode={journal_mode}")
            _migrate(connection, path)
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


# -- schema versions (see the module docstring) ------------------------------------------------------


def add_column(connection: sqlite3.Connection, table: str, column: str, definition: str) -> bool:
    """Add ``column`` to ``table`` unless it has it already, or the table does not exist yet (a new
    store, which ``_SCHEMA`` then creates whole): what a migration step adding a column calls. Whether
    it added it (a step may then fill it for the existing rows)."""
    columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
    if not columns or column in columns:
        return False
    connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    return True


def _first_versioned_release(connection: sqlite3.Connection) -> None:
    """0 -> 1: the tables of the releases before versions are unchanged; the store now says its version."""


def _outbox_says_what_it_delivers(connection: sqlite3.Connection) -> None:
    """1 -> 2: the outbox says what it delivers (``kind``); the job ids already in it are jobs."""
    if add_column(connection, "outbox", "kind", "TEXT NOT NULL DEFAULT 'record'"):
        connection.execute("UPDATE outbox SET kind = 'job' WHERE record_id IN (SELECT id FROM jobs)")


#: Step ``n`` (1-based) takes a store from version ``n - 1`` to ``n``. Append only.
_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _first_versioned_release,
    _outbox_says_what_it_delivers,
)
SCHEMA_VERSION = len(_MIGRATIONS)


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    """Bring the store to :data:`SCHEMA_VERSION`, in one transaction; refuse a newer store."""
    version = schema_version(connection)
    _refuse_newer(version, path)
    if version == SCHEMA_VERSION:
        connection.executescript(_SCHEMA)  # tables added since: no write when they all exist
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = schema_version(connection)  # another process may have upgraded it meanwhile
        _refuse_newer(version, path)
        for step in _MIGRATIONS[version:]:
            step(connection)
        for statement in _statements(_SCHEMA):
            connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def schema_version(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def _refuse_newer(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"the checkpoint-records store {path} was written by a newer release (schema version "
            f"{version}; this release reads up to {SCHEMA_VERSION}). Upgrade checkpoint-records "
            "(pip install -U checkpoint-records), or point store=/CHECKPOINT_RECORDS_HOME elsewhere; "
            "the store was left untouched."
        )


def _statements(script: str) -> list[str]:
    """The statements of an SQL script, one by one (``executescript`` would commit the transaction)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


def _marks(values: Sequence[Any]) -> str:
    """SQL placeholders for ``values``."""
    return ",".join("?" * len(values))


def _queue(
    connection: sqlite3.Connection,
    verb: str,
    sinks: Sequence[str],
    record_id: str,
    revision: int,
    kind: DocumentKind = "record",
) -> None:
    now = time.time()
    connection.executemany(
        f"{verb} INTO outbox (sink, record_id, revision, state, attempts, next_attempt_at, updated_at, kind)"
        " VALUES (?, ?, ?, 'pending', 0, ?, ?, ?)",
        [(sink, record_id, revision, now, now, kind) for sink in sinks],
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


def _logged(body: str, logged_at: float | None) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(body)
    if logged_at is not None:
        entry["logged_at"] = logged_at
    return entry


def _receive_record(connection: sqlite3.Connection, record: CheckpointRecord) -> Receipt:
    revision = record.metadata.revision
    row = connection.execute("SELECT revision FROM records WHERE id = ?", (record.id,)).fetchone()
    if row is not None and int(row[0]) >= revision:
        return Receipt(record.id, "record", int(row[0]), stored=False)
    _write_record(connection, record, revision)
    return Receipt(record.id, "record", revision, stored=True)


def _write_record(connection: sqlite3.Connection, record: CheckpointRecord, revision: int) -> None:
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


def _job_order(job: JobSnapshot) -> tuple[int, bool, int]:
    return (int(job.updated_at), job.status in FINISHED_JOB_STATUSES, job.global_step)


def _receive_job(connection: sqlite3.Connection, job: JobSnapshot) -> Receipt:
    row = connection.execute("SELECT body, revision FROM jobs WHERE id = ?", (job.id,)).fetchone()
    if row is not None and _job_order(JobSnapshot.model_validate_json(row[0])) >= _job_order(job):
        return Receipt(job.id, "job", int(row[1]), stored=False)
    revision = 1 if row is None else int(row[1]) + 1
    connection.execute(
        "INSERT OR REPLACE INTO jobs (id, name, revision, status, owner, body, updated_at)"
        " VALUES (?, ?, ?, ?, NULL, ?, ?)",
        (job.id, job.name, revision, job.status, job.model_dump_json(), time.time()),
    )
    return Receipt(job.id, "job", revision, stored=True)


def _receipts_json(receipts: Sequence[Receipt]) -> str:
    return json.dumps([[r.id, r.kind, r.revision, r.stored] for r in receipts], separators=(",", ":"))


def _receipts(text: str) -> list[Receipt]:
    return [Receipt(*item) for item in json.loads(text)]


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

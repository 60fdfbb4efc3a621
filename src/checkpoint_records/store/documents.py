"""Records and job snapshots: each stored with its revision and queued for delivery in one transaction.

A record changes in one of two ways. :meth:`Documents.put` stores what was built from a checkpoint (a
new record, or a re-emitted one: the same content is a no-op, changed content the next revision).
:meth:`Documents.update_record` revises a stored one: it reads the record, applies the caller's change
and writes the next revision inside one write transaction, so concurrent writers (rotation, the best
mark, the upload's state; threads or processes) each revise the revision the one before wrote, and no
change is lost. Nothing else writes a record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..job import JobSnapshot
from ..record import CheckpointRecord
from ..validation import storable
from .database import Database, readable
from .dialect import Connection
from .outbox import queue_deliveries

#: A revision of a record, from the one stored.
Change = Callable[[CheckpointRecord], CheckpointRecord]
#: The sinks a new revision is queued for: given, or chosen from the old and the new revision.
Sinks = Sequence[str] | Callable[[CheckpointRecord, CheckpointRecord], Sequence[str]]


@dataclass(frozen=True)
class StoredRecord:
    record: CheckpointRecord
    revision: int


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


class Documents(Database):
    """Records and job snapshots, with their revisions."""

    def put(self, record: CheckpointRecord, sinks: Sequence[str] = (), durable: bool = True) -> StoredRecord:
        """Store ``record`` and queue it for ``sinks``, durably, in one transaction.

        The same content again is a no-op (a re-emitted record is recognised by its deterministic id);
        changed content becomes the next revision, keeping the first ``createdAt``. On a full disk the
        record is kept in memory until there is room (and returned as given). Text that is not valid
        Unicode is stored escaped (:func:`~..validation.storable`).
        """
        record = storable(record)
        kept = StoredRecord(record, record.metadata.revision or 1)
        return self.write(lambda: self._put(record, sinks, durable), kept)

    def _put(self, record: CheckpointRecord, sinks: Sequence[str], durable: bool) -> StoredRecord:
        with self.transaction(durable) as connection:
            row = connection.execute(
                "SELECT body, revision FROM records WHERE id = ?", (record.id,)
            ).fetchone()
            existing = None if row is None else read_record(row[0], record.id)
            if existing is not None and _content(existing) == _content(record):
                queue_deliveries(connection, sinks, record.id, row[1], replace=False)  # a sink added since
                return StoredRecord(existing, row[1])
            # A new record, the next revision, or one an older release stored unreadable: replaced.
            revision = 1 if row is None else int(row[1]) + 1
            created_at = (existing or record).status.created_at
            record = _as_revision(record, revision, created_at=created_at)
            write_record(connection, record, revision)
            queue_deliveries(connection, sinks, record.id, revision)
        return StoredRecord(record, revision)

    def update_record(
        self, record_id: str, change: Change, sinks: Sinks = (), durable: bool = True
    ) -> StoredRecord | None:
        """Revise the stored record ``record_id`` by ``change`` atomically and queue the new revision
        for ``sinks``; the stored revision, or None when there is no such record or nothing changed.

        ``change`` gets the record as stored now and returns it changed (a pure function: on a full disk
        it is applied again, to the record as it is then, once there is room).
        """
        revised = self.update_records([record_id], change, sinks, durable)
        return revised[0] if revised else None

    def update_records(
        self, record_ids: Sequence[str], change: Change, sinks: Sinks = (), durable: bool = True
    ) -> list[StoredRecord]:
        """:meth:`update_record` for each of ``record_ids``, in one transaction; the revisions written."""

        if not record_ids:
            return []

        def write() -> list[StoredRecord]:
            with self.transaction(durable) as connection:
                revised = [revise(connection, record_id, change, sinks) for record_id in record_ids]
            return [stored for stored in revised if stored is not None]

        return self.write(write, [])

    def update_job_records(
        self, job_id: str, choose: Callable[[list[CheckpointRecord]], Change], sinks: Sinks = ()
    ) -> list[StoredRecord]:
        """Revise the records of ``job_id`` by the change ``choose`` makes of all of them as stored now
        (which one is the best, say), in one transaction; the revisions written."""

        def write() -> list[StoredRecord]:
            with self.transaction() as connection:
                rows = connection.execute(
                    "SELECT id, body FROM records WHERE job_id = ?", (job_id,)
                ).fetchall()
                records = [read_record(body, record_id) for record_id, body in rows]
                change = choose([record for record in records if record is not None])
                revised = [revise(connection, record_id, change, sinks) for record_id, _ in rows]
            return [stored for stored in revised if stored is not None]

        return self.write(write, [])

    def get(self, name_or_id: str) -> StoredRecord | None:
        """A record by id or name (the newest one when several jobs used the same name)."""
        row = (
            self.read()
            .execute(
                "SELECT id, body, revision FROM records WHERE id = ? OR name = ?"
                " ORDER BY created_at DESC LIMIT 1",
                (name_or_id, name_or_id),
            )
            .fetchone()
        )
        return next(iter(stored_records([row])), None) if row is not None else None

    def find(self, name_or_id: str) -> list[StoredRecord]:
        """Every record with this id or name, newest first: names repeat across jobs with one run_name."""
        rows = self.read().execute(
            "SELECT id, body, revision FROM records WHERE id = ? OR name = ? ORDER BY created_at DESC",
            (name_or_id, name_or_id),
        )
        return stored_records(rows)

    def records(self, job_id: str | None = None) -> list[StoredRecord]:
        """All records, oldest first (optionally of one job)."""
        query = "SELECT id, body, revision FROM records"
        params: tuple[str, ...] = ()
        if job_id is not None:
            query, params = query + " WHERE job_id = ?", (job_id,)
        rows = self.read().execute(query + " ORDER BY created_at, step", params).fetchall()
        return stored_records(rows)

    def record_revisions(self, record_id: str) -> list[RecordRevision]:
        """The revisions of a record that this store saw written, oldest first."""
        rows = self.read().execute(
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

    # -- jobs --------------------------------------------------------------------------------------

    def put_job(
        self, job: JobSnapshot, sinks: Sequence[str] = (), owner: str | None = None, durable: bool = True
    ) -> int:
        """Store the job's latest snapshot and queue it for ``sinks``; returns its revision.

        ``owner`` (see :func:`~.leases.claim_owner`) names the process running the job, so a later run
        can tell that an attempt which never finished was interrupted. Unchanged content is a no-op. On a
        full disk it is kept in memory until there is room (revision 0 until then). Text that is not
        valid Unicode is stored escaped.
        """
        job = storable(job)
        return self.write(lambda: self._put_job(job, sinks, owner, durable), 0)

    def _put_job(self, job: JobSnapshot, sinks: Sequence[str], owner: str | None, durable: bool) -> int:
        body = job.model_dump_json()
        with self.transaction(durable) as connection:
            row = connection.execute("SELECT body, revision FROM jobs WHERE id = ?", (job.id,)).fetchone()
            if row is not None and _job_content(row[0]) == _job_content(body):
                return int(row[1])
            revision = 1 if row is None else int(row[1]) + 1
            write_job(connection, job, body, revision, owner)
            queue_deliveries(connection, sinks, job.id, revision, "job")
        return revision

    def job(self, job_id: str) -> StoredJob | None:
        row = (
            self.read()
            .execute("SELECT id, body, revision, owner FROM jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        return None if row is None else stored_job(*row)

    def jobs(self) -> list[StoredJob]:
        """Every job, oldest update first (one the store cannot read is left out, said once)."""
        rows = self.read().execute("SELECT id, body, revision, owner FROM jobs ORDER BY updated_at")
        return [job for job in (stored_job(*row) for row in rows) if job is not None]


def read_record(body: str, record_id: str) -> CheckpointRecord | None:
    """A stored record, repaired or left out (None) when an older release stored what this one refuses."""
    return readable(CheckpointRecord, body, f"record {record_id}")


def stored_records(rows: Iterable[tuple[str, str, int]]) -> list[StoredRecord]:
    """The records of ``(id, body, revision)`` rows; those the store cannot read are left out, said once."""
    found = []
    for record_id, body, revision in rows:
        record = read_record(body, record_id)
        if record is not None:
            found.append(StoredRecord(record, revision))
    return found


def stored_job(job_id: str, body: str, revision: int, owner: str | None) -> StoredJob | None:
    """A job's stored snapshot, repaired or left out (None) when an older release stored what this one
    refuses."""
    job = readable(JobSnapshot, body, f"job {job_id}")
    return None if job is None else StoredJob(job, revision, owner)


def revise(connection: Connection, record_id: str, change: Change, sinks: Sinks) -> StoredRecord | None:
    """Within the caller's write transaction: the record's next revision by ``change``, written and
    queued; None when there is no such record or nothing changed."""
    row = connection.execute("SELECT body, revision FROM records WHERE id = ?", (record_id,)).fetchone()
    current = None if row is None else read_record(row[0], record_id)
    if row is None or current is None:
        return None
    changed = storable(change(current))
    if _content(changed) == _content(current):
        return None
    revision = int(row[1]) + 1
    record = _as_revision(changed, revision, created_at=current.status.created_at)
    write_record(connection, record, revision)
    queue_deliveries(connection, sinks(current, record) if callable(sinks) else sinks, record_id, revision)
    return StoredRecord(record, revision)


_RECORD_COLUMNS = ("id", "name", "job_id", "step", "revision", "body", "created_at", "updated_at")
_JOB_COLUMNS = ("id", "name", "revision", "status", "owner", "body", "updated_at")


def write_record(connection: Connection, record: CheckpointRecord, revision: int) -> None:
    connection.execute(
        connection.dialect.replace_into("records", _RECORD_COLUMNS, ("id",)),
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


def write_job(connection: Connection, job: JobSnapshot, body: str, revision: int, owner: str | None) -> None:
    """Write revision ``revision`` of ``job`` (``body`` is its JSON), run by ``owner`` if known."""
    connection.execute(
        connection.dialect.replace_into("jobs", _JOB_COLUMNS, ("id",)),
        (job.id, job.name, revision, job.status, owner, body, time.time()),
    )


def _content(record: CheckpointRecord) -> str:
    """The record's content, without what changes on every write (timestamps and revision)."""
    data = record.to_dict()
    data["metadata"].pop("revision", None)
    data["status"].pop("createdAt", None)
    data["status"].pop("updatedAt", None)
    return json.dumps(data, sort_keys=True)


def _job_content(body: str) -> str | None:
    """A job snapshot's content without its update time (None for a body no release could have read)."""
    try:
        data = json.loads(body)
        data.pop("updated_at", None)
        return json.dumps(data, sort_keys=True)
    except (ValueError, RecursionError, AttributeError):
        return None


def _as_revision(record: CheckpointRecord, revision: int, created_at: str) -> CheckpointRecord:
    return record.model_copy(
        update={
            "metadata": record.metadata.model_copy(update={"revision": revision}),
            "status": record.status.model_copy(update={"created_at": created_at}),
        }
    )

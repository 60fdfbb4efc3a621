"""Removing a job or one record from the store (``checkpoint-records forget``), with everything that hangs
off it, in one transaction: a reader sees the job whole or not at all."""

from __future__ import annotations

from dataclasses import dataclass

from .database import Database
from .dialect import Connection

#: The rows that belong to a record, by table and the column naming it (the outbox holds job
#: deliveries too, under the job's id).
_RECORD_ROWS = (
    ("outbox", "record_id"),
    ("uploads", "record_id"),
    ("evaluations", "record_id"),
    ("record_revisions", "id"),
    ("received_from", "id"),
    ("records", "id"),
)


@dataclass(frozen=True)
class Forgotten:
    """What a ``forget`` removed, in numbers, for the message that says so."""

    records: int
    deliveries: int
    uploads: int
    evaluations: int
    log_entries: int


class Forgetting(Database):
    """Deletes a job (its snapshot, records, log and its pages, where each came from, and their queues) or
    one record (and its queues)."""

    def forget_job(self, job_id: str) -> Forgotten:
        """Remove the job ``job_id`` and all it holds."""
        with self.transaction() as connection:
            record_ids = [
                row[0] for row in connection.execute("SELECT id FROM records WHERE job_id = ?", (job_id,))
            ]
            counts = _forget_records(connection, record_ids)
            pages = [
                row[0] for row in connection.execute("SELECT id FROM log_pages WHERE job_id = ?", (job_id,))
            ]
            for document_id in [job_id, *pages]:  # the job and the pages of its log travel too
                counts["outbox"] += connection.execute(
                    "DELETE FROM outbox WHERE record_id = ?", (document_id,)
                ).rowcount
                connection.execute("DELETE FROM received_from WHERE id = ?", (document_id,))
            connection.execute("DELETE FROM log_pages WHERE job_id = ?", (job_id,))
            log = connection.execute("DELETE FROM log_entries WHERE job_id = ?", (job_id,)).rowcount
            connection.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            connection.execute("DELETE FROM job_checkpoints WHERE job_id = ?", (job_id,))
        return Forgotten(counts["records"], counts["outbox"], counts["uploads"], counts["evaluations"], log)

    def forget_record(self, record_id: str) -> Forgotten:
        """Remove the record ``record_id``, its revisions and its queued deliveries, uploads and
        evaluations; its job stays."""
        with self.transaction() as connection:
            job = connection.execute("SELECT job_id FROM records WHERE id = ?", (record_id,)).fetchone()
            counts = _forget_records(connection, [record_id])
            if job is not None:
                _recount(connection, job[0])
        return Forgotten(counts["records"], counts["outbox"], counts["uploads"], counts["evaluations"], 0)


def _forget_records(connection: Connection, record_ids: list[str]) -> dict[str, int]:
    """Delete ``record_ids`` from every table that holds rows of theirs; the rows removed per table."""
    counts = dict.fromkeys((table for table, _ in _RECORD_ROWS), 0)
    for record_id in record_ids:
        for table, column in _RECORD_ROWS:
            counts[table] += connection.execute(
                f"DELETE FROM {table} WHERE {column} = ?", (record_id,)
            ).rowcount
    return counts


def _recount(connection: Connection, job_id: str) -> None:
    """Count ``job_id``'s checkpoints afresh in ``job_checkpoints`` (the trigger that keeps it counts
    records in, never out): its row goes with its last record, so a job known by its records alone is
    gone with them."""
    connection.execute("DELETE FROM job_checkpoints WHERE job_id = ?", (job_id,))
    connection.execute(
        "INSERT INTO job_checkpoints (job_id, checkpoints, first_created_at, last_updated_at)"
        " SELECT job_id, COUNT(*), MIN(created_at), MAX(updated_at) FROM records WHERE job_id = ?"
        " GROUP BY job_id",
        (job_id,),
    )

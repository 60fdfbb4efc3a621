"""Removing a job or one record from the store (``checkpoint-records forget``), with everything that hangs
off it, in one transaction: a reader sees the job whole or not at all."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .database import Database

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
        return Forgotten(counts["records"], counts["outbox"], counts["uploads"], counts["evaluations"], log)

    def forget_record(self, record_id: str) -> Forgotten:
        """Remove the record ``record_id``, its revisions and its queued deliveries, uploads and
        evaluations; its job stays."""
        with self.transaction() as connection:
            counts = _forget_records(connection, [record_id])
        return Forgotten(counts["records"], counts["outbox"], counts["uploads"], counts["evaluations"], 0)


def _forget_records(connection: sqlite3.Connection, record_ids: list[str]) -> dict[str, int]:
    """Delete ``record_ids`` from every table that holds rows of theirs; the rows removed per table."""
    counts = dict.fromkeys((table for table, _ in _RECORD_ROWS), 0)
    for record_id in record_ids:
        for table, column in _RECORD_ROWS:
            counts[table] += connection.execute(
                f"DELETE FROM {table} WHERE {column} = ?", (record_id,)
            ).rowcount
    return counts

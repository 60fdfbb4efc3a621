"""What the registry server and the web page read: pages of records, and jobs in numbers, each list in a
constant number of queries whatever its length (never one query per row)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..record import CheckpointRecord
from .database import Database, body_field
from .documents import StoredJob, StoredRecord, read_record, stored_job, stored_records


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
class JobSummary:
    """A job's checkpoints at a glance: how many, the first creation and last update (ISO 8601)."""

    job_id: str
    checkpoints: int
    first_created_at: str | None
    last_updated_at: str | None


#: The newest checkpoint of each job, and its newest one that is available and ready for inference.
_NEWEST_AND_READY = f"""
SELECT value,
    (SELECT id || ' ' || body FROM records WHERE job_id = value ORDER BY step DESC, id DESC LIMIT 1),
    (SELECT id || ' ' || body FROM records WHERE job_id = value
        AND {body_field("$.status.status")} = 'available'
        AND {body_field("$.status.metadata.inferenceReady")} ORDER BY step DESC, id DESC LIMIT 1)
FROM json_each(?)
"""


class Queries(Database):
    """Read-only queries for lists and pages."""

    def checkpoint_stats(self, job_id: str | None = None) -> list[CheckpointStats]:
        """Per job (or for ``job_id`` only): checkpoints, how many ready, best and last eval loss."""
        eval_loss = body_field("$.status.metadata.evalLoss")
        only = "job_id = ?" if job_id is not None else "1"
        params = (job_id,) if job_id is not None else ()
        connection = self.read()
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
            f"SELECT job_id, {body_field('$.metadata.jobName')}, COUNT(*),"
            f" TOTAL({body_field('$.status.metadata.inferenceReady')}), MIN({eval_loss}), MAX(step),"
            f" MIN(created_at), MAX(updated_at) FROM records WHERE {only} GROUP BY job_id",
            params,
        )
        return [
            CheckpointStats(job, name, count, int(ready), best, last_eval.get(job), step, first, last)
            for job, name, count, ready, best, step, first, last in rows
        ]

    def job_ids(self) -> list[str]:
        """Every job the store knows, from its job snapshots or its records."""
        rows = self.read().execute("SELECT id FROM jobs UNION SELECT DISTINCT job_id FROM records")
        return [job_id for (job_id,) in rows]

    def jobs_named(self, text: str) -> list[str]:
        """The jobs ``text`` names, as ``list --job`` reads it: a job id, a job name, or a prefix of 4
        characters or more of an id."""
        rows = self.read().execute(
            f"SELECT job_id FROM records WHERE job_id = ?1 OR {body_field('$.metadata.jobName')} = ?1"
            " OR (length(?1) >= 4 AND substr(job_id, 1, length(?1)) = ?1)"
            " UNION SELECT id FROM jobs WHERE id = ?1 OR name = ?1"
            " OR (length(?1) >= 4 AND substr(id, 1, length(?1)) = ?1)",
            (text,),
        )
        return sorted(job_id for (job_id,) in rows)

    def job_summaries(self, job_id: str | None = None) -> list[tuple[StoredJob | None, JobSummary]]:
        """Every job the store knows (or ``job_id`` only, if known): its snapshot when one was stored,
        and its checkpoints at a glance; one query."""
        only = "= ?" if job_id is not None else "IS NOT NULL"
        rows = self.read().execute(
            "WITH summary AS (SELECT job_id, COUNT(*) AS checkpoints, MIN(created_at) AS first,"
            f" MAX(updated_at) AS last FROM records WHERE job_id {only} GROUP BY job_id),"
            f" known AS (SELECT id AS job_id FROM jobs WHERE id {only}"
            " UNION SELECT job_id FROM summary)"
            " SELECT known.job_id, j.body, j.revision, j.owner, COALESCE(s.checkpoints, 0), s.first, s.last"
            " FROM known LEFT JOIN jobs j ON j.id = known.job_id LEFT JOIN summary s ON s.job_id = known.job_id",
            (job_id, job_id) if job_id is not None else (),
        )
        return [
            (
                None if body is None else stored_job(known, body, revision, owner),
                JobSummary(known, checkpoints, first, last),
            )
            for known, body, revision, owner, checkpoints, first, last in rows
        ]

    def newest_and_ready(
        self, job_ids: list[str]
    ) -> dict[str, tuple[CheckpointRecord | None, CheckpointRecord | None]]:
        """For each of ``job_ids``: its highest-step checkpoint, and its highest-step one that is
        available and ready for inference (None when there is none); one query."""
        rows = self.read().execute(_NEWEST_AND_READY, (json.dumps(job_ids),))
        return {job_id: (_parsed(newest), _parsed(ready)) for job_id, newest, ready in rows}

    def jobs_writing_to(self, directory: str) -> list[tuple[str, str]]:
        """The jobs (id, name) that wrote checkpoints in ``directory`` (an absolute path): whose job
        document names it, or whose records lie in it; the latest updated first."""
        inside = directory.rstrip("/") + "/"
        connection = self.read()
        documented = connection.execute(
            f"SELECT id, name FROM jobs WHERE {body_field('$.directory')} = ? ORDER BY updated_at DESC",
            (directory,),
        ).fetchall()
        recorded = connection.execute(
            f"SELECT job_id, {body_field('$.metadata.jobName')} FROM records"
            f" WHERE substr({body_field('$.spec.directory')}, 1, length(?1)) = ?1"
            " GROUP BY job_id ORDER BY MAX(updated_at) DESC",
            (inside,),
        ).fetchall()
        return list(dict.fromkeys((job_id, name) for job_id, name in [*documented, *recorded]))

    def recorded_directories(self, directories: list[str]) -> set[str]:
        """Which of ``directories`` (absolute paths) a record of any job already describes: one checkpoint
        folder is one record, whoever recorded it."""
        rows = self.read().execute(
            f"SELECT {body_field('$.spec.directory')} FROM records"
            f" WHERE {body_field('$.spec.directory')} IN (SELECT value FROM json_each(?))",
            (json.dumps(directories),),
        )
        return {directory for (directory,) in rows}

    def document_ids(self, job_ids: list[str]) -> list[str]:
        """The ids of every document of ``job_ids`` the store holds: their records, jobs and log pages."""
        rows = self.read().execute(
            "WITH wanted AS (SELECT value FROM json_each(?))"
            " SELECT id FROM records WHERE job_id IN wanted UNION SELECT id FROM jobs WHERE id IN wanted"
            " UNION SELECT id FROM log_pages WHERE job_id IN wanted",
            (json.dumps(job_ids),),
        )
        return [document_id for (document_id,) in rows]

    def log_page_place(self, page_id: str) -> tuple[str, int] | None:
        """The job and page number of the log page ``page_id``, or None."""
        row = self.read().execute("SELECT job_id, page FROM log_pages WHERE id = ?", (page_id,)).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def record_ids(self, job_id: str) -> list[str]:
        rows = self.read().execute("SELECT id FROM records WHERE job_id = ?", (job_id,))
        return [record_id for (record_id,) in rows]

    def records_newest_first(
        self,
        job_id: str | None,
        limit: int,
        before: CheckpointRecord | None = None,
        available_only: bool = False,
    ) -> list[StoredRecord]:
        """Up to ``limit`` records of ``job_id`` (of every job when None), highest step first, after
        ``before`` in that order; ``available_only``: leave out those whose files are gone (rotated
        away) or never were (failed)."""
        conditions: list[str] = []
        params: list[Any] = []
        if available_only:
            conditions.append(f"{body_field('$.status.status')} = 'available'")
        if job_id is not None:
            conditions.append("job_id = ?")
            params.append(job_id)
        if before is not None:
            conditions.append("(step, id) < (?, ?)")
            params += [before.training.step, before.id]
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self.read().execute(
            f"SELECT id, body, revision FROM records{where} ORDER BY step DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return stored_records(rows)


def _parsed(row: str | None) -> CheckpointRecord | None:
    """A record from ``id || ' ' || body``."""
    if row is None:
        return None
    record_id, _, body = row.partition(" ")
    return read_record(body, record_id)

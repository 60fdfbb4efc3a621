"""What the registry server and the web page read: pages of records, and jobs in numbers, each list in a
constant number of queries whatever its length (never one query per row)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..record import CheckpointRecord
from .database import Database
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


class Queries(Database):
    """Read-only queries for lists and pages."""

    def checkpoint_stats(self, job_id: str | None = None) -> list[CheckpointStats]:
        """Per job (or for ``job_id`` only): checkpoints, how many ready, best and last eval loss."""
        dialect = self.dialect
        eval_loss = dialect.json_number("body", "$.status.metadata.evalLoss")
        only = "job_id = ?" if job_id is not None else "1 = 1"
        params = (job_id,) if job_id is not None else ()
        connection = self.read()
        last_eval = {
            job: loss
            for job, loss, _ in connection.execute(
                dialect.latest_per_job(eval_loss, f"{only} AND {eval_loss} IS NOT NULL"), params
            )
        }
        rows = connection.execute(
            f"SELECT job_id, MIN({dialect.json_text('body', '$.metadata.jobName')}), COUNT(*),"
            f" SUM(CASE WHEN {dialect.json_true('body', '$.status.metadata.inferenceReady')} THEN 1 ELSE 0 END),"
            f" MIN({eval_loss}), MAX(step), MIN(created_at), MAX(updated_at) FROM records WHERE {only}"
            " GROUP BY job_id",
            params,
        )
        return [
            CheckpointStats(job, name, count, int(ready), best, last_eval.get(job), step, first, last)
            for job, name, count, ready, best, step, first, last in rows
        ]

    def job_ids(self) -> list[str]:
        """Every job the store knows, from its job snapshots or its records."""
        rows = self.read().execute("SELECT id FROM jobs UNION SELECT job_id FROM job_checkpoints")
        return [job_id for (job_id,) in rows]

    def jobs_named(self, text: str) -> list[str]:
        """The jobs ``text`` names, as ``list --job`` reads it: a job id, a job name, or a prefix of 4
        characters or more of an id."""
        job_name = self.dialect.json_text("body", "$.metadata.jobName")
        prefix = text if len(text) >= 4 else None  # an id prefix: 4 characters or more
        rows = self.read().execute(
            f"SELECT job_id FROM records WHERE job_id = ? OR {job_name} = ?"
            " OR substr(job_id, 1, length(?)) = ?"
            " UNION SELECT id FROM jobs WHERE id = ? OR name = ? OR substr(id, 1, length(?)) = ?",
            (text, text, prefix, prefix, text, text, prefix, prefix),
        )
        return sorted(job_id for (job_id,) in rows)

    def job_summaries(self, job_id: str | None = None) -> list[tuple[StoredJob | None, JobSummary]]:
        """Every job the store knows (or ``job_id`` only, if known): its snapshot when one was stored,
        and its checkpoints at a glance (kept per job by the store: one row each); one query."""
        only = "= ?" if job_id is not None else "IS NOT NULL"
        rows = self.read().execute(
            f"WITH known AS (SELECT id AS job_id FROM jobs WHERE id {only}"
            f" UNION SELECT job_id FROM job_checkpoints WHERE job_id {only})"
            " SELECT known.job_id, j.body, j.revision, j.owner, COALESCE(s.checkpoints, 0),"
            " s.first_created_at, s.last_updated_at FROM known LEFT JOIN jobs j ON j.id = known.job_id"
            " LEFT JOIN job_checkpoints s ON s.job_id = known.job_id",
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
        dialect = self.dialect
        rows = self.read().execute(
            "SELECT value,"
            " (SELECT id || ' ' || body FROM records WHERE job_id = value ORDER BY step DESC, id DESC LIMIT 1),"
            f" (SELECT id || ' ' || body FROM records WHERE job_id = value AND {dialect.available_and_ready()}"
            f" ORDER BY step DESC, id DESC LIMIT 1) FROM {dialect.each()}",
            (json.dumps(job_ids),),
        )
        return {job_id: (_parsed(newest), _parsed(ready)) for job_id, newest, ready in rows}

    def jobs_writing_to(self, directory: str) -> list[tuple[str, str]]:
        """The jobs (id, name) that wrote checkpoints in ``directory`` (an absolute path): whose job
        document names it, or whose records lie in it; the latest updated first."""
        dialect = self.dialect
        inside = directory.rstrip("/") + "/"
        connection = self.read()
        documented = connection.execute(
            f"SELECT id, name FROM jobs WHERE {dialect.json_text('body', '$.directory')} = ?"
            " ORDER BY updated_at DESC",
            (directory,),
        ).fetchall()
        recorded = connection.execute(
            f"SELECT job_id, MIN({dialect.json_text('body', '$.metadata.jobName')}) FROM records"
            f" WHERE substr({dialect.json_text('body', '$.spec.directory')}, 1, length(?)) = ?"
            " GROUP BY job_id ORDER BY MAX(updated_at) DESC",
            (inside, inside),
        ).fetchall()
        return list(dict.fromkeys((job_id, name) for job_id, name in [*documented, *recorded]))

    def recorded_directories(self, directories: list[str]) -> set[str]:
        """Which of ``directories`` (absolute paths) a record of any job already describes: one checkpoint
        folder is one record, whoever recorded it."""
        directory = self.dialect.json_text("body", "$.spec.directory")
        rows = self.read().execute(
            f"SELECT {directory} FROM records WHERE {directory} IN ({self.dialect.listed()})",
            (json.dumps(directories),),
        )
        return {directory for (directory,) in rows}

    def document_ids(self, job_ids: list[str]) -> list[str]:
        """The ids of every document of ``job_ids`` the store holds: their records, jobs and log pages."""
        rows = self.read().execute(
            f"WITH wanted AS ({self.dialect.listed()})"
            " SELECT id FROM records WHERE job_id IN (SELECT value FROM wanted)"
            " UNION SELECT id FROM jobs WHERE id IN (SELECT value FROM wanted)"
            " UNION SELECT id FROM log_pages WHERE job_id IN (SELECT value FROM wanted)",
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
            conditions.append(f"{self.dialect.json_text('body', '$.status.status')} = 'available'")
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

"""What the registry server and the web page read: pages of records, and jobs in numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..record import CheckpointRecord
from .database import Database
from .documents import StoredRecord


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
        eval_loss = "json_extract(body, '$.status.metadata.evalLoss')"
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
            f"SELECT job_id, json_extract(body, '$.metadata.jobName'), COUNT(*),"
            f" TOTAL(json_extract(body, '$.status.metadata.inferenceReady')), MIN({eval_loss}), MAX(step),"
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

    def job_summary(self, job_id: str) -> JobSummary:
        count, first, last = (
            self.read()
            .execute(
                "SELECT COUNT(*), MIN(created_at), MAX(updated_at) FROM records WHERE job_id = ?", (job_id,)
            )
            .fetchone()
        )
        return JobSummary(job_id, count, first, last)

    def record_ids(self, job_id: str) -> list[str]:
        rows = self.read().execute("SELECT id FROM records WHERE job_id = ?", (job_id,))
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
        rows = self.read().execute(
            f"SELECT body, revision FROM records{where} ORDER BY step DESC, id DESC LIMIT ?", [*params, limit]
        )
        return [StoredRecord(CheckpointRecord.from_json(body), revision) for body, revision in rows]

    def last_ready(self, job_id: str) -> CheckpointRecord | None:
        """The job's highest-step checkpoint that is available and ready for inference, if any."""
        row = (
            self.read()
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

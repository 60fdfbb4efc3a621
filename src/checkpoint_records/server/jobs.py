"""A job as the read APIs see it: its latest snapshot when one was stored (by the callback, or received
as a ``TrainingJobDetail``), and what its checkpoint records say, for jobs that sent only records."""

from __future__ import annotations

from dataclasses import dataclass

from ..formats.openai import unix_seconds
from ..formats.training_job import JobSnapshot, JobStatus
from ..store import FINISHED_JOB_STATUSES, JobSummary, RecordStore


@dataclass(frozen=True)
class JobView:
    job_id: str
    snapshot: JobSnapshot | None
    summary: JobSummary

    @property
    def status(self) -> JobStatus | None:
        """The lifecycle status, or None when the job sent no job document."""
        return None if self.snapshot is None else self.snapshot.status

    @property
    def created_at(self) -> int:
        if self.snapshot is not None:
            return int(self.snapshot.created_at)
        return unix_seconds(self.summary.first_created_at) if self.summary.first_created_at else 0

    @property
    def finished_at(self) -> int | None:
        """When a finished job last changed; None while it runs (or when unknown)."""
        if self.snapshot is None or self.snapshot.status not in FINISHED_JOB_STATUSES:
            return None
        return int(self.snapshot.updated_at)


def job_view(store: RecordStore, job_id: str) -> JobView | None:
    """The job ``job_id``, or None when the store has neither its snapshot nor any of its records."""
    return next(iter(_views(store, job_id)), None)


def all_jobs(store: RecordStore) -> list[JobView]:
    """Every job, newest created first (one query, however many jobs)."""
    return sorted(_views(store), key=lambda view: (view.created_at, view.job_id), reverse=True)


def _views(store: RecordStore, job_id: str | None = None) -> list[JobView]:
    return [
        JobView(summary.job_id, None if stored is None else stored.job, summary)
        for stored, summary in store.job_summaries(job_id)
    ]

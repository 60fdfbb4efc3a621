"""Llama Stack's post-training read API, at base URL ``http://HOST:PORT``, as ``llama-stack-client`` 0.2.x
calls it (``client.post_training.job.list()``, ``.status(job_uuid=)``, ``.artifacts(job_uuid=)``).

Llama Stack 0.7 dropped the post-training API; 0.2.x is the last client line that has it. A job's
``job_uuid`` is its canonical job id; its checkpoints are those the ``llama-stack`` format lists (the
available ones, in step order). Status: Pending→scheduled, Running/Testing→in_progress,
Success→completed, Failed/TimedOut→failed, Cancelled→cancelled; ``in_progress`` when the job sent no
job document. ``scheduled_at``/``started_at`` are its creation, ``completed_at`` its end.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Query

from ..formats.llama_stack import job_artifacts
from ..formats.training_job import JobStatus
from ..store import RecordStore
from .jobs import JobView, all_jobs, job_view
from .problems import Problem

_STATUS: dict[JobStatus, str] = {
    "Pending": "scheduled",
    "Running": "in_progress",
    "Testing": "in_progress",
    "Success": "completed",
    "Failed": "failed",
    "TimedOut": "failed",
    "Cancelled": "cancelled",
}


def _iso(seconds: int | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def llama_stack_router(store: RecordStore) -> APIRouter:
    router = APIRouter(prefix="/post-training", tags=["llama-stack"])

    def found(job_uuid: str) -> JobView:
        view = job_view(store, job_uuid)
        if view is None:
            raise Problem(404, f"no post-training job {job_uuid!r}")
        return view

    def artifacts(view: JobView) -> dict[str, Any]:
        return job_artifacts(view.job_id, [stored.record for stored in store.records(view.job_id)])

    @router.get("/jobs", summary="List post-training jobs (Llama Stack)")
    def list_jobs() -> dict[str, Any]:
        return {"data": [{"job_uuid": view.job_id} for view in all_jobs(store)]}

    @router.get("/job/status", summary="A post-training job's status (Llama Stack)")
    def job_status(job_uuid: str = Query(..., min_length=1)) -> dict[str, Any]:
        view = found(job_uuid)
        return {
            "job_uuid": view.job_id,
            "status": "in_progress" if view.status is None else _STATUS[view.status],
            "scheduled_at": _iso(view.created_at),
            "started_at": _iso(view.created_at),
            "completed_at": _iso(view.finished_at),
            "resources_allocated": None,
            "checkpoints": artifacts(view)["checkpoints"],
        }

    @router.get("/job/artifacts", summary="A post-training job's checkpoints (Llama Stack)")
    def job_artifacts_route(job_uuid: str = Query(..., min_length=1)) -> dict[str, Any]:
        return artifacts(found(job_uuid))

    return router

"""The registry's own read API: FlexAI ``Checkpoint`` objects and the job's ``TrainingJobDetail``.

Records are data, never a file server: no route opens a path a record names.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from ..formats.flexai import FlexAIFormat
from ..formats.training_job import render_job
from ..store import RecordStore
from .paging import newest_first_page
from .problems import Problem

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def registry_router(store: RecordStore) -> APIRouter:
    router = APIRouter(tags=["registry"])

    @router.get(
        "/checkpoints",
        summary="Checkpoints as FlexAI Checkpoint objects, a page at a time, highest step first",
        description="`data` holds up to `limit` FlexAI `Checkpoint` objects; when `has_more`, pass "
        "`last_id` as `after` for the next page.",
    )
    def list_checkpoints(
        job: str | None = Query(None, description="only this job's (its id)"),
        after: str | None = Query(None, description="the `last_id` of the previous page (a record id)"),
        limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE, description="checkpoints in a page"),
    ) -> dict[str, Any]:
        previous = None
        if after is not None:
            stored = store.get(after)
            if (
                stored is None
                or stored.record.id != after
                or job not in (None, stored.record.metadata.job_id)
            ):
                raise Problem(404, f"no checkpoint {after!r} to continue after (after=)")
            previous = stored.record
        records, has_more = newest_first_page(store, job, limit, previous)
        renderer = FlexAIFormat()
        return {
            "data": [renderer.render(record) for record in records],
            "has_more": has_more,
            "last_id": records[-1].id if records else None,
        }

    @router.get("/checkpoints/{name_or_id}", summary="One checkpoint as a FlexAI Checkpoint object")
    def get_checkpoint(name_or_id: str) -> dict[str, Any]:
        stored = store.get(name_or_id)
        if stored is None:
            raise Problem(404, f"no checkpoint named {name_or_id!r}")
        return FlexAIFormat().render(stored.record)

    @router.get("/training-jobs/{job_id}", summary="A job as a TrainingJobDetail")
    def get_training_job(job_id: str) -> dict[str, Any]:
        stored = store.job(job_id)
        if stored is None:
            raise Problem(404, f"no job document for {job_id!r}")
        return render_job(stored.job)

    return router

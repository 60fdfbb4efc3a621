"""The registry's own read API: FlexAI ``Checkpoint`` objects and the job's ``TrainingJobDetail``.

Records are data, never a file server: no route opens a path a record names.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from ..formats.flexai import FlexAIFormat
from ..formats.training_job import render_job
from ..store import RecordStore
from .problems import Problem


def registry_router(store: RecordStore) -> APIRouter:
    router = APIRouter(tags=["registry"])

    @router.get("/checkpoints", summary="Checkpoints as FlexAI Checkpoint objects, oldest first")
    def list_checkpoints(
        job: str | None = Query(None, description="only this job's (its id)"),
    ) -> list[dict[str, Any]]:
        renderer = FlexAIFormat()
        return [renderer.render(stored.record) for stored in store.records(job)]

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

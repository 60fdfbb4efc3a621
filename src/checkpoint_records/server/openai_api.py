"""OpenAI's fine-tuning read API, at base URL ``http://HOST:PORT/v1``: the ``openai`` package's
``client.fine_tuning.jobs.list()``, ``.retrieve(id)`` and ``.checkpoints.list(id)`` work unchanged.

Ids are the ``openai`` format's derived ids (``ftjob-...``, ``ftckpt_...``); a job may also be named by
its canonical id. Each checkpoint is exactly what the ``openai`` format renders (``inspect --format
openai``). Pages are newest first (highest step), ``after`` is the last id of the previous page. As in
Llama Stack's artifacts, a checkpoint is listed only while it is ``available``: one rotated away (or that
failed) has no files to use, and neither object has a field to say so.

| ``fine_tuning.job`` field | from                                                                        |
|---------------------------|-----------------------------------------------------------------------------|
| ``status``                | the job's lifecycle: Pending→queued, Running/Testing→running, Success→succeeded, Failed/TimedOut→failed, Cancelled→cancelled; ``running`` when the job sent no job document |
| ``model``                 | the base model (the job's, else its newest checkpoint's)                     |
| ``created_at``/``finished_at`` | the job's creation, and its last update once finished (Unix seconds)   |
| ``fine_tuned_model``      | the model name of the job's last checkpoint that is available and ready     |
| ``hyperparameters``       | total batch size; ``n_epochs`` (an integer): the epochs the Trainer runs (its own count, which ``max_steps`` sets), else ``num_train_epochs`` when whole, or for a run ``max_steps`` planned the epochs it takes, a partial one counted whole (3.75 -> 4) |
| ``metadata``              | ``job_id`` and ``job_name``: the canonical id and name                      |
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from ..formats.openai import DEFAULT_ORG, OpenAIFormat, checkpoint_id
from ..formats.openai import fine_tuning_job_id as openai_job_id
from ..formats.training_job import JobStatus
from ..record import CheckpointRecord
from ..store import RecordStore
from .jobs import JobView, all_jobs, job_view
from .paging import newest_first_page
from .problems import Problem

OpenAIStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
_STATUS: dict[JobStatus, OpenAIStatus] = {
    "Pending": "queued",
    "Running": "running",
    "Testing": "running",
    "Success": "succeeded",
    "Failed": "failed",
    "TimedOut": "failed",
    "Cancelled": "cancelled",
}
#: Where the routes are under ``/v1``: errors there are answered in OpenAI's shape (``problems``).
OPENAI_PREFIX = "/fine_tuning"
#: Checkpoint ids remembered from pages served, so ``after`` finds its place without a scan.
_REMEMBERED_CHECKPOINTS = 200_000


def fine_tuning_job(
    view: JobView, newest: CheckpointRecord | None, ready: CheckpointRecord | None
) -> dict[str, Any]:
    """A ``fine_tuning.job`` object for ``view``; ``newest``/``ready``: its newest and last ready checkpoint."""
    snapshot, renderer = view.snapshot, OpenAIFormat()
    hyper = snapshot.hyper_parameters if snapshot is not None else {}
    status = "running" if view.status is None else _STATUS[view.status]
    name = snapshot.name if snapshot is not None else (newest.metadata.job_name if newest else view.job_id)
    model = (snapshot.base_model if snapshot is not None else "") or (newest.training.model if newest else "")
    failed = status == "failed"
    return {
        "object": "fine_tuning.job",
        "id": openai_job_id(view.job_id),
        "created_at": view.created_at,
        "finished_at": view.finished_at,
        "model": model or "unknown",
        "fine_tuned_model": None if ready is None else renderer.model_checkpoint_name(ready),
        "organization_id": DEFAULT_ORG,
        "status": status,
        "error": {"code": "training_failed", "message": f"the job ended {view.status}", "param": None}
        if failed
        else None,
        "hyperparameters": {
            "batch_size": hyper.get("total_train_batch_size", "auto"),
            "learning_rate_multiplier": "auto",
            "n_epochs": n_epochs(hyper, newest, snapshot.num_train_epochs if snapshot is not None else 0),
        },
        "method": {
            "type": "reinforcement" if snapshot and snapshot.training_technique == "GRPO" else "supervised"
        },
        "result_files": [],
        "seed": hyper.get("seed", 0),
        "trained_tokens": None,
        "training_file": "",
        "validation_file": None,
        "estimated_finish": None,
        "integrations": [],
        "metadata": {"job_id": view.job_id, "job_name": name},
    }


def n_epochs(
    hyper: dict[str, Any], newest: CheckpointRecord | None, trainer_epochs: int = 0
) -> int | Literal["auto"]:
    """``n_epochs``, an integer in OpenAI's API (or ``"auto"``): the epochs the Trainer runs when the job
    said (``trainer_epochs``, its own count, which ``max_steps`` sets); else ``num_train_epochs`` when the
    run was planned in epochs; when ``max_steps`` planned it, the epochs those steps take, a partial one counted
    as the Trainer counts it (3.75 -> 4), from the newest checkpoint's steps per epoch. The exact epoch
    a checkpoint reached is its ``training.epoch``."""
    if trainer_epochs > 0:
        return trainer_epochs
    max_steps, epochs = hyper.get("max_steps"), hyper.get("num_train_epochs")
    if isinstance(max_steps, int) and max_steps > 0:
        if newest is None or not newest.training.epoch or newest.training.step <= 0:
            return "auto"
        planned = max_steps * newest.training.epoch / newest.training.step
        return max(math.ceil(round(planned, 6)), 1)
    if isinstance(epochs, (int, float)) and float(epochs).is_integer() and epochs >= 1:
        return int(epochs)
    return "auto"


class _Ids:
    """OpenAI ids back to canonical ones: ``ftjob-...`` to a job id, ``ftckpt_...`` to a record id.

    Both are one-way hashes, so the mappings are computed from the store and remembered: a page's
    ``after`` is the last id of a page just served, found without touching the store.
    """

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self._jobs: dict[str, str] = {}
        self._checkpoints: dict[str, str] = {}
        #: Jobs whose every checkpoint id is remembered, with how many they had then.
        self._learned: dict[str, int] = {}
        self._rendered: dict[tuple[str, int], dict[str, Any]] = {}
        self._renderer = OpenAIFormat()
        self._lock = threading.Lock()

    def job_id(self, given: str) -> str:
        """The job id an OpenAI job id (or the job id itself) names; 404 when the store has no such job."""
        for refresh in (False, True):
            if refresh:
                known = self.store.job_ids()
                with self._lock:
                    self._jobs = {openai_job_id(job_id): job_id for job_id in known}
                    self._jobs.update((job_id, job_id) for job_id in known)
            if given in self._jobs:
                return self._jobs[given]
        raise Problem(404, f"no fine-tuning job {given!r}")

    def remember(self, records: Sequence[str]) -> None:
        with self._lock:
            if len(self._checkpoints) + len(records) > _REMEMBERED_CHECKPOINTS:
                self._checkpoints.clear()
                self._learned.clear()
            self._checkpoints.update((checkpoint_id(record_id), record_id) for record_id in records)

    def remembers(self, checkpoint: str) -> bool:
        return checkpoint in self._checkpoints

    def rendered(self, record: CheckpointRecord) -> dict[str, Any]:
        """The record as the ``openai`` format renders it, kept per revision (pages are read again and
        again while a run is followed; rendering derives three hashes)."""
        key = (record.id, record.metadata.revision)
        found = self._rendered.get(key)
        if found is None:
            found = self._renderer.render(record)
            with self._lock:
                if len(self._rendered) >= _REMEMBERED_CHECKPOINTS:
                    self._rendered.clear()
                self._rendered[key] = found
        return found

    def checkpoint(self, job_id: str, given: str) -> CheckpointRecord:
        """The record a checkpoint id names: remembered, else after learning every id of the job (once
        per number of checkpoints it has: about a second per 100,000 here, for a process that did not
        serve the page before)."""
        if given not in self._checkpoints:
            record_ids = self.store.record_ids(job_id)
            if self._learned.get(job_id) != len(record_ids):
                self.remember(record_ids)
                self._learned[job_id] = len(record_ids)
        record_id = self._checkpoints.get(given)
        stored = None if record_id is None else self.store.get(record_id)
        if stored is None or stored.record.metadata.job_id != job_id:
            raise Problem(404, f"no checkpoint {given!r} in this job (after=)")
        return stored.record


def openai_router(store: RecordStore) -> APIRouter:
    router = APIRouter(prefix=OPENAI_PREFIX, tags=["openai"])
    ids = _Ids(store)

    def job_objects(views: list[JobView]) -> list[dict[str, Any]]:
        """The jobs as ``fine_tuning.job`` objects: one query for their checkpoints, however many."""
        checkpoints = store.newest_and_ready([view.job_id for view in views])
        return [fine_tuning_job(view, *checkpoints[view.job_id]) for view in views]

    @router.get("/jobs", summary="List fine-tuning jobs, newest first (OpenAI)")
    def list_jobs(
        after: str | None = Query(None, description="the last job id of the previous page"),
        limit: int = Query(20, ge=1, le=100),
    ) -> dict[str, Any]:
        views = all_jobs(store)
        if after is not None:
            position = next((i for i, v in enumerate(views) if openai_job_id(v.job_id) == after), None)
            if position is None:
                raise Problem(404, f"no fine-tuning job {after!r} (after=)")
            views = views[position + 1 :]
        return {
            "object": "list",
            "data": job_objects(views[:limit]),
            "has_more": len(views) > limit,
        }

    @router.get("/jobs/{fine_tuning_job_id}", summary="One fine-tuning job (OpenAI)")
    def retrieve_job(fine_tuning_job_id: str) -> dict[str, Any]:
        view = job_view(store, ids.job_id(fine_tuning_job_id))
        if view is None:
            raise Problem(404, f"no fine-tuning job {fine_tuning_job_id!r}")
        return job_objects([view])[0]

    @router.get(
        "/jobs/{fine_tuning_job_id}/checkpoints", summary="A job's checkpoints, newest first (OpenAI)"
    )
    async def list_checkpoints(
        fine_tuning_job_id: str,
        after: str | None = Query(None, description="the last checkpoint id of the previous page"),
        limit: int = Query(10, ge=1, le=100),
    ) -> dict[str, Any]:
        # On the event loop: a page is a few indexed rows, cheaper than the hops to a worker thread.
        # Only an ``after`` this process never served (a pass over the job's ids) goes to a thread.
        job_id = ids.job_id(fine_tuning_job_id)
        before = None
        if after is not None:
            lookup = partial(ids.checkpoint, job_id, after)
            before = lookup() if ids.remembers(after) else await run_in_threadpool(lookup)
        shown, has_more = newest_first_page(store, job_id, limit, before, available_only=True)
        ids.remember([record.id for record in shown])
        data = [ids.rendered(record) for record in shown]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }

    return router

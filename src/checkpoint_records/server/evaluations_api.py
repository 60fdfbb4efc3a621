"""``/v1/evaluations/{evaluator}``: the evaluation queue of the registry's store, for workers elsewhere.

``checkpoint-records evaluate --registry URL`` takes its checkpoints here and posts its results back,
behind the same bearer token as every API route. Each call is one step of the queue the local worker
uses (:mod:`checkpoint_records.store.evaluations`): claim the next checkpoint (its canonical record),
say an attempt started, renew the claim, put it back for a retry, write the result (a new revision of
the record, once: ``409`` when the caller no longer holds it), release what the caller holds, and make
the failed evaluations pending again (``--retry-failed``).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from ..evaluation.results import NAME_PATTERN, BestBy
from ..evaluation.sources import claim_from, finish_on
from ..record import Evaluation
from ..store import LostClaim, RecordStore
from .problems import Problem

#: A claim lasts at least a minute and at most a day, whatever a worker asks.
MIN_LEASE, MAX_LEASE = 60.0, 86400.0
MAX_OWNER = 200

Evaluator = Path(pattern=NAME_PATTERN.pattern, description="the evaluator's name (`evaluate --name`)")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Who holds the claims: the worker's own random name (host/pid/random).
    owner: str = Field(min_length=1, max_length=MAX_OWNER)


class ClaimRequest(_Body):
    job: str | None = Field(None, max_length=200, description="only this job's (name, id or id prefix)")
    lease_seconds: float = Field(600.0, ge=MIN_LEASE, le=MAX_LEASE)


class Held(_Body):
    record_id: str = Field(min_length=1, max_length=200)


class Started(Held):
    at: str = Field(min_length=1, max_length=40)


class Renewal(Held):
    lease_seconds: float = Field(600.0, ge=MIN_LEASE, le=MAX_LEASE)


class Retry(Held):
    error: str = Field(max_length=4000)
    delay: float = Field(ge=0.0, le=MAX_LEASE)


class BestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(min_length=1, max_length=200)
    greater_is_better: bool


class Result(Held):
    result: Evaluation
    #: Mark the job's best checkpoint by this evaluator's metric (``evaluate --best``).
    best: BestRequest | None = None


def evaluations_router(store: RecordStore) -> APIRouter:
    router = APIRouter(prefix="/evaluations/{evaluator}", tags=["evaluations"])
    queue = store.evaluations

    def held(call: Any) -> Any:
        try:
            return call()
        except LostClaim as error:
            raise Problem(409, str(error)) from None

    @router.get("", summary="How many checkpoints the evaluator has still to evaluate")
    def pending(evaluator: str = Evaluator, job: str | None = Query(None, max_length=200)) -> dict[str, Any]:
        return {"pending": queue.pending(evaluator, None if job is None else store.jobs_named(job))}

    @router.post("/claims", summary="Claim the next checkpoint to evaluate: its record, or null")
    def claim(body: ClaimRequest, evaluator: str = Evaluator) -> dict[str, Any]:
        claimed = claim_from(store, evaluator, body.owner, body.lease_seconds, body.job)
        if claimed is None:
            return {"record": None}
        return {"record": claimed.record.to_dict(), "attempts": claimed.attempts, "error": claimed.error}

    @router.post("/started", summary="An attempt starts: its number")
    def started(body: Started, evaluator: str = Evaluator) -> dict[str, Any]:
        return {"attempt": held(lambda: queue.started(evaluator, body.record_id, body.owner, body.at))}

    @router.post("/renewals", summary="Hold the claim longer; whether it is still held")
    def renew(body: Renewal, evaluator: str = Evaluator) -> dict[str, Any]:
        kept = queue.extend(evaluator, body.owner, time.time() + body.lease_seconds)
        return {"held": body.record_id in kept}

    @router.post("/retries", summary="Put the checkpoint back, due again after `delay` seconds")
    def retry(body: Retry, evaluator: str = Evaluator) -> dict[str, Any]:
        held(lambda: queue.retry(evaluator, body.record_id, body.owner, body.error, time.time() + body.delay))
        return {}

    @router.post("/results", summary="Write the result on the record (a new revision), once")
    def result(body: Result, evaluator: str = Evaluator) -> dict[str, Any]:
        best = None if body.best is None else BestBy(evaluator, body.best.metric, body.best.greater_is_better)
        record = held(lambda: finish_on(store, evaluator, body.record_id, body.owner, body.result, best))
        return {"record": None if record is None else record.to_dict()}

    @router.post("/reopenings", summary="Make the failed evaluations pending again (after a fix)")
    def reopen(body: ClaimRequest, evaluator: str = Evaluator) -> dict[str, Any]:
        job_ids = None if body.job is None else store.jobs_named(body.job)
        return {"reopened": queue.reopen_failed(evaluator, job_ids)}

    @router.post("/releases", summary="Release every claim the caller holds")
    def release(body: _Body, evaluator: str = Evaluator) -> dict[str, Any]:
        queue.release(evaluator, body.owner)
        return {}

    return router

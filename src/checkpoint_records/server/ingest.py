"""``POST /v1/records``: what ``HttpSink`` sends, stored with the sender's revision, all or nothing.

The body is one document or a JSON array of them (a batch, for backlogs; at most :data:`MAX_BATCH`):
what the canonical ``record`` format sends, a checkpoint record (``kind: Checkpoint``), a job
(``kind: TrainingJob``) or a page of a job's log (``kind: TrainingLog``), or a job's
``TrainingJobDetail`` (the ``training-job`` format). Answers: ``200`` with a receipt per document, ``400`` for a body that is
not JSON, ``401`` (no valid token; with a signing secret, also a missing, wrong or stale signature),
``409`` for a record id already stored under another job, ``413`` past the size limit (read no further),
``422`` naming the invalid field (a value no document may hold: text that is not valid Unicode, nesting
too deep, an integer beyond 64 bits, a number JSON cannot carry, a time that is not real, a file path
outside the checkpoint; see :mod:`..validation`), a reused ``Idempotency-Key`` or a record id that its
job and step do not derive, ``429`` with ``Retry-After`` while the write queue is full, ``503`` only when
the store cannot write for now (a full disk, a lock): never for a document that can never be valid,
which ``HttpSink`` would retry forever. Nothing is stored for any of the errors.

Writes go through one thread that commits whatever requests are waiting in a single transaction
(group commit): eight senders cost one disk flush per round, not eight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import queue
import threading
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..identity import is_checkpoint_id
from ..job import (
    JOB_KIND,
    BaseModelOption,
    JobDocument,
    JobSnapshot,
    JobStatus,
    LossPoint,
    TaskType,
    TrainingTechnique,
    job_from_document,
)
from ..logs import logger
from ..record import CheckpointRecord
from ..series import LOG_KIND, LogPage
from ..signing import SignatureError, SigningSecret
from ..store import Receipt, ReceivedDocument, RecordStore, Refused, Submission
from ..validation import MAX_UNIX_SECONDS, Count, InvalidValue, JsonObject, check_value, parse_json
from .problems import Problem, describe_errors

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_BATCH = 1000
#: Documents waiting to be written beyond which new requests get 429.
QUEUE_CAPACITY = 10_000
#: Requests committed together at most.
MAX_GROUP = 256
RETRY_AFTER_SECONDS = 1

Document = ReceivedDocument
#: What the writer answers a request: its receipts, or why nothing of it was stored.
Answer = list[Receipt] | Refused
#: The status a refusal is answered with: a key reused for another body is the Idempotency-Key draft's
#: 422; a record id held by another job is a conflict with what is stored.
REFUSAL_STATUS = {"reused key": 422, "other job": 409}
_Waiting = tuple[Submission, asyncio.Future[Answer]]


class _Detail(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Unix seconds (``TrainingJobDetail`` has whole ones), before the year 10000.
WholeSeconds = Annotated[int, Field(ge=0, le=int(MAX_UNIX_SECONDS))]


class LossEntry(_Detail):
    timestamp: WholeSeconds
    loss: float = Field(allow_inf_nan=False)


class TrainingJobDetail(_Detail):
    """A ``TrainingJobDetail`` as the ``training-job`` format sends it (the shared schema's fields)."""

    id: str = Field(min_length=1)
    name: str
    training_technique: TrainingTechnique
    task_type: TaskType
    base_model_option: BaseModelOption
    base_model: str
    base_fine_tuned_model: str | None = None
    base_fine_tuned_model_checkpoint: Count | None = None
    test_functions: list[str] | None = None
    reward: dict[str, float] | None = None
    status: JobStatus
    progress: float = Field(ge=0, le=100, allow_inf_nan=False)
    train_dataset: JsonObject | None = None
    test_dataset: JsonObject | None = None
    training_loss: list[LossEntry]
    hyper_parameters: JsonObject
    created_by: str
    created_at: WholeSeconds
    updated_at: WholeSeconds


#: Steps a progress is kept in when the sender's ``max_steps`` is not known (hundredths of a percent).
PROGRESS_SCALE = 10_000


def snapshot_from_detail(detail: TrainingJobDetail) -> JobSnapshot:
    """The job snapshot that renders back to ``detail``.

    A ``TrainingJobDetail`` has a progress but no step counts: with ``hyper_parameters.max_steps`` the
    step is recovered from it, otherwise progress is kept as hundredths of a percent (``max_steps``
    10000). Its loss points have no step either: they are kept with step 0, in their order and time.
    """
    planned = detail.hyper_parameters.get("max_steps")
    max_steps = planned if isinstance(planned, int) and planned > 0 else PROGRESS_SCALE
    return JobSnapshot(
        id=detail.id,
        name=detail.name,
        status=detail.status,
        global_step=round(detail.progress * max_steps / 100),
        max_steps=max_steps,
        training_loss=[LossPoint(step=0, loss=p.loss, timestamp=p.timestamp) for p in detail.training_loss],
        hyper_parameters=detail.hyper_parameters,
        base_model=detail.base_model,
        training_technique=detail.training_technique,
        task_type=detail.task_type,
        base_model_option=detail.base_model_option,
        base_fine_tuned_model=detail.base_fine_tuned_model,
        base_fine_tuned_model_checkpoint=detail.base_fine_tuned_model_checkpoint,
        created_by=detail.created_by,
        created_at=detail.created_at,
        updated_at=detail.updated_at,
    )


def parse_documents(body: bytes) -> tuple[list[Document], bool]:
    """The documents of a request body, and whether it was a batch (an array); raises :class:`Problem`."""
    try:
        data = parse_json(body)
    except InvalidValue as error:
        if error.field:  # JSON too deep to parse: a value no document may hold
            raise Problem(422, str(error)) from None
        raise Problem(400, f"the body is {error.why}") from None
    batch = isinstance(data, list)
    items = data if batch else [data]
    if batch and not 0 < len(items) <= MAX_BATCH:
        raise Problem(422, f"a batch holds 1 to {MAX_BATCH} documents, this one {len(items)}")
    return [parse_document(item, f"[{index}]" if batch else "") for index, item in enumerate(items)], batch


#: The documents a body may hold, by ``kind`` (a ``TrainingJobDetail`` has none: it is told by its fields).
_KINDS: dict[str, Any] = {
    "Checkpoint": CheckpointRecord.model_validate,
    JOB_KIND: job_from_document,
    LOG_KIND: LogPage.model_validate,
}


def parse_document(data: Any, where: str = "") -> Document:
    """A checkpoint record (``kind: Checkpoint``), a job (``kind: TrainingJob``), a page of a job's log
    (``kind: TrainingLog``) or a ``TrainingJobDetail``; raises :class:`Problem`.

    What no document may hold (:func:`~..validation.check_value`) is refused before its model is
    looked at; the models then hold each field to its type and range."""
    try:
        check_value(data, where)
    except InvalidValue as error:
        raise Problem(422, str(error)) from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind in _KINDS:
        parse = _KINDS[kind]
    elif isinstance(data, dict) and "training_technique" in data:
        parse = TrainingJobDetail.model_validate
    else:
        raise Problem(
            422,
            f"{where or '(document)'}: expected a checkpoint record (kind: Checkpoint), a job (kind: "
            f"{JOB_KIND}), a page of its log (kind: {LOG_KIND}) or a TrainingJobDetail",
        )
    try:
        document = parse(data)
    except ValidationError as error:
        errors = [{**item, "loc": (where, *item["loc"]) if where else item["loc"]} for item in error.errors()]
        raise Problem(422, describe_errors(errors)) from None
    if isinstance(document, TrainingJobDetail):
        return snapshot_from_detail(document)
    if not isinstance(document, CheckpointRecord):
        return document
    if not is_checkpoint_id(
        document.id, document.metadata.job_id, document.training.step, document.training.node
    ):
        field = f"{where}.metadata.id" if where else "metadata.id"
        raise Problem(
            422,
            f"{field}: not the id of this job's checkpoint at this step (metadata.jobId, "
            "status.metadata.step): a record cannot take another checkpoint's id",
        )
    return document


def receipt_json(receipt: Receipt) -> dict[str, Any]:
    return {"id": receipt.id, "kind": receipt.kind, "revision": receipt.revision, "stored": receipt.stored}


class Overloaded(Exception):
    """The write queue is full: the sender should retry after a moment."""


class Writer:
    """One thread writing received documents, each round's requests in one transaction."""

    def __init__(self, store: RecordStore, capacity: int = QUEUE_CAPACITY) -> None:
        self.store = store
        self.capacity = capacity
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """Documents queued or being written."""
        return self._waiting

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="checkpoint-records ingest", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def submit(self, submission: Submission) -> asyncio.Future[Answer]:
        """Queue ``submission``, on the event loop that awaits its answer; raises :class:`Overloaded`
        when the queue is full. Starts the thread if the app's lifespan did not (an app mounted inside
        another runs no lifespan of its own)."""
        self.start()
        size = len(submission.documents)
        with self._lock:
            if self._waiting and self._waiting + size > self.capacity:
                raise Overloaded
            self._waiting += size
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._queue.put((submission, future))
        return future

    def _run(self) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                group = [first]
                while len(group) < MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        self._queue.put(None)  # stop after this round
                        break
                    group.append(item)
                self._write(group)
        finally:
            self.store.close()

    def _write(self, group: list[_Waiting]) -> None:
        """One transaction for the group; if it fails, each request alone, so that one request the
        store cannot take does not fail the others that happened to wait beside it."""
        outcomes: Sequence[Answer | Exception]
        try:
            outcomes = self.store.receive([submission for submission, _ in group])
        except Exception as error:
            if len(group) > 1:
                for item in group:
                    self._write([item])
                return
            logger.warning("checkpoint-records serve: the store could not write: %r", error)
            outcomes = [error]
        with self._lock:
            self._waiting -= sum(len(submission.documents) for submission, _ in group)
        answered: dict[
            asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Answer], Answer | Exception]]
        ] = {}
        for (_, future), outcome in zip(group, outcomes, strict=True):
            answered.setdefault(future.get_loop(), []).append((future, outcome))
        # One hand-off per round and loop, not one wake-up of the event loop per request.
        for loop, answers in answered.items():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits for the answers
                loop.call_soon_threadsafe(_settle, answers)


def _settle(answers: list[tuple[asyncio.Future[Answer], Answer | Exception]]) -> None:
    """On the event loop: each request's answer (a request that went away has a cancelled future)."""
    for future, outcome in answers:
        if future.done():
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 from its declared length or as soon as it grows past ``limit``."""
    declared = request.headers.get("content-length", "")
    too_large = Problem(413, f"the body is larger than {limit} bytes: send smaller batches")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def ingest_router(
    writer: Writer, max_body_bytes: int = MAX_BODY_BYTES, signing_secret: SigningSecret | None = None
) -> APIRouter:
    """``POST /records``; with ``signing_secret``, only requests it signed (Standard Webhooks)."""
    router = APIRouter(tags=["ingest"])

    @router.post(
        "/records",
        summary="Receive checkpoint records and job documents (one, or a JSON array)",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _BODY}}}},
        response_model=None,
        responses={
            200: {
                "description": "A receipt per document; `stored: false` when a newer one was already held",
                "content": {"application/json": {"schema": _ANSWER}},
            },
            **{status: _PROBLEM_RESPONSE for status in (400, 401, 409, 413, 422, 429, 503)},
        },
    )
    async def receive(request: Request) -> Response:
        body = await read_limited(request, max_body_bytes)
        if signing_secret is not None:
            try:
                signing_secret.verify(request.headers, body)
            except SignatureError as error:
                raise Problem(401, f"the delivery's signature does not verify: {error}") from None
        documents, batch = parse_documents(body)
        key = request.headers.get("idempotency-key") or None
        sender = request.client.host if request.client is not None else ""
        submission = Submission(documents, key, hashlib.sha256(body).hexdigest(), sender)
        try:
            answer = await writer.submit(submission)
        except Overloaded:
            raise Problem(
                429,
                "the server is busy writing; retry shortly",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        except (ValueError, OverflowError, UnicodeError, RecursionError) as error:
            # Validation lets none through; were one to, it can never be written: not a 503 retried forever.
            raise Problem(422, f"the store cannot hold this document: {type(error).__name__}") from None
        except Exception as error:
            raise Problem(
                503,
                f"the store could not write ({type(error).__name__}); retry shortly",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        if isinstance(answer, Refused):
            raise Problem(REFUSAL_STATUS[answer.reason], answer.detail)
        receipts = [receipt_json(receipt) for receipt in answer]
        # Encoded once here: returned as a dict, FastAPI would validate and re-encode it on every request.
        content = json.dumps({"data": receipts} if batch else receipts[0], separators=(",", ":"))
        return Response(content, media_type="application/json")

    return router


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_ONE = {
    "oneOf": [_ref(model.__name__) for model in (CheckpointRecord, JobDocument, LogPage, TrainingJobDetail)]
}
_BODY = {"oneOf": [_ONE, {"type": "array", "items": _ONE, "minItems": 1, "maxItems": MAX_BATCH}]}
_RECEIPT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "kind": {"enum": ["record", "job", "log"]},
        "revision": {"type": "integer"},
        "stored": {"type": "boolean"},
    },
    "required": ["id", "kind", "revision", "stored"],
}
_ANSWER = {
    "oneOf": [
        _RECEIPT,
        {
            "type": "object",
            "properties": {"data": {"type": "array", "items": _RECEIPT}},
            "required": ["data"],
        },
    ]
}
_PROBLEM_RESPONSE: dict[str, Any] = {
    "description": "RFC 7807 problem details",
    "content": {"application/problem+json": {"schema": _ref("ProblemDetails")}},
}
#: Models the OpenAPI document describes besides those of the routes' own signatures.
DOCUMENT_MODELS: Sequence[type[BaseModel]] = (CheckpointRecord, JobDocument, LogPage, TrainingJobDetail)

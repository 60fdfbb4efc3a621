"""Where a worker takes its evaluations from and puts their results: a store, or a registry server.

Both are thin adapters over the one evaluation queue (:class:`~checkpoint_records.store.EvaluationQueue`):
:class:`StoreQueue` uses a store on this machine (the training node's, or a copy the records reach), and
:class:`RegistryQueue` asks a registry server (``checkpoint-records serve``) to do the same on its store,
through the one HTTP transport (bearer token, URL rules, deadline, redaction).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from ..formats import DEFAULT_FORMAT, get_format, known_formats
from ..record import CheckpointRecord, Evaluation, utc_now_iso
from ..sinks import Rejected
from ..sinks.transport import HttpTransport
from ..store import ClaimedEvaluation, Lease, LostClaim, RecordStore, claim_owner
from ..store.documents import Sinks
from .results import BestBy, with_evaluation


class EvaluationSource(Protocol):
    """The queue a worker works, wherever it is; ``where`` names it in messages."""

    where: str

    def claim(self) -> ClaimedEvaluation | None: ...

    def started(self, record_id: str) -> int: ...

    def renew(self, record_id: str) -> bool: ...

    def retry(self, record_id: str, error: str, delay: float) -> None: ...

    def finish(self, record_id: str, result: Evaluation) -> CheckpointRecord | None: ...

    def release(self) -> None: ...

    def pending(self) -> int: ...

    def reopen_failed(self) -> int: ...


def claim_from(
    store: RecordStore, evaluator: str, owner: str, lease_seconds: float, job: str | None
) -> ClaimedEvaluation | None:
    """The next evaluation for ``evaluator`` (of the jobs ``job`` names, now), claimed by ``owner``: the
    one way a worker and the registry's API take work from a store."""
    job_ids = None if job is None else store.jobs_named(job)
    queue = store.evaluations
    queue.enqueue(evaluator, job_ids)
    due = queue.next_due(evaluator)
    if due is None or due > time.time():
        return None  # nothing to do now: found with one read
    claimed = queue.claim_next(evaluator, owner, lease_seconds, job_ids)
    if claimed is None and queue.release_dead(evaluator):  # a killed worker's evaluation, run again
        claimed = queue.claim_next(evaluator, owner, lease_seconds, job_ids)
    return claimed


def finish_on(
    store: RecordStore,
    evaluator: str,
    record_id: str,
    owner: str,
    result: Evaluation,
    best: BestBy | None,
    sinks: Sinks = (),
) -> CheckpointRecord | None:
    """Write ``result`` on the record (once: only while ``owner`` holds it) and, when the best checkpoint
    is chosen by this evaluator, mark it again among the job's; the record's new revision."""
    now = utc_now_iso()

    def evaluated(record: CheckpointRecord) -> CheckpointRecord:
        return with_evaluation(record, evaluator, result, now)

    stored = store.evaluations.finish(evaluator, record_id, owner, evaluated, sinks)
    if stored is None:
        return None
    if best is not None and result.state == "succeeded":
        store.update_job_records(stored.record.metadata.job_id, best.choose, sinks)
        stored = store.get(record_id) or stored
    return stored.record


def queued_for(keys: Sequence[str]) -> Callable[[CheckpointRecord, CheckpointRecord], list[str]]:
    """The sinks among ``keys`` a revision is queued for: not those whose format renders it the same
    (an OpenAI endpoint gets no second, identical checkpoint object for a result it cannot show)."""

    def chosen(old: CheckpointRecord, new: CheckpointRecord) -> list[str]:
        kept = []
        for key in keys:
            name = key.split("://", 1)[0].rpartition("+")[0] or DEFAULT_FORMAT
            if name not in known_formats() or not get_format(name).renders_same(old, new):
                kept.append(key)
        return kept

    return chosen


class StoreQueue:
    """The evaluations of ``evaluator`` in ``store`` (of the jobs ``job`` names); results queued for
    ``sinks`` and for every sink the record was already queued for, so they reach wherever it went."""

    def __init__(
        self,
        store: RecordStore,
        evaluator: str,
        job: str | None,
        sinks: Sequence[str],
        best: BestBy | None = None,
    ) -> None:
        self.store, self.evaluator, self.job, self.sinks, self.best = store, evaluator, job, list(sinks), best
        self.queue = store.evaluations
        self.owner = claim_owner()
        self.lease = Lease()
        self.where = str(store.path)

    def claim(self) -> ClaimedEvaluation | None:
        claimed = claim_from(self.store, self.evaluator, self.owner, self.lease.seconds, self.job)
        if claimed is not None:
            self.lease.taken()
        return claimed

    def started(self, record_id: str) -> int:
        return self.queue.started(self.evaluator, record_id, self.owner, utc_now_iso())

    def renew(self, record_id: str) -> bool:
        if not self.lease.renewal_due:
            return True
        return record_id in self.queue.extend(self.evaluator, self.owner, self.lease.taken())

    def retry(self, record_id: str, error: str, delay: float) -> None:
        self.queue.retry(self.evaluator, record_id, self.owner, error, time.time() + delay)

    def finish(self, record_id: str, result: Evaluation) -> CheckpointRecord | None:
        sinks = queued_for(sorted({*self.sinks, *(d.sink for d in self.store.outbox.deliveries(record_id))}))
        return finish_on(self.store, self.evaluator, record_id, self.owner, result, self.best, sinks)

    def release(self) -> None:
        self.queue.release(self.evaluator, self.owner)

    def pending(self) -> int:
        return self.queue.pending(self.evaluator, self._job_ids())

    def reopen_failed(self) -> int:
        return self.queue.reopen_failed(self.evaluator, self._job_ids())

    def _job_ids(self) -> list[str] | None:
        return None if self.job is None else self.store.jobs_named(self.job)


class RegistryQueue:
    """The evaluations of ``evaluator`` on a registry server (``/v1/evaluations/{evaluator}``)."""

    def __init__(
        self, transport: HttpTransport, evaluator: str, job: str | None, best: BestBy | None = None
    ) -> None:
        self.transport, self.evaluator, self.job, self.best = transport, evaluator, job, best
        self.owner = claim_owner()
        self.lease = Lease()
        self.where = transport.redact(transport.url)
        self._path = f"/v1/evaluations/{quote(evaluator, safe='')}"

    def _call(
        self, method: str, path: str = "", document: Any = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        try:
            return self.transport.call(method, self._path + path, document, params)
        except Rejected as error:
            if error.status == 409:
                raise LostClaim(str(error)) from None
            raise

    def _held(self, record_id: str, **fields: Any) -> dict[str, Any]:
        return {"owner": self.owner, "record_id": record_id, **fields}

    def claim(self) -> ClaimedEvaluation | None:
        reply = self._call(
            "POST", "/claims", {"owner": self.owner, "job": self.job, "lease_seconds": self.lease.seconds}
        )
        if not reply.get("record"):
            return None
        self.lease.taken()
        record = CheckpointRecord.model_validate(reply["record"])
        return ClaimedEvaluation(self.evaluator, record, int(reply.get("attempts") or 0), reply.get("error"))

    def started(self, record_id: str) -> int:
        return int(self._call("POST", "/started", self._held(record_id, at=utc_now_iso()))["attempt"])

    def renew(self, record_id: str) -> bool:
        if not self.lease.renewal_due:
            return True
        self.lease.taken()
        reply = self._call("POST", "/renewals", self._held(record_id, lease_seconds=self.lease.seconds))
        return bool(reply.get("held"))

    def retry(self, record_id: str, error: str, delay: float) -> None:
        self._call("POST", "/retries", self._held(record_id, error=error, delay=delay))

    def finish(self, record_id: str, result: Evaluation) -> CheckpointRecord | None:
        best = None
        if self.best is not None:
            best = {"metric": self.best.metric, "greater_is_better": self.best.greater_is_better}
        document = self._held(record_id, result=result.model_dump(mode="json", by_alias=True), best=best)
        reply = self._call("POST", "/results", document)
        return CheckpointRecord.model_validate(reply["record"]) if reply.get("record") else None

    def release(self) -> None:
        self._call("POST", "/releases", {"owner": self.owner})

    def pending(self) -> int:
        return int(self._call("GET", params={"job": self.job} if self.job else None).get("pending", 0))

    def reopen_failed(self) -> int:
        return int(
            self._call("POST", "/reopenings", {"owner": self.owner, "job": self.job}).get("reopened", 0)
        )

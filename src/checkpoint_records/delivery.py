"""Background delivery from the durable outbox: one lane per sink, so no sink ever waits on another.

Each lane (:class:`~.lane.Lane`) claims due deliveries in batches, renders each record in its sink's
format, sends it, and settles the outcomes in one transaction. A retryable failure (endpoint down, 5xx,
429) pauses the whole lane with exponential backoff and jitter, or for as long as ``Retry-After`` says, and
leaves the record pending; a rejection (other 4xx, redirect, TLS) moves only that record to ``dead`` with
the reason. Nothing here runs on the training thread except :meth:`DeliveryWorker.wake` and the bounded
:meth:`DeliveryWorker.flush`.

A claim is held longer than any one send can take (:attr:`Sink.max_send_seconds`, under the store's one
lease policy) and renewed during a long batch, so no other process sends a record while this one still
is. At a normal exit the lanes stop (see :mod:`.lane`): what they sent is written down and their claims
are released, so neither a ``flush`` waiting beside them nor the next run sends it again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .countdown import Countdown
from .identity import idempotency_key
from .lane import Lane, backoff
from .logs import warn_once
from .sinks import DeliveryError, Sink
from .store import Claimed, Lease, Outcome, RecordStore

BATCH = 100
#: Settle at least this often within a batch, so progress is visible and survives a crash.
SETTLE_EVERY = 0.2


def document_name(body: str) -> str:
    """How logs name a stored document: a record's ``metadata.name``, a job's ``job NAME``."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "a document the store cannot read"
    metadata = data.get("metadata") if isinstance(data, dict) else None
    if isinstance(metadata, dict) and "name" in metadata:
        return f"record {metadata['name']}"
    return f"job {data.get('name')}" if isinstance(data, dict) else "a document"


@dataclass(frozen=True)
class FlushResult:
    """What a flush achieved for the worker's sinks: delivered and dead during it, pending after it."""

    delivered: int
    dead: int
    pending: int


class _DeliveryLane(Lane):
    """Delivers to one sink."""

    def __init__(self, store: RecordStore, sink: Sink, settled: threading.Event) -> None:
        send = getattr(sink, "max_send_seconds", Sink.max_send_seconds)
        super().__init__(f"delivery to {sink.key}", store, store.outbox, sink.key, Lease(send))
        self.sink = sink
        #: Set after every settle, so a flush notices progress at once instead of polling.
        self.settled = settled
        self.failures = 0
        self.delivered = 0
        self.dead = 0

    def work(self) -> float | None:
        """Send one batch; how long to pause (after a retryable failure), or None when nothing was due."""
        self.lease.taken()
        claims = self.store.outbox.claim_due(self.sink.key, self.owner, self.lease.seconds, BATCH)
        if not claims:
            return None
        held: set[str] | None = None  # None: every claim of the batch
        outcomes: list[Outcome] = []
        settled_at = time.monotonic()
        pause = 0.0
        for claim in claims:
            if self.stopping.is_set():
                break
            renewed = self.renew()
            held = held if renewed is None else renewed
            if held is not None and claim.record_id not in held:
                continue  # our claim lapsed (a frozen process?) and someone else holds it now
            outcome, wait = self._attempt(claim)
            outcomes.append(outcome)
            if wait is not None:
                pause = wait
                break
            if time.monotonic() - settled_at > SETTLE_EVERY:
                self.store.outbox.settle(outcomes)
                self.settled.set()
                outcomes, settled_at = [], time.monotonic()
        self.store.outbox.settle(outcomes)
        self.release()  # whatever the batch did not get to
        self.settled.set()
        return pause

    def _attempt(self, claim: Claimed) -> tuple[Outcome, float | None]:
        """Send one record; the outcome, and a pause for the lane when the sink asked to retry later."""
        now = time.time()
        try:
            document = self.sink.format.render_stored(claim.body)
        except Exception as error:  # the record's fault, not the sink's: trying again cannot help
            return self._dead(
                claim, f"cannot render it as {self.sink.format.name}: {type(error).__name__}: {error}"
            )
        try:
            key = idempotency_key(claim.record_id, claim.revision, self.sink.format.name, document)
            self.sink.send(document, key)
        except DeliveryError as error:
            if error.retryable:
                return self._retry(claim, error.reason, getattr(error, "retry_after", None))
            return self._dead(claim, error.reason)
        except Exception as error:  # a sink's own bug: retry, say so once
            return self._retry(claim, f"{type(error).__name__}: {error}", None)
        if self.failures:  # said as loudly as the failure was (once per process, like it)
            warn_once(
                f"recovered:{self.sink.key}",
                "checkpoint-records: %s is accepting records again (%s delivered; failures before it: %d)",
                self.sink.key,
                document_name(claim.body),
                self.failures,
            )
        self.failures = 0
        self.delivered += 1
        return Outcome(claim, "delivered", now), None

    def _dead(self, claim: Claimed, reason: str) -> tuple[Outcome, None]:
        self.dead += 1
        warn_once(
            f"dead:{self.sink.key}:{reason}",
            "checkpoint-records: %s rejected %s: %s. It is kept as dead; fix the cause, then run "
            "`checkpoint-records resend`.",
            self.sink.key,
            document_name(claim.body),
            reason,
        )
        return Outcome(claim, "dead", time.time(), reason), None

    def _retry(self, claim: Claimed, reason: str, retry_after: float | None) -> tuple[Outcome, float]:
        self.failures += 1
        wait = backoff(self.failures, retry_after)
        warn_once(
            f"retry:{self.sink.key}",
            "checkpoint-records: %s is not accepting records (%s); they are kept and retried in the "
            "background, training goes on.",
            self.sink.key,
            reason,
        )
        return Outcome(claim, "pending", time.time() + wait, reason), wait


class DeliveryWorker:
    """Delivers the outbox to ``sinks`` in the background, from the process that started it only.

    A forked child (a DataLoader worker, say) inherits the object but not its threads: every method is a
    no-op there, so nothing is ever sent twice from a copy of the parent.
    """

    def __init__(self, store: RecordStore, sinks: Sequence[Sink]) -> None:
        self.store = store
        self.sinks = list(sinks)
        self._pid = os.getpid()
        self._lanes: list[_DeliveryLane] = []
        self._settled = threading.Event()

    def _here(self) -> bool:
        return os.getpid() == self._pid

    @property
    def running(self) -> bool:
        """Whether this process delivers: it started the lanes (a fork or a non-main rank never does)."""
        return self._here() and bool(self._lanes)

    def start(self) -> None:
        if self._lanes or not self._here():
            return
        self._lanes = [_DeliveryLane(self.store, sink, self._settled) for sink in self.sinks]
        for lane in self._lanes:
            lane.start()

    def wake(self) -> None:
        """Tell every lane there is new work (cheap: sets an event)."""
        if self._here():
            for lane in self._lanes:
                lane.wake()

    def flush(
        self,
        timeout: float,
        on_progress: Callable[[int], None] | None = None,
        since: tuple[int, int] | None = None,
    ) -> FlushResult:
        """Wait up to ``timeout`` seconds for every pending delivery to these sinks to settle.

        ``on_progress`` is called with the number still pending each time it is checked. The result counts
        what was delivered and dead since :meth:`totals` said ``since`` (default: since this call).
        """
        keys = [sink.key for sink in self.sinks]
        if not self.running:
            return FlushResult(0, 0, self.store.outbox.counts(keys)["pending"] if keys else 0)
        delivered, dead = since or self.totals()
        countdown = Countdown(timeout)
        self.wake()
        pending = self.store.outbox.counts(keys)["pending"]
        while pending and countdown.left() and any(lane.is_alive() for lane in self._lanes):
            self._settled.wait(min(0.05, countdown.left()))
            self._settled.clear()
            pending = self.store.outbox.counts(keys)["pending"]
            if on_progress is not None:
                on_progress(pending)
        now_delivered, now_dead = self.totals()
        return FlushResult(now_delivered - delivered, now_dead - dead, pending)

    def totals(self) -> tuple[int, int]:
        """Deliveries this worker's lanes settled so far: delivered, dead."""
        return sum(lane.delivered for lane in self._lanes), sum(lane.dead for lane in self._lanes)

    def close(self, timeout: float = 1.0) -> None:
        """Stop the lanes, waiting up to ``timeout`` for them all; each writes down what it sent and releases
        its claims. One in the middle of a slow request finishes it (within the sink's deadline) and
        settles it then, or at exit."""
        if not self._here():
            return
        for lane in self._lanes:
            lane.stop()
        countdown = Countdown(timeout)
        for lane in self._lanes:
            lane.join(countdown.left())
        for sink in self.sinks:
            sink.close()
        self._lanes = []

"""Background delivery from the durable outbox: one thread per sink, so no sink ever waits on another.

Each lane claims due deliveries in batches, renders each record in its sink's format, sends it, and
settles the outcomes in one transaction. A retryable failure (endpoint down, 5xx, 429) pauses the whole
lane with exponential backoff and jitter, or for as long as ``Retry-After`` says, and leaves the record
pending; a rejection (other 4xx, redirect, TLS) moves only that record to ``dead`` with the reason.
Nothing here runs on the training thread except :meth:`DeliveryWorker.wake` and the bounded
:meth:`DeliveryWorker.flush`.

A claim is held longer than any one send can take (:attr:`Sink.max_send_seconds`) and extended during a
long batch, so no other process sends a record while this one still is. At a normal exit the lanes stop
first (``atexit``): what they sent is written down and their claims are released, so neither a ``flush``
waiting beside them nor the next run sends it again.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .identity import idempotency_key
from .logs import logger, warn_once
from .sinks import DeliveryError, Sink
from .store import Claimed, Outcome, RecordStore, claim_owner

BATCH = 100
#: Long enough for a batch against a slow endpoint; a dead owner's claims are released sooner.
LEASE_SECONDS = 600.0
#: A claim is extended when less than one send plus this is left of it.
LEASE_MARGIN = 5.0
#: Settle at least this often within a batch, so progress is visible and survives a crash.
SETTLE_EVERY = 0.2
IDLE_POLL = 1.0
BACKOFF_BASE = 0.5
BACKOFF_CAP = 300.0
RETRY_AFTER_CAP = 3600.0
#: How long a normal exit waits for the lanes to write down what they sent.
EXIT_JOIN = 2.0


def backoff(failures: int, retry_after: float | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures: exponential with jitter, capped.

    A ``Retry-After`` can ask for longer (up to an hour), never for sooner: ``0``, a date in the past or
    a value that is not a number cannot turn a lane into a hot loop.
    """
    exponent = min(max(failures - 1, 0), math.ceil(math.log2(BACKOFF_CAP / BACKOFF_BASE)))
    ours = min(BACKOFF_CAP, BACKOFF_BASE * 2.0**exponent) * random.uniform(0.5, 1.0)
    if retry_after is not None and math.isfinite(retry_after):
        return max(ours, min(retry_after, RETRY_AFTER_CAP))
    return ours


def document_name(body: str) -> str:
    """How logs name a stored document: a record's ``metadata.name``, a job's ``job NAME``."""
    try:
        data = json.loads(body)
    except ValueError:
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


class _Lane(threading.Thread):
    """Delivers to one sink."""

    def __init__(self, store: RecordStore, sink: Sink, settled: threading.Event) -> None:
        super().__init__(name=f"checkpoint-records {sink.key}", daemon=True)
        self.store, self.sink = store, sink
        #: Set after every settle, so a flush notices progress at once instead of polling.
        self.settled = settled
        self.owner = claim_owner()
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.failures = 0
        self.delivered = 0
        self.dead = 0
        send_bound = getattr(sink, "max_send_seconds", Sink.max_send_seconds) + LEASE_MARGIN
        #: Claims are extended when less than this is left: one send can never outlast them.
        self.lease_floor = send_bound
        self.lease = max(LEASE_SECONDS, 2 * send_bound)

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self._run_once()
                except Exception as error:  # a store hiccup (locked, disk full) must not end delivery
                    warn_once(
                        f"lane:{self.sink.key}:{type(error).__name__}",
                        "checkpoint-records: delivery to %s hit %r; it is retried, nothing is lost",
                        self.sink.key,
                        error,
                    )
                    self.stopping.wait(IDLE_POLL)
        finally:
            try:
                self.store.release(self.sink.key, self.owner)
            finally:
                self.store.close()
                _running.discard(self)

    def _run_once(self) -> None:
        self.store.write_kept()  # what a full disk kept in memory, should no save come to do it
        pause = self._deliver_batch()
        if pause:  # the sink asked for time: new work does not cut that short
            self.stopping.wait(pause)
        elif pause is None:  # nothing to claim: sleep until something is due, or new work arrives
            due = self.store.next_due(self.sink.key)
            idle = IDLE_POLL if due is None else min(IDLE_POLL, max(due - time.time(), 0.0))
            if due is not None and idle == 0.0:
                # Due but claimed by someone else: released now if that process is gone, else looked at
                # again shortly (it releases its claims when it stops).
                idle = 0.0 if self.store.release(self.sink.key) else IDLE_POLL
            self.wakeup.wait(idle)
            self.wakeup.clear()

    def _deliver_batch(self) -> float | None:
        """Send one batch; returns how long to pause (after a retryable failure), or None."""
        claims = self.store.claim_due(self.sink.key, self.owner, self.lease, BATCH)
        if not claims:
            return None
        held_until = time.time() + self.lease
        held: set[str] | None = None  # None: every claim of the batch
        outcomes: list[Outcome] = []
        settled_at = time.monotonic()
        pause: float | None = 0.0
        for claim in claims:
            if self.stopping.is_set():
                break
            if held_until - time.time() < self.lease_floor:
                held_until = time.time() + self.lease
                held = self.store.extend_claims(self.sink.key, self.owner, held_until)
            if held is not None and claim.record_id not in held:
                continue  # our claim lapsed (a frozen process?) and someone else holds it now
            outcome, wait = self._attempt(claim)
            outcomes.append(outcome)
            if wait is not None:
                pause = wait
                break
            if time.monotonic() - settled_at > SETTLE_EVERY:
                self.store.settle(outcomes)
                self.settled.set()
                outcomes, settled_at = [], time.monotonic()
        self.store.settle(outcomes)
        self.store.release(self.sink.key, self.owner)  # whatever the batch did not get to
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
            self.sink.send(document, idempotency_key(claim.record_id, claim.revision, self.sink.format.name))
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
        self._lanes: list[_Lane] = []
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
        self._lanes = [_Lane(self.store, sink, self._settled) for sink in self.sinks]
        for lane in self._lanes:
            _running.add(lane)
            lane.start()

    def wake(self) -> None:
        """Tell every lane there is new work (cheap: sets an event)."""
        if self._here():
            for lane in self._lanes:
                lane.wakeup.set()

    def flush(self, timeout: float, on_progress: Callable[[int], None] | None = None) -> FlushResult:
        """Wait up to ``timeout`` seconds for every pending delivery to these sinks to settle.

        ``on_progress`` is called with the number still pending each time it is checked.
        """
        keys = [sink.key for sink in self.sinks]
        if not self.running:
            return FlushResult(0, 0, self.store.counts(keys)["pending"] if keys else 0)
        delivered, dead = self._totals()
        deadline = time.monotonic() + timeout
        self.wake()
        pending = self.store.counts(keys)["pending"]
        while pending and time.monotonic() < deadline and any(lane.is_alive() for lane in self._lanes):
            self._settled.wait(min(0.05, max(deadline - time.monotonic(), 0.0)))
            self._settled.clear()
            pending = self.store.counts(keys)["pending"]
            if on_progress is not None:
                on_progress(pending)
        now_delivered, now_dead = self._totals()
        return FlushResult(now_delivered - delivered, now_dead - dead, pending)

    def _totals(self) -> tuple[int, int]:
        return sum(lane.delivered for lane in self._lanes), sum(lane.dead for lane in self._lanes)

    def close(self, timeout: float = 1.0) -> None:
        """Stop the lanes; each writes down what it sent and releases its claims. One in the middle of a
        slow request finishes it (within the sink's deadline) and settles it then, or at exit."""
        if not self._here():
            return
        for lane in self._lanes:
            lane.stopping.set()
            lane.wakeup.set()
        for lane in self._lanes:
            lane.join(timeout)
        for sink in self.sinks:
            sink.close()
        self._lanes = []


#: Lanes whose thread runs in this process: at a normal exit they are stopped and waited for.
_running: set[_Lane] = set()


def _stop_lanes_at_exit() -> None:
    """Registered at import, so it runs after the hooks that report and flush a job at exit."""
    lanes = list(_running)
    for lane in lanes:
        lane.stopping.set()
        lane.wakeup.set()
    deadline = time.monotonic() + EXIT_JOIN
    for lane in lanes:
        lane.join(max(deadline - time.monotonic(), 0.0))
        if lane.is_alive():  # stuck on a request: it dies with the process, its claims need not lapse
            try:
                lane.store.release(lane.sink.key, lane.owner)
            except Exception as error:  # never mask the user's own exit
                logger.debug("checkpoint-records: could not release claims at exit: %r", error)


atexit.register(_stop_lanes_at_exit)

"""A lane: one background thread working one scope of a lease queue (a sink's deliveries, a destination's
uploads), so one sink or destination never waits on another, and the training thread on none.

Every lane claims its work under the one lease policy (:class:`~.store.Lease`, renewed while it works),
sleeps until its next item is due or it is woken (:meth:`Lane.wake`), pauses after failures (:func:`backoff`)
and, when it stops, releases what it still holds. Claims of a holder of this host that died are released
by the next lane that finds due work held by them.

One way to stop, whatever stops it: :meth:`Lane.stop` (its owner closing), or, at a normal exit of the
interpreter, one ``atexit`` hook that stops every lane still running, waits up to :data:`EXIT_JOIN` for
them to write down what they did and release their claims, and releases the claims of any lane still busy
(a request or a file in flight dies with the process; it is sent again by the next run).
"""

from __future__ import annotations

import atexit
import math
import random
import threading
import time

from .countdown import Countdown
from .logs import logger, warn_once
from .store import Lease, LeaseQueue, RecordStore, claim_owner

#: The longest a lane sleeps before it looks at the queue again (other processes add work too).
IDLE_POLL = 1.0
BACKOFF_BASE = 0.5
BACKOFF_CAP = 300.0
RETRY_AFTER_CAP = 3600.0
#: How long a normal exit waits for the lanes to write down what they did.
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


class Lane(threading.Thread):
    """Works the scope ``scope`` of ``queue`` in rounds (:meth:`work`) until stopped; ``what`` says
    what it does, in its thread's name and its log lines (``delivery to https://...``)."""

    #: After a wake-up, this long for the waker (a save on the training thread) to return before the lane
    #: competes with it for the GIL.
    wake_delay = 0.0

    def __init__(self, what: str, store: RecordStore, queue: LeaseQueue, scope: str, lease: Lease) -> None:
        super().__init__(name=f"checkpoint-records {what}", daemon=True)
        self.what = what
        self.store, self.queue, self.scope, self.lease = store, queue, scope, lease
        self.owner = claim_owner()
        self.wakeup = threading.Event()
        self.stopping = threading.Event()

    def work(self) -> float | None:
        """One round: None when there was nothing to claim (the lane sleeps until something is due or it
        is woken), 0 to go on at once, or seconds to pause (new work does not cut that short). Not called
        while a full disk keeps writes in memory: what they say (a delivery settled) must land first."""
        raise NotImplementedError

    def described(self, error: Exception) -> str:
        """How a failure of a round is said in the log (without secrets)."""
        return repr(error)

    def start(self) -> None:
        _running.add(self)
        super().start()

    def wake(self) -> None:
        """There is new work (cheap: sets an event)."""
        self.wakeup.set()

    def stop(self) -> None:
        """Stop after the step in hand; what it did is written down and its claims released."""
        self.stopping.set()
        self.wakeup.set()

    def renew(self) -> set[str] | None:
        """Renew this lane's claims when the lease policy says so: the record ids it still holds, or
        None when no renewal was due (it holds what it claimed)."""
        if not self.lease.renewal_due:
            return None
        return self.queue.extend(self.scope, self.owner, self.lease.taken())

    def release(self) -> None:
        self.queue.release(self.scope, self.owner)

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    pause = self.work() if self.store.write_kept() else IDLE_POLL
                    if pause is None:
                        self._idle()
                        continue
                except Exception as error:  # a store hiccup (locked, disk full) must not end the lane
                    warn_once(
                        f"lane:{self.what}:{type(error).__name__}",
                        "checkpoint-records: %s hit %s; it goes on, nothing is lost",
                        self.what,
                        self.described(error),
                    )
                    pause = IDLE_POLL
                if pause:
                    self.stopping.wait(pause)
        finally:
            try:
                self.release()
            finally:
                self.store.close()
                _running.discard(self)

    def _idle(self) -> None:
        """Sleep until the next item is due, new work arrives, or :data:`IDLE_POLL` has passed."""
        due = self.queue.next_due(self.scope)
        idle = IDLE_POLL if due is None else min(IDLE_POLL, max(due - time.time(), 0.0))
        if due is not None and idle == 0.0:
            # Due but claimed by someone else: released now if that process is gone, else looked at
            # again shortly (it releases its claims when it stops).
            idle = 0.0 if self.queue.release_dead(self.scope) else IDLE_POLL
        if self.wakeup.wait(idle) and self.wake_delay:
            self.stopping.wait(self.wake_delay)
        self.wakeup.clear()


#: Lanes whose thread runs in this process: at a normal exit they are stopped and waited for.
_running: set[Lane] = set()


def _stop_lanes_at_exit() -> None:
    """Registered at import, so it runs after the hooks that report and flush a job at exit."""
    lanes = list(_running)
    for lane in lanes:
        lane.stop()
    countdown = Countdown(EXIT_JOIN)
    for lane in lanes:
        lane.join(countdown.left())
        if (
            lane.is_alive()
        ):  # stuck on a request or a file: it dies with the process, its claims need not lapse
            try:
                lane.release()
            except Exception as error:  # never mask the user's own exit
                logger.debug("checkpoint-records: could not release claims at exit: %r", error)


atexit.register(_stop_lanes_at_exit)

"""The recorder's own background thread: where a save's record is built and stored.

The training thread only puts a small task on a queue (``queue.SimpleQueue.put`` never blocks and takes
no lock the background could hold) and gets a :class:`~concurrent.futures.Future` back; one thread runs
the tasks in order, so a job's begin, its saves and its end are stored in the order training produced
them. The future resolves with what the task returned (a save's stored record), or with the exception
it raised: a task that fails is logged once and skipped, and its failure reaches no one who does not ask
the future (under :func:`~.logs.set_strict`, it is also raised again by the next :meth:`Background.drain`).
A forked child inherits the object but not its thread: it never runs anything.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any, TypeVar

from .countdown import Countdown
from .logs import is_strict, report_failure

T = TypeVar("T")
_STOP = object()


def resolved(value: T) -> Future[T]:
    """A future that is done already, with ``value``: for a hand-off that makes no record."""
    future: Future[T] = Future()
    future.set_result(value)
    return future


class Background:
    """One daemon thread running submitted tasks in order, started on first use."""

    def __init__(self, name: str, on_exit: Callable[[], None] | None = None) -> None:
        self.name = name
        self._on_exit = on_exit
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        #: Counted by the submitting side and by the background thread alone: no shared lock.
        self._submitted = 0
        self._done = 0
        #: The last task submitted: tasks run in order, so every one before it is done once it is.
        self._last: Future[Any] | None = None
        self._error: BaseException | None = None

    def submit(self, where: str, task: Callable[..., T], *args: Any) -> Future[T | None]:
        """Run ``task(*args)`` in the background; ``where`` names it in a failure's log line. The future
        cannot be cancelled (the task runs whatever happens to its caller)."""
        if os.getpid() != self._pid:
            return resolved(None)
        future: Future[T | None] = Future()
        future.set_running_or_notify_cancel()
        self._submitted += 1
        self._last = future
        self._queue.put((where, task, args, future))
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name=self.name, daemon=True
            )
            self._thread.start()
        return future

    @property
    def pending(self) -> int:
        """Tasks submitted and not finished yet."""
        return self._submitted - self._done

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every submitted task to finish; whether they did."""
        done = self._finished(timeout)
        error, self._error = self._error, None
        if error is not None:
            raise error
        return done

    def stop(self, timeout: float) -> bool:
        """Finish what was submitted (up to ``timeout``), then end the thread; whether it ended.

        A thread still busy after ``timeout`` (a locked store) is left running: it goes on with what is
        queued and with any later task, in order, so nothing submitted is lost or run out of turn.
        """
        thread = self._thread
        if thread is None or os.getpid() != self._pid:
            return True
        countdown = Countdown(timeout)
        if not self._finished(countdown.left()):
            return False
        self._queue.put(_STOP)
        self._queue = queue.SimpleQueue()  # the next thread's: this one has nothing left but the stop
        self._thread = None
        thread.join(countdown.left())
        return not thread.is_alive()

    def _finished(self, timeout: float) -> bool:
        last = self._last
        return last is None or last in wait([last], timeout).done

    def _run(self, tasks: queue.SimpleQueue[Any]) -> None:
        try:
            while True:
                item = tasks.get()
                if item is _STOP:
                    return
                where, task, args, future = item
                try:
                    result = task(*args)
                except BaseException as error:
                    self._done += 1  # before the future resolves: its waiter then sees nothing pending
                    if isinstance(error, Exception):
                        report_failure(f"{where} (in the background)", error)
                        if is_strict() and self._error is None:
                            self._error = error
                    future.set_exception(error)
                    if not isinstance(error, Exception):
                        raise  # the thread ends (interpreter shutdown): whoever waits has learnt why
                else:
                    self._done += 1
                    future.set_result(result)
        finally:
            if self._on_exit is not None:
                self._on_exit()

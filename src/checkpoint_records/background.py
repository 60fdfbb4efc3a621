"""The recorder's own background thread: where a save's record is built and stored.

The training thread only puts a small task on a queue (``queue.SimpleQueue.put`` never blocks and takes
no lock the background could hold); one thread runs the tasks in order, so a job's begin, its saves and its
end are stored in the order training produced them. A task that fails is logged once and skipped (under
:func:`~.logs.set_strict`, the failure is raised again by the next :meth:`Background.drain`). A forked
child inherits the object but not its thread: it never runs anything.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .logs import is_strict, report_failure

_STOP = object()


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
        self._progress = threading.Event()
        self._error: BaseException | None = None

    def submit(self, where: str, task: Callable[..., Any], *args: Any) -> None:
        """Run ``task(*args)`` in the background; ``where`` names it in a failure's log line."""
        if os.getpid() != self._pid:
            return
        self._submitted += 1
        self._queue.put((where, task, args))
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    @property
    def pending(self) -> int:
        """Tasks submitted and not finished yet."""
        return self._submitted - self._done

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every submitted task to finish; whether they did."""
        deadline = time.monotonic() + timeout
        while self.pending and self._alive() and time.monotonic() < deadline:
            self._progress.wait(min(max(deadline - time.monotonic(), 0.0), 0.05))
            self._progress.clear()
        done = not self.pending
        error, self._error = self._error, None
        if error is not None:
            raise error
        return done

    def stop(self, timeout: float) -> bool:
        """Finish what was submitted (up to ``timeout``), then end the thread; whether it ended."""
        thread = self._thread
        if thread is None or os.getpid() != self._pid:
            return True
        self._queue.put(_STOP)
        thread.join(timeout)
        self._thread = None
        return not thread.is_alive()

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                where, task, args = item
                try:
                    task(*args)
                except Exception as error:
                    report_failure(f"{where} (in the background)", error)
                    if is_strict() and self._error is None:
                        self._error = error
                finally:
                    self._done += 1
                    self._progress.set()
        finally:
            if self._on_exit is not None:
                self._on_exit()

"""The end of a job that did not finish: Failed, Cancelled, whatever stopped it.

transformers calls no callback when training raises, so the end of a job that did not finish is caught
three ways: a chained ``sys.excepthook`` (an uncaught exception: ``Failed``, or ``Cancelled`` for
Ctrl-C), an ``atexit`` hook (the process exits without ``on_train_end``: ``Failed``), and, for a process
killed outright, ``checkpoint-records flush`` or the next run of the same job, which find the attempt
still ``Running`` under an owner that is gone and mark it ``Cancelled``. (A resumed run's own
``Running`` then supersedes that ``Cancelled`` if it was not delivered yet: the job goes on.)

The job itself is reported by the recorder (begin, saves, end, in its background thread); this module
only keeps the recorders whose job is running, to end them when the process stops.
"""

from __future__ import annotations

import atexit
import sys
import threading
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol

from .job import JobStatus, progressed
from .logs import logger
from .store import RecordStore, owner_is_alive


class Running(Protocol):
    """What this module needs of a recorder running a job (so it needs no recorder of its own)."""

    def end(self, status: JobStatus, step: int | None = None) -> None: ...

    def flush(self) -> Any: ...


_running: weakref.WeakSet[Running] = weakref.WeakSet()
_hooks_installed = False
_hooks_lock = threading.Lock()


def track(recorder: Running) -> None:
    """``recorder`` runs a job now: report its end if the process stops first."""
    _install_hooks()
    _running.add(recorder)


def untrack(recorder: Running) -> None:
    _running.discard(recorder)


def tracked(recorder: Running) -> bool:
    return recorder in _running


def cancel_abandoned(store: RecordStore, sinks: Sequence[str]) -> list[str]:
    """Report ``Cancelled`` the jobs still ``Running`` under a process of this host that is gone.

    That is what a run killed outright leaves behind; ``checkpoint-records flush`` calls this.
    """
    names = []
    for stored in store.jobs():
        if stored.job.status == "Running" and stored.owner and not owner_is_alive(stored.owner):
            store.put_job(progressed(stored.job, "Cancelled"), sinks, stored.owner)
            names.append(stored.job.name)
    return names


def _end_all(status: JobStatus, why: str) -> None:
    for recorder in list(_running):
        try:
            logger.warning("checkpoint-records: training %s; the job is reported %s", why, status)
            recorder.end(status)
            recorder.flush()
        except Exception as error:  # never mask the user's own exception or exit
            logger.debug("checkpoint-records: could not report the job's end: %r", error)


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        previous = sys.excepthook

        def excepthook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
            interrupted = issubclass(kind, KeyboardInterrupt)
            _end_all("Cancelled" if interrupted else "Failed", f"stopped by {kind.__name__}: {error}")
            previous(kind, error, trace)

        sys.excepthook = excepthook
        atexit.register(_end_all, "Failed", "exited without finishing")

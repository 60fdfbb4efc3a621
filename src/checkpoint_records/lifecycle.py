"""The job's lifecycle as the ``training-job`` format reports it: Running, Success, Failed, Cancelled.

transformers calls no callback when training raises, so the end of a job that did not finish is caught
three ways: a chained ``sys.excepthook`` (an uncaught exception: ``Failed``, or ``Cancelled`` for
Ctrl-C), an ``atexit`` hook (the process exits without ``on_train_end``: ``Failed``), and, for a process
killed outright, ``checkpoint-records flush`` or the next run of the same job, which find the attempt
still ``Running`` under an owner that is gone and mark it ``Cancelled``. (A resumed run's own
``Running`` then supersedes that ``Cancelled`` if it was not delivered yet: the job goes on.)
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .formats.training_job import JobSnapshot, JobStatus, job_snapshot_from_trainer
from .logs import logger
from .store import RecordStore, claim_owner, owner_is_alive

if TYPE_CHECKING:
    from transformers import TrainerState, TrainingArguments

    from .recorder import CheckpointRecorder, JobIdentity

_running: weakref.WeakSet[JobLifecycle] = weakref.WeakSet()
_hooks_installed = False
_hooks_lock = threading.Lock()


def trainer_class_name(args: Any) -> str:
    """The trainer's class name as its arguments tell it: TRL's ``GRPOConfig`` means ``GRPOTrainer``."""
    name = type(args).__name__
    return name[: -len("Config")] + "Trainer" if name.endswith("Config") else "Trainer"


class JobLifecycle:
    """Reports one job of this process to the store and the job-level sinks, from begin to end."""

    def __init__(self, recorder: CheckpointRecorder) -> None:
        self.recorder = recorder
        self.owner = claim_owner()
        self._job: JobIdentity | None = None
        self._args: TrainingArguments | None = None
        self._state: TrainerState | None = None
        self._model: Any = None
        self._base_model: str | None = None
        self._created_at = 0.0
        self._log_times: dict[int, float] = {}

    def begin(
        self,
        job: JobIdentity,
        args: TrainingArguments,
        state: TrainerState,
        model: Any,
        base_model: str | None,
    ) -> None:
        self._job, self._args, self._state, self._model, self._base_model = (
            job,
            args,
            state,
            model,
            base_model,
        )
        previous = self.recorder.store.job(job.id)
        self._created_at = time.time() if previous is None else previous.job.created_at
        if previous is not None and previous.job.status == "Running" and previous.owner != self.owner:
            logger.warning(
                "checkpoint-records: the previous run of job %s ended without finishing (killed?); "
                "it is reported Cancelled before this run starts",
                job.name,
            )
            self._put(cancelled(previous.job))
        self.report("Running")
        _install_hooks()
        _running.add(self)

    def logged(self, step: int) -> None:
        """Stamp the time of a log: ``log_history`` keeps none, ``training_loss`` needs it."""
        self._log_times.setdefault(step, time.time())

    def report(self, status: JobStatus) -> None:
        """Store (and queue for the job sinks) the job as it is now, with ``status``."""
        if self._job is None or self._args is None or self._state is None:
            return
        self._put(
            job_snapshot_from_trainer(
                self._args,
                self._state,
                trainer_class_name(self._args),
                status,
                self._base_model,
                job_id=self._job.id,
                job_name=self._job.name,
                created_at=self._created_at,
                log_times=self._log_times,
                model=self._model,
            )
        )

    def end(self, status: JobStatus) -> None:
        if self in _running:
            _running.discard(self)
            self.report(status)

    def _put(self, snapshot: JobSnapshot) -> None:
        sinks = [sink.key for sink in self.recorder.job_sinks]
        # Progress at each save need not cost the training thread a disk flush; a status change does.
        self.recorder.store.put_job(snapshot, sinks, self.owner, durable=snapshot.status != "Running")
        self.recorder.delivery.wake()


def cancelled(job: JobSnapshot) -> JobSnapshot:
    return job.model_copy(update={"status": "Cancelled", "updated_at": time.time()})


def cancel_abandoned(store: RecordStore, sinks: Sequence[str]) -> list[str]:
    """Report ``Cancelled`` the jobs still ``Running`` under a process of this host that is gone.

    That is what a run killed outright leaves behind; ``checkpoint-records flush`` calls this.
    """
    names = []
    for stored in store.jobs():
        if stored.job.status == "Running" and stored.owner and not owner_is_alive(stored.owner):
            store.put_job(cancelled(stored.job), sinks, stored.owner)
            names.append(stored.job.name)
    return names


def _end_all(status: JobStatus, why: str) -> None:
    for lifecycle in list(_running):
        try:
            logger.warning(
                "checkpoint-records: job %s %s; reported %s",
                lifecycle._job and lifecycle._job.name,
                why,
                status,
            )
            lifecycle.end(status)
            lifecycle.recorder.flush()
        except Exception as error:  # never mask the user's own exception or exit
            logger.debug("checkpoint-records: could not report the job's end: %r", error)


def _install_hooks() -> None:
    global _hooks_installed
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
        atexit.register(_end_all, "Failed", "exited without finishing training")

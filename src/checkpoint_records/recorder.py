"""The recorder's front, on the training thread: a save is a hand-off, the end of training one bounded wait.

A save costs the training thread a hand-off: :meth:`CheckpointRecorder.hand_off` puts a
:class:`~.handoff.Save` (what the run knows: step, epoch, the log entries new since the last save, the best
checkpoint) on the queue of the recorder's own thread (:mod:`.background`) and returns a future of its
record. That thread does the work (:mod:`.bookkeeper`): builds the record, stores it durably with its
outbox entries, notes rotated checkpoints and the job's progress, and wakes delivery. The end of training
(:meth:`CheckpointRecorder.close`) waits for all of it, uploads and deliveries included, within one
``flush_timeout``. If the process dies in between, nothing is lost: the checkpoint on disk is the source
of truth, and :meth:`CheckpointRecorder.recover` (at the job's next run, at ``checkpoint-records flush``,
or ``checkpoint-records import``) records it from its own files (:mod:`.rebuild`).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import lifecycle, rebuild
from .background import Background, resolved
from .bookkeeper import Bookkeeper
from .countdown import Countdown
from .delivery import DeliveryWorker, FlushResult
from .distributed import accelerator_role, launcher_role, wait_for_everyone
from .handoff import Begin, Save, base_model_name
from .identity import default_job_key, display_name, given_run_name, job_id_for
from .job import JobIdentity, JobStatus
from .logs import logger, never_raises
from .record import CheckpointRecord
from .settings import (
    DEFAULT_LOOP_NAME_TEMPLATE,
    DEFAULT_NAME_TEMPLATE,
    Overrides,
    Settings,
    resolve_settings,
)
from .sinks import configured_sinks, record_sinks
from .storage import Uploads, storage_config
from .store import RecordStore, claim_owner
from .validation import escape_text

if TYPE_CHECKING:
    from collections.abc import Mapping

    from typing_extensions import Unpack


class CheckpointRecorder:
    """Records checkpoints into the store and queues them for the configured sinks."""

    def __init__(self, settings: Settings | None = None, **overrides: Unpack[Overrides]) -> None:
        """``settings`` (default: :func:`resolve_settings`) with ``overrides``, the table's arguments
        (``store=`` may also be an open :class:`RecordStore`)."""
        if settings is not None and not isinstance(settings, Settings):
            raise TypeError(
                f"settings must be a Settings (from resolve_settings()), not {type(settings).__name__}; "
                "give a store directory as store=..."
            )
        store = overrides.get("store")
        if isinstance(store, RecordStore):
            overrides["store"] = store.home
        settings = resolve_settings(**overrides) if settings is None else settings.replace(**overrides)
        self.store = store if isinstance(store, RecordStore) else RecordStore(settings.home)
        self.sinks = configured_sinks(settings)
        self.job_id, self.job_name = settings.job_id, settings.job_name
        #: ``record()``'s: a loop's folders are not numbered by step, so its names say "step".
        self.loop_name_template = settings.name_template or DEFAULT_LOOP_NAME_TEMPLATE
        self.flush_timeout = settings.flush_timeout
        self.record_every_node = settings.record_every_node
        self.delivery = DeliveryWorker(self.store, self.sinks)
        self.uploads = Uploads(
            self.store,
            storage_config(settings),
            [sink.key for sink in record_sinks(self.sinks)],
            self.delivery.wake,
        )
        #: The background work; touched by the background thread only (and by recovery on the caller's).
        self.books = Bookkeeper(
            self.store,
            self.sinks,
            self.delivery,
            self.uploads,
            name_template=settings.name_template or DEFAULT_NAME_TEMPLATE,
            owner=claim_owner(),
        )
        self._background = Background("checkpoint-records recorder", on_exit=self.store.close)
        #: The future of the latest save's record (:meth:`hand_off`'s).
        self.latest: Future[CheckpointRecord | None] | None = None
        self._jobs: dict[tuple[str, str | None], JobIdentity] = {}

    @property
    def last_record(self) -> CheckpointRecord | None:
        """The record of the latest save once the background stored it; None until then (or if it failed)."""
        latest = self.latest
        if latest is None or not latest.done() or latest.exception() is not None:
            return None
        return latest.result()

    def job_for(self, output_dir: str, run_name: str | None) -> JobIdentity:
        """The job's identity: explicit settings first, else derived from where it runs and the name the
        user gave it (a ``run_name`` that only repeats ``output_dir`` is none); names hold no ``/``."""
        known = self._jobs.get((output_dir, run_name))
        if known is None:
            given = given_run_name(output_dir, run_name)
            key = self.job_id or default_job_key(output_dir, given)
            name = display_name(self.job_name or given or Path(os.path.abspath(output_dir)).name)
            known = self._jobs[(output_dir, run_name)] = JobIdentity(id=job_id_for(key), name=name)
        return known

    def job_of(self, run_dir: Path, run_name: str | None = None) -> JobIdentity:
        """The job whose checkpoints ``run_dir`` holds: as configured or named (``run_name``), else the
        one the store knows wrote there (a run recorded live, imported later), else derived from it."""
        if self.job_id is None and given_run_name(str(run_dir), run_name) is None:
            writers = self.store.jobs_writing_to(escape_text(os.path.abspath(run_dir)))
            if writers:
                job_id, name = writers[0]
                return JobIdentity(id=job_id, name=name)
        return self.job_for(str(run_dir), run_name)

    # -- on the training thread: hand-offs only ---------------------------------------------------------

    def begin(self, begin: Begin) -> None:
        """A job starts: its document, delivery of earlier runs' leftovers and recovery go to the background."""
        self._background.submit("on_train_begin", self._begin, begin)
        lifecycle.track(self)

    def hand_off(self, save: Save) -> Future[CheckpointRecord | None]:
        """A checkpoint was saved: its record is built and stored in the background.

        The future resolves with the stored record, or with the exception that stopped it (logged once;
        it never reaches training unless asked for with ``result()``).
        """
        if save.reports_job and not lifecycle.tracked(self):  # a loop's job starts with its first save
            lifecycle.track(self)
        self.latest = self._background.submit("on_save", self.books.record_save, save)
        return self.latest

    def end(self, status: JobStatus, step: int | None = None) -> None:
        """The jobs this recorder runs ended with ``status`` (at ``step`` when known)."""
        lifecycle.untrack(self)
        self._background.submit("on_train_end", self.books.end, status, step)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout``, default ``flush_timeout``) until every hand-off so far is stored."""
        return self._background.drain(self.flush_timeout if timeout is None else timeout)

    def flush(self) -> FlushResult:
        """Wait up to ``flush_timeout`` for the hand-offs to be stored, uploaded and delivered; what is
        left stays pending (or on disk, to be recovered) for the next run or ``checkpoint-records flush``."""
        return self._flush(Countdown(self.flush_timeout))

    def _flush(self, countdown: Countdown) -> FlushResult:
        """:meth:`flush` within what ``countdown`` has left, every step of it together."""
        before = self.delivery.totals()
        if not self._background.drain(countdown.left()):
            logger.warning(
                "checkpoint-records: %d saves not recorded yet after %.1fs; their checkpoints stay on disk and "
                "are recorded by the next run of the job or by `checkpoint-records flush`.",
                self._background.pending,
                countdown.seconds,
            )
        # The upload and delivery lanes run at once: waiting for one takes no time from the other.
        self.uploads.flush(countdown.left())
        result = self.delivery.flush(countdown.left(), since=before)
        if result.pending:
            logger.warning(
                "checkpoint-records: deliveries still pending after %.1fs: %d; they stay in %s and go out "
                "with the next run that uses this store, or with `checkpoint-records flush`.",
                countdown.seconds,
                result.pending,
                self.store.path,
            )
        return result

    def close(self) -> None:
        """End what this recorder ran, flush when this process delivers, stop its threads: all of it
        within one ``flush_timeout``."""
        countdown = Countdown(self.flush_timeout)
        if lifecycle.tracked(self):
            self.end("Success")
        if self.delivery.running or self._background.pending:
            self._flush(countdown)
        self._background.stop(countdown.left())  # the next hand-off starts it again
        self.uploads.close(countdown.left())
        self.delivery.close(countdown.left())
        self.store.close()

    def __enter__(self) -> CheckpointRecorder:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc_info: object) -> None:
        if kind is not None and lifecycle.tracked(self):
            self.end("Cancelled" if issubclass(kind, KeyboardInterrupt) else "Failed")
        self.close()

    @never_raises
    def record(
        self,
        directory: str | os.PathLike[str],
        *,
        step: int,
        epoch: float | None = None,
        train_loss: Any = None,
        eval_loss: Any = None,
        metrics: Mapping[str, Any] | None = None,
        model: Any = None,
        accelerator: Any = None,
    ) -> Future[CheckpointRecord | None]:
        """Record the checkpoint a training loop of your own has just written to ``directory``.

        Call it on every process, right after the save (``accelerator.save_state`` or ``save_pretrained``):
        it waits for every process to finish writing, then hands the save over on the main process only
        (on each node's main with ``record_every_node`` when every node saves its own copy); the record is
        built and stored in the background. It returns a future of that record: ``result(timeout)`` waits
        for it (the result is None on a process that does not record). Like every entry point from
        training it never raises: a failure is logged once and it returns None. Losses and metrics may be
        floats or scalar tensors. With ``accelerator`` the job is its ``project_dir`` (where
        ``automatic_checkpoint_naming`` writes ``checkpoints/checkpoint_<n>``), else the directory's parent.
        """
        role = launcher_role() if accelerator is None else accelerator_role(accelerator)
        wait_for_everyone(accelerator)
        if not role.records(self.record_every_node):
            return resolved(None)
        path = Path(directory)
        if accelerator is not None and model is not None:
            model = accelerator.unwrap_model(model)
        logged = {"step": step, "loss": train_loss, "eval_loss": eval_loss, **(metrics or {})}
        run_dir = Path(getattr(accelerator, "project_dir", None) or path.parent)
        return self.hand_off(
            Save(
                directory=path,
                run_dir=run_dir,
                job=self.job_for(str(run_dir), None),
                step=step,
                epoch=epoch,
                entries=[{key: value for key, value in logged.items() if value is not None}],
                logged_at=time.time(),
                base_model=base_model_name(model),
                world_size=role.world_size,
                node_suffix=role.node_suffix(self.record_every_node),
                reports_job=role.world_main,
                name_template=self.loop_name_template,
            )
        )

    # -- in the background ---------------------------------------------------------------------------

    def _begin(self, begin: Begin) -> None:
        self.books.begin(begin)
        if begin.started_at is not None:  # what a crash left on disk without a record
            recovered = rebuild.recover(
                self.books, begin.directory, begin.job, written_before=begin.started_at
            )
            for bad in recovered.failed:
                logger.warning("checkpoint-records: a checkpoint on disk cannot be recorded: %s", bad)

    # -- recovery: the checkpoint on disk is the source of truth --------------------------------------

    def recover(
        self,
        run_dir: str | os.PathLike[str],
        job: JobIdentity | None = None,
        written_before: float | None = None,
    ) -> rebuild.Recovered:
        """Record the checkpoints in ``run_dir`` that have no record yet, from their own files
        (:func:`.rebuild.recover`), as ``job``'s (default: :meth:`job_of` ``run_dir``): the records, and
        the checkpoints that could not be (each error names the file and the field)."""
        path = Path(run_dir)
        return rebuild.recover(self.books, path, job or self.job_of(path), written_before)

    def recover_known(self) -> rebuild.Recovered:
        """:meth:`recover` every directory where the store knows a job wrote checkpoints."""
        return rebuild.recover_known(self.books)

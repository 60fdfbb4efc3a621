"""The recorder's background work: from a hand-off to a stored, queued record and the job's progress.

Runs on the recorder's own thread (:mod:`.background`), one task at a time, so nothing here is shared
with the training thread. For a :class:`~.handoff.Save` it appends the new log entries to the job's log,
builds the record (scan, readiness, model facts: :func:`~.build.build_record`), stores it durably with its
outbox entries and queues its upload, moves the best-checkpoint mark, marks rotated checkpoints
``deleted``, keeps the job's progress, and wakes delivery. A stored record only ever changes through the
store's atomic update (:meth:`~.store.RecordStore.update_record`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .build import Best, SaveContext, as_deleted, build_record, with_best
from .collect import read_model_facts, scan_checkpoint
from .delivery import DeliveryWorker
from .handoff import Begin, Save
from .history import LogAccumulator, LogEntry, LoggedMetrics, log_entry
from .identity import checkpoint_id_for, display_name
from .job import JobIdentity, JobSnapshot, JobStatus, LossSeries, job_snapshot, progressed, trainer_class_name
from .logs import logger
from .readiness import assess_readiness
from .record import CheckpointRecord, utc_now_iso
from .recovery import written_folder
from .sinks import Sink, job_sinks, log_sinks, record_sinks, sinks_to_notify
from .storage import Uploads
from .store import RecordStore
from .validation import path_of


@dataclass
class Run:
    """A job this process runs, as the background thread follows it (touched by that thread only)."""

    snapshot: JobSnapshot
    #: Whether this process reports the job (its status, progress): only one process of a run does.
    reported: bool = True
    log: LogAccumulator = field(default_factory=LogAccumulator)
    losses: LossSeries = field(default_factory=LossSeries)
    best: Best | None = None


class Bookkeeper:
    """Keeps the store's books for the jobs of one recorder: records, their revisions, the jobs."""

    def __init__(
        self,
        store: RecordStore,
        sinks: Sequence[Sink],
        delivery: DeliveryWorker,
        uploads: Uploads,
        *,
        name_template: str,
        owner: str,
    ) -> None:
        self.store, self.delivery, self.uploads = store, delivery, uploads
        #: The record sinks (queued a record and its revisions), the job-level ones (``record``,
        #: ``training-job``) and those sent the job's log page by page (``record``).
        self.record_sinks, self.job_sinks = record_sinks(sinks), job_sinks(sinks)
        self.log_sinks = [sink.key for sink in log_sinks(sinks)]
        self.name_template = name_template
        #: Names the process running a job in the store, so a later run can tell an interrupted one.
        self.owner = owner
        self.node = socket.gethostname()
        #: The jobs this process runs, by job id.
        self.runs: dict[str, Run] = {}
        #: Directories of this job's ``available`` records, by record id, and whether the run rotates
        #: its checkpoints (``save_total_limit``): watched for rotation.
        self._live: dict[str, tuple[Path, bool]] = {}

    # -- a job's begin, saves and end ----------------------------------------------------------------

    def begin(self, begin: Begin) -> None:
        """A job starts: delivery of earlier runs' leftovers, the job's ``Running`` (an earlier run of it
        that never ended is reported ``Cancelled`` first), its checkpoints watched."""
        self.start_delivery()  # pending work from an earlier run goes out now
        self.watch_job(begin.job, begin.rotates)
        previous = self.store.job(begin.job.id)
        if previous is not None and previous.job.status == "Running" and previous.owner != self.owner:
            logger.warning(
                "checkpoint-records: the previous run of job %s ended without finishing (killed?); "
                "it is reported Cancelled before this run starts",
                begin.job.name,
            )
            self.put_job(progressed(previous.job, "Cancelled"))
        snapshot = job_snapshot(
            begin.args,
            trainer_class_name(begin.args) if begin.args is not None else "loop",
            "Running",
            begin.base_model,
            job_id=begin.job.id,
            job_name=begin.job.name,
            created_at=time.time() if previous is None else previous.job.created_at,
            max_steps=begin.max_steps,
            num_train_epochs=begin.num_train_epochs,
            model=begin.model,
            directory=str(begin.directory.absolute()),
        )
        earlier = LossSeries(() if previous is None else previous.job.training_loss)  # a resumed job's
        snapshot = snapshot.model_copy(update={"training_loss": earlier.bounded()})
        self.runs[begin.job.id] = Run(snapshot, log=LogAccumulator(begin.loss_metric), losses=earlier)
        self.put_job(snapshot)

    def record_save(self, save: Save) -> CheckpointRecord:
        """The record of a save, stored and queued; the job's log, best mark, rotations and progress."""
        job = save.job
        run = self._run_of(save)
        logged = self._timed_entries(save, job)
        # One write: a resumed run's log replaces the rest; on a full disk it waits in order, in memory.
        # The process that reports the job sends its log.
        sinks = self.log_sinks if run.reported else ()
        self.store.write_log(
            job.id, logged, save.first_seq, before_step=save.step, count=len(save.entries), sinks=sinks
        )
        run.log.add(save.entries, up_to_step=save.step)
        run.losses.add(logged, checkpoint_step=save.step)
        best = save.best.parsed() if save.best is not None else None
        directory = save.directory
        if save.written and not directory.is_dir():  # a Trainer subclass's own folder name, or rotated
            directory = written_folder(directory.parent, save.step) or directory
        record = self.build(
            directory,
            job,
            save.step,
            save.epoch,
            run.log.metrics(),
            base_model=save.base_model,
            architecture=save.architecture,
            world_size=save.world_size,
            node_suffix=save.node_suffix,
            name_template=save.name_template,
        )
        if save.written and save.rotates and record.status.status == "failed":  # rotated away already
            record = as_deleted(record, utc_now_iso(), rotated=True)
        stored = self.store_record(
            with_best(record, best) if best is not None else record, rotates=save.rotates
        )
        if best is not None:
            self.move_best(job, best, save.node_suffix, run)
        self.record_rotations()  # the Trainer's save_total_limit (or accelerate's) has just deleted some
        run.snapshot = progressed(
            run.snapshot,
            "Running",
            global_step=save.step,
            max_steps=save.max_steps or run.snapshot.max_steps,
            training_loss=run.losses.bounded(),
        )
        if run.reported:  # progress survives the process, and costs no disk flush
            self.put_job(run.snapshot, durable=False)
        self.delivery.wake()
        return stored

    def _run_of(self, save: Save) -> Run:
        """The run a save belongs to; a loop's job (no ``on_train_begin``) starts at its first save."""
        job = save.job
        run = self.runs.get(job.id)
        if run is None and save.reports_job:
            begin = Begin(
                job=job,
                directory=save.run_dir,
                base_model=save.base_model,
                loss_metric=save.loss_metric,
                rotates=save.rotates,
            )
            self.begin(begin)
            run = self.runs[job.id]
        elif run is None:  # another node's main recording its own copy: the job is reported elsewhere
            self.start_delivery()
            self.watch_job(job, save.rotates)
            snapshot = job_snapshot(
                None, "loop", "Running", None, job_id=job.id, job_name=job.name, created_at=0
            )
            run = self.runs[job.id] = Run(snapshot, reported=False, log=LogAccumulator(save.loss_metric))
        return run

    def _timed_entries(self, save: Save, job: JobIdentity) -> list[LogEntry]:
        """The save's new log entries as :meth:`~.store.RecordStore.write_log` takes them (``seq`` counted
        from the save's first), each with the time it was logged: handed over, else as the store has it (a
        run resumed after a crash hands over again what was logged before it). A loop's save (no first
        position: the store places it) hands over only new entries."""
        base = save.first_seq or 0
        times = {
            offset: save.log_times.get(base + offset, save.logged_at) for offset in range(len(save.entries))
        }
        untimed = [base + offset for offset, when in times.items() if when is None]
        stored = (
            self.store.log_times(job.id, min(untimed), max(untimed) + 1)
            if untimed and save.first_seq is not None
            else {}
        )
        entries = []
        for offset, values in enumerate(save.entries):
            entry = log_entry(offset, values, times[offset])
            known = stored.get(base + offset)
            if entry is not None and entry.logged_at is None and known is not None and known[0] == entry.step:
                entry = log_entry(offset, values, known[1])
            if entry is not None:
                entries.append(entry)
        return entries

    def end(self, status: JobStatus, step: int | None) -> None:
        """The jobs this process runs ended with ``status`` (at ``step`` when known)."""
        self.record_rotations()
        for run in list(self.runs.values()):
            if not run.reported:
                continue
            changes: dict[str, Any] = {"training_loss": run.losses.bounded()}
            if step is not None:
                changes["global_step"] = step
            self.put_job(progressed(run.snapshot, status, **changes))
        self.runs.clear()

    # -- records ---------------------------------------------------------------------------------------

    def build(
        self,
        directory: Path,
        job: JobIdentity,
        step: int,
        epoch: Any,
        logged: LoggedMetrics,
        *,
        base_model: str | None = None,
        architecture: str | None = None,
        world_size: int | None = 1,
        node_suffix: str | None = None,
        recovered: bool = False,
        name_template: str | None = None,
    ) -> CheckpointRecord:
        """The record of ``directory``: what the run knows plus what is on disk (scan, readiness, config);
        ``world_size`` None: as the checkpoint's files tell."""
        node = self._node(node_suffix)
        name_fields = {"job_name": job.name, "job_id": job.id, "step": step, "node": node}
        context = SaveContext(
            record_id=checkpoint_id_for(job.id, step, node if node_suffix is not None else None),
            name=display_name((name_template or self.name_template).format(**name_fields)),
            job_id=job.id,
            job_name=job.name,
            step=step,
            epoch=epoch,
            node=node,
            logged=logged,
            base_model=base_model,
            library_version=transformers.__version__,
            world_size=world_size,
            architecture=architecture,
            recovered=recovered,
        )
        scanned = scan_checkpoint(directory)
        return build_record(
            context,
            scanned,
            read_model_facts(directory, scanned.files),
            assess_readiness(directory, scanned.files, CONFIG_MAPPING),
            utc_now_iso(),
        )

    def _node(self, node_suffix: str | None) -> str:
        return self.node if node_suffix is None else f"{self.node}/{node_suffix}"

    def store_record(
        self,
        record: CheckpointRecord,
        durable: bool = True,
        sinks: Sequence[str] | None = None,
        rotates: bool = False,
    ) -> CheckpointRecord:
        """Store ``record`` (durably), queued for ``sinks`` (default: every record sink) and for upload;
        watch its directory for rotation (``rotates``: by the run's ``save_total_limit``)."""
        keys = [sink.key for sink in self.record_sinks] if sinks is None else sinks
        stored = self.store.put(record, keys, durable=durable).record
        if stored.status.status == "available":
            self._live[stored.id] = (path_of(stored.spec.directory), rotates)
        self.uploads.enqueue(stored)  # hard links and one short transaction; sent by the upload lane
        return stored

    def move_best(self, job: JobIdentity, best: Best, node_suffix: str | None, run: Run | None) -> None:
        """Mark the best checkpoint's record best and every other record of the job (on this node) not."""
        if run is not None and run.best == best:
            return
        node = self._node(node_suffix)
        best_id = checkpoint_id_for(job.id, best.step, node if node_suffix is not None else None)
        now = utc_now_iso()

        def marked(record: CheckpointRecord) -> CheckpointRecord:  # unchanged content: no new revision
            if record.training.node != node:
                return record
            return with_best(record, best if record.id == best_id else None, now)

        self.store.update_records(self.store.record_ids(job.id), marked, self._notified, durable=False)
        if run is not None:
            run.best = best

    def watch_job(self, job: JobIdentity, rotates: bool = False) -> None:
        """Watch the directories of ``job``'s available checkpoints on this node (those of a resumed run too)."""
        for stored in self.store.records(job.id):
            record = stored.record
            node = record.training.node
            if record.status.status == "available" and (
                node == self.node or node.startswith(f"{self.node}/")
            ):
                self._live[record.id] = (path_of(record.spec.directory), rotates)

    def record_rotations(self) -> None:
        """Mark the watched checkpoints whose directory is gone as ``deleted``, and queue the updates."""
        now = utc_now_iso()
        for record_id, (directory, rotates) in list(self._live.items()):
            if directory.is_dir():
                continue
            del self._live[record_id]

            def deleted(record: CheckpointRecord, rotated: bool = rotates) -> CheckpointRecord:
                return as_deleted(record, now, rotated) if record.status.status == "available" else record

            self.store.update_record(record_id, deleted, self._notified, durable=False)

    def _notified(self, old: CheckpointRecord, new: CheckpointRecord) -> list[str]:
        """The record sinks a revision is news to (not openai or llama-stack for a deletion, say)."""
        return sinks_to_notify(self.record_sinks, old, new)

    # -- jobs and delivery -----------------------------------------------------------------------------

    def put_job(self, snapshot: JobSnapshot, durable: bool = True) -> None:
        """Keep the job's document in the store (always) and queue it for the job-level sinks."""
        sinks = [sink.key for sink in self.job_sinks]
        self.store.put_job(snapshot, sinks, self.owner, durable=durable)
        self.delivery.wake()

    def start_delivery(self) -> None:
        """Start delivering in the background, pending work from earlier runs included (main process only)."""
        self.delivery.start()
        self.uploads.start()

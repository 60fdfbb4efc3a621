"""The recorder: from a save on the training thread to a durable, queued record, built in the background.

A save costs the training thread a hand-off: :meth:`CheckpointRecorder.hand_off` puts a :class:`Save` (what
the run knows: step, epoch, the log entries new since the last save, the best checkpoint) on the queue of
the recorder's own thread (:mod:`.background`) and returns. That thread scans the directory, judges
readiness, reads the model's metadata files, builds the record, stores it durably with its outbox
entries, notes rotated checkpoints and the job's progress, and wakes delivery. If the process dies in
between, nothing is lost: the checkpoint on disk is the source of truth, and :meth:`recover` (at the job's
next run, at ``checkpoint-records flush``, or ``checkpoint-records import``) records it from its own files.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import transformers

from . import lifecycle
from .background import Background
from .build import Best, SaveContext, as_deleted, build_record, with_best
from .collect import read_model_facts, scan_checkpoint
from .delivery import DeliveryWorker, FlushResult
from .distributed import accelerator_role, launcher_role, wait_for_everyone
from .history import LogAccumulator, LoggedMetrics, log_entry
from .identity import checkpoint_id_for, default_job_key, job_id_for
from .job import (
    JobIdentity,
    JobSnapshot,
    JobStatus,
    LossSeries,
    job_snapshot,
    progressed,
    trainer_class_name,
)
from .logs import logger, never_raises
from .readiness import assess_readiness
from .record import CheckpointRecord, utc_now_iso
from .recovery import FoundCheckpoint, checkpoint_folders, job_from_disk, modified_at, read_checkpoint
from .settings import (
    DEFAULT_LOOP_NAME_TEMPLATE,
    DEFAULT_NAME_TEMPLATE,
    Overrides,
    Settings,
    resolve_settings,
)
from .sinks import Sink, configured_sinks, job_sinks, record_sinks, sinks_to_notify
from .storage import Uploads, storage_config
from .store import RecordStore, claim_owner
from .values import to_number

if TYPE_CHECKING:
    from typing_extensions import Unpack

_TRAINER_FOLDER = re.compile(r"checkpoint-(\d+)")


def base_model_name(model: Any, hub_model_id: str | None = None) -> str | None:
    """The base model a live model was built from: a PEFT adapter's base, else ``name_or_path``."""
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, Mapping) and peft_config:
        adapter = peft_config.get("default") or next(iter(peft_config.values()))
        base = getattr(adapter, "base_model_name_or_path", None)
        if base:
            return str(base)
    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    return str(name) if name else hub_model_id or None


@dataclass(frozen=True)
class BestSoFar:
    """The best checkpoint as the Trainer's state names it at a save, unparsed (no work on the training
    thread): ``state.best_model_checkpoint``, ``args.metric_for_best_model``, ``state.best_metric``."""

    checkpoint: str
    metric: str | None
    value: Any

    def parsed(self) -> Best | None:
        match = _TRAINER_FOLDER.fullmatch(Path(self.checkpoint).name)
        if match is None:
            return None
        metric = self.metric
        if metric and not metric.startswith("eval_"):
            metric = f"eval_{metric}"  # as the Trainer looks it up
        value, _ = to_number(self.value)
        return Best(int(match.group(1)), metric, None if value is None else float(value))


@dataclass(frozen=True)
class Save:
    """What the training thread knows at a save, handed to the background as it is."""

    directory: Path
    #: The job's directory (the Trainer's output dir, accelerate's project dir).
    run_dir: Path
    job: JobIdentity
    step: int
    epoch: Any
    #: The log entries since the last hand-off (values may still be tensors: converted in the background).
    entries: Sequence[Mapping[str, Any]] = ()
    #: Position of ``entries[0]`` in the run's log; None: after the job's entries of earlier steps.
    first_seq: int | None = None
    #: Position in the log to the Unix time the entry was logged; ``logged_at`` for the others.
    log_times: Mapping[int, float] = field(default_factory=dict)
    logged_at: float | None = None
    base_model: str | None = None
    world_size: int = 1
    node_suffix: str | None = None
    best: BestSoFar | None = None
    max_steps: int = 0
    #: Whether this process reports the job as a whole (the world main process does).
    reports_job: bool = True
    #: The record name's template when not the recorder's own (a loop's folders are not named by step).
    name_template: str | None = None
    #: Whether the directory was complete at the hand-off (the Trainer calls ``on_save`` after writing
    #: it): gone by the time the background builds its record means rotated away, not a failed save.
    written: bool = False


@dataclass(frozen=True)
class Begin:
    """A job starting: what its document needs (``args`` None for a loop without a Trainer)."""

    job: JobIdentity
    directory: Path
    args: Any = None
    model: Any = None
    base_model: str | None = None
    max_steps: int = 0
    #: Unix time of the hand-off: checkpoints written since are this run's, recorded live, not recovered.
    started_at: float | None = None


@dataclass
class _Run:
    """A job this process runs, as the background thread follows it (touched by that thread only)."""

    snapshot: JobSnapshot
    #: Whether this process reports the job (its status, progress): only one process of a run does.
    reported: bool = True
    log: LogAccumulator = field(default_factory=LogAccumulator)
    losses: LossSeries = field(default_factory=LossSeries)
    best: Best | None = None


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
        self.name_template = settings.name_template or DEFAULT_NAME_TEMPLATE
        #: ``record()``'s: a loop's folders are not numbered by step, so its names say "step".
        self.loop_name_template = settings.name_template or DEFAULT_LOOP_NAME_TEMPLATE
        self.flush_timeout = settings.flush_timeout
        self.record_every_node = settings.record_every_node
        self.node = socket.gethostname()
        #: Names the process running a job in the store, so a later run can tell an interrupted one.
        self.owner = claim_owner()
        self.delivery = DeliveryWorker(self.store, self.sinks)
        self._background = Background("checkpoint-records recorder", on_exit=self.store.close)
        #: The record of the latest save, once the background stored it.
        self.last_record: CheckpointRecord | None = None
        self.uploads = Uploads(
            self.store,
            storage_config(settings),
            [sink.key for sink in self.record_sinks],
            self.delivery.wake,
        )
        #: Directories of this job's ``available`` records, by record id: watched for rotation.
        self._live: dict[str, Path] = {}
        self._runs: dict[str, _Run] = {}
        self._jobs: dict[tuple[str, str | None], JobIdentity] = {}

    @property
    def record_sinks(self) -> list[Sink]:
        return record_sinks(self.sinks)

    @property
    def job_sinks(self) -> list[Sink]:
        """Sinks of job-level events (the ``training-job`` format)."""
        return job_sinks(self.sinks)

    def job_for(self, output_dir: str, run_name: str | None) -> JobIdentity:
        """The job's identity: explicit settings first, else derived from where and what it runs."""
        known = self._jobs.get((output_dir, run_name))
        if known is None:
            key = self.job_id or default_job_key(output_dir, run_name)
            name = self.job_name or run_name or Path(os.path.abspath(output_dir)).name or "job"
            known = self._jobs[(output_dir, run_name)] = JobIdentity(id=job_id_for(key), name=name)
        return known

    # -- on the training thread: hand-offs only ---------------------------------------------------------

    def begin(self, begin: Begin) -> None:
        """A job starts: its document, delivery of earlier runs' leftovers and recovery go to the background."""
        self._background.submit("on_train_begin", self._begin, begin)
        lifecycle.track(self)

    def hand_off(self, save: Save) -> None:
        """A checkpoint was saved: its record is built and stored in the background."""
        if save.reports_job and not lifecycle.tracked(self):  # a loop's job starts with its first save
            lifecycle.track(self)
        self._background.submit("on_save", self._record_save, save)

    def end(self, status: JobStatus, step: int | None = None) -> None:
        """The jobs this recorder runs ended with ``status`` (at ``step`` when known)."""
        lifecycle.untrack(self)
        self._background.submit("on_train_end", self._end, status, step)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout``, default ``flush_timeout``) until every hand-off so far is stored."""
        return self._background.drain(self.flush_timeout if timeout is None else timeout)

    def flush(self) -> FlushResult:
        """Wait up to ``flush_timeout`` for the hand-offs to be stored and delivered; what is left stays
        pending (or on disk, to be recovered) for the next run or ``checkpoint-records flush``."""
        started = time.monotonic()
        if not self.drain():
            logger.warning(
                "checkpoint-records: %d saves not recorded yet after %.1fs; their checkpoints stay on disk and "
                "are recorded by the next run of the job or by `checkpoint-records flush`.",
                self._background.pending,
                self.flush_timeout,
            )
        spent = time.monotonic() - started
        # Uploads wait within a bound of their own: a slow upload never eats the records' delivery time.
        self.uploads.flush(self.flush_timeout)
        result = self.delivery.flush(max(self.flush_timeout - spent, 0.0))
        if result.pending:
            logger.warning(
                "checkpoint-records: deliveries still pending after %.1fs: %d; they stay in %s and go out "
                "with the next run that uses this store, or with `checkpoint-records flush`.",
                self.flush_timeout,
                result.pending,
                self.store.path,
            )
        return result

    def stop_background(self) -> None:
        """End the recorder's thread once it is idle (bounded); the next hand-off starts it again."""
        self._background.stop(self.flush_timeout)

    def close(self) -> None:
        """End what this recorder ran, flush (bounded) when this process delivers, stop its threads."""
        if lifecycle.tracked(self):
            self.end("Success")
        if self.delivery.running or self._background.pending:
            self.flush()
        self.stop_background()
        self.uploads.close()
        self.delivery.close()
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
    ) -> None:
        """Record the checkpoint a training loop of your own has just written to ``directory``.

        Call it on every process, right after the save (``accelerator.save_state`` or ``save_pretrained``):
        it waits for every process to finish writing, then hands the save over on the main process only
        (on each node's main with ``record_every_node`` when every node saves its own copy); the record is
        built and stored in the background (``last_record`` once there). Losses and metrics may be floats
        or scalar tensors. With ``accelerator`` the job is its ``project_dir`` (where
        ``automatic_checkpoint_naming`` writes ``checkpoints/checkpoint_<n>``), else the directory's parent.
        """
        role = launcher_role() if accelerator is None else accelerator_role(accelerator)
        wait_for_everyone(accelerator)
        if not role.records(self.record_every_node):
            return
        path = Path(directory)
        if accelerator is not None and model is not None:
            model = accelerator.unwrap_model(model)
        logged = {"step": step, "loss": train_loss, "eval_loss": eval_loss, **(metrics or {})}
        run_dir = Path(getattr(accelerator, "project_dir", None) or path.parent)
        self.hand_off(
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
        self.start_delivery()  # pending work from an earlier run goes out now
        self.watch_job(begin.job)
        previous = self.store.job(begin.job.id)
        if previous is not None and previous.job.status == "Running" and previous.owner != self.owner:
            logger.warning(
                "checkpoint-records: the previous run of job %s ended without finishing (killed?); "
                "it is reported Cancelled before this run starts",
                begin.job.name,
            )
            self._put_job(progressed(previous.job, "Cancelled"))
        snapshot = job_snapshot(
            begin.args,
            trainer_class_name(begin.args) if begin.args is not None else "loop",
            "Running",
            begin.base_model,
            job_id=begin.job.id,
            job_name=begin.job.name,
            created_at=time.time() if previous is None else previous.job.created_at,
            max_steps=begin.max_steps,
            model=begin.model,
            directory=str(begin.directory.absolute()),
        )
        earlier = LossSeries(() if previous is None else previous.job.training_loss)  # a resumed job's
        snapshot = snapshot.model_copy(update={"training_loss": earlier.bounded()})
        self._runs[begin.job.id] = _Run(snapshot, losses=earlier)
        self._put_job(snapshot)
        if begin.started_at is not None:  # what a crash left on disk without a record
            self.recover(begin.directory, begin.job, written_before=begin.started_at)

    def _record_save(self, save: Save) -> None:
        job = save.job
        run = self._runs.get(job.id)
        if run is None and save.reports_job:  # a loop without on_train_begin: its job starts here
            self._begin(Begin(job=job, directory=save.run_dir, base_model=save.base_model))
            run = self._runs[job.id]
        elif run is None:  # another node's main recording its own copy: the job is reported elsewhere
            self.start_delivery()
            self.watch_job(job)
            snapshot = job_snapshot(
                None, "loop", "Running", None, job_id=job.id, job_name=job.name, created_at=0
            )
            run = self._runs[job.id] = _Run(snapshot, reported=False)
        first = save.first_seq
        if first is None:
            first = self.store.log_length(job.id, before_step=save.step)
        entries = [
            log_entry(first + offset, entry, save.log_times.get(first + offset, save.logged_at))
            for offset, entry in enumerate(save.entries)
        ]
        logged = [entry for entry in entries if entry is not None]
        self.store.append_log(job.id, logged)
        self.store.truncate_log(job.id, first + len(save.entries))  # a resumed run's log replaces the rest
        run.log.add(save.entries, up_to_step=save.step)
        run.losses.add(logged, checkpoint_step=save.step)
        best = save.best.parsed() if save.best is not None else None
        record = self._build(
            save.directory,
            job,
            save.step,
            save.epoch,
            run.log.metrics(),
            base_model=save.base_model,
            world_size=save.world_size,
            node_suffix=save.node_suffix,
            name_template=save.name_template,
        )
        if save.written and record.status.status == "failed":  # save_total_limit got there first
            record = as_deleted(record, utc_now_iso())
        self.last_record = self._store_record(with_best(record, best) if best is not None else record)
        if best is not None:
            self._move_best(job, best, save.node_suffix, run)
        self.record_rotations()  # the Trainer's save_total_limit (or accelerate's) has just deleted some
        run.snapshot = progressed(
            run.snapshot,
            "Running",
            global_step=save.step,
            max_steps=save.max_steps or run.snapshot.max_steps,
            training_loss=run.losses.bounded(),
        )
        if run.reported:  # progress survives the process, and costs no disk flush
            self._put_job(run.snapshot, durable=False)
        self.delivery.wake()

    def _end(self, status: JobStatus, step: int | None) -> None:
        self.record_rotations()
        for run in list(self._runs.values()):
            if not run.reported:
                continue
            changes: dict[str, Any] = {"training_loss": run.losses.bounded()}
            if step is not None:
                changes["global_step"] = step
            self._put_job(progressed(run.snapshot, status, **changes))
        self._runs.clear()

    def _build(
        self,
        directory: Path,
        job: JobIdentity,
        step: int,
        epoch: Any,
        logged: LoggedMetrics,
        *,
        base_model: str | None = None,
        world_size: int = 1,
        node_suffix: str | None = None,
        recovered: bool = False,
        name_template: str | None = None,
    ) -> CheckpointRecord:
        """The record of ``directory``: what the run knows plus what is on disk (scan, readiness, config)."""
        node = self._node(node_suffix)
        name_fields = {"job_name": job.name, "job_id": job.id, "step": step, "node": node}
        context = SaveContext(
            record_id=checkpoint_id_for(job.id, step, node if node_suffix is not None else None),
            name=(name_template or self.name_template).format(**name_fields),
            job_id=job.id,
            job_name=job.name,
            step=step,
            epoch=epoch,
            node=node,
            logged=logged,
            base_model=base_model,
            library_version=transformers.__version__,
            world_size=world_size,
            recovered=recovered,
        )
        scanned = scan_checkpoint(directory)
        return build_record(
            context,
            scanned,
            read_model_facts(directory),
            assess_readiness(directory, scanned.files),
            utc_now_iso(),
        )

    def _node(self, node_suffix: str | None) -> str:
        return self.node if node_suffix is None else f"{self.node}/{node_suffix}"

    def _store_record(
        self, record: CheckpointRecord, durable: bool = True, sinks: Sequence[str] | None = None
    ) -> CheckpointRecord:
        """Store ``record`` (durably), queued for ``sinks`` (default: every record sink); watch its
        directory for rotation."""
        keys = [sink.key for sink in self.record_sinks] if sinks is None else sinks
        stored = self.store.put(record, keys, durable=durable).record
        if stored.status.status == "available":
            self._live[stored.id] = Path(stored.spec.directory)
        self.uploads.enqueue(stored)  # hard links and one short transaction; sent by the upload lane
        return stored

    def _move_best(self, job: JobIdentity, best: Best, node_suffix: str | None, run: _Run | None) -> None:
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

    def _put_job(self, snapshot: JobSnapshot, durable: bool = True) -> None:
        """Keep the job's document in the store (always) and queue it for the job-level sinks."""
        sinks = [sink.key for sink in self.job_sinks]
        self.store.put_job(snapshot, sinks, self.owner, durable=durable)
        self.delivery.wake()

    def watch_job(self, job: JobIdentity) -> None:
        """Watch the directories of ``job``'s available checkpoints on this node (those of a resumed run too)."""
        for stored in self.store.records(job.id):
            record = stored.record
            node = record.training.node
            if record.status.status == "available" and (
                node == self.node or node.startswith(f"{self.node}/")
            ):
                self._live[record.id] = Path(record.spec.directory)

    def record_rotations(self) -> None:
        """Mark the watched checkpoints whose directory is gone as ``deleted``, and queue the updates."""
        now = utc_now_iso()

        def deleted(record: CheckpointRecord) -> CheckpointRecord:
            return as_deleted(record, now) if record.status.status == "available" else record

        for record_id, directory in list(self._live.items()):
            if directory.is_dir():
                continue
            del self._live[record_id]
            self.store.update_record(record_id, deleted, self._notified, durable=False)

    def _notified(self, old: CheckpointRecord, new: CheckpointRecord) -> list[str]:
        """The record sinks a revision is news to (not openai or llama-stack for a deletion, say)."""
        return sinks_to_notify(self.record_sinks, old, new)

    def start_delivery(self) -> None:
        """Start delivering in the background, pending work from earlier runs included (main process only)."""
        self.delivery.start()
        self.uploads.start()

    # -- recovery: the checkpoint on disk is the source of truth --------------------------------------

    def recover(
        self,
        run_dir: str | os.PathLike[str],
        job: JobIdentity | None = None,
        written_before: float | None = None,
    ) -> list[CheckpointRecord]:
        """Record the checkpoints in ``run_dir`` that have no record yet, from their own files.

        The ids are those a live save would have given (job from ``run_dir`` unless ``job`` is given, step
        from ``trainer_state.json``, else the folder's number), so recovering twice, or a live save later,
        adds no duplicate. The records say ``recovered`` and are queued for the record sinks. The newest
        checkpoint's ``trainer_state.json`` also fills the job's log and names the best checkpoint.
        ``written_before`` (Unix time) leaves out folders written since: a live run is recording them.
        """
        path = Path(run_dir)
        job = job or self.job_for(str(path), None)
        folders = [
            (directory, step)
            for directory, step in checkpoint_folders(path)
            if written_before is None or modified_at(directory) < written_before
        ]
        records = self.store.records(job.id)
        recorded = {stored.record.spec.directory for stored in records}
        built = []
        for directory, step in folders:
            if str(directory.absolute()) in recorded or self.store.get(checkpoint_id_for(job.id, step)):
                continue
            found = read_checkpoint(directory, step)
            record = self._build(directory, job, found.step, found.epoch, found.logged, recovered=True)
            built.append(with_best(record, found.best) if found.best else record)
        # To the sinks configured here and to those the job's other records went to (the run that died
        # had its own); one disk flush for them all: the last commit's fsync makes the earlier ones durable.
        ids = {stored.record.id for stored in records}
        sinks = {sink.key for sink in self.record_sinks}
        sinks.update(
            d.sink for d in self.store.outbox.deliveries() if d.kind == "record" and d.record_id in ids
        )
        recovered = [
            self._store_record(record, durable=index == len(built) - 1, sinks=sorted(sinks))
            for index, record in enumerate(built)
        ]
        newest = read_checkpoint(*folders[-1]) if folders else None
        if newest is not None and newest.log_history:
            known = self.store.log_length(job.id)
            entries = [log_entry(seq, entry) for seq, entry in enumerate(newest.log_history) if seq >= known]
            self.store.append_log(job.id, [entry for entry in entries if entry is not None])
        if newest is not None and newest.best is not None:
            self._move_best(job, newest.best, None, self._runs.get(job.id))
        if newest is not None and job.id not in self._runs and self.store.job(job.id) is None:
            self._job_from_disk(path, job, newest, folders)
        if recovered:
            logger.info(
                "checkpoint-records: recorded %d checkpoint(s) of %s from disk: %s",
                len(recovered),
                job.name,
                ", ".join(record.name for record in recovered),
            )
            self.delivery.wake()
        return recovered

    def _job_from_disk(
        self, run_dir: Path, job: JobIdentity, newest: FoundCheckpoint, folders: list[tuple[Path, int]]
    ) -> None:
        """Store (and queue) the document of a job that left checkpoints but never a job: as a live run
        would have, so ``jobs``, the page and the job sinks know it."""
        stored = self.store.records(job.id)
        last = max(stored, key=lambda each: each.record.training.step, default=None)
        written = [(step, modified_at(directory)) for directory, step in folders]
        base_model = last.record.training.model if last is not None else None
        self._put_job(job_from_disk(job, run_dir, newest, written, base_model or None))

    def recover_known(self) -> list[CheckpointRecord]:
        """:meth:`recover` every directory where the store knows a job wrote checkpoints."""
        places: dict[Path, JobIdentity] = {}
        for stored_job in self.store.jobs():
            if stored_job.job.directory:
                places[Path(stored_job.job.directory)] = JobIdentity(stored_job.job.id, stored_job.job.name)
        for stored in self.store.records():
            metadata = stored.record.metadata
            place = Path(stored.record.spec.directory).parent
            if place.name == "checkpoints":  # accelerate's project_dir/checkpoints/checkpoint_<n>
                place = place.parent
            places.setdefault(place, JobIdentity(metadata.job_id, metadata.job_name))
        return [record for place, job in places.items() for record in self.recover(place, job)]

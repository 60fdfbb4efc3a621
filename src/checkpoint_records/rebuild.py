"""Records rebuilt from disk: the checkpoints a run wrote that have no record (a crash between the save and
the commit, a run without the callback), recorded after the fact from their own files (:mod:`.recovery`).

Called at the job's next ``on_train_begin`` (in the background), by ``checkpoint-records flush`` and by
``checkpoint-records import``; the records get the ids a live save would have given them, so recovering
twice, or a live save later, adds no duplicate, and a folder any job's record already describes is left
as it is (one checkpoint folder is one record). A rebuilt record carries what the disk and the store
know: the base model (the job's, else the adapter's or ``config.json``'s), the architecture, how many
processes wrote it (their ``rng_state_<rank>.pth``), the eval loss the run selected by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .bookkeeper import Bookkeeper
from .build import with_best
from .identity import checkpoint_id_for
from .job import JobIdentity
from .logs import logger
from .record import CheckpointRecord
from .recovery import (
    BadCheckpoint,
    Folder,
    FoundCheckpoint,
    accelerate_number,
    accelerate_step,
    checkpoint_folders,
    job_from_disk,
    modified_at,
    read_checkpoint,
    timed_log,
    written_times,
)
from .store import StoredRecord
from .validation import escape_text, path_of


@dataclass(frozen=True)
class Recovered:
    """What a recovery recorded, and the checkpoints it could not (each error names the file and field)."""

    records: list[CheckpointRecord] = field(default_factory=list)
    failed: list[BadCheckpoint] = field(default_factory=list)

    def __add__(self, other: Recovered) -> Recovered:
        return Recovered(self.records + other.records, self.failed + other.failed)


def recover(
    books: Bookkeeper, run_dir: Path, job: JobIdentity, written_before: float | None = None
) -> Recovered:
    """Record the checkpoints in ``run_dir`` that have no record yet, as ``job``'s, from their own files.

    The step comes from ``trainer_state.json``, else a Trainer folder's number, else (accelerate's
    folders count saves) :func:`~.recovery.accelerate_step`. A folder is recorded unless the store has
    a record of that directory (or, for a Trainer folder, of its step); one whose files cannot be used is
    in ``failed`` and the others are recorded all the same. The records say ``recovered`` and are queued
    for the record sinks. The newest readable checkpoint's ``trainer_state.json`` also fills the job's
    log and names the best checkpoint. ``written_before`` (Unix time) leaves out folders written since:
    a live run is recording them.
    """
    store = books.store
    folders = [
        folder
        for folder in checkpoint_folders(run_dir)
        if written_before is None or modified_at(folder.path) < written_before
    ]
    records = store.records(job.id)
    recorded = {stored.record.spec.directory for stored in records}
    missing = [
        folder
        for folder in folders
        if _recorded_as(folder) not in recorded
        # a Trainer folder's name is its step: that checkpoint is recorded
        and (folder.accelerate or not store.get(checkpoint_id_for(job.id, folder.number)))
    ]
    if missing:  # recorded by another job (a live run imported under another name): left as it is
        elsewhere = store.recorded_directories([_recorded_as(folder) for folder in missing])
        missing = [folder for folder in missing if _recorded_as(folder) not in elsewhere]
    base_model = _known_base_model(books, job, records)
    steps = _accelerate_steps(run_dir, records)
    taken = {stored.record.training.step for stored in records}
    built: list[CheckpointRecord] = []
    failed: list[BadCheckpoint] = []
    for folder in missing:
        try:
            found = read_checkpoint(folder)
        except BadCheckpoint as bad:
            failed.append(bad)
            continue
        step = found.step
        if folder.accelerate and not found.stated:
            step = steps[folder.number] = accelerate_step(folder.number, steps, taken)
        elif found.stated and step in taken:
            continue  # its own state names a step the job recorded from another folder
        taken.add(step)
        record = books.build(
            folder.path,
            job,
            step,
            found.epoch,
            found.logged,
            base_model=base_model,
            world_size=None,
            recovered=True,
        )
        built.append(with_best(record, found.best) if found.best else record)
    # To the sinks configured here and to those the job's other records went to (the run that died
    # had its own); one disk flush for them all: the last commit's fsync makes the earlier ones durable.
    ids = {stored.record.id for stored in records}
    sinks = {sink.key for sink in books.record_sinks}
    sinks.update(d.sink for d in store.outbox.deliveries() if d.kind == "record" and d.record_id in ids)
    recovered = [
        books.store_record(record, durable=index == len(built) - 1, sinks=sorted(sinks))
        for index, record in enumerate(built)
    ]
    theirs = bool(records or recovered) or job.id in books.runs
    newest = _newest(folders, failed) if theirs else None  # else another job's folders
    if newest is not None and newest.log_history:  # what the run logged before it died, kept with a time
        entries = timed_log(newest.log_history, written_times(folders), start=store.log_length(job.id))
        store.append_log(job.id, entries, sinks=books.log_sinks)
    if newest is not None and newest.best is not None:
        books.move_best(job, newest.best, None, books.runs.get(job.id))
    if newest is not None and job.id not in books.runs and store.job(job.id) is None:
        _job_from_disk(books, run_dir, job, newest, folders)
    if recovered:
        logger.info(
            "checkpoint-records: recorded %d checkpoint(s) of %s from disk: %s",
            len(recovered),
            job.name,
            ", ".join(record.name for record in recovered),
        )
        books.delivery.wake()
    return Recovered(recovered, failed)


def _recorded_as(folder: Folder) -> str:
    """The directory a record of ``folder`` names: absolute, escaped where not UTF-8."""
    return escape_text(str(folder.path.absolute()))


def _accelerate_steps(run_dir: Path, records: list[StoredRecord]) -> dict[int, int]:
    """The steps the job recorded for its accelerate folders of ``run_dir``, by folder number."""
    parent = (run_dir / "checkpoints").absolute()
    steps = {}
    for stored in records:
        directory = path_of(stored.record.spec.directory)
        number = accelerate_number(directory) if directory.parent == parent else None
        if number is not None:
            steps[number] = stored.record.training.step
    return steps


def _newest(folders: list[Folder], failed: list[BadCheckpoint]) -> FoundCheckpoint | None:
    """What the newest checkpoint whose ``trainer_state.json`` can be read says (those that cannot are
    added to ``failed``, once)."""
    for folder in reversed(folders):
        try:
            return read_checkpoint(folder)
        except BadCheckpoint as bad:
            if all(known.directory != bad.directory for known in failed):
                failed.append(bad)
    return None


def _known_base_model(books: Bookkeeper, job: JobIdentity, records: list[StoredRecord]) -> str | None:
    """The base model the store knows for ``job`` (its document's, else its newest record's): what the live
    run knew, so it comes first, as in a live save; without it the checkpoint's own files say
    (:func:`~.build.build_record`: an adapter's base, ``config.json``'s ``_name_or_path``)."""
    stored_job = books.store.job(job.id)
    if stored_job is not None and stored_job.job.base_model:
        return stored_job.job.base_model
    models = [stored.record.training.model for stored in records if stored.record.training.model]
    return models[-1] if models else None


def _job_from_disk(
    books: Bookkeeper, run_dir: Path, job: JobIdentity, newest: FoundCheckpoint, folders: list[Folder]
) -> None:
    """Store (and queue) the document of a job that left checkpoints but never a job: as a live run
    would have, so ``jobs``, the page and the job sinks know it."""
    stored = books.store.records(job.id)
    last = max(stored, key=lambda each: each.record.training.step, default=None)
    written = written_times(folders)
    base_model = last.record.training.model if last is not None else None
    books.put_job(job_from_disk(job, run_dir, newest, written, base_model or None))


def recover_known(books: Bookkeeper) -> Recovered:
    """:func:`recover` every directory where the store knows a job wrote checkpoints."""
    places: dict[Path, JobIdentity] = {}
    for stored_job in books.store.jobs():
        if stored_job.job.directory:
            places[path_of(stored_job.job.directory)] = JobIdentity(stored_job.job.id, stored_job.job.name)
    for stored in books.store.records():
        metadata = stored.record.metadata
        place = path_of(stored.record.spec.directory).parent
        if place.name == "checkpoints":  # accelerate's project_dir/checkpoints/checkpoint_<n>
            place = place.parent
        places.setdefault(place, JobIdentity(metadata.job_id, metadata.job_name))
    return sum((recover(books, place, job) for place, job in places.items()), Recovered())

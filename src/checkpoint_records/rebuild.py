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

from pathlib import Path

from .bookkeeper import Bookkeeper
from .build import with_best
from .identity import checkpoint_id_for
from .job import JobIdentity
from .logs import logger
from .record import CheckpointRecord
from .recovery import (
    FoundCheckpoint,
    checkpoint_folders,
    job_from_disk,
    modified_at,
    read_checkpoint,
    timed_log,
    written_times,
)
from .store import StoredRecord


def recover(
    books: Bookkeeper, run_dir: Path, job: JobIdentity, written_before: float | None = None
) -> list[CheckpointRecord]:
    """Record the checkpoints in ``run_dir`` that have no record yet, as ``job``'s, from their own files.

    The step comes from ``trainer_state.json``, else the folder's number. The records say ``recovered``
    and are queued for the record sinks. The newest checkpoint's ``trainer_state.json`` also fills the
    job's log and names the best checkpoint. ``written_before`` (Unix time) leaves out folders written
    since: a live run is recording them.
    """
    store = books.store
    folders = [
        (directory, step)
        for directory, step in checkpoint_folders(run_dir)
        if written_before is None or modified_at(directory) < written_before
    ]
    records = store.records(job.id)
    recorded = {stored.record.spec.directory for stored in records}
    missing = [
        (directory, step)
        for directory, step in folders
        if str(directory.absolute()) not in recorded and not store.get(checkpoint_id_for(job.id, step))
    ]
    if missing:  # recorded by another job (a live run imported under another name): left as it is
        elsewhere = store.recorded_directories([str(directory.absolute()) for directory, _ in missing])
        missing = [
            (directory, step) for directory, step in missing if str(directory.absolute()) not in elsewhere
        ]
    base_model = _known_base_model(books, job, records)
    built = []
    for directory, step in missing:
        found = read_checkpoint(directory, step)
        record = books.build(
            directory,
            job,
            found.step,
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
    newest = read_checkpoint(*folders[-1]) if folders and theirs else None  # else another job's folders
    if newest is not None and newest.log_history:  # what the run logged before it died, kept with a time
        written = written_times(folders)
        store.append_log(job.id, timed_log(newest.log_history, written, start=store.log_length(job.id)))
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
    return recovered


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
    books: Bookkeeper,
    run_dir: Path,
    job: JobIdentity,
    newest: FoundCheckpoint,
    folders: list[tuple[Path, int]],
) -> None:
    """Store (and queue) the document of a job that left checkpoints but never a job: as a live run
    would have, so ``jobs``, the page and the job sinks know it."""
    stored = books.store.records(job.id)
    last = max(stored, key=lambda each: each.record.training.step, default=None)
    written = written_times(folders)
    base_model = last.record.training.model if last is not None else None
    books.put_job(job_from_disk(job, run_dir, newest, written, base_model or None))


def recover_known(books: Bookkeeper) -> list[CheckpointRecord]:
    """:func:`recover` every directory where the store knows a job wrote checkpoints."""
    places: dict[Path, JobIdentity] = {}
    for stored_job in books.store.jobs():
        if stored_job.job.directory:
            places[Path(stored_job.job.directory)] = JobIdentity(stored_job.job.id, stored_job.job.name)
    for stored in books.store.records():
        metadata = stored.record.metadata
        place = Path(stored.record.spec.directory).parent
        if place.name == "checkpoints":  # accelerate's project_dir/checkpoints/checkpoint_<n>
            place = place.parent
        places.setdefault(place, JobIdentity(metadata.job_id, metadata.job_name))
    return [record for place, job in places.items() for record in recover(books, place, job)]

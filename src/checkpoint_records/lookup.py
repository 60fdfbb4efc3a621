"""What a command names, found in the store: a record by name (``JOB/NAME``, an id), the store itself
only when it exists (reading an empty home must not create a database there)."""

from __future__ import annotations

from .settings import Settings
from .store import DATABASE_NAME, RecordStore, StoredRecord


class NotFound(Exception):
    """A record name that names no record, or more than one: the message says which and what to type."""


def open_existing(settings: Settings) -> RecordStore | None:
    """The store, when it exists."""
    if not (settings.home / DATABASE_NAME).exists():
        return None
    return RecordStore(settings.home)


def find_record(store: RecordStore, text: str) -> StoredRecord:
    """The one record ``text`` names: a record id, a name, or ``JOB/NAME`` (job name, id or id prefix).

    Two jobs with the same ``run_name`` have records of the same names; such a name is refused with
    the candidates rather than silently picking one.
    """
    found = store.find(text)
    if not found and "/" in text:
        for split in (index for index, char in enumerate(text) if char == "/"):
            job, name = text[:split], text[split + 1 :]
            found = [
                stored
                for stored in store.find(name)
                if job in (stored.record.metadata.job_name, stored.record.metadata.job_id)
                or (len(job) >= 4 and stored.record.metadata.job_id.startswith(job))
            ]
            if found:
                break
    if not found:
        raise NotFound(f"no record named {text!r} in {store.path} (see: checkpoint-records list)")
    if len({stored.record.id for stored in found}) > 1:
        candidates = "\n".join(
            f"  {stored.record.metadata.job_id[:8]}/{stored.record.name}  (job {stored.record.metadata.job_name},"
            f" record id {stored.record.id}, created {stored.record.status.created_at})"
            for stored in found
        )
        raise NotFound(
            f"{text!r} names {len(found)} records of different jobs; say which with JOB/NAME or the "
            f"record id:\n{candidates}"
        )
    return found[0]

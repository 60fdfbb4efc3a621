"""What a name typed on the command line names: a record (``inspect``, ``resend``, ``forget``), and the
store it is looked up in, when there is one."""

from __future__ import annotations

import sys

from .settings import Settings
from .store import DATABASE_NAME, RecordStore, StoredRecord


class NotFound(Exception):
    """A record name that names no record, or more than one: the message says which and what to type."""


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


def open_existing(settings: Settings) -> RecordStore | None:
    """The store, when it exists: reading an empty home must not create a database there."""
    if not (settings.home / DATABASE_NAME).exists():
        return None
    return RecordStore(settings.home)


def existing_or_say(settings: Settings, what: str) -> RecordStore | None:
    """:func:`open_existing`, saying ``WHAT: no store at PATH`` on stderr when there is none."""
    store = open_existing(settings)
    if store is None:
        print(f"{what}: no store at {settings.home / DATABASE_NAME}", file=sys.stderr)
    return store

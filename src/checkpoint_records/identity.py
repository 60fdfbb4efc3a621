"""Deterministic identifiers: the same job and step always give the same ids.

Ids are UUIDv5 values, so a record that is emitted again (a resumed run, a replayed outbox) is
recognisably the same record, and receivers can deduplicate on it. Each id is scoped to what it names:
a record id to its job and step (the registry refuses one that is not), an idempotency key to the very
document it carries (so no one can claim a key before the document exists).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

from .validation import escape_text

#: Namespace of every id this library derives (a fixed, random UUID).
NAMESPACE = uuid.UUID("5d3c4f0e-8f7a-4c55-9a59-1b3f4f0d2c61")


def job_id_for(key: str) -> str:
    """The job id for an explicit id (kept if it is already a UUID) or any stable job key."""
    try:
        return str(uuid.UUID(key))
    except ValueError:
        return str(uuid.uuid5(NAMESPACE, f"job:{key}"))


def default_job_key(output_dir: str, run_name: str | None) -> str:
    """What identifies a Trainer job across resumes: where it writes and what it is called (as valid
    text: a directory whose name is not UTF-8 is named with backslash escapes, as records name it)."""
    return escape_text(f"{os.path.abspath(output_dir)}::{run_name or ''}")


def given_run_name(output_dir: str, run_name: str | None) -> str | None:
    """``run_name`` when the user chose one: transformers 4.46 to 4.54 default it to ``output_dir``, a path
    that names nothing (and would put ``/`` in every name), so that default counts as no name."""
    if not run_name or os.path.normpath(run_name) == os.path.normpath(output_dir):
        return None
    return run_name


def display_name(text: str) -> str:
    """A job or record name as people type it: never a ``/`` (the CLI reads ``JOB/NAME``), never empty."""
    return text.strip().replace("/", "-").strip("-") or "job"


def checkpoint_id_for(job_id: str, step: int, node: str | None = None) -> str:
    """The record id of the checkpoint at ``step`` of ``job_id`` (per node when nodes are told apart)."""
    suffix = f"@{node}" if node else ""
    return str(uuid.uuid5(uuid.UUID(job_id), f"checkpoint:{step}{suffix}"))


def is_checkpoint_id(record_id: str, job_id: str, step: int, node: str | None) -> bool:
    """Whether ``record_id`` is the id :func:`checkpoint_id_for` derives for this job and step (with or
    without the node: only runs that record every node's copy tell nodes apart)."""
    try:
        derived = {checkpoint_id_for(job_id, step), checkpoint_id_for(job_id, step, node)}
    except ValueError:  # a job id that is not a UUID derives nothing
        return False
    return record_id in derived


def idempotency_key(record_id: str, revision: int, wire_format: str, document: Any) -> str:
    """Names one version of one record in one wire format, bound to the ``document`` sent for it:
    stable across retries (rendering is pure), new on update. Derived from the document's content, the
    key cannot be known before the document is, so no one can post something else under it first."""
    content = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
    return str(
        uuid.uuid5(_namespace_of(record_id), f"revision:{revision}:format:{wire_format}:sha256:{digest}")
    )


def _namespace_of(document_id: str) -> uuid.UUID:
    """The UUID a document's derived ids hang from: its id, or one derived from it when a store holds a
    document whose id is not a UUID (never written by this library, but read, so never a crash)."""
    try:
        return uuid.UUID(document_id)
    except ValueError:
        return uuid.uuid5(NAMESPACE, f"document:{document_id}")

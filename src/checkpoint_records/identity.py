"""Deterministic identifiers: the same job and step always give the same ids.

Ids are UUIDv5 values, so a record that is emitted again (a resumed run, a replayed outbox) is
recognisably the same record, and receivers can deduplicate on it.
"""

from __future__ import annotations

import os
import uuid

#: Namespace of every id this library derives (a fixed, random UUID).
NAMESPACE = uuid.UUID("5d3c4f0e-8f7a-4c55-9a59-1b3f4f0d2c61")


def job_id_for(key: str) -> str:
    """The job id for an explicit id (kept if it is already a UUID) or any stable job key."""
    try:
        return str(uuid.UUID(key))
    except ValueError:
        return str(uuid.uuid5(NAMESPACE, f"job:{key}"))


def default_job_key(output_dir: str, run_name: str | None) -> str:
    """What identifies a Trainer job across resumes: where it writes and what it is called."""
    return f"{os.path.abspath(output_dir)}::{run_name or ''}"


def checkpoint_id_for(job_id: str, step: int, node: str | None = None) -> str:
    """The record id of the checkpoint at ``step`` of ``job_id`` (per node when nodes are told apart)."""
    suffix = f"@{node}" if node else ""
    return str(uuid.uuid5(uuid.UUID(job_id), f"checkpoint:{step}{suffix}"))


def idempotency_key(record_id: str, revision: int, wire_format: str) -> str:
    """Names one version of one record in one wire format: stable across retries, new on update."""
    return str(uuid.uuid5(uuid.UUID(record_id), f"revision:{revision}:format:{wire_format}"))

"""Reading a store's records back in tests: by step, and as a record rebuilt from disk compares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from checkpoint_records import RecordStore
from checkpoint_records.record import CheckpointRecord


def by_step(home: Path) -> dict[int, CheckpointRecord]:
    """The records of the store at ``home`` by step; fails when one checkpoint was recorded twice."""
    records = [stored.record for stored in RecordStore(home).records()]
    steps = [record.training.step for record in records]
    assert len(steps) == len(set(steps)), f"a checkpoint recorded twice: {steps}"
    return {record.training.step: record for record in records}


def without_recovery_fields(record: CheckpointRecord) -> dict[str, Any]:
    """``record``'s document less what differs between a live record and the same checkpoint rebuilt from
    disk: that it says it was recovered, and when (and how often) it was written."""
    data = record.to_dict()
    data["metadata"].pop("revision")
    for key in ("createdAt", "updatedAt"):
        data["status"].pop(key)
    data["status"]["metadata"].pop("recovered")
    return data

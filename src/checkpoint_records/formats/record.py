"""The canonical format: the whole record, as stored (the richest)."""

from __future__ import annotations

from typing import Any

from ..record import CheckpointRecord
from .base import WireFormat


class RecordFormat(WireFormat):
    name = "record"

    def render(self, record: CheckpointRecord) -> dict[str, Any]:
        return record.to_dict()

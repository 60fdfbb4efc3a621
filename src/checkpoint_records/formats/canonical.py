"""The canonical format, named `record`: the whole record as stored (the richest), with no mapping."""

from __future__ import annotations

from typing import Any

from ..record import CheckpointRecord
from .base import WireFormat


class RecordFormat(WireFormat):
    name = "record"

    def render(self, record: CheckpointRecord) -> dict[str, Any]:
        return record.to_dict()

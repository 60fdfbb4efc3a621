"""The wire-format interface: one canonical record in, one provider's JSON object out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from ..record import CheckpointRecord


class WireFormat(ABC):
    """Renders a record into a provider's exact shape. Pure: same record, same output."""

    #: The name users select it by (``HttpSink(url, format=name)``, ``name+https://...``).
    name: str

    @abstractmethod
    def render(self, record: CheckpointRecord) -> dict[str, Any]:
        """The JSON object to send for ``record``."""

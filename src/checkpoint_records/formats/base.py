"""The wire-format interface: one canonical record in, one provider's JSON object out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from ..record import CheckpointRecord


class WireFormat(ABC):
    """Renders a record into a provider's exact shape. Pure: same record, same output."""

    #: The name users select it by (``HttpSink(url, format=name)``, ``name+https://...``).
    name: str
    #: False for a format of job-level events: its sinks get job snapshots, not checkpoint records.
    renders_records = True
    #: True when its sinks get the job's snapshots (lifecycle, progress); ``render_stored`` then gets
    #: both kinds of stored document when ``renders_records`` is true as well.
    renders_jobs = False
    #: True when its sinks get the job's logged series too, page by page (:mod:`..series`).
    renders_logs = False

    @abstractmethod
    def render(self, record: CheckpointRecord) -> dict[str, Any]:
        """The JSON object to send for ``record``."""

    def renders_same(self, old: CheckpointRecord, new: CheckpointRecord) -> bool:
        """Whether ``new`` says nothing this format can express that ``old`` did not.

        A revision that renders the same is not queued for this format's sinks: OpenAI and Llama Stack
        cannot say ``deleted``, so a rotated checkpoint would reach them as a second, identical body.
        """
        return self.render(old) == self.render(new)

    def render_stored(self, body: str) -> dict[str, Any]:
        """The JSON object to send for a document as the store keeps it (a record's JSON, by default)."""
        return self.render(CheckpointRecord.from_json(body))

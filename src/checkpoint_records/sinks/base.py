"""The sink interface: deliver one record, or say why not."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..record import CheckpointRecord


class Sink(ABC):
    """A destination for records. Implementations are small: one ``send``, optionally ``close``."""

    @property
    @abstractmethod
    def key(self) -> str:
        """A stable, secret-free name for this destination: the outbox tracks deliveries by it."""

    @abstractmethod
    def send(self, record: CheckpointRecord, idempotency_key: str) -> None:
        """Deliver ``record``; raise to have it retried or dead-lettered."""

    def close(self) -> None:  # noqa: B027 - optional hook, most sinks hold nothing
        """Release connections; called once when the recorder closes."""

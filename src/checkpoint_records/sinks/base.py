"""The sink interface: deliver one rendered document, or say whether trying again can help."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from ..formats import DEFAULT_FORMAT, WireFormat, get_format


class DeliveryError(Exception):
    """A send that did not deliver. The message must already be free of secrets."""

    retryable = True

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class RetryLater(DeliveryError):
    """Worth trying again: the destination is down, slow, overloaded or rate-limiting."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason, status=status)
        #: Seconds the destination asked us to wait (``Retry-After``); it pauses the whole sink.
        self.retry_after = retry_after


class Rejected(DeliveryError):
    """Will not succeed as it stands (a 4xx, a redirect, a TLS failure): dead-lettered until re-sent."""

    retryable = False

    def __init__(self, reason: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(reason, status=status)
        #: The destination's own name for the error (MLflow's ``RESOURCE_DOES_NOT_EXIST``), "" if none.
        self.code = code


class Sink(ABC):
    """A destination for records. Implementations are small: ``key``, ``send``, optionally ``close``.

    The delivery worker renders each record with ``self.format`` and calls ``send`` from its own thread,
    one call at a time per sink; ``send`` raises :class:`RetryLater` or :class:`Rejected` (any other
    exception counts as ``RetryLater``).
    """

    #: The longest one ``send`` can take: a delivery's claim is always held longer, so no other process
    #: sends the same record meanwhile. A sink whose sends may take longer sets its own bound.
    max_send_seconds: float = 60.0

    def __init__(self, format: str | WireFormat = DEFAULT_FORMAT) -> None:
        self.format = get_format(format) if isinstance(format, str) else format

    @property
    @abstractmethod
    def key(self) -> str:
        """A stable, secret-free name for this destination and format: the outbox tracks deliveries by it."""

    @abstractmethod
    def send(self, document: dict[str, Any], idempotency_key: str) -> None:
        """Deliver ``document``; ``idempotency_key`` names this version of it in this format."""

    def close(self) -> None:  # noqa: B027 - optional hook, most sinks hold nothing
        """Release connections; called once when delivery stops."""

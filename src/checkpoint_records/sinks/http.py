"""``HttpSink``: POST each record as JSON, with an idempotency key, to an HTTP(S) endpoint.

It owns no retry loop (the delivery worker does) and no wire: one ``send`` is one POST through the
shared :class:`~.transport.HttpTransport`, which checks the URL, bounds the request with a total
deadline, follows no redirect and maps the reply to delivered, :class:`RetryLater` or :class:`Rejected`
with a secret-free reason.
"""

from __future__ import annotations

import os
from typing import Any

from ..formats import DEFAULT_FORMAT, WireFormat
from ..redaction import public_url
from ..signing import SigningSecret
from .base import Sink
from .transport import DEFAULT_DEADLINE, DEFAULT_TIMEOUT, HttpTransport


class HttpSink(Sink):
    """POSTs every record (rendered in ``format``) to ``url``.

    ``token`` is sent as ``Authorization: Bearer``; it never appears in the sink's key, the outbox, logs
    or errors. Credentials in the URL (``user:password@``) are refused: they would replace the token
    with ``Basic`` auth. TLS certificates are verified (against ``ca_bundle`` when given). A credential
    (the token, or a query string, whose values are treated as secrets) over plain ``http://`` to a host
    other than loopback is refused unless ``allow_insecure_http=True``. One request, from connecting to
    the last byte of the reply, takes at most ``deadline`` seconds. With ``signing_secret`` (``whsec_``
    and base64), every POST is signed as Standard Webhooks specifies, ``webhook-id`` derived from the
    idempotency key.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        format: str | WireFormat = DEFAULT_FORMAT,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        ca_bundle: str | os.PathLike[str] | None = None,
        allow_insecure_http: bool = False,
        signing_secret: SigningSecret | str | None = None,
    ) -> None:
        super().__init__(format)
        self._transport = HttpTransport(
            url,
            authorization=f"Bearer {token}" if token else None,
            credential="a token" if token else "",
            secrets=[token],
            ca_bundle=ca_bundle,
            allow_insecure_http=allow_insecure_http,
            timeout=timeout,
            deadline=deadline,
            signing_secret=signing_secret,
        )
        self.url = url
        self.timeout = self._transport.timeout
        self.max_send_seconds = self._transport.deadline
        prefix = "" if self.format.name == DEFAULT_FORMAT else f"{self.format.name}+"
        self._key = prefix + public_url(url)

    def __repr__(self) -> str:
        return f"HttpSink({self._key!r})"

    @property
    def key(self) -> str:
        return self._key

    def send(self, document: dict[str, Any], idempotency_key: str) -> None:
        self._transport.post(document, idempotency_key)

    def close(self) -> None:
        self._transport.close()

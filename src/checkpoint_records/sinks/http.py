"""``HttpSink``: POST each record as JSON, with an idempotency key, to an HTTP(S) endpoint.

It owns no retry loop (the delivery worker does): one ``send`` is one request, with explicit connect and
read timeouts, no redirects followed (a token must not travel where the user did not send it), and the
outcome classified as delivered, :class:`RetryLater` or :class:`Rejected` with a secret-free reason.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from ..errors import ConfigurationError
from ..formats import DEFAULT_FORMAT, WireFormat
from ..redaction import Redactor, public_url, url_secrets
from .base import Rejected, RetryLater, Sink

#: Statuses worth retrying: the request may succeed later as it is.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: How much of a reply we read: enough for an error body, never a huge one into memory.
MAX_REPLY_BYTES = 64 * 1024
DEFAULT_TIMEOUT = (5.0, 10.0)
USER_AGENT = "checkpoint-records"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from now; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def describe_reply(status: int, reason: str, body: bytes) -> str:
    """A one-line account of an error reply: RFC 7807 ``{title, detail}``, ``{"error": ...}``, or text."""
    head = f"HTTP {status} {reason}".strip()
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    detail: Any = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            detail = ": ".join(str(error[k]) for k in ("code", "type", "message") if error.get(k))
        elif error:
            detail = error
        else:
            detail = ": ".join(str(data[k]) for k in ("title", "detail") if data.get(k)) or None
    if detail is None and text:
        detail = text
    if not detail:
        return head
    detail = " ".join(str(detail).split())
    return f"{head}: {detail[:300]}{'...' if len(detail) > 300 else ''}"


def _read_limited(response: requests.Response, limit: int = MAX_REPLY_BYTES) -> bytes:
    """Up to ``limit`` bytes of the body; reading it whole lets the connection be reused."""
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=16 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


class HttpSink(Sink):
    """POSTs every record (rendered in ``format``) to ``url``.

    ``token`` is sent as ``Authorization: Bearer``; it never appears in the sink's key, the outbox, logs
    or errors. TLS certificates are verified (against ``ca_bundle`` when given). A token over plain
    ``http://`` to a host other than loopback is refused unless ``allow_insecure_http=True``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        format: str | WireFormat = DEFAULT_FORMAT,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        ca_bundle: str | os.PathLike[str] | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        super().__init__(format)
        parts = urlsplit(url)
        shown = public_url(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"sink URL {shown!r} must be an http:// or https:// URL with a host")
        if token and parts.scheme == "http" and not is_loopback(parts.hostname) and not allow_insecure_http:
            raise ConfigurationError(
                f"refusing to send a token over plain http:// to {parts.hostname}: use https://, or opt in "
                "with allow_insecure_http=True (CHECKPOINT_RECORDS_ALLOW_INSECURE_HTTP=1)"
            )
        if ca_bundle is not None and not os.path.isfile(ca_bundle):
            raise ConfigurationError(f"CA bundle {os.fspath(ca_bundle)!r} is not a readable file")
        if len(timeout) != 2 or not all(isinstance(t, (int, float)) and t > 0 for t in timeout):
            raise ConfigurationError(f"timeout={timeout!r} must be (connect seconds, read seconds), both > 0")
        self.url = url
        self.timeout = (float(timeout[0]), float(timeout[1]))
        self._token = token
        self._verify: bool | str = os.fspath(ca_bundle) if ca_bundle is not None else True
        self._redact = Redactor([token, *url_secrets(url)])
        prefix = "" if self.format.name == DEFAULT_FORMAT else f"{self.format.name}+"
        self._key = prefix + shown
        self._session: requests.Session | None = None

    def __repr__(self) -> str:
        return f"HttpSink({self._key!r})"

    @property
    def key(self) -> str:
        return self._key

    def _connection(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            session.trust_env = False  # no .netrc credentials or proxy settings slipped in
            session.mount("https://", HTTPAdapter(pool_maxsize=1, max_retries=0))
            session.mount("http://", HTTPAdapter(pool_maxsize=1, max_retries=0))
            self._session = session
        return self._session

    def send(self, document: dict[str, Any], idempotency_key: str) -> None:
        body = json.dumps(document, allow_nan=False, separators=(",", ":")).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            "User-Agent": USER_AGENT,
        }
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = self._connection().post(
                self.url,
                data=body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
                verify=self._verify,
                stream=True,
            )
        except requests.exceptions.SSLError as error:
            raise Rejected(self._redact(f"TLS verification failed: {error}")) from None
        except requests.RequestException as error:
            raise RetryLater(self._redact(f"{type(error).__name__}: {error}")) from None
        with response:
            try:
                reply = _read_limited(response)
            except requests.RequestException as error:
                if response.ok:  # delivered; only the reply was cut short
                    return
                raise RetryLater(self._redact(f"reply unreadable: {type(error).__name__}: {error}")) from None
            status = response.status_code
            if 200 <= status < 300:
                return
            reason = self._redact(describe_reply(status, response.reason or "", reply))
            if status in RETRY_STATUSES:
                raise RetryLater(
                    reason,
                    status=status,
                    retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                )
            if 300 <= status < 400:
                location = public_url(response.headers.get("Location", "")) or "nowhere"
                reason = f"{reason} (redirect to {location} not followed: configure the final URL)"
            raise Rejected(reason, status=status)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

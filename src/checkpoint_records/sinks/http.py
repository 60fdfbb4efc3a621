"""``HttpSink``: POST each record as JSON, with an idempotency key, to an HTTP(S) endpoint.

It owns no retry loop (the delivery worker does): one ``send`` is one request, with explicit connect and
read timeouts and a total deadline (:mod:`.deadline` says why), no redirects followed (a token must not
travel where the user did not send it), and the outcome classified as delivered, :class:`RetryLater` or
:class:`Rejected` with a secret-free reason.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import InvalidHeader
from urllib3.util import Retry

from ..errors import ConfigurationError
from ..formats import DEFAULT_FORMAT, WireFormat
from ..redaction import Redactor, public_url, url_secrets
from .base import DeliveryError, Rejected, RetryLater, Sink
from .deadline import Deadline, DeadlineAdapter

#: Statuses worth retrying: the request may succeed later as it is.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: How much of a reply we read: enough for an error body, never a huge one into memory.
MAX_REPLY_BYTES = 64 * 1024
DEFAULT_TIMEOUT = (5.0, 10.0)
#: The longest one request may take from connecting to the last byte of the reply.
DEFAULT_DEADLINE = 30.0
#: Longest error detail kept from a reply (after secrets are masked).
MAX_DETAIL = 300
USER_AGENT = "checkpoint-records"
_RETRY_AFTER = Retry(0)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date, urllib3's parsing) as seconds from now, at
    least 0; None when absent or not a valid value (``nan``, ``soon``, a fraction)."""
    if not value:
        return None
    try:
        return float(_RETRY_AFTER.parse_retry_after(value))
    except InvalidHeader:
        return None


def describe_reply(status: int, reason: str, body: bytes, redact: Redactor | None = None) -> str:
    """A one-line account of an error reply: RFC 7807 ``{title, detail}``, ``{"error": ...}``, or text.

    Everything the server said goes through ``redact`` whole, before anything is cut: a secret it
    echoes is masked wherever it falls.
    """
    scrub = redact or Redactor(())
    head = scrub(f"HTTP {status} {reason}".strip())
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
    detail = scrub(" ".join(str(detail).split()))
    return f"{head}: {detail[:MAX_DETAIL]}{'...' if len(detail) > MAX_DETAIL else ''}"


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
    or errors. Credentials in the URL (``user:password@``) are refused: they would replace the token
    with ``Basic`` auth. TLS certificates are verified (against ``ca_bundle`` when given). A credential
    (the token, or a query string, whose values are treated as secrets) over plain ``http://`` to a host
    other than loopback is refused unless ``allow_insecure_http=True``. One request, from connecting to
    the last byte of the reply, takes at most ``deadline`` seconds.
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
    ) -> None:
        super().__init__(format)
        shown = public_url(url)
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - urllib's check of the port: a number in 0..65535
        except ValueError as error:
            raise ConfigurationError(f"sink URL {shown!r} is not a valid URL: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"sink URL {shown!r} must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ConfigurationError(
                f"sink URL {shown!r} carries credentials (user:password@): remove them from the URL and "
                "give the token with token=... or CHECKPOINT_RECORDS_TOKEN (sent as Authorization: Bearer)"
            )
        credential = "a token" if token else "URL query values (treated as secrets)" if parts.query else ""
        cleartext = parts.scheme == "http" and not is_loopback(parts.hostname)
        if credential and cleartext and not allow_insecure_http:
            raise ConfigurationError(
                f"refusing to send {credential} over plain http:// to {parts.hostname}: use https://, or "
                "opt in with allow_insecure_http=True (CHECKPOINT_RECORDS_ALLOW_INSECURE_HTTP=1)"
            )
        if ca_bundle is not None and not os.path.isfile(ca_bundle):
            raise ConfigurationError(f"CA bundle {os.fspath(ca_bundle)!r} is not a readable file")
        if len(timeout) != 2 or not all(_positive(t) for t in timeout):
            raise ConfigurationError(f"timeout={timeout!r} must be (connect seconds, read seconds), both > 0")
        if not _positive(deadline):
            raise ConfigurationError(f"deadline={deadline!r} must be a number of seconds > 0")
        self.url = url
        self.timeout = (float(timeout[0]), float(timeout[1]))
        self.max_send_seconds = float(deadline)
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
            session.mount("https://", DeadlineAdapter(pool_maxsize=1, max_retries=0))
            session.mount("http://", DeadlineAdapter(pool_maxsize=1, max_retries=0))
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
        with Deadline(self.max_send_seconds) as deadline:
            try:
                self._post(body, headers)
            except DeliveryError as error:  # a TLS handshake cut short reads as a TLS failure: it is not
                if not deadline.expired:
                    raise
                self.close()  # the connection was cut: never reuse it
                raise RetryLater(
                    f"no complete reply within the {self.max_send_seconds:g} s deadline ({error.reason})"
                ) from None

    def _post(self, body: bytes, headers: dict[str, str]) -> None:
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
            reason = describe_reply(status, response.reason or "", reply, self._redact)
            if status in RETRY_STATUSES:
                raise RetryLater(
                    reason,
                    status=status,
                    retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                )
            if 300 <= status < 400:
                location = self._redact(public_url(response.headers.get("Location", ""))) or "nowhere"
                reason = f"{reason} (redirect to {location} not followed: configure the final URL)"
            raise Rejected(reason, status=status)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0

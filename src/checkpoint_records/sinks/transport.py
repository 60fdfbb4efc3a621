"""The one HTTP transport every sink sends through: how a request travels and what its reply means.

Sinks say *what* to send (:class:`~.http.HttpSink` a record, :class:`~.mlflow.MlflowSink` REST calls);
everything about the wire is decided here, once, so two sinks cannot drift apart again:

- the URL rules (docs/design.md, "What happens when..."): an http(s) URL with a valid host and port, no
  ``user:password@``, and no credential (a token, or a query string, whose values are treated as
  secrets) over plain ``http://`` to anything but loopback unless the user opted in;
- the session: TLS always verified (against a CA bundle when given), no proxies or ``.netrc`` slipped in
  from the environment, one kept-alive connection, our user agent, the ``Authorization`` header;
- a total deadline (:mod:`.deadline`) over everything one send does, not only each wait for a byte;
- redirects are never followed (a credential must not travel where the user did not send it);
- one error mapper: connection errors, timeouts, 408/425/429/5xx (with ``Retry-After``) are
  :class:`RetryLater`; other 4xx, 3xx and TLS failures are :class:`Rejected`. RFC 7807 ``{title,
  detail}``, ``{"error": {...}}`` and MLflow's ``{"error_code", "message"}`` bodies are read;
- every text a server sends (status line, body, ``Location``) and every exception text goes through the
  sink's :class:`~checkpoint_records.redaction.Redactor` whole, before anything is cut, stored or logged;
- with a signing secret, every request is signed as Standard Webhooks specifies
  (:mod:`~checkpoint_records.signing`): a delivery's ``webhook-id`` is ``msg_`` and its idempotency key,
  so it is the same on every retry; each REST call of a delivery is a message of its own, its id derived
  from the delivery's key and the call.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urlsplit

import requests
from urllib3.exceptions import InvalidHeader
from urllib3.util import Retry

from ..errors import ConfigurationError
from ..redaction import Redactor, public_url, url_secrets
from ..signing import SigningSecret, parse_signing_secret
from .base import DeliveryError, Rejected, RetryLater
from .deadline import Deadline, DeadlineAdapter

#: Statuses worth retrying: the request may succeed later as it is.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: How much of an error reply we read: enough for its text, never a huge one into memory.
MAX_REPLY_BYTES = 64 * 1024
#: How much of a REST call's JSON reply we read (an MLflow metric history page is a few MB).
MAX_JSON_REPLY_BYTES = 32 * 1024 * 1024
DEFAULT_TIMEOUT = (5.0, 10.0)
#: The longest one send may take, from connecting to the last byte of the last reply.
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


def split_url(url: str, what: str) -> SplitResult:
    """``url`` split, or a :class:`ConfigurationError` saying why it is not a valid http(s) URL."""
    shown = public_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - urllib's check of the port: a number in 0..65535
    except ValueError as error:
        raise ConfigurationError(f"{what} {shown!r} is not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{what} {shown!r} must be an http:// or https:// URL with a host")
    return parts


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date, urllib3's parsing) as seconds from now, at
    least 0; None when absent or not a valid value (``nan``, ``soon``, a fraction)."""
    if not value:
        return None
    try:
        return float(_RETRY_AFTER.parse_retry_after(value))
    except InvalidHeader:
        return None


class ErrorReply(NamedTuple):
    """An error reply in one line (``text``), and the server's own name for the error (``code``:
    MLflow's ``error_code``, an ``{"error": {"code"}}``), "" when it gave none."""

    code: str
    text: str


def _error_fields(text: str) -> tuple[str, list[Any]]:
    """The code and the parts of the detail of an error body: ``{"error": ...}``, MLflow's
    ``{"error_code", "message"}``, RFC 7807 ``{title, detail}``; else the text itself."""
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return "", [text]
    error = data.get("error")
    if isinstance(error, dict):
        fields = [error[key] for key in ("code", "type", "message") if error.get(key)]
        return str(error.get("code") or ""), fields or [text]
    if error:
        return "", [error]
    if data.get("error_code") or data.get("message"):
        return str(data.get("error_code") or ""), [
            data[key] for key in ("error_code", "message") if data.get(key)
        ]
    return "", [data[key] for key in ("title", "detail") if data.get(key)] or [text]


def _one_line(text: Any, redact: Redactor) -> str:
    """``text`` masked whole, on one line, then cut to :data:`MAX_DETAIL` characters."""
    line = redact(" ".join(redact(str(text)).split()))  # masked again: a secret split across lines
    return line[:MAX_DETAIL] + ("..." if len(line) > MAX_DETAIL else "")


def describe_reply(status: int, reason: str, body: bytes, redact: Redactor | None = None) -> ErrorReply:
    """An error reply in one line: ``HTTP 422 Unprocessable Entity: title: detail``.

    Everything the server said goes through ``redact`` whole, before anything is cut: a secret it
    echoes is masked wherever it falls.
    """
    scrub = redact or Redactor(())
    head = _one_line(f"HTTP {status} {reason}".strip(), scrub)
    code, fields = _error_fields(body.decode("utf-8", errors="replace").strip())
    said = {reason.strip().casefold()}  # a server's title is often the reason again: said once
    parts = []
    for field in map(str, fields):
        if field.strip() and field.strip().casefold() not in said:
            said.add(field.strip().casefold())
            parts.append(field)
    code = scrub(code)
    if not parts:
        return ErrorReply(code, head)
    return ErrorReply(code, f"{head}: {_one_line(': '.join(parts), scrub)}")


def _read_limited(response: requests.Response, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body; reading it whole lets the connection be reused."""
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


class HttpTransport:
    """Requests to one destination, ``url`` (the sink's URL, or an API's base URL).

    ``credential`` names what the sink sends in ``authorization`` (``"a token"``), for the refusal of
    plain ``http://``; ``secrets`` (with the URL's own) are masked in every text we keep. One send, made
    of one request or several (:meth:`within_deadline`), takes at most ``deadline`` seconds. With a
    ``signing_secret`` (a :class:`SigningSecret`, or its ``whsec_`` text), every request is signed.
    """

    def __init__(
        self,
        url: str,
        *,
        what: str = "sink URL",
        authorization: str | None = None,
        credential: str = "",
        secrets: Iterable[str | None] = (),
        ca_bundle: str | os.PathLike[str] | None = None,
        allow_insecure_http: bool = False,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        signing_secret: SigningSecret | str | None = None,
    ) -> None:
        parts = split_url(url, what)
        if parts.username is not None or parts.password is not None:
            raise ConfigurationError(
                f"{what} {public_url(url)!r} carries credentials (user:password@): remove them from the URL "
                "and give the token with token=... or CHECKPOINT_RECORDS_TOKEN (sent as Authorization: Bearer)"
            )
        credential = credential or ("URL query values (treated as secrets)" if parts.query else "")
        cleartext = parts.scheme == "http" and not is_loopback(parts.hostname or "")
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
        self.deadline = float(deadline)
        self.redact = Redactor([*secrets, *url_secrets(url)])
        self._authorization = authorization
        self._verify: bool | str = os.fspath(ca_bundle) if ca_bundle is not None else True
        self._session: requests.Session | None = None
        self._signing = (
            None if signing_secret is None else parse_signing_secret("signing_secret", signing_secret)
        )
        #: The idempotency key of the delivery whose REST calls are being made (:meth:`delivering`).
        self._delivery = ""

    def _connection(self) -> requests.Session:
        """The one kind of session sinks use, made here and nowhere else."""
        if self._session is None:
            session = requests.Session()
            session.trust_env = False  # no .netrc credentials or proxy settings slipped in
            session.verify = self._verify
            session.headers["User-Agent"] = USER_AGENT
            if self._authorization:
                session.headers["Authorization"] = self._authorization
            adapter = DeadlineAdapter(pool_maxsize=1, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            self._session = session
        return self._session

    @contextlib.contextmanager
    def within_deadline(self) -> Iterator[Deadline]:
        """Every request inside ends within one ``deadline``, all together; a request the deadline cut
        (or one started after it passed) is :class:`RetryLater`. Nested, the outer deadline holds."""
        active = Deadline.active()
        if active is not None:
            yield active
            return
        with Deadline(self.deadline) as deadline:
            try:
                yield deadline
            except DeliveryError as error:  # a TLS handshake cut short reads as a TLS failure: it is not
                if not deadline.expired:
                    raise
                self.close()  # the connection was cut: never reuse it
                raise RetryLater(
                    f"no complete reply within the {self.deadline:g} s deadline ({error.reason})"
                ) from None

    @contextlib.contextmanager
    def delivering(self, idempotency_key: str) -> Iterator[None]:
        """The REST calls inside make up the delivery ``idempotency_key`` names (their signatures'
        message ids are derived from it, so a retried delivery signs each call as before)."""
        self._delivery = idempotency_key
        try:
            yield
        finally:
            self._delivery = ""

    def post(self, document: Any, idempotency_key: str) -> None:
        """POST ``document`` as JSON to the URL with its ``Idempotency-Key`` (signed as message
        ``msg_<key>``); returns once the destination accepted it (a 2xx)."""
        headers = {"Idempotency-Key": idempotency_key}
        self._exchange("POST", "", document, None, headers, MAX_REPLY_BYTES, f"msg_{idempotency_key}")

    def call(
        self,
        method: str,
        path: str,
        document: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One REST call to ``url + path``: its JSON object reply ({} for an empty or non-object one)."""
        reply = self._exchange(method, path, document, params, {}, MAX_JSON_REPLY_BYTES)
        label = self.redact(f"{method} {path}")
        if reply is None or len(reply) > MAX_JSON_REPLY_BYTES:
            what = "was cut short" if reply is None else f"is over {MAX_JSON_REPLY_BYTES} bytes"
            raise RetryLater(f"{label}: the reply {what}")
        try:
            data = json.loads(reply) if reply.strip() else {}
        except ValueError:
            raise RetryLater(f"{label}: a 2xx reply that is not JSON") from None
        return data if isinstance(data, dict) else {}

    def _exchange(
        self,
        method: str,
        path: str,
        document: Any,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str],
        limit: int,
        message_id: str | None = None,
    ) -> bytes | None:
        """One request under the deadline: the 2xx reply's body (None when it was cut short), or the
        error it maps to. ``path`` (ours, never the server's) names the call in errors; ``message_id``
        is its signature's (by default, derived from the delivery and the request)."""
        label = self.redact(f"{method} {path}: ") if path else ""
        body = None
        if document is not None:
            body = json.dumps(document, allow_nan=False, separators=(",", ":")).encode("utf-8")
            headers = {"Content-Type": "application/json", **headers}
        if self._signing is not None:
            if message_id is None:
                message_id = self._message_id(method, path, params, body)
            headers = {**headers, **self._signing.headers(message_id, body or b"")}
        with self.within_deadline() as deadline:
            if deadline.expired:
                raise RetryLater(f"{label}the send's deadline passed before this request")
            try:
                response = self._connection().request(
                    method,
                    self.url + path,
                    data=body,
                    params=params,
                    headers=dict(headers),
                    timeout=self.timeout,
                    allow_redirects=False,
                    stream=True,
                )
            except requests.exceptions.SSLError as error:
                raise Rejected(self.redact(f"{label}TLS verification failed: {error}")) from None
            except requests.RequestException as error:
                raise RetryLater(self.redact(f"{label}{type(error).__name__}: {error}")) from None
            with response:
                return self._outcome(response, label, limit)

    def _message_id(
        self, method: str, path: str, params: Mapping[str, Any] | None, body: bytes | None
    ) -> str:
        """A REST call's message id: the same for the same call of the same delivery, on every retry."""
        call = json.dumps([self._delivery, method, path, params], sort_keys=True, default=str)
        digest = hashlib.sha256(call.encode("utf-8") + b"\n" + (body or b""))
        return "msg_" + digest.hexdigest()[:32]

    def _outcome(self, response: requests.Response, label: str, limit: int) -> bytes | None:
        """The body of a 2xx reply; any other reply raised as the error it is."""
        status = response.status_code
        accepted = 200 <= status < 300  # not ``response.ok``: a redirect is not accepted
        try:
            reply = _read_limited(response, limit if accepted else MAX_REPLY_BYTES)
        except requests.RequestException as error:
            if accepted:  # only the reply was cut short
                return None
            raise RetryLater(
                self.redact(f"{label}reply unreadable: {type(error).__name__}: {error}")
            ) from None
        if accepted:
            return reply
        code, text = describe_reply(status, response.reason or "", reply[:MAX_REPLY_BYTES], self.redact)
        reason = label + text
        if status in RETRY_STATUSES:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            raise RetryLater(reason, status=status, retry_after=retry_after)
        if 300 <= status < 400:
            location = _one_line(public_url(response.headers.get("Location", "")), self.redact) or "nowhere"
            reason = f"{reason} (redirect to {location} not followed: configure the final URL)"
        raise Rejected(reason, status=status, code=code)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

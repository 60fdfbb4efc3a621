"""Who may use the server: a bearer token (how the OpenAI and Llama Stack SDKs send ``api_key``, and how
``HttpSink`` sends ``CHECKPOINT_RECORDS_TOKEN``) on the API; on the web page, a session cookie it got by
logging in with a token.

The API takes the bearer token only (:meth:`Auth.bearer`): a browser sends a cookie by itself, so a
page of another origin could otherwise make a signed-in reader's browser write records. Tokens are
compared in constant time and never logged, repeated or echoed; an empty one is refused (an unset
variable must not turn authentication off). A session id is random and kept only in this process's
memory, so a restart logs everyone out and no secret lands on disk.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Sequence

from starlette.requests import HTTPConnection

from ..errors import ConfigurationError

SESSION_COOKIE = "checkpoint_records_session"
#: How long a page session lasts without a new login.
SESSION_SECONDS = 12 * 3600.0
#: More open sessions than this drops the oldest: logins cannot grow memory without bound.
MAX_SESSIONS = 10_000


class Auth:
    """The server's tokens and the page's sessions. With no tokens, everything is allowed."""

    #: The cookie that carries a page session (the page sets it at login).
    session_cookie = SESSION_COOKIE

    def __init__(self, tokens: Sequence[str] = (), session_seconds: float = SESSION_SECONDS) -> None:
        if any(not token.strip() for token in tokens):
            raise ConfigurationError(
                "an empty server token (an unset variable?) would let anyone in: give real tokens, or "
                "none at all to serve on loopback without one"
            )
        self._tokens = [token.encode("utf-8") for token in tokens]
        self._session_seconds = session_seconds
        self._sessions: dict[str, float] = {}  # session id -> expiry (monotonic seconds)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Auth({len(self._tokens)} token(s), {len(self._sessions)} session(s))"

    @property
    def required(self) -> bool:
        """Whether requests need a token (one was configured)."""
        return bool(self._tokens)

    def valid_token(self, token: str) -> bool:
        """Whether ``token`` is one of the tokens; every token is compared, each in constant time."""
        candidate = token.encode("utf-8")
        matched = False
        for known in self._tokens:
            matched |= hmac.compare_digest(candidate, known)
        return matched

    def bearer(self, request: HTTPConnection) -> bool:
        """A valid ``Authorization: Bearer`` token (the API's only credential); always True without tokens."""
        if not self.required:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        token = credentials.strip()
        return scheme.lower() == "bearer" and bool(token) and self.valid_token(token)

    def check(self, request: HTTPConnection) -> bool:
        """The page's check: a valid bearer token or session cookie; always True without tokens."""
        if self.bearer(request):
            return True
        session = request.cookies.get(SESSION_COOKIE)
        return session is not None and self._session_alive(session)

    def open_session(self, token: str) -> str | None:
        """A new opaque session id for a valid ``token``, else None."""
        if not self.valid_token(token):
            return None
        session = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._sessions = {key: until for key, until in self._sessions.items() if until > now}
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[session] = now + self._session_seconds
        return session

    def close_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def _session_alive(self, session_id: str) -> bool:
        with self._lock:
            until = self._sessions.get(session_id)
            if until is None:
                return False
            if until <= time.monotonic():
                del self._sessions[session_id]
                return False
            return True

"""Keeping secrets out of everything we write: sink keys, outbox errors, log lines, exception text.

A sink URL may carry secrets in its userinfo (``https://user:pass@host``) or its query
(``?api_key=...``); a token travels in the ``Authorization`` header. Anything derived from them that we
store or print goes through :func:`public_url` or :class:`Redactor` first.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "***"


def public_url(url: str) -> str:
    """``url`` without userinfo and with every query value masked: safe to store and print."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    query = "&".join(f"{name}={MASK}" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def url_secrets(url: str) -> list[str]:
    """The secret parts of ``url``: userinfo and query values."""
    parts = urlsplit(url)
    found = [parts.username or "", parts.password or ""]
    found += [value for _, value in parse_qsl(parts.query, keep_blank_values=True)]
    if parts.query:
        found.append(parts.query)
    return found


class Redactor:
    """Masks known secrets in text; the longest first, so a secret containing another goes whole."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        unique = {secret for secret in secrets if secret and len(secret) >= 3}
        unique |= {quote(secret, safe="") for secret in unique}  # as it appears inside a URL
        self._secrets = sorted(unique, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

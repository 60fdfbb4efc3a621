"""Keeping secrets out of everything we write: sink keys, outbox errors, log lines, exception text.

A sink URL may carry secrets in its userinfo (``https://user:pass@host``) or its query
(``?api_key=...``); a token travels in the ``Authorization`` header (``Basic`` auth sends the base64 of
``user:password``). Anything derived from them that we store or print goes through :func:`public_url` or
:class:`Redactor` first.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit, urlunsplit

MASK = "***"


def public_url(url: str) -> str:
    """``url`` without userinfo and with every query value masked: safe to store and print (also when
    the URL is invalid, e.g. its port: the host and port are kept as written)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: nothing of it is shown
        return "(an invalid URL)"
    netloc = parts.netloc.rpartition("@")[2].lower()
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


def _base64_forms(secret: str) -> set[str]:
    """``secret`` in base64 as a server may echo it (a ``Basic`` header's ``user:password``): standard
    and URL-safe, with and without padding."""
    raw = secret.encode()
    forms = {base64.b64encode(raw).decode("ascii"), base64.urlsafe_b64encode(raw).decode("ascii")}
    return forms | {form.rstrip("=") for form in forms}


class Redactor:
    """Masks known secrets in text, in every form a server may echo them (as is, in base64, URL-quoted,
    JSON-escaped); the longest first, so a secret containing another goes whole. A text that ends with the
    start of a secret (cut off by a size limit) has that start masked too."""

    #: The shortest start of a secret masked at the end of a text.
    PARTIAL = 4

    def __init__(self, secrets: Iterable[str | None]) -> None:
        unique = {secret for secret in secrets if secret and len(secret) >= 3}
        unique |= {form for secret in unique for form in _base64_forms(secret)}
        # As it appears inside a URL: a path keeps "/", a query or form has "+" for " ".
        unique |= {
            form for secret in unique for form in (quote(secret, safe=""), quote(secret), quote_plus(secret))
        }
        unique |= {json.dumps(secret)[1:-1] for secret in unique}  # as it appears inside a JSON string
        self._secrets = sorted(unique, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        for secret in self._secrets:
            for size in range(min(len(secret) - 1, len(text)), self.PARTIAL - 1, -1):
                if text.endswith(secret[:size]):
                    return text[:-size] + MASK
        return text

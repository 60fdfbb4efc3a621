"""Signed deliveries, as Standard Webhooks specifies (https://www.standardwebhooks.com/): a receiver can
prove that a request came from a holder of the shared secret, unchanged, and recently.

A signed request carries ``webhook-id`` (its message: the same on every retry of one delivery),
``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature`` (``v1,`` and the base64
HMAC-SHA256 of ``id.timestamp.body``). The secret is the spec's ``whsec_`` and the base64 of 24 to 64
random bytes. :class:`SigningSecret` keeps only the key, and never shows it: not in ``repr``, an error,
a log or the store. The one HTTP transport signs (:mod:`.sinks.transport`); the registry verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from .errors import ConfigurationError

SECRET_PREFIX = "whsec_"
#: The spec's bounds on a symmetric secret's random bytes (192 to 512 bits).
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
#: How far a signature's timestamp may be from the receiver's clock (as the spec's own libraries allow).
TOLERANCE_SECONDS = 300
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
#: How to make a secret, for the error that refuses a malformed one.
MAKE_ONE = "python -c \"import base64, secrets; print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""


class SignatureError(Exception):
    """A request whose signature does not prove it came from a holder of the secret (the reason says
    which check failed, never anything secret)."""


class SigningSecret:
    """A Standard Webhooks secret: parsed once, shown to no one."""

    __slots__ = ("_key",)

    def __init__(self, text: str, label: str = "signing secret") -> None:
        """``text`` as the spec writes it; a malformed one is a :class:`ConfigurationError` naming
        ``label`` (the setting), never repeating what was given."""
        encoded = text.strip()
        key = b""
        if encoded.startswith(SECRET_PREFIX):
            encoded = encoded[len(SECRET_PREFIX) :]
            try:
                key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
            except (binascii.Error, ValueError):
                key = b""
        if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
            raise ConfigurationError(
                f"{label} is not a Standard Webhooks secret: it must be {SECRET_PREFIX} followed by the "
                f"base64 of {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes. Make one with {MAKE_ONE}"
            )
        self._key = key

    def __repr__(self) -> str:
        return "SigningSecret('***')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigningSecret) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._key).digest())

    def signature(self, message_id: str, timestamp: int, body: bytes) -> str:
        """``v1,<base64 HMAC-SHA256 of message_id.timestamp.body>``."""
        return "v1," + base64.b64encode(self._mac(message_id, str(timestamp), body)).decode("ascii")

    def _mac(self, message_id: str, timestamp: str, body: bytes) -> bytes:
        return hmac.new(self._key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()

    def headers(self, message_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
        """The three headers that sign ``body`` as message ``message_id``, sent now."""
        timestamp = int(time.time() if now is None else now)
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.signature(message_id, timestamp, body),
        }

    def verify(
        self,
        headers: Mapping[str, str],
        body: bytes,
        now: float | None = None,
        tolerance: float = TOLERANCE_SECONDS,
    ) -> None:
        """Raise :class:`SignatureError` unless one ``v1`` signature in ``headers`` signs ``body`` with
        this secret, at a timestamp within ``tolerance`` seconds of ``now``."""
        given = {name.lower(): value for name, value in headers.items() if name.lower() in HEADERS}
        missing = [name for name in HEADERS if not given.get(name)]
        if missing:
            raise SignatureError(f"the request is not signed ({', '.join(missing)} missing)")
        stamp = given["webhook-timestamp"].strip()
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            raise SignatureError("webhook-timestamp is not whole Unix seconds")
        skew = abs((time.time() if now is None else now) - int(stamp))
        if skew > tolerance:
            raise SignatureError(
                f"webhook-timestamp is {skew:.0f} s from this server's clock, more than the {tolerance:g} s "
                "allowed: a replayed request, or a clock to set right"
            )
        expected = self._mac(given["webhook-id"], stamp, body)
        for candidate in given["webhook-signature"].split():
            version, _, encoded = candidate.partition(",")
            if version == "v1" and hmac.compare_digest(_decoded(encoded), expected):
                return
        raise SignatureError(
            "no webhook-signature matches this server's secret (signed with another secret, or changed "
            "on the way)"
        )


def _decoded(signature: str) -> bytes:
    """A signature's bytes; nothing (matching no MAC) when it is not base64."""
    try:
        return base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return b""


def parse_signing_secret(label: str, value: SigningSecret | str) -> SigningSecret:
    """``value`` as a :class:`SigningSecret` (a string is parsed, its errors naming ``label``)."""
    if isinstance(value, SigningSecret):
        return value
    if isinstance(value, str):
        return SigningSecret(value, label)
    raise ConfigurationError(
        f"{label} must be a whsec_ string or a SigningSecret, not {type(value).__name__}"
    )

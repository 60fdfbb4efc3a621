"""Running the registry: refuse an exposed server without a token, then hand the app to uvicorn."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import uvicorn

from ..errors import ConfigurationError
from ..signing import SigningSecret
from ..sinks.transport import is_loopback
from ..store import RecordStore
from .app import create_app


def check_exposure(host: str, tokens: Sequence[str], allow_public_without_token: bool) -> None:
    """Binding beyond loopback without a token would let anyone on the network read and write: refuse."""
    if tokens or is_loopback(host) or allow_public_without_token:
        return
    raise ConfigurationError(
        f"refusing to serve on {host!r} without a token: anyone who can reach it could read and write "
        "records. Set CHECKPOINT_RECORDS_SERVER_TOKENS (or pass --token), bind to 127.0.0.1, or pass "
        "--allow-public-without-token if the network is trusted."
    )


def serve(
    store: RecordStore,
    *,
    host: str,
    port: int,
    tokens: Sequence[str] = (),
    allow_public_without_token: bool = False,
    signing_secret: SigningSecret | None = None,
) -> int:
    """Serve ``store`` until interrupted; the exit status (host and port: their defaults are ``serve``'s).
    With ``signing_secret``, deliveries must be signed with it (Standard Webhooks)."""
    check_exposure(host, tokens, allow_public_without_token)
    app = create_app(store, tokens=tokens, signing_secret=signing_secret)
    access = "a token is required" if app.state.auth.required else "no token required"
    if signing_secret is not None:
        access += "; deliveries must be signed"
    print(f"checkpoint-records: serving {store.where} on http://{host}:{port} ({access})", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, server_header=False, proxy_headers=False, log_level="info")
    return 0

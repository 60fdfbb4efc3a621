"""Logging that says a failure clearly, once, instead of once per save."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("checkpoint_records")

_seen: set[str] = set()
_seen_lock = threading.Lock()


def warn_once(key: str, message: str, *args: object) -> None:
    """Log ``message`` at WARNING the first time ``key`` is seen in this process, DEBUG afterwards."""
    with _seen_lock:
        first = key not in _seen
        _seen.add(key)
    logger.log(logging.WARNING if first else logging.DEBUG, message, *args)

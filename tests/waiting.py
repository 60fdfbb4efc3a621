"""The one way a test waits for something another thread or process does: :func:`wait_until`, bounded.

A record has its future (``recorder.record(...).result(timeout)``); for anything else (a server up, a
request arrived, a lane settled) a test waits here, never in a loop of its own or on a fixed sleep. The
bound is generous: on a loaded machine a wait takes longer, it does not fail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
#: How soon the condition is looked at again when no event says it may have changed.
RECHECK = 0.02


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    message: str | Callable[[], str],
    wake: threading.Event | None = None,
) -> T:
    """Wait up to ``timeout`` seconds until ``condition()`` returns something true, and return it; fail
    the test with ``message`` (or what it returns, said then) if it never does. ``wake``: an event set
    when the condition may have changed, so it is looked at again at once."""
    deadline = time.monotonic() + timeout
    pause = wake if wake is not None else threading.Event()
    while True:
        value = condition()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            said = message() if callable(message) else message
            raise AssertionError(f"{said} (waited {timeout:g} s)")
        if pause.wait(min(left, RECHECK)):
            pause.clear()

"""One time bound for several waits in a row: the end of training's ``flush_timeout`` covers draining the
hand-offs, the uploads, the deliveries and stopping the threads together, not each of them.

A :class:`Countdown` is started once, on the monotonic clock, and each wait after it gets what the ones
before left (:meth:`Countdown.left`), so the bound holds whatever each step takes.
"""

from __future__ import annotations

import time


class Countdown:
    """``seconds`` from now, on the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends_at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left (0 once the time is up)."""
        return max(self.ends_at - time.monotonic(), 0.0)

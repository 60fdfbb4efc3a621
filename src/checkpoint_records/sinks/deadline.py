"""A total deadline for one send through ``requests``: one HTTP request, or the several of a REST sink.

Connect and read timeouts bound each wait for a byte, not the request: a server trickling one byte a
second holds a request forever (past its delivery's claim, so another process could send the same record
meanwhile). :class:`Deadline` shuts the socket of the request under way down when the deadline passes,
which wakes a blocked read at once. It reaches the socket through urllib3's connection class, the one place that sees
every request's connection, and one watchdog thread per process keeps every deadline (a timer thread per
request would cost more than a request to a nearby server).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class Deadline:
    """``with Deadline(seconds):`` around the requests of one send, made on this thread through
    :class:`DeadlineAdapter`; ``expired`` then tells whether it was cut."""

    _current = threading.local()

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self.finished = False
        self._connection: HTTPConnection | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Deadline:
        Deadline._current.deadline = self
        _watchdog.watch(self, time.monotonic() + self.seconds)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:  # from here on, the socket belongs to the next request: never cut it
            self.finished = True
        Deadline._current.deadline = None

    @classmethod
    def active(cls) -> Deadline | None:
        """The deadline this thread's requests are under, if any."""
        deadline: Deadline | None = getattr(cls._current, "deadline", None)
        return deadline

    @classmethod
    def covers(cls, connection: HTTPConnection) -> None:
        """Called by every request of our connections: the deadline of this thread's send covers it."""
        deadline = cls.active()
        if deadline is not None:
            with deadline._lock:
                deadline._connection = connection
            if deadline.expired:
                deadline.expire()

    def expire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.expired = True
            sock = getattr(self._connection, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed
                    sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread that expires deadlines in order, started in each process that needs it."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._pid: int | None = None

    def watch(self, deadline: Deadline, at: float) -> None:
        with self._condition:
            if self._pid != os.getpid():
                self._heap, self._pid = [], os.getpid()
                threading.Thread(target=self._run, name="checkpoint-records deadlines", daemon=True).start()
            heapq.heappush(self._heap, (at, next(self._order), deadline))
            if self._heap[0][2] is deadline:
                self._condition.notify()

    def _run(self) -> None:
        while True:
            due = []
            with self._condition:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].finished):
                    due.append(heapq.heappop(self._heap)[2])
                if not due:
                    self._condition.wait(self._heap[0][0] - now if self._heap else None)
            for deadline in due:
                deadline.expire()


_watchdog = _Watchdog()


class _WatchedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        Deadline.covers(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        Deadline.covers(self)
        super().request(*args, **kwargs)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter, with connections that a :class:`Deadline` can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}

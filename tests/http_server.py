"""A real HTTP server on 127.0.0.1 that receives records and answers as a test scripts it.

``Receiver`` keeps every request it saw, and checks the promise the delivery layer makes: an
``Idempotency-Key`` never arrives with two different payloads.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from waiting import wait_until


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    #: Accept the request and never answer (until the server stops).
    hang: bool = False
    #: The status line's reason phrase; None for the standard one.
    reason: str | None = None
    #: Seconds the server takes to answer (cut short when it stops).
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    payload: Any
    status: int
    at: float
    #: The body as it arrived (a signature signs these bytes).
    raw: bytes = b""


#: Decides the reply to the n-th request (0-based) given the request.
Script = Callable[[int, "Received"], Reply]


def always(reply: Reply) -> Script:
    return lambda index, request: reply


def first_then(count: int, failing: Reply, then: Reply | None = None) -> Script:
    """``failing`` for the first ``count`` requests, then ``then`` (200 by default)."""
    return lambda index, request: failing if index < count else (then or Reply())


#: What the canonical format sends besides records (a job, a page of its log).
_OTHER_KINDS = ("TrainingJob", "TrainingLog")


def _not_a_record(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("kind") in _OTHER_KINDS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Receiver:
    """Start with ``start()`` (or as a context manager); ``url`` works before it starts (endpoint down)."""

    def __init__(
        self,
        script: Script | None = None,
        port: int | None = None,
        path: str = "/v1/checkpoints",
        tls: ssl.SSLContext | None = None,
        records_only: bool = True,
    ):
        self.script = script or always(Reply())
        #: An endpoint of records, as most are: the job and the log pages the canonical format sends to
        #: the same URL are answered 200 and kept apart (``others``), so scripts and counts see records.
        self.records_only = records_only
        self.others: list[Received] = []
        self.port = port or free_port()
        self.tls = tls
        self.url = f"{'https://localhost' if tls else 'http://127.0.0.1'}:{self.port}{path}"
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        #: Set whenever a request arrives.
        self._arrived = threading.Event()
        #: Connections accepted and not closed yet.
        self._handling = 0
        self._server: ThreadingHTTPServer | None = None

    # -- what arrived --------------------------------------------------------------------------------

    def accepted(self) -> list[Received]:
        with self._lock:
            return [request for request in self.requests if 200 <= request.status < 300]

    def accepted_payloads(self) -> list[Any]:
        return [request.payload for request in self.accepted()]

    def accepted_names(self) -> set[str]:
        return {payload["metadata"]["name"] for payload in self.accepted_payloads()}

    def assert_idempotent(self) -> None:
        """No ``Idempotency-Key`` ever came with two different payloads."""
        seen: dict[str, Any] = {}
        with self._lock:
            for request in self.requests:
                key = request.headers.get("Idempotency-Key")
                assert key, f"request without Idempotency-Key: {request}"
                assert seen.setdefault(key, request.payload) == request.payload, f"two payloads for {key}"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """The accepted requests once there are ``count`` (fails the test if they do not come in time)."""
        return wait_until(
            lambda: len(self.accepted()) >= count and self.accepted(),
            timeout,
            lambda: f"{len(self.accepted())} of {count} requests accepted by {self.url}",
            wake=self._arrived,
        )

    def latest_statuses(self) -> dict[str, str]:
        """Each record's status as the newest accepted revision of it says. A revision still waiting when
        a newer one is queued is never sent (the outbox sends the newest), so which revisions arrive
        depends on timing; the newest of each always does."""
        return {
            request.payload["metadata"]["name"]: request.payload["status"]["status"]
            for request in self.accepted()
            if request.payload.get("kind") == "Checkpoint"
        }

    def wait_for_statuses(self, expected: dict[str, str], timeout: float = 30.0) -> None:
        """Wait until :meth:`latest_statuses` is ``expected`` (fails the test if it never is)."""
        wait_until(
            lambda: self.latest_statuses() == expected,
            timeout,
            lambda: f"{self.url} holds {self.latest_statuses()}, not {expected}",
            wake=self._arrived,
        )

    def quiet(self) -> bool:
        """Whether no request is in hand or waiting to be accepted: once every client is gone, nothing
        else can arrive."""
        server = self._server
        if server is None:
            return True
        with self._lock:
            handling = self._handling
        return not handling and not select.select([server.socket], [], [], 0)[0]

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60  # a silent client never holds a handler forever

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    payload = json.loads(raw)
                except ValueError:
                    payload = raw.decode("utf-8", errors="replace")
                if receiver.records_only and _not_a_record(payload):
                    with receiver._lock:
                        receiver.others.append(
                            Received(self.path, dict(self.headers), payload, 200, time.time(), raw)
                        )
                    self._answer(Reply())
                    return
                with receiver._lock:
                    index = len(receiver.requests)
                probe = Received(self.path, dict(self.headers), payload, 0, time.time())
                reply = receiver.script(index, probe)
                with receiver._lock:
                    receiver.requests.append(
                        Received(
                            self.path,
                            dict(self.headers),
                            payload,
                            0 if reply.hang else reply.status,
                            probe.at,
                            raw,
                        )
                    )
                receiver._arrived.set()
                if reply.delay:
                    receiver._release.wait(reply.delay)
                if reply.hang:
                    receiver._release.wait()
                    self.close_connection = True
                    return
                self._answer(reply)

            def _answer(self, reply: Reply) -> None:
                self.send_response(reply.status, reply.reason)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_PATCH = do_POST  # REST APIs (MLflow's) read and update too

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True

            def process_request(self, request: Any, client_address: Any) -> None:
                with receiver._lock:
                    receiver._handling += 1
                super().process_request(request, client_address)

            def shutdown_request(self, request: Any) -> None:
                super().shutdown_request(request)
                with receiver._lock:
                    receiver._handling -= 1

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            # Handshake in the handler thread (on first read), so a client that gives up mid-handshake
            # cannot block the accepting thread.
            self._server.socket = self.tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

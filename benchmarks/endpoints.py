"""Local HTTP endpoints for the benchmarks, served from a process of their own.

Why a separate process: an endpoint inside the benchmarked process would compete with the training
thread and the delivery thread for the GIL, and the benchmark would partly measure the endpoint.

Three behaviours, all on 127.0.0.1:

* healthy: answers 200 to every POST, HTTP/1.1 keep-alive, TCP_NODELAY, one write per reply; logs each
  arrival (``time.monotonic()``, ``metadata.name`` from the body, ``Idempotency-Key``) as one line of a
  file. ``time.monotonic`` is the system-wide CLOCK_MONOTONIC on Linux, so stamps from different
  processes on this machine compare directly.
* hanging: accepts connections and never reads nor answers (a client waits for its read timeout).
* down: a port that nothing listens on (connection refused at once).

Run as a script it is that server process: it prints its ports as one JSON line and serves until its
standard input closes, so it never outlives the benchmark.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TextIO

REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@dataclass(frozen=True)
class Arrival:
    at: float
    name: str
    idempotency_key: str


def free_port() -> int:
    """A port nothing listens on (bound, then released: the kernel refuses connections to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Endpoints:
    """The endpoint process, as a context manager: ``healthy_url``, ``hanging_url``, ``down_url``."""

    def __init__(self, arrivals_path: Path) -> None:
        self.arrivals_path = arrivals_path
        self.arrivals_path.write_text("")
        self._process = subprocess.Popen(
            [sys.executable, __file__, str(arrivals_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        ports = json.loads(self._process.stdout.readline())
        self.healthy_url = f"http://127.0.0.1:{ports['healthy']}/v1/checkpoints"
        self.hanging_url = f"http://127.0.0.1:{ports['hanging']}/v1/checkpoints"
        self.down_url = f"http://127.0.0.1:{free_port()}/v1/checkpoints"

    def arrivals(self) -> list[Arrival]:
        """Every POST the healthy endpoint answered so far, in arrival order."""
        rows = (line.split("\t") for line in self.arrivals_path.read_text().splitlines())
        return [Arrival(float(at), name, key) for at, name, key in rows]

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> Endpoints:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _healthy_server(log: TextIO) -> ThreadingHTTPServer:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            at = time.monotonic()
            try:
                name = json.loads(body)["metadata"]["name"]
            except (ValueError, KeyError, TypeError):
                name = ""
            with lock:
                log.write(f"{at!r}\t{name}\t{self.headers.get('Idempotency-Key', '')}\n")
            self.wfile.write(REPLY)

        def log_message(self, format: str, *args: object) -> None:
            """Silent: a line on stderr per request would cost more than the request."""

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def _hanging_server() -> socket.socket:
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    held: list[socket.socket] = []

    def accept_forever() -> None:
        while True:
            connection, _ = listener.accept()
            held.append(connection)  # kept open, never read, never answered

    threading.Thread(target=accept_forever, daemon=True).start()
    return listener


def serve(arrivals_path: str) -> None:
    with open(arrivals_path, "a", buffering=1, encoding="utf-8") as log:
        healthy = _healthy_server(log)
        threading.Thread(target=healthy.serve_forever, daemon=True).start()
        hanging = _hanging_server()
        ports = {"healthy": healthy.server_address[1], "hanging": hanging.getsockname()[1]}
        print(json.dumps(ports), flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin (or exits)
        healthy.shutdown()


if __name__ == "__main__":
    serve(sys.argv[1])

"""``checkpoint-records serve`` as a real process on 127.0.0.1, for tests and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from checkpoint_records.store import RecordStore, open_store
from http_server import free_port
from waiting import wait_until

STARTUP_SECONDS = 60.0


@dataclass(frozen=True)
class Registry:
    url: str  # http://127.0.0.1:PORT
    token: str | None
    store: Path
    log: Path
    process: subprocess.Popen[bytes]
    #: Its PostgreSQL database, or None for the SQLite store in ``store``.
    database: str | None = None
    _opened: list[RecordStore] = field(default_factory=list)

    def open_store(self) -> RecordStore:
        """The store the server keeps, as this process reads it (one, closed when the server stops)."""
        if not self._opened:
            self._opened.append(open_store(self.database, self.store))
        return self._opened[0]

    def close(self) -> None:
        for store in self._opened:
            store.close()
        self._opened.clear()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str, **params: str) -> requests.Response:
        return requests.get(self.url + path, params=params, headers=self.headers, timeout=30)


@contextmanager
def serving(
    store: Path,
    log: Path,
    token: str | None = None,
    *args: str,
    env: dict[str, str] | None = None,
    database: str | None = None,
    port: int | None = None,
) -> Iterator[Registry]:
    """Start the server on ``port`` or a free one (the token through the environment, with ``env``'s
    variables over it; on the PostgreSQL ``database`` if given), wait until it answers, and stop it on
    the way out."""
    port = port or free_port()
    given = env or {}
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHECKPOINT_RECORDS_")}
    if token:
        env["CHECKPOINT_RECORDS_SERVER_TOKENS"] = token
    if database:
        env["CHECKPOINT_RECORDS_SERVER_DATABASE"] = database
    env.update(given)
    command = [sys.executable, "-m", "checkpoint_records.cli", "serve", "--port", str(port)]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*command, "--store", str(store), *args], stdout=output, stderr=subprocess.STDOUT, env=env
        )
    registry = Registry(f"http://127.0.0.1:{port}", token, store, log, process, database)

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {log.read_text()}")
        try:
            return registry.get("/openapi.json").status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(answers, STARTUP_SECONDS, lambda: f"the server did not answer: {log.read_text()}")
        yield registry
    finally:
        registry.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

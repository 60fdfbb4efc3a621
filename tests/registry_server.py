"""``checkpoint-records serve`` as a real process on 127.0.0.1, for tests and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

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

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str, **params: str) -> requests.Response:
        return requests.get(self.url + path, params=params, headers=self.headers, timeout=30)


@contextmanager
def serving(
    store: Path, log: Path, token: str | None = None, *args: str, env: dict[str, str] | None = None
) -> Iterator[Registry]:
    """Start the server on a free port (the token through the environment, with ``env``'s variables
    over it), wait until it answers, and stop it on the way out."""
    port = free_port()
    given = env or {}
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHECKPOINT_RECORDS_")}
    if token:
        env["CHECKPOINT_RECORDS_SERVER_TOKENS"] = token
    env.update(given)
    command = [sys.executable, "-m", "checkpoint_records.cli", "serve", "--port", str(port)]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*command, "--store", str(store), *args], stdout=output, stderr=subprocess.STDOUT, env=env
        )
    registry = Registry(f"http://127.0.0.1:{port}", token, store, log, process)

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
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

"""A real S3 API on 127.0.0.1: moto in server mode, started and stopped by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from http_server import free_port
from waiting import wait_until

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


class MotoServer:
    """``moto_server`` on a port of its own (fixed across restarts, to play an endpoint that goes down)."""

    def __init__(self, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        command = [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)]
        self._process = subprocess.Popen(
            command, env={**os.environ, **self.env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        process = self._process

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {process.returncode}")
            try:
                requests.get(f"{self.endpoint}/moto-api/", timeout=1)
                return True
            except requests.ConnectionError:
                return False

        try:
            wait_until(answers, timeout, f"moto_server did not answer on {self.endpoint}")
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def record(self, on: bool) -> None:
        """Start (afresh) or stop moto's request recorder (it writes to ``MOTO_RECORDER_FILEPATH``)."""
        for verb in ("reset-recording", "start-recording") if on else ("stop-recording",):
            requests.post(f"{self.endpoint}/moto-api/recorder/{verb}", timeout=10).raise_for_status()

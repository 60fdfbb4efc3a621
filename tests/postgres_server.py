"""A real PostgreSQL server for tests and benchmarks: Debian's ``postgresql`` package, ``initdb`` in a
temporary directory under an unprivileged user (PostgreSQL refuses to run as root, and CI runs as root),
on 127.0.0.1 and a free port, with a password (given to clients in ``PGPASSWORD``); stopped at the end."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from http_server import free_port

USER = "checkpoint"
#: The unprivileged system user that runs the server when the tests run as root.
SYSTEM_USER = "nobody"


def binaries() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` directory, or None when the package is absent."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    password: str
    directory: Path

    @property
    def environment(self) -> dict[str, str]:
        """What a client needs besides the URL: the password, as libpq reads it."""
        return {"PGPASSWORD": self.password}

    def url(self, database: str = "postgres") -> str:
        """A database's URL, without the password (it travels in ``PGPASSWORD``)."""
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """One statement, autocommitted (``CREATE DATABASE`` needs that); its rows."""
        import psycopg

        with psycopg.connect(self.url(database), password=self.password, autocommit=True) as connection:
            cursor = connection.execute(sql)  # type: ignore[call-overload]
            return cursor.fetchall() if cursor.description else []

    @contextmanager
    def fresh_database(self) -> Iterator[str]:
        """A new, empty database for one test (or module); dropped, with its connections, at the end."""
        name = f"registry_{secrets.token_hex(6)}"
        self.execute(f"CREATE DATABASE {name}")
        try:
            yield self.url(name)
        finally:
            self.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _as_server_user(command: list[str]) -> list[str]:
    """``command`` as the unprivileged user when we are root (PostgreSQL will not run as root)."""
    return ["runuser", "-u", SYSTEM_USER, "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """initdb, start on a free loopback port, wait until it accepts connections; stop and delete it after."""
    bin_directory = binaries()
    if bin_directory is None:
        raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
    directory = Path(tempfile.mkdtemp(prefix="checkpoint-records-pg-"))
    password = secrets.token_urlsafe(16)
    data, password_file = directory / "data", directory / "password"
    password_file.write_text(password)
    if os.geteuid() == 0:
        account = pwd.getpwnam(SYSTEM_USER)
        os.chown(directory, account.pw_uid, account.pw_gid)
        os.chown(password_file, account.pw_uid, account.pw_gid)
    os.chmod(password_file, 0o600)
    port = free_port()
    server = PostgresServer("127.0.0.1", port, password, directory)
    run = {"check": True, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "cwd": directory}
    subprocess.run(
        _as_server_user(
            [
                str(bin_directory / "initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                "--auth=scram-sha-256",
                f"--pwfile={password_file}",
                "--locale=C",
                "--encoding=UTF8",
            ]
        ),
        **run,  # type: ignore[call-overload]
    )
    options = f"-h 127.0.0.1 -p {port} -k {directory} -c max_connections=200"
    log = directory / "server.log"
    subprocess.run(
        _as_server_user(
            [
                str(bin_directory / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        **run,  # type: ignore[call-overload]
    )
    try:
        yield server
    finally:
        subprocess.run(
            _as_server_user([str(bin_directory / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=directory,
            check=False,
        )
        shutil.rmtree(directory, ignore_errors=True)

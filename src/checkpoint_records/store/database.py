"""The one owner of the store's SQLite connections: every part of :mod:`.store` reads and writes here.

Why SQLite: it is in the standard library, a committed transaction survives ``kill -9`` a moment later,
and several training jobs on one machine can write at once (writers queue on SQLite's lock; each write
is one short transaction).

Each thread has its own connection, opened on first use; one inherited through ``fork()`` is never used,
and a file deleted or replaced under a connection is noticed and a new one opened at the same path.
Network filesystems: SQLite's WAL mode needs shared memory that NFS/Lustre/GPFS cannot provide across
hosts, so on such mounts the store falls back to the rollback journal (``journal_mode=DELETE``), which
relies only on POSIX byte-range locks. The default location is a per-user cache directory on local disk.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from ..errors import ConfigurationError
from ..logs import logger, warn_once
from ..settings import resolve_settings
from ..validation import InvalidValue, escape_text, read_stored
from .dialect import SQLITE, Connection, Dialect, SqliteConnection, marks
from .schema import migrate, refuse_newer, schema_version

DATABASE_NAME = "records.db"
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
_NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "glusterfs", "ceph", "9p"}
)


def default_home() -> Path:
    """``$CHECKPOINT_RECORDS_HOME``, else the per-user cache directory (resolved by the settings table)."""
    return resolve_settings().home


def filesystem_type(path: Path) -> str:
    """The type of the mount holding ``path`` (Linux ``/proc/self/mounts``), or ``""`` if unknown."""
    best, best_type = "", ""
    target = str(path.resolve())
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount_point = parts[1].replace("\\040", " ")
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, best_type = mount_point, parts[2]
    except OSError:
        return ""
    return best_type


class Database:
    """``<home>/records.db``: per-thread connections, write transactions, writes kept while the disk is full."""

    #: The SQL this database speaks where SQLite and PostgreSQL differ.
    dialect: Dialect = SQLITE

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.path = self.home / DATABASE_NAME
        self._local = threading.local()
        #: Set once the file was deleted under this process (see :meth:`_deleted`).
        self._replaced = False
        #: Writes that found the disk full, in order, kept until there is room (see :meth:`write`).
        self._kept: list[Callable[[], object]] = []
        self._kept_lock = threading.RLock()
        self._check_writable()
        self._check_readable()

    def _check_writable(self) -> None:
        """Fail now, not at the first save; without creating the database (non-main ranks never write)."""
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self._unwritable(error.strerror or str(error))
        target = self.path if self.path.exists() else self.home
        if not os.access(target, os.W_OK):
            self._unwritable("permission denied")

    def _check_readable(self) -> None:
        """Fail now on a store this release cannot use (not SQLite, damaged, or newer), touching nothing."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        try:
            with closing(sqlite3.connect(self.path, timeout=1.0)) as connection:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
                version = schema_version(connection)
        except sqlite3.DatabaseError as error:
            if "locked" in str(error) or "busy" in str(error):
                return  # a writer is busy with it: it is a database, in use
            raise ConfigurationError(
                f"checkpoint-records cannot read its store {self.path}: {error}. It was left as it is. "
                f"To start a new store, move it aside (mv {self.path} {self.path}.broken); or point "
                "store=/CHECKPOINT_RECORDS_HOME at another directory."
            ) from None
        refuse_newer(version, self.path)

    def _unwritable(self, why: str) -> None:
        raise ConfigurationError(
            f"checkpoint-records cannot write its store at {self.path} ({why}). "
            "Point it at a writable directory with store=... or CHECKPOINT_RECORDS_HOME."
        )

    @property
    def where(self) -> str:
        """The store as messages name it (its file)."""
        return str(self.path)

    def read(self) -> Connection:
        """This thread's connection, for reading (each statement sees the latest committed state)."""
        return self._connection()

    def _connection(self) -> SqliteConnection:
        owner = (os.getpid(), threading.get_ident())
        connection: SqliteConnection | None = getattr(self._local, "connection", None)
        if connection is not None and getattr(self._local, "owner", None) == owner:
            if _file_identity(self.path) == self._local.identity:
                return connection
            self._deleted(connection)
        # A connection inherited through fork() must never be used: open a fresh one.
        self.home.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, factory=SqliteConnection)
        connection.text_factory = _text
        network = filesystem_type(self.home) in _NETWORK_FILESYSTEMS
        _set_up(connection, self.path, None if self._replaced else "delete" if network else "wal")
        self._local.synchronous = "FULL"
        self._local.connection, self._local.owner = connection, owner
        self._local.identity = _file_identity(self.path)
        return connection

    def _deleted(self, connection: sqlite3.Connection) -> None:
        """The file under this thread's connection was deleted (or replaced): say so, and move on to a
        new file at the same path, so what follows is recorded. This process then keeps that file in
        SQLite's rollback-journal mode: closing the old connections deletes ``records.db-wal`` by name,
        which must not be the new file's."""
        self._replaced = True
        warn_once(
            f"store-deleted:{self.path}",
            "checkpoint-records: the store %s was deleted (or replaced) while this process was using it. "
            "Recording goes on in a new store file at that path; what the old file held is gone from it "
            "(the checkpoints on disk still have it).",
            self.path,
        )
        connection.close()
        self._local.connection = None

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Connection]:
        """One write transaction, holding the write lock from its first statement: what it reads no
        other writer (thread or process) changes before it commits. ``durable`` ones are fsynced at
        commit (they survive a power loss); the others (queue bookkeeping, job progress) only survive the
        process, which a crash or ``kill -9`` never loses either, and cost the caller no disk flush."""
        connection = self._connection()
        level = "FULL" if durable else "NORMAL"
        if getattr(self._local, "synchronous", "FULL") != level:
            connection.execute(f"PRAGMA synchronous={level}")
            self._local.synchronous = level
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:  # SQLite may have rolled back itself (a full disk)
                connection.execute("ROLLBACK")
            raise

    def write(self, write: Callable[[], T], kept: T) -> T:
        """``write()``, after any earlier writes kept in memory; when the disk is full, keep it (and
        return ``kept``) to be written, in order, once there is room: nothing is lost, nothing waits.

        Every write of the store's documents, log and queues goes through here (claims excepted: a
        claim that cannot be written is work not taken yet). ``write`` is applied to the store as it is
        when it lands, so it reads what it needs inside its own transaction."""
        if self._kept:
            with self._kept_lock:
                if not self.write_kept():
                    self._kept.append(write)
                    return kept
        try:
            return write()
        except (sqlite3.OperationalError, OSError) as error:
            if not _disk_full(error):
                raise
            with self._kept_lock:
                self._kept.append(write)
            warn_once(
                f"store-full:{self.path}",
                "checkpoint-records: the disk holding %s is full (%s). Records are kept in memory and "
                "written as soon as there is room (tried again at each save and every second); training "
                "goes on. Free some space.",
                self.path,
                error,
            )
            return kept

    def write_kept(self) -> bool:
        """Write what a full disk kept in memory, oldest first; whether all of it is on disk now."""
        if not self._kept:  # the common case costs no lock
            return True
        with self._kept_lock:
            written = 0
            try:
                while self._kept:
                    self._kept[0]()
                    self._kept.pop(0)
                    written += 1
            except (sqlite3.Error, OSError) as error:  # still full, or locked meanwhile: kept, in order
                logger.debug("checkpoint-records: kept writes wait for %s: %r", self.path, error)
            if written:
                logger.warning(
                    "checkpoint-records: %d write(s) kept while the disk was full are now in %s%s",
                    written,
                    self.path,
                    f"; {len(self._kept)} still waiting for room" if self._kept else "",
                )
            return not self._kept

    def close(self) -> None:
        """Write what is kept (or say it is lost) and close this thread's connection."""
        if not self.write_kept():
            warn_once(
                f"store-full-left:{self.path}",
                "checkpoint-records: %d write(s) could not reach %s: its disk is still full. They are "
                "not in the store; the checkpoints on disk still have what they recorded.",
                len(self._kept),
                self.path,
            )
        connection = getattr(self._local, "connection", None)
        if connection is not None and getattr(self._local, "owner", None) == (
            os.getpid(),
            threading.get_ident(),
        ):
            connection.close()
        self._local.connection = None


def readable(model: type[M], body: str, what: str) -> M | None:
    """The document ``body`` holds (``what`` names it: ``record <id>``); one an older release stored with
    values this release refuses is repaired (escaped, cut) or, when it cannot be, left out (None): said
    once either way, so one bad row never stops a reader of the others."""
    try:
        document, repaired = read_stored(model, body)
    except InvalidValue as error:
        warn_once(
            f"unreadable:{what}",
            "checkpoint-records: %s in the store cannot be read (%s); it is left out of what is listed "
            "and delivered (written by an older release?)",
            what,
            error,
        )
        return None
    if repaired:
        warn_once(
            f"repaired:{what}",
            "checkpoint-records: %s in the store holds values this release does not store (text that is "
            "not valid Unicode, deep nesting, integers beyond 64 bits); it is read with them escaped or cut",
            what,
        )
    return document


def _text(data: bytes) -> str:
    """A text value as SQLite holds it, valid Unicode whatever another writer left: a surrogate SQLite's
    JSON functions decode from a ``\\udcff`` escape, or bytes that are not UTF-8, escaped."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return escape_text(data.decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError:
        return escape_text(data.decode("utf-8", "surrogateescape"))


def _file_identity(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` names now (device, inode), or None when there is none."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return "database or disk is full" in str(error)


def _set_up(connection: SqliteConnection, path: Path, journal_mode: str | None, attempts: int = 200) -> None:
    """Journal mode (None: leave it), durability, tables and schema version. Switching the journal mode
    does not wait on SQLite's busy timeout when another connection holds a lock, so that step is retried
    for up to ~10 s."""
    connection.execute("PRAGMA synchronous=FULL")
    for attempt in range(attempts):
        try:
            if journal_mode and connection.execute("PRAGMA journal_mode").fetchone()[0] != journal_mode:
                connection.execute(f"PRAGMA journal_mode={journal_mode}")
            migrate(connection, path)
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


__all__ = ["DATABASE_NAME", "Database", "marks", "readable"]

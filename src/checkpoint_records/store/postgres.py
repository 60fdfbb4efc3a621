"""The registry's store on PostgreSQL (``serve --database postgresql://...``): any number of ``serve``
processes on one database, for teams that outgrow one machine. The training side never imports this
module (nor psycopg, the driver, in the ``postgres`` extra).

The same parts as the SQLite store (:class:`PostgresStore` is a :class:`~.RecordStore` whose connections
come from a psycopg pool) and the same SQL, said in :class:`~.dialect.PostgresDialect`. What holds across
processes, the database holds:

- **one writer at a time**, as in SQLite: every write transaction first takes one transaction-level
  advisory lock, so what a write reads (an idempotency key, a held revision, a record's job, a claim) no
  other replica changes before it commits, and the rules the parts keep in one process hold across all of
  them (idempotency, "an older revision never overwrites a newer", key and id scoping, exactly-once
  claims). Reads take no lock and see the latest committed state; a killed replica's lock is released
  with its connection, its transaction rolled back whole.
- **primary keys** on every table, as a backstop: nothing is stored twice even by a writer that forgot.
- **the schema's version** in ``checkpoint_records_schema`` (a row per migration), brought up to date on
  start under the same lock: two servers starting at once migrate once; a newer database is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from ..errors import ConfigurationError
from ..logs import logger
from ..redaction import public_url
from . import RecordStore
from .dialect import POSTGRES, Dialect
from .schema import SCHEMA_VERSION, refuse_newer, upgrade

T = TypeVar("T")
#: The advisory lock every write transaction holds (any number: one per database, shared by replicas).
WRITE_LOCK = 0x636B7074_7265636F  # "ckptreco"
#: Connections a server keeps: the request threads read in parallel, writes queue on the lock anyway.
POOL_SIZE = 8
VERSION_TABLE = "checkpoint_records_schema"


class Rows:
    """A statement's rows, read whole, so its connection goes back to the pool at once."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self.rowcount = cursor.rowcount
        self._rows = cursor.fetchall() if cursor.description is not None else []

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class PostgresConnection:
    """A psycopg connection that takes the store's SQL (``?`` placeholders) and says its dialect."""

    dialect: Dialect = POSTGRES

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Rows:
        return Rows(self._connection.execute(_placeholders(sql), parameters))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Rows:
        with self._connection.cursor() as cursor:
            cursor.executemany(_placeholders(sql), list(parameters))
            return Rows(cursor)


class PooledReads:
    """Reads, each statement on whichever pooled connection is free (autocommit: the latest state)."""

    dialect: Dialect = POSTGRES

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]]) -> None:
        self._pool = pool

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Rows:
        with self._pool.connection() as connection:
            return PostgresConnection(connection).execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Rows:
        raise TypeError("a write outside a transaction: use PostgresDatabase.transaction()")


class PostgresDatabase:
    """The store's connections to one PostgreSQL database: a pool, and write transactions under the lock."""

    dialect: Dialect = POSTGRES

    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        self._shown = public_url(url)
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as connection:
                migrate(PostgresConnection(connection), self.where)
        except psycopg.OperationalError as error:
            raise ConfigurationError(
                f"checkpoint-records cannot reach its database {self.where}: {_first_line(error)}. Check "
                "--database / CHECKPOINT_RECORDS_SERVER_DATABASE (the password comes from PGPASSWORD, "
                "~/.pgpass or the URL)."
            ) from None
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            # A connection cut while it waited in the pool (PostgreSQL restarted, a proxy's idle timeout)
            # is replaced before it is handed out, so no request fails on it.
            check=ConnectionPool.check_connection,
            open=True,
            name="checkpoint-records",
        )
        self._reads = PooledReads(self._pool)

    @property
    def where(self) -> str:
        """The database as messages name it: ``postgresql://host:port/name``, never a user or password."""
        return self._shown

    def read(self) -> PooledReads:
        return self._reads

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[PostgresConnection]:
        """One write transaction, holding the store's write lock from its first statement (see the
        module's docstring); ``durable`` ones wait for the commit to reach the disk, the others only
        for PostgreSQL to have it (``synchronous_commit = off``: a crash of the database, not of a
        replica, may lose the last of them)."""
        with self._pool.connection() as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            if not durable:
                connection.execute("SET LOCAL synchronous_commit = off")
            yield PostgresConnection(connection)

    def write(self, write: Callable[[], T], kept: T) -> T:
        """``write()``: a database server has no disk of ours to fill (see ``Database.write``)."""
        return write()

    def write_kept(self) -> bool:
        return True

    def close(self) -> None:
        """Close the pool's connections (a server that stops)."""
        self._pool.close()


class PostgresStore(PostgresDatabase, RecordStore):
    """:class:`~.RecordStore` on PostgreSQL: the same parts and queues, one database for every replica."""

    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        PostgresDatabase.__init__(self, url, pool_size)
        self.add_queues()


def migrate(connection: PostgresConnection, where: str) -> None:
    """Bring the database to :data:`~.schema.SCHEMA_VERSION` in one transaction under the write lock
    (PostgreSQL's DDL is transactional): the first server to start migrates, the others find it done."""
    with connection._connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version BIGINT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        version = int(
            connection.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}").fetchone()[0]
        )
        refuse_newer(version, where, "point --database / CHECKPOINT_RECORDS_SERVER_DATABASE elsewhere")
        if version == SCHEMA_VERSION:
            return
        upgrade(connection, version)
        connection.execute(f"INSERT INTO {VERSION_TABLE} VALUES (?, ?)", (SCHEMA_VERSION, time.time()))
        logger.info(
            "checkpoint-records: %s migrated from schema version %d to %d", where, version, SCHEMA_VERSION
        )


def _placeholders(sql: str) -> str:
    """The store's ``?`` placeholders as psycopg's ``%s`` (the store's SQL has no ``?`` or ``%`` else)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__

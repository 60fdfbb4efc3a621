"""What differs between the store's two databases, SQLite (embedded, the default) and PostgreSQL (the
registry's team set-up): a few fragments of SQL, where the schema's version is kept, and how the one
description of the schema (:data:`.schema.SCHEMA`) is said to each.

Every part of :mod:`.store` writes its SQL once, with ``?`` placeholders, and asks its connection's
``dialect`` for the fragments that differ. A connection of either database is a :class:`Connection`.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar, Protocol


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What the store's parts use of a connection (an ``sqlite3.Connection`` is one)."""

    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


class Dialect:
    """SQLite's SQL: the fragments as the store has always written them."""

    name: ClassVar[str] = "sqlite"

    def json_document(self, column: str) -> str:
        """``column`` for SQLite's JSON functions: NULL where it is not JSON SQLite can read (nested past
        its depth, written by something else), so one such row never fails a whole list."""
        return f"(CASE WHEN json_valid({column}) THEN {column} END)"

    def json_text(self, column: str, path: str) -> str:
        """The text (or number) at ``path`` (``$.a.b``) in the JSON document ``column``."""
        return f"json_extract({self.json_document(column)}, '{path}')"

    def json_number(self, column: str, path: str) -> str:
        return self.json_text(column, path)

    def json_true(self, column: str, path: str) -> str:
        """A condition: the value at ``path`` is JSON ``true``."""
        return f"{self.json_text(column, path)} = 1"

    def available_and_ready(self, column: str = "body") -> str:
        """A condition: the record ``column`` is available and ready for inference."""
        ready = self.json_true(column, "$.status.metadata.inferenceReady")
        return f"{self.json_text(column, '$.status.status')} = 'available' AND {ready}"

    def json_absent(self, column: str) -> str:
        """A condition: the JSON document ``column`` has nothing at the path given as a parameter."""
        return f"json_type({self.json_document(column)}, ?) IS NULL"

    def json_text_at(self, column: str) -> str:
        """The text at the path given as a parameter (SQLite's syntax, ``$.a."b c"``) in ``column``."""
        return f"json_extract({self.json_document(column)}, ?)"

    def each(self) -> str:
        """A table of one column, ``value``: the strings of a JSON array given as one parameter."""
        return "json_each(?)"

    def listed(self) -> str:
        """A subquery of the strings in a JSON array given as one parameter (any number of them)."""
        return f"SELECT value FROM {self.each()}"

    def latest_per_job(self, value: str, where: str) -> str:
        """Rows of (job id, ``value``, step): ``value`` at each job's highest step where ``where`` holds."""
        # SQLite gives the other columns of the row that holds MAX(step).
        return f"SELECT job_id, {value}, MAX(step) FROM records WHERE {where} GROUP BY job_id"

    def statements(self, script: str) -> list[str]:
        """The statements of a script of the schema's tables (part of :data:`.schema.SCHEMA`), as this
        database says them; a migration step creating a table it then fills says it with this."""
        return sqlite_statements(script)

    def schema(self, script: str) -> list[str]:
        """The statements of :data:`.schema.SCHEMA`, as this database says them."""
        return self.statements(script)

    def columns(self, connection: Connection, table: str) -> set[str]:
        """The columns ``table`` has (none when there is no such table)."""
        return {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}

    def replace_into(self, table: str, columns: Sequence[str], key: Sequence[str]) -> str:
        """Insert a row, or replace the one with its ``key``."""
        return f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES ({marks(columns)})"

    def insert_new(self, table: str, columns: Sequence[str], rows: str | None = None) -> str:
        """Insert rows (``VALUES`` by default, or the query ``rows``), skipping any whose key is taken."""
        return f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) {rows or f'VALUES ({marks(columns)})'}"


class PostgresDialect(Dialect):
    """PostgreSQL's SQL: JSON read with ``jsonb`` operators, upserts with ``ON CONFLICT``, the schema
    with 64-bit numbers and its own trigger, and the version in a table of its own."""

    name: ClassVar[str] = "postgresql"

    def json_text(self, column: str, path: str) -> str:
        return f"({column}::jsonb #>> '{_pointer(path)}')"

    def json_number(self, column: str, path: str) -> str:
        return f"({column}::jsonb #>> '{_pointer(path)}')::double precision"

    def json_true(self, column: str, path: str) -> str:
        return f"({column}::jsonb #> '{_pointer(path)}') = 'true'::jsonb"

    def json_absent(self, column: str) -> str:
        return f"jsonb_path_exists({column}::jsonb, ?::jsonpath) IS NOT TRUE"

    def json_text_at(self, column: str) -> str:
        return f"(jsonb_path_query_first({column}::jsonb, ?::jsonpath) #>> '{{}}')"

    def each(self) -> str:
        return "jsonb_array_elements_text(?::jsonb) AS value"

    def latest_per_job(self, value: str, where: str) -> str:
        return (
            f"SELECT DISTINCT ON (job_id) job_id, {value}, step FROM records WHERE {where}"
            " ORDER BY job_id, step DESC"
        )

    def columns(self, connection: Connection, table: str) -> set[str]:
        rows = connection.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        )
        return {row[0] for row in rows}

    def replace_into(self, table: str, columns: Sequence[str], key: Sequence[str]) -> str:
        updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in columns if column not in key)
        return (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks(columns)})"
            f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
        )

    def insert_new(self, table: str, columns: Sequence[str], rows: str | None = None) -> str:
        values = rows or f"VALUES ({marks(columns)})"
        return f"INSERT INTO {table} ({', '.join(columns)}) {values} ON CONFLICT DO NOTHING"

    def statements(self, script: str) -> list[str]:
        """A script's statements as PostgreSQL says them: 64-bit integers and doubles, no ``WITHOUT
        ROWID``, and no SQLite triggers (:meth:`schema` adds :data:`POSTGRES_TRIGGERS` instead)."""
        statements = []
        for commented in sqlite_statements(script):
            statement = "\n".join(line for line in commented.splitlines() if not line.startswith("--"))
            if statement.startswith("CREATE TRIGGER"):
                continue
            statement = re.sub(r"\bINTEGER\b", "BIGINT", statement)
            statement = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)
            statement = statement.replace(") WITHOUT ROWID;", ");")
            if statement.startswith("CREATE TABLE IF NOT EXISTS records "):
                # SQLite's rowid: a new one at each write, which the evaluation queue scans by.
                statement = statement.replace("\n);", ",\n    rowid BIGINT NOT NULL DEFAULT 0\n);")
            statements.append(statement.rstrip(";"))
        return statements

    def schema(self, script: str) -> list[str]:
        """The statements of :data:`.schema.SCHEMA` as PostgreSQL says them (:meth:`statements`), SQLite's
        triggers replaced by :data:`POSTGRES_TRIGGERS`."""
        statements = self.statements(script)
        # A job's newest ready checkpoint, found at once: PostgreSQL's planner cannot tell how few
        # rows the JSON condition leaves, and would read every record of the job to sort them.
        ready = f"CREATE INDEX IF NOT EXISTS records_ready ON records(job_id, step, id) WHERE {self.available_and_ready()}"
        return [*statements, *POSTGRES_TRIGGERS, ready]


#: SQLite's triggers (and its ``rowid``), said in PL/pgSQL, statement by statement.
POSTGRES_TRIGGERS = (
    "CREATE SEQUENCE IF NOT EXISTS records_rowid",
    """CREATE OR REPLACE FUNCTION record_written() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    status jsonb := NEW.body::jsonb -> 'status';
BEGIN
    NEW.rowid := nextval('records_rowid');
    INSERT INTO record_revisions (id, revision, status, ready, best, updated_at) VALUES (
        NEW.id, NEW.revision, status ->> 'status', (status #>> '{metadata,inferenceReady}')::boolean::int,
        (status #>> '{metadata,best}')::boolean::int, NEW.updated_at
    ) ON CONFLICT (id, revision) DO UPDATE SET status = EXCLUDED.status, ready = EXCLUDED.ready,
        best = EXCLUDED.best, updated_at = EXCLUDED.updated_at;
    -- An upsert fires this before its insert, then (the id being taken) before its update: count once.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_checkpoints (job_id, checkpoints, first_created_at, last_updated_at)
        VALUES (NEW.job_id, 1, NEW.created_at, NEW.updated_at)
        ON CONFLICT (job_id) DO UPDATE SET
            checkpoints = job_checkpoints.checkpoints
                + (NOT EXISTS (SELECT 1 FROM records WHERE id = NEW.id))::int,
            first_created_at = LEAST(job_checkpoints.first_created_at, NEW.created_at),
            last_updated_at = GREATEST(job_checkpoints.last_updated_at, NEW.updated_at);
    END IF;
    RETURN NEW;
END $$""",
    "CREATE OR REPLACE TRIGGER record_revisions_kept BEFORE INSERT OR UPDATE ON records"
    " FOR EACH ROW EXECUTE FUNCTION record_written()",
    "CREATE INDEX IF NOT EXISTS records_by_rowid ON records(rowid)",
)

SQLITE = Dialect()
POSTGRES = PostgresDialect()


class SqliteConnection(sqlite3.Connection):
    """An ``sqlite3.Connection`` that says its dialect (``sqlite3.connect(..., factory=...)``)."""

    dialect: ClassVar[Dialect] = SQLITE


def marks(values: Sequence[Any]) -> str:
    """SQL placeholders for ``values``."""
    return ",".join("?" * len(values))


def sqlite_statements(script: str) -> list[str]:
    """The statements of an SQL script, one by one (``executescript`` would commit the transaction)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


def _pointer(path: str) -> str:
    """``$.a.b`` as a PostgreSQL path, ``{a,b}``."""
    if not path.startswith("$."):
        raise ValueError(f"a JSON path from the document's root, not {path!r}")
    return "{" + ",".join(path[2:].split(".")) + "}"

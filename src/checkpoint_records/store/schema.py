"""The store's tables, and the steps that bring a store written by an earlier release up to them.

The store's version is SQLite's ``PRAGMA user_version`` (0 for a store written before versions existed);
PostgreSQL keeps it in a table (:mod:`.postgres`). Both databases take the same steps and the same
:data:`SCHEMA`, each said in its own dialect (:meth:`.dialect.Dialect.schema`).
:data:`SCHEMA` always describes the latest tables and is applied on every open (``CREATE ... IF NOT
EXISTS``: a new table needs nothing else). A change that cannot be said that way (a new column on an
existing table, rewritten rows) is a *step* appended to ``_MIGRATIONS``: step ``n`` takes a store from
version ``n - 1`` to ``n``, runs (before :data:`SCHEMA`) inside the one transaction that also sets the new
version, and must be harmless on a new, empty store too (use :func:`add_column`, which does nothing when
the table does not exist yet or has the column). Never edit or reorder a released step. A store of a
newer version than this release knows is refused, never written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigurationError
from ..series import LOG_PAGE_SIZE, log_page_id
from .dialect import Connection, SqliteConnection

JOB_CHECKPOINTS = """
-- Each job's checkpoints in numbers, kept by a trigger on each write of a record, so a list of jobs reads
-- a row per job, not every record (the registry's jobs list with a million checkpoints).
CREATE TABLE IF NOT EXISTS job_checkpoints (
    job_id TEXT PRIMARY KEY,
    checkpoints INTEGER NOT NULL,
    first_created_at TEXT NOT NULL,
    last_updated_at TEXT NOT NULL
);
-- Before the write, so a new record (not a revision of one stored) is told by its id alone.
CREATE TRIGGER IF NOT EXISTS job_checkpoints_kept BEFORE INSERT ON records BEGIN
    INSERT INTO job_checkpoints (job_id, checkpoints, first_created_at, last_updated_at)
    VALUES (NEW.job_id, 1, NEW.created_at, NEW.updated_at)
    ON CONFLICT (job_id) DO UPDATE SET
        checkpoints = checkpoints + NOT EXISTS (SELECT 1 FROM records WHERE id = NEW.id),
        first_created_at = MIN(first_created_at, NEW.created_at),
        last_updated_at = MAX(last_updated_at, NEW.updated_at);
END;
"""

#: A job's log in pages (:mod:`...series`): each page's revision, raised whenever its entries change, so a
#: sink is sent the pages that changed and a receiver keeps the newest revision of each.
_LOG_PAGES = """
CREATE TABLE IF NOT EXISTS log_pages (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    page INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS log_pages_by_job ON log_pages(job_id, page);
"""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_name ON records(name);
CREATE INDEX IF NOT EXISTS records_by_job ON records(job_id, step);
CREATE TABLE IF NOT EXISTS outbox (
    sink TEXT NOT NULL,
    record_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    updated_at REAL NOT NULL,
    claimed_by TEXT,
    claimed_until REAL,
    kind TEXT NOT NULL DEFAULT 'record',
    PRIMARY KEY (sink, record_id)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(sink, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    revision INTEGER NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    body TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS log_entries (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    step INTEGER NOT NULL,
    loss REAL,
    eval_loss REAL,
    logged_at REAL,
    body TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

-- The registry server (``checkpoint-records serve``): newest-first pages of a job's checkpoints, and
-- the idempotency keys of what it received, with the receipts it answered.
CREATE INDEX IF NOT EXISTS records_by_job_step_id ON records(job_id, step, id);
CREATE TABLE IF NOT EXISTS received_keys (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    receipts TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS received_keys_by_time ON received_keys(received_at);
-- Where each document the server stored came from (the sender's address) and when, by document id.
CREATE TABLE IF NOT EXISTS received_from (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    revision INTEGER NOT NULL,
    sender TEXT NOT NULL,
    received_at REAL NOT NULL
);

-- The web page: every revision of a record in brief, kept by a trigger on each write of a record (by any
-- writer, old or new), so a checkpoint's page can tell when it was deleted or the best moved.
CREATE TABLE IF NOT EXISTS record_revisions (
    id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    status TEXT,
    ready INTEGER,
    best INTEGER,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (id, revision)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS record_revisions_kept AFTER INSERT ON records BEGIN
    INSERT OR REPLACE INTO record_revisions (id, revision, status, ready, best, updated_at) VALUES (
        NEW.id, NEW.revision, json_extract(NEW.body, '$.status.status'),
        json_extract(NEW.body, '$.status.metadata.inferenceReady'),
        json_extract(NEW.body, '$.status.metadata.best'), NEW.updated_at
    );
END;

CREATE TABLE IF NOT EXISTS uploads (
    record_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    remote TEXT NOT NULL,
    source TEXT NOT NULL,
    staging TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    claimed_by TEXT,
    claimed_until REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (record_id, path)
);
CREATE INDEX IF NOT EXISTS uploads_due ON uploads(state, next_attempt_at);

-- ``checkpoint-records evaluate``: one row per evaluator and checkpoint, ``pending`` until its result is on
-- the record (``done``); claimed per evaluator name, so two workers of one name never run one twice.
CREATE TABLE IF NOT EXISTS evaluations (
    evaluator TEXT NOT NULL,
    record_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    started_at TEXT,
    next_attempt_at REAL NOT NULL,
    claimed_by TEXT,
    claimed_until REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (evaluator, record_id)
);
CREATE INDEX IF NOT EXISTS evaluations_due ON evaluations(evaluator, state, next_attempt_at);
"""
    + _LOG_PAGES
    + JOB_CHECKPOINTS
)


def add_column(connection: Connection, table: str, column: str, definition: str) -> bool:
    """Add ``column`` to ``table`` unless it has it already, or the table does not exist yet (a new
    store, which :data:`SCHEMA` then creates whole): what a migration step adding a column calls. Whether
    it added it (a step may then fill it for the existing rows)."""
    columns = connection.dialect.columns(connection, table)
    if not columns or column in columns:
        return False
    connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    return True


def _first_versioned_release(connection: Connection) -> None:
    """0 -> 1: the tables of the releases before versions are unchanged; the store now says its version."""


def _outbox_says_what_it_delivers(connection: Connection) -> None:
    """1 -> 2: the outbox says what it delivers (``kind``); the job ids already in it are jobs."""
    if add_column(connection, "outbox", "kind", "TEXT NOT NULL DEFAULT 'record'"):
        connection.execute("UPDATE outbox SET kind = 'job' WHERE record_id IN (SELECT id FROM jobs)")


def _records_carry_evaluations(connection: Connection) -> None:
    """2 -> 3: records may carry evaluation results (``status.evaluations``) and the store has their queue
    (``evaluations``, in :data:`SCHEMA`). Nothing to rewrite; the version rises so that an earlier release,
    which would drop the results when it revises a record, refuses this store instead."""


def _logs_go_out_in_pages(connection: Connection) -> None:
    """3 -> 4: a job's log is delivered in pages (``log_pages``), the outbox may hold them (``kind`` ``log``)
    and deliveries dropped by ``outbox drop``, which an earlier release would count pending forever: it
    refuses this store instead. The pages of the logs already kept start at revision 1, so ``flush
    --sink`` can send them."""
    if not connection.dialect.columns(connection, "log_entries"):
        return  # a new store: SCHEMA creates it all
    for statement in connection.dialect.statements(_LOG_PAGES):
        connection.execute(statement)
    pages = connection.execute("SELECT DISTINCT job_id, seq / ? FROM log_entries", (LOG_PAGE_SIZE,))
    connection.executemany(
        connection.dialect.insert_new(
            "log_pages", ("id", "job_id", "page", "revision", "updated_at"), "VALUES (?, ?, ?, 1, 0)"
        ),
        [(log_page_id(job_id, page), job_id, page) for job_id, page in pages.fetchall()],
    )


def _jobs_counted(connection: Connection) -> None:
    """4 -> 5: each job's checkpoints in numbers (``job_checkpoints``, kept by a trigger in the store, so
    every writer keeps it), counted here once from the records already stored."""
    if not connection.dialect.columns(connection, "records"):
        return  # a new store: SCHEMA creates it all
    for statement in connection.dialect.statements(JOB_CHECKPOINTS):
        connection.execute(statement)
    connection.execute("DELETE FROM job_checkpoints")  # counted afresh, whatever was there
    connection.execute(
        "INSERT INTO job_checkpoints (job_id, checkpoints, first_created_at, last_updated_at)"
        " SELECT job_id, COUNT(*), MIN(created_at), MAX(updated_at) FROM records GROUP BY job_id"
    )


#: Step ``n`` (1-based) takes a store from version ``n - 1`` to ``n``. Append only.
_MIGRATIONS: tuple[Callable[[Connection], None], ...] = (
    _first_versioned_release,
    _outbox_says_what_it_delivers,
    _records_carry_evaluations,
    _logs_go_out_in_pages,
    _jobs_counted,
)
SCHEMA_VERSION = len(_MIGRATIONS)


def migrate(connection: SqliteConnection, path: Path) -> None:
    """Bring the store to :data:`SCHEMA_VERSION`, in one transaction; refuse a newer store."""
    version = schema_version(connection)
    refuse_newer(version, path)
    if version == SCHEMA_VERSION:
        connection.executescript(SCHEMA)  # tables added since: no write when they all exist
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = schema_version(connection)  # another process may have upgraded it meanwhile
        refuse_newer(version, path)
        upgrade(connection, version)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def upgrade(connection: Connection, version: int) -> None:
    """Within the caller's transaction: the steps after ``version``, then :data:`SCHEMA`, in the
    connection's dialect (the caller then records :data:`SCHEMA_VERSION`)."""
    for step in _MIGRATIONS[version:]:
        step(connection)
    for statement in connection.dialect.schema(SCHEMA):
        connection.execute(statement)


def schema_version(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def refuse_newer(
    version: int, where: Path | str, elsewhere: str = "point store=/CHECKPOINT_RECORDS_HOME elsewhere"
) -> None:
    if version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"the checkpoint-records store {where} was written by a newer release (schema version "
            f"{version}; this release reads up to {SCHEMA_VERSION}). Upgrade checkpoint-records "
            f"(pip install -U checkpoint-records), or {elsewhere}; the store was left untouched."
        )

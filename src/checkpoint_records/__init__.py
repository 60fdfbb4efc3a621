"""checkpoint-records: a checkpoint record on every save, kept durably and delivered to your platform.

Where things are:

- the record: ``record.py`` (the model); ``job.py`` the job it belongs to (identity, status, loss series,
  and ``JobDocument``, the job as the canonical format sends it); ``series.py`` the job's logged series on
  the wire, in pages with their own revisions (``LogPage``); ``validation.py`` what any of them may hold
  (valid Unicode, bounded nesting and integers, real times, contained file paths), checked at ingest,
  bounded where we build, repaired where the store reads.
- built: ``callback.py`` (the Trainer adapter) and ``recorder.py`` (the front, on the training thread)
  hand each save (``handoff.py``: what a save carries) to the recorder's own thread (``background.py``,
  a future per save), where ``bookkeeper.py`` reads the directory (``collect.py``, ``readiness.py``
  with ``loading.py``: what can load the model, ``history.py``), builds the record (``build.py``),
  stores it, marks rotations and the best, and keeps the job's progress; ``rebuild.py`` records missed checkpoints from their own files (``recovery.py``
  reads them). The end of training waits once: one ``flush_timeout`` for everything (``countdown.py``).
- attached with no line of code: ``startup.py``, run in every Python process by the wheel's
  ``checkpoint_records.pth`` (it imports nothing and waits for ``transformers.trainer``), then
  ``attach.py`` (``report_to="checkpoint-records"``, one callback per Trainer); ``run_command.py`` is
  ``checkpoint-records run -- COMMAND``.
- stored: ``store/`` (one SQLite file): ``store/documents.py`` writes records and jobs (a stored record
  changes only through the atomic ``RecordStore.update_record``), ``store/log.py`` the job's log (each
  page revised and queued when its entries change; ``store/pages.py`` reads and receives pages),
  ``store/received.py`` what the registry received and from where, ``store/outbox.py``,
  ``store/uploads.py`` and ``store/evaluations.py`` are the lease queues (``store/leases.py``),
  ``store/database.py`` owns the connections, ``store/schema.py`` the tables and migrations,
  ``store/forget.py`` removes a job or a record with all it holds; no SQL outside ``store/``. The
  registry may keep the same parts on PostgreSQL (``store/postgres.py``, a psycopg pool, the ``postgres``
  extra, opened by ``store.open_store``); ``store/dialect.py`` says the few fragments of SQL that differ.
- rendered: ``formats/`` for a platform (``formats/canonical.py`` is the record as stored,
  ``formats/mlflow.py`` MLflow's runs and logged models); ``terminal.py`` for people (``cli.py`` and
  ``delivery_commands.py``, with ``lookup.py`` for what a typed name names and ``forget.py`` for
  ``forget``; one plural, ``words.py``, one time format); ``page/`` for a browser. The canonical format (``record``)
  sends records, jobs and log pages alike.
- sent: ``delivery.py`` runs the outbox through ``sinks/``: thin adapters (``sinks/http.py``,
  ``sinks/mlflow.py``) over one HTTP transport, ``sinks/transport.py`` (sessions, URL rules, the
  deadline, error mapping, redaction of what servers say, Standard Webhooks signatures made by
  ``signing.py``); ``identity.py`` derives the ids, the names (never a ``/``) and the idempotency keys; ``storage/`` uploads the
  files. Both run on lanes (``lane.py``: one background thread per sink or destination).
  ``delivery_commands.py`` is ``flush`` (which first queues what a sink was never sent: backfill),
  ``resend``, ``import`` and ``outbox`` (move or drop a gone sink's deliveries); ``lookup.py`` finds
  what a command names.
- evaluated: ``evaluation/`` (``checkpoint-records evaluate``): a worker that runs an evaluator on every
  checkpoint ready for inference, anywhere (``evaluation/sources.py`` takes the work from the store's
  evaluation queue or a registry's, ``checkout.py`` finds or pulls the files, ``runner.py`` runs the
  command, ``results.py`` reads the metrics and revises the record, ``worker.py`` ties them together).
- served: ``server/`` (``checkpoint-records serve``), a registry read by the official clients (errors:
  ``server/problems.py``, RFC 7807, and OpenAI's own error object on the OpenAI-shaped routes);
  ``server/auth.py`` its tokens (the API's bearer, the page's sessions), ``signing.py`` verifies
  signed deliveries; ``server/evaluations_api.py`` is the evaluation queue for workers elsewhere;
  ``page/``, its web page, is given the server's ``Auth`` (it never imports the server).
- configured: ``settings.py``: ``Settings`` is the one table of every ``CHECKPOINT_RECORDS_*`` setting
  (argument, variable, parser, default, help), resolved once for the callback, the recorder, every
  command, the server and the storage; MLflow's own variables are read there too (``mlflow_environment``).

Names are imported on first use, so the command-line tool starts without importing transformers.
"""

# Nothing is imported here at run time, not even typing: every Python process of an environment that has
# the package runs its start-up hook (``startup.py``), and importing this package must cost it nothing.
TYPE_CHECKING = False  # typing.TYPE_CHECKING, which type checkers read by its name

#: The one place the version is written (pyproject.toml reads it from here).
__version__ = "0.1.0"

#: Public name to the module that defines it (tests check it against ``__all__``).
_EXPORTS = {
    "CheckpointRecord": "record",
    "CheckpointRecordCallback": "callback",
    "CheckpointRecorder": "recorder",
    "ConfigurationError": "errors",
    "DeliveryError": "sinks",
    "FlushResult": "delivery",
    "HttpSink": "sinks",
    "MlflowSink": "sinks",
    "Readiness": "readiness",
    "RecordStore": "store",
    "Rejected": "sinks",
    "RetryLater": "sinks",
    "Settings": "settings",
    "Sink": "sinks",
    "WireFormat": "formats",
    "assess_readiness": "readiness",
    "resolve_settings": "settings",
}

__all__ = [
    "CheckpointRecord",
    "CheckpointRecordCallback",
    "CheckpointRecorder",
    "ConfigurationError",
    "DeliveryError",
    "FlushResult",
    "HttpSink",
    "MlflowSink",
    "Readiness",
    "RecordStore",
    "Rejected",
    "RetryLater",
    "Settings",
    "Sink",
    "WireFormat",
    "__version__",
    "assess_readiness",
    "resolve_settings",
]

if TYPE_CHECKING:
    from .callback import CheckpointRecordCallback
    from .delivery import FlushResult
    from .errors import ConfigurationError
    from .formats import WireFormat
    from .readiness import Readiness, assess_readiness
    from .record import CheckpointRecord
    from .recorder import CheckpointRecorder
    from .settings import Settings, resolve_settings
    from .sinks import DeliveryError, HttpSink, MlflowSink, Rejected, RetryLater, Sink
    from .store import RecordStore


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'checkpoint_records' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

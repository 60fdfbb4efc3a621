"""The ``checkpoint-records`` command: list, inspect and deliver what the store holds.

Exit codes, for scripts: 0 when the command did what it was asked (for ``flush``/``resend``: everything
it was asked to deliver is delivered), 1 when something it was asked about is missing, ambiguous, still
pending or rejected, 2 for bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .delivery import DeliveryWorker
from .errors import ConfigurationError
from .evaluation.commands import add_commands as add_evaluation_commands
from .formats import DEFAULT_FORMAT, get_format, known_formats
from .formats.training_job import render_job
from .lifecycle import cancel_abandoned
from .recovery import checkpoint_folders
from .settings import TABLE, Settings, parse_seconds, resolve_settings
from .sinks import Sink, configured_sinks, job_sinks
from .storage import live_upload_statuses, upload_state
from .storage.commands import add_commands as add_storage_commands
from .storage.progress import describe
from .store import DATABASE_NAME, DatabaseError, Delivery, RecordStore, StoredRecord
from .terminal import (
    RecordRow,
    delivery_state,
    delivery_summary,
    human_record,
    jobs_table,
    plural,
    progress_bar,
    records_table,
    to_yaml,
)

if TYPE_CHECKING:
    from .recorder import CheckpointRecorder

OK, FAILED, USAGE = 0, 1, 2
#: ``flush``/``resend``/``import --timeout``: someone at a terminal asked for the delivery and waits for
#: it, longer than the end of training does (the ``flush_timeout`` setting).
DEFAULT_DELIVER_TIMEOUT = 60.0
MAX_DELIVER_TIMEOUT = 86400.0
#: ``serve``: loopback unless told otherwise (any other address needs a token).
DEFAULT_SERVE_HOST = "127.0.0.1"
DEFAULT_SERVE_PORT = 8000


class NotFound(Exception):
    """A record name that names no record, or more than one: the message says which and what to type."""


def find_record(store: RecordStore, text: str) -> StoredRecord:
    """The one record ``text`` names: a record id, a name, or ``JOB/NAME`` (job name, id or id prefix).

    Two jobs with the same ``run_name`` have records of the same names; such a name is refused with
    the candidates rather than silently picking one.
    """
    found = store.find(text)
    if not found and "/" in text:
        for split in (index for index, char in enumerate(text) if char == "/"):
            job, name = text[:split], text[split + 1 :]
            found = [
                stored
                for stored in store.find(name)
                if job in (stored.record.metadata.job_name, stored.record.metadata.job_id)
                or (len(job) >= 4 and stored.record.metadata.job_id.startswith(job))
            ]
            if found:
                break
    if not found:
        raise NotFound(f"no record named {text!r} in {store.path} (see: checkpoint-records list)")
    if len({stored.record.id for stored in found}) > 1:
        candidates = "\n".join(
            f"  {stored.record.metadata.job_id[:8]}/{stored.record.name}  (job {stored.record.metadata.job_name},"
            f" record id {stored.record.id}, created {stored.record.status.created_at})"
            for stored in found
        )
        raise NotFound(
            f"{text!r} names {len(found)} records of different jobs; say which with JOB/NAME or the "
            f"record id:\n{candidates}"
        )
    return found[0]


def _open_existing(settings: Settings) -> RecordStore | None:
    """The store, when it exists: reading an empty home must not create a database there."""
    if not (settings.home / DATABASE_NAME).exists():
        return None
    return RecordStore(settings.home)


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    store = _open_existing(settings)
    stored = [] if store is None else store.records()
    if args.job is not None:
        stored = [
            item
            for item in stored
            if args.job in (item.record.metadata.job_id, item.record.metadata.job_name)
            or (len(args.job) >= 4 and item.record.metadata.job_id.startswith(args.job))
        ]
    if args.json:
        print(json.dumps([item.record.to_dict() for item in stored], indent=2, allow_nan=False))
        return OK
    where = settings.home / DATABASE_NAME
    if not stored:
        of_job = f" of job {args.job!r}" if args.job is not None else ""
        print(f"no records{of_job} in {where}", file=sys.stderr)
        return OK
    assert store is not None
    by_record: dict[str, list[Delivery]] = {}
    for delivery in store.outbox.deliveries():
        by_record.setdefault(delivery.record_id, []).append(delivery)
    uploads = live_upload_statuses(store, [item.record for item in stored])
    rows = []
    for item in stored:  # the delivery cell, with the upload state when the checkpoint goes to storage
        summary, upload = delivery_summary(by_record.get(item.record.id, [])), uploads[item.record.id]
        rows.append(
            RecordRow(item.record, summary if upload is None else f"{summary}; upload: {describe(upload)}")
        )
    print(records_table(rows))
    print(f"{plural(len(rows), 'record')} in {where}", file=sys.stderr)
    if any(row.delivery not in ("local", "delivered") for row in rows):
        print("why a delivery is pending or dead: checkpoint-records inspect NAME", file=sys.stderr)
    return OK


def cmd_inspect(settings: Settings, args: argparse.Namespace) -> int:
    store = _open_existing(settings)
    if store is None:
        print(f"no record named {args.name!r}: no store at {settings.home / DATABASE_NAME}", file=sys.stderr)
        return FAILED
    try:
        stored = find_record(store, args.name)
    except NotFound as error:
        print(error, file=sys.stderr)
        return FAILED
    wire_format = get_format(args.format)
    if wire_format.name == DEFAULT_FORMAT:
        document = stored.record.to_dict() if args.json else human_record(stored.record)
        upload = None if args.json else upload_state(store, stored.record)
        if upload is not None:
            document["status"]["upload"] = upload
    elif wire_format.renders_records:
        document = wire_format.render(stored.record)
    else:
        job = store.job(stored.record.metadata.job_id)
        if job is None:
            print(f"no job-level events were stored for {stored.record.metadata.job_name!r}", file=sys.stderr)
            return FAILED
        document = render_job(job.job)
    if args.json:
        print(json.dumps(document, indent=2, allow_nan=False))
        return OK
    print(to_yaml(document), end="")
    now = time.time()
    for delivery in store.outbox.deliveries(stored.record.id):  # YAML comments: the document stays the record
        print(f"# delivery to {delivery.sink}: {delivery_state(delivery, now)}")
    return OK


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    store = _open_existing(settings)
    details = [] if store is None else [render_job(stored.job) for stored in store.jobs()]
    if args.json:
        print(json.dumps(details, indent=2, allow_nan=False))
    elif not details:
        print(f"no jobs in {settings.home / DATABASE_NAME}", file=sys.stderr)
    else:
        print(jobs_table(details))
    return OK


def _recorder(settings: Settings, store: RecordStore, sinks: list[Sink]) -> CheckpointRecorder:
    """A recorder for recovery from the command line (imported here: it needs transformers)."""
    from .recorder import CheckpointRecorder

    return CheckpointRecorder(settings, store=store, sinks=sinks)


def _document_name(store: RecordStore, document_id: str) -> str:
    """What the outbox entry ``document_id`` is to a person: a record's name, or a job's."""
    stored = store.get(document_id)
    if stored is not None:
        return stored.record.name
    job = store.job(document_id)
    return f"job {job.job.name}" if job is not None else document_id


def _deliver(store: RecordStore, sinks: list[Sink], timeout: float, record_ids: Sequence[str] | None) -> int:
    """Deliver what is pending to ``sinks`` within ``timeout``; 0 when all that was asked (the pending
    deliveries of ``record_ids``, or of every record) is delivered, else 1."""
    keys = [sink.key for sink in sinks]
    for name in cancel_abandoned(store, [sink.key for sink in job_sinks(sinks)]):
        print(
            f"job {name} was still Running under a process that is gone: reported Cancelled", file=sys.stderr
        )
    store.outbox.requeue(["pending"], keys, record_ids)  # due now: the user is asking for it
    asked = {
        (delivery.sink, delivery.record_id)
        for delivery in store.outbox.deliveries()
        if delivery.state == "pending" and (record_ids is None or delivery.record_id in record_ids)
    }
    unconfigured = sorted({sink for sink, _ in asked} - set(keys))
    total = sum(sink in keys for sink, _ in asked)
    if total:
        with progress_bar(total, sys.stderr) as bar:
            worker = DeliveryWorker(store, sinks)
            worker.start()
            try:
                result = worker.flush(
                    timeout, on_progress=lambda pending: bar.update(max(total - pending - bar.n, 0))
                )
            finally:
                worker.close()
        print(
            f"delivered {result.delivered}, rejected {result.dead}, still pending {result.pending}",
            file=sys.stderr,
        )
    now = time.time()
    left = [
        delivery
        for delivery in store.outbox.deliveries()
        if (delivery.sink, delivery.record_id) in asked
        and delivery.sink in keys
        and delivery.state != "delivered"
    ]
    for delivery in left:
        print(
            f"  {_document_name(store, delivery.record_id)} -> {delivery.sink}: {delivery_state(delivery, now)}",
            file=sys.stderr,
        )
    for key in unconfigured:
        print(
            f"  pending for {key}, which is not configured here: pass --sink {key} "
            "(and CHECKPOINT_RECORDS_TOKEN if it needs a token)",
            file=sys.stderr,
        )
    if not asked:
        print("nothing to deliver", file=sys.stderr)
    dead = store.outbox.counts(keys)["dead"] if keys else 0
    if dead and record_ids is None:
        print(
            f"{plural(dead, 'rejected delivery', 'rejected deliveries')} kept as dead: fix the cause, "
            "then run `checkpoint-records resend`",
            file=sys.stderr,
        )
    return FAILED if left or unconfigured else OK


def cmd_flush(settings: Settings, args: argparse.Namespace) -> int:
    sinks = configured_sinks(settings)
    store = _open_existing(settings)
    if store is None:
        print(f"nothing to deliver: no store at {settings.home / DATABASE_NAME}", file=sys.stderr)
        return OK
    recovered = _recorder(settings, store, sinks).recover_known()  # saves a killed run never stored
    if recovered:
        names = ", ".join(record.name for record in recovered)
        print(
            f"recorded {plural(len(recovered), 'checkpoint')} from disk that had no record: {names}",
            file=sys.stderr,
        )
    return _deliver(store, sinks, args.timeout, None)


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    sinks = configured_sinks(settings)
    store = RecordStore(settings.home)
    recorder = _recorder(settings, store, sinks)
    missing = 0
    for directory in args.output_dirs:
        path = Path(directory)
        if not checkpoint_folders(path):
            print(f"no checkpoint-<step> or checkpoints/checkpoint_<n> folders in {path}", file=sys.stderr)
            missing += 1
            continue
        job = recorder.job_of(path, args.run_name)  # a run recorded live keeps its job
        imported = recorder.recover(path, job)
        print(f"{path}: imported {plural(len(imported), 'checkpoint')} as job {job.name}", file=sys.stderr)
    if missing:
        return FAILED
    return _deliver(store, sinks, args.timeout, None) if sinks else OK


def cmd_resend(settings: Settings, args: argparse.Namespace) -> int:
    sinks = configured_sinks(settings)
    store = _open_existing(settings)
    if store is None:
        print(f"nothing to re-send: no store at {settings.home / DATABASE_NAME}", file=sys.stderr)
        return FAILED if args.names else OK
    record_ids = None
    if args.names:
        try:
            record_ids = [find_record(store, name).record.id for name in args.names]
        except NotFound as error:
            print(error, file=sys.stderr)
            return FAILED
    revived = store.outbox.requeue(["dead"], [sink.key for sink in sinks], record_ids)
    print(f"re-sending {plural(revived, 'rejected delivery', 'rejected deliveries')}", file=sys.stderr)
    return _deliver(store, sinks, args.timeout, record_ids)


def _timeout(text: str) -> float:
    try:
        return parse_seconds("--timeout", text, MAX_DELIVER_TIMEOUT)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _store_help() -> str:
    try:
        here = str(resolve_settings().home)
    except ConfigurationError:
        here = "none until the environment is fixed"
    return (
        "store directory (default: $CHECKPOINT_RECORDS_HOME, else $XDG_CACHE_HOME/checkpoint-records or "
        f"~/.cache/checkpoint-records; here: {here})"
    )


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    try:
        from .server.run import serve
    except ModuleNotFoundError as error:
        raise ConfigurationError(
            f"`serve` needs the server extra ({error.name} is missing): "
            "pip install 'checkpoint-records[server]'"
        ) from None
    return serve(
        RecordStore(settings.home),
        host=args.host,
        port=args.port,
        tokens=settings.server_tokens,
        allow_public_without_token=args.allow_public_without_token,
        signing_secret=settings.signing_secret,
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, help=_store_help())
    variables = "\n".join(f"  {row.variable:<40} {row.description}" for row in TABLE if row.variable)
    parser = argparse.ArgumentParser(
        prog="checkpoint-records",
        description="Inspect checkpoint records and deliver them.",
        epilog=(
            "exit codes:\n"
            "  0  done (flush/resend: everything it was asked to deliver is delivered)\n"
            "  1  something it was asked about is missing, ambiguous, still pending or rejected\n"
            "  2  bad usage or configuration\n\n"
            f"environment (an option wins over its variable, a variable over the default):\n{variables}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", parents=[common], help="one line per record")
    listing.add_argument("--json", action="store_true", help="all records as one JSON array")
    listing.add_argument(
        "--job", metavar="NAME_OR_ID", help="only the records of this job (name, id or id prefix)"
    )
    listing.set_defaults(run=cmd_list)
    inspect = commands.add_parser("inspect", parents=[common], help="one whole record, and its deliveries")
    inspect.add_argument("name", help="record name, JOB/NAME when several jobs have that name, or record id")
    inspect.add_argument("--json", action="store_true", help="JSON instead of YAML")
    inspect.add_argument(
        "--format",
        default=DEFAULT_FORMAT,
        choices=known_formats(),
        help="show it as that wire format sends it (training-job: the record's job)",
    )
    inspect.set_defaults(run=cmd_inspect)
    jobs = commands.add_parser("jobs", parents=[common], help="one line per job: status and progress")
    jobs.add_argument(
        "--json", action="store_true", help="every job as a TrainingJobDetail, in one JSON array"
    )
    jobs.set_defaults(run=cmd_jobs)
    delivering = argparse.ArgumentParser(add_help=False)
    delivering.add_argument(
        "--sink",
        dest="sinks",
        action="append",
        metavar="URL",
        help="a sink to deliver to, as in CHECKPOINT_RECORDS_SINKS (repeatable; default: that variable)",
    )
    delivering.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_DELIVER_TIMEOUT,
        help=f"seconds to keep trying (default {DEFAULT_DELIVER_TIMEOUT:g}, at most {MAX_DELIVER_TIMEOUT:g})",
    )
    flush = commands.add_parser(
        "flush", parents=[common, delivering], help="deliver everything pending; 1 if some of it is left"
    )
    flush.set_defaults(run=cmd_flush)
    resend = commands.add_parser(
        "resend", parents=[common, delivering], help="re-send rejected (dead) records after fixing the cause"
    )
    resend.add_argument("names", nargs="*", help="record names or ids (default: every rejected record)")
    resend.set_defaults(run=cmd_resend)
    importing = commands.add_parser(
        "import",
        parents=[common, delivering],
        help="record the checkpoints of runs that had no callback, from their trainer_state.json",
    )
    importing.add_argument("output_dirs", nargs="+", metavar="OUTPUT_DIR", help="a run's output_dir")
    importing.add_argument(
        "--run-name", help="the run's TrainingArguments.run_name, if it had one (part of the job's id)"
    )
    importing.add_argument("--job-id", help="the job id, as CHECKPOINT_RECORDS_JOB_ID")
    importing.add_argument("--job-name", help="the job name, as CHECKPOINT_RECORDS_JOB_NAME")
    importing.set_defaults(run=cmd_import)
    serving = commands.add_parser(
        "serve",
        parents=[common],
        help="a registry other jobs send records to, read by OpenAI/Llama Stack clients",
    )
    serving.add_argument(
        "--host", default=DEFAULT_SERVE_HOST, help=f"address to bind (default {DEFAULT_SERVE_HOST})"
    )
    serving.add_argument(
        "--port", type=int, default=DEFAULT_SERVE_PORT, help=f"port (default {DEFAULT_SERVE_PORT})"
    )
    serving.add_argument(
        "--token",
        dest="server_tokens",
        action="append",
        help="a token clients must send as a bearer (repeatable; default: CHECKPOINT_RECORDS_SERVER_TOKENS, "
        "which keeps it out of the process list)",
    )
    serving.add_argument(
        "--signing-secret",
        dest="signing_secret",
        metavar="WHSEC",
        help="accept only deliveries signed with this Standard Webhooks secret (whsec_...; default: "
        "CHECKPOINT_RECORDS_SIGNING_SECRET, which keeps it out of the process list)",
    )
    serving.add_argument(
        "--allow-public-without-token",
        action="store_true",
        help="serve on a non-loopback address without a token (only on a trusted network)",
    )
    serving.set_defaults(run=cmd_serve)
    add_storage_commands(commands, common)
    add_evaluation_commands(commands, common)
    return parser


def _message(error: Exception) -> str:
    """The error with the program's name in front, once (some messages already start with it)."""
    text = str(error)
    return text if text.startswith("checkpoint-records") else f"checkpoint-records: {text}"


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as options: an option whose ``dest`` is a setting's argument (``--store``,
    ``--sink``, ``--storage``, ``import --job-id``, ``serve --token``...) gives that setting."""
    given = {row.argument: getattr(args, row.argument, None) for row in TABLE}
    return {argument: value for argument, value in given.items() if value is not None}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = resolve_settings(**_options(args))
        return int(args.run(settings, args))
    except ConfigurationError as error:
        print(_message(error), file=sys.stderr)
        return USAGE
    except DatabaseError as error:  # a store whose header reads but whose pages are damaged
        print(
            f"checkpoint-records: the store cannot be read ({error}); move it aside (it is never changed "
            "here), or point --store / CHECKPOINT_RECORDS_HOME elsewhere",
            file=sys.stderr,
        )
        return USAGE


if __name__ == "__main__":
    sys.exit(main())

"""The ``checkpoint-records`` command: list, inspect and deliver what the store holds.

Exit codes, for scripts: 0 when the command did what it was asked (for ``flush``/``resend``: everything
it was asked to deliver is delivered), 1 when something it was asked about is missing, ambiguous, still
pending or rejected, 2 for bad usage or configuration; 141 (quietly) when the reader of its output went
away (``| head``), as a Unix tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from .delivery_commands import add_commands as add_delivery_commands
from .errors import FAILED, OK, USAGE, ConfigurationError
from .evaluation.commands import add_commands as add_evaluation_commands
from .forget import add_command as add_forget_command
from .formats import DEFAULT_FORMAT, get_format, known_formats
from .formats.training_job import render_job
from .lookup import NotFound, existing_or_say, find_record, open_existing
from .run_command import add_command as add_run_command
from .settings import TABLE, Settings, resolve_settings
from .sinks import configured_sinks
from .storage import live_upload_statuses, upload_state
from .storage.commands import add_commands as add_storage_commands
from .storage.progress import describe
from .store import DATABASE_NAME, DatabaseError, Delivery, open_store
from .terminal import (
    UNCONFIGURED,
    RecordRow,
    delivery_state,
    delivery_summary,
    human_record,
    human_time,
    jobs_table,
    records_table,
    to_yaml,
)
from .words import plural

#: What a process killed by SIGPIPE exits with in a shell (``... | head``): the reader has gone.
BROKEN_PIPE = 128 + 13
#: ``serve``: loopback unless told otherwise (any other address needs a token).
DEFAULT_SERVE_HOST = "127.0.0.1"
DEFAULT_SERVE_PORT = 8000


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    store = open_existing(settings)
    stored = [] if store is None else store.records()
    if args.job is not None:
        stored = [
            item
            for item in stored
            if args.job in (item.record.metadata.job_id, item.record.metadata.job_name)
            or (len(args.job) >= 4 and item.record.metadata.job_id.startswith(args.job))
        ]
    # A job asked about that has no records is missing (1); an empty store asked about nothing is not.
    missing = FAILED if args.job is not None and not stored else OK
    if args.json:
        print(json.dumps([item.record.to_dict() for item in stored], indent=2, allow_nan=False))
        return missing
    where = settings.home / DATABASE_NAME
    if not stored:
        of_job = f" of job {args.job!r}" if args.job is not None else ""
        print(f"no records{of_job} in {where}", file=sys.stderr)
        return missing
    assert store is not None
    by_record: dict[str, list[Delivery]] = {}
    for delivery in store.outbox.deliveries():
        by_record.setdefault(delivery.record_id, []).append(delivery)
    configured = {sink.key for sink in configured_sinks(settings)}
    received = store.origins([item.record.id for item in stored])
    uploads = live_upload_statuses(store, [item.record for item in stored])
    rows = []
    for item in stored:  # the delivery cell, with the upload state when the checkpoint goes to storage
        record_id = item.record.id
        summary = delivery_summary(by_record.get(record_id, []), configured, record_id in received)
        upload = uploads[record_id]
        rows.append(
            RecordRow(item.record, summary if upload is None else f"{summary}; upload: {describe(upload)}")
        )
    print(records_table(rows))
    print(f"{plural(len(rows), 'record')} in {where}", file=sys.stderr)
    waiting = {delivery.state for item in stored for delivery in by_record.get(item.record.id, [])}
    if waiting & {"pending", "dead"}:
        print("why a delivery is pending or dead: checkpoint-records inspect NAME", file=sys.stderr)
    elsewhere = sorted(
        {d.sink for ds in by_record.values() for d in ds if d.state in ("pending", "dead")} - configured
    )
    for sink in elsewhere:
        print(
            f"{UNCONFIGURED} here, with deliveries waiting: {sink} (`checkpoint-records outbox move {sink} NEW` "
            f"sends them elsewhere, `checkpoint-records outbox drop {sink}` gives them up)",
            file=sys.stderr,
        )
    return OK


def cmd_inspect(settings: Settings, args: argparse.Namespace) -> int:
    store = existing_or_say(settings, f"no record named {args.name!r}")
    if store is None:
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
    configured = {sink.key for sink in configured_sinks(settings)}
    for delivery in store.outbox.deliveries(stored.record.id):  # YAML comments: the document stays the record
        print(f"# delivery to {delivery.sink}: {delivery_state(delivery, now, configured)}")
    origin = store.origins([stored.record.id]).get(stored.record.id)
    if origin is not None:
        print(
            f"# received from {origin.sender or 'an unknown address'} at {human_time(origin.received_at)} "
            f"(revision {origin.revision}; node {stored.record.training.node})"
        )
    return OK


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    store = open_existing(settings)
    details = [] if store is None else [render_job(stored.job) for stored in store.jobs()]
    if args.json:
        print(json.dumps(details, indent=2, allow_nan=False))
    elif not details:
        print(f"no jobs in {settings.home / DATABASE_NAME}", file=sys.stderr)
    else:
        print(jobs_table(details))
    return OK


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
        open_store(settings.server_database, settings.home),
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
    parser = _Parser(
        prog="checkpoint-records",
        description="Inspect checkpoint records and deliver them.",
        epilog=(
            "exit codes:\n"
            "  0  done (flush/resend: everything it was asked to deliver is delivered)\n"
            "  1  something it was asked about is missing, ambiguous, still pending or rejected\n"
            "  2  bad usage or configuration\n"
            f"  {BROKEN_PIPE}  the reader of its output went away (... | head), as for any Unix tool\n\n"
            f"environment (an option wins over its variable, a variable over the default):\n{variables}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=argparse.ArgumentParser)
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
        "--database",
        dest="server_database",
        metavar="URL",
        help="keep the registry in this PostgreSQL database, postgresql://USER@HOST:PORT/DB, shared by any "
        "number of `serve` processes (default: CHECKPOINT_RECORDS_SERVER_DATABASE, else the SQLite store; "
        "the password from PGPASSWORD or ~/.pgpass; needs checkpoint-records[postgres])",
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
    add_delivery_commands(commands, common)
    add_storage_commands(commands, common)
    add_evaluation_commands(commands, common)
    add_forget_command(commands, common)
    add_run_command(commands, common)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for a mistyped command (``lst`` -> ``list``)."""

    def error(self, message: str) -> NoReturn:
        choices = next((action.choices for action in self._actions if action.dest == "command"), None)
        typed = message.partition("invalid choice: '")[2].partition("'")[0]
        if isinstance(choices, dict) and typed:
            close = difflib.get_close_matches(typed, list(choices), n=1, cutoff=0.6)
            if close:
                message += f"\ndid you mean: {close[0]}?"
        super().error(message)


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
        code = int(args.run(settings, args))
        sys.stdout.flush()  # here, where a reader gone (``| head``) is caught, not at exit
        return code
    except BrokenPipeError:
        # Quiet, as Unix tools end: stdout goes nowhere now, so exiting does not try to flush it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
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

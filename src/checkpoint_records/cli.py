"""The ``checkpoint-records`` command: list, inspect (and deliver) what the store holds."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from .delivery import DeliveryWorker
from .errors import ConfigurationError
from .formats import DEFAULT_FORMAT, get_format, known_formats
from .formats.training_job import render_job
from .lifecycle import cancel_abandoned
from .record import CheckpointRecord
from .render import (
    ProgressBar,
    delivery_state,
    delivery_summary,
    human_record,
    jobs_table,
    records_table,
    to_yaml,
)
from .settings import environment
from .sinks import Sink, configured_sinks, job_sinks
from .storage import upload_state
from .storage.commands import add_commands as add_storage_commands
from .store import RecordStore

DEFAULT_FLUSH_TIMEOUT = 60.0


def cmd_list(store: RecordStore, args: argparse.Namespace) -> int:
    stored = store.records()
    if args.json:
        print(json.dumps([item.record.to_dict() for item in stored], indent=2, allow_nan=False))
        return 0
    if not stored:
        print(f"no records in {store.path}", file=sys.stderr)
        return 0
    now = time.time()
    print(
        records_table(
            [
                (
                    item.record,
                    _with_upload(store, item.record, delivery_summary(store.deliveries(item.record.id), now)),
                )
                for item in stored
            ]
        )
    )
    return 0


def _with_upload(store: RecordStore, record: CheckpointRecord, delivery: str) -> str:
    """The delivery cell, with the upload state when the checkpoint goes to storage."""
    upload = upload_state(store, record)
    return delivery if upload is None else f"{delivery}; upload: {upload}"


def cmd_inspect(store: RecordStore, args: argparse.Namespace) -> int:
    stored = store.get(args.name)
    if stored is None:
        print(
            f"no record named {args.name!r} in {store.path} (see: checkpoint-records list)", file=sys.stderr
        )
        return 1
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
            return 1
        document = render_job(job.job)
    print(
        json.dumps(document, indent=2, allow_nan=False) if args.json else to_yaml(document),
        end="\n" if args.json else "",
    )
    return 0


def cmd_jobs(store: RecordStore, args: argparse.Namespace) -> int:
    details = [render_job(stored.job) for stored in store.jobs()]
    if args.json:
        print(json.dumps(details, indent=2, allow_nan=False))
        return 0
    print(jobs_table(details))
    return 0


def _deliver(store: RecordStore, sinks: list[Sink], timeout: float) -> int:
    """Deliver what is pending to ``sinks`` within ``timeout``, showing progress; 1 if anything is left."""
    keys = [sink.key for sink in sinks]
    for name in cancel_abandoned(store, [sink.key for sink in job_sinks(sinks)]):
        print(
            f"job {name} was still Running under a process that is gone: reported Cancelled", file=sys.stderr
        )
    store.requeue(["pending"], keys)  # due now: the user is asking for it
    total = store.counts(keys)["pending"]
    progress = ProgressBar(total, sys.stderr)
    worker = DeliveryWorker(store, sinks)
    worker.start()
    try:
        result = worker.flush(timeout, on_progress=lambda pending: progress.show(total - pending))
    finally:
        worker.close()
    progress.show(total - result.pending, final=True)
    print(
        f"delivered {result.delivered}, rejected {result.dead}, still pending {result.pending}",
        file=sys.stderr,
    )
    left = [delivery for delivery in store.deliveries() if delivery.state != "delivered"]
    for delivery in left:
        print(
            f"  {delivery.record_id} -> {delivery.sink}: {delivery_state(delivery, time.time())}",
            file=sys.stderr,
        )
    unconfigured = sorted(set(store.sinks_with("pending")) - set(keys))
    for key in unconfigured:
        print(
            f"  pending for {key}, which is not configured here: pass --sink {key} "
            "(and CHECKPOINT_RECORDS_TOKEN if it needs a token)",
            file=sys.stderr,
        )
    return 1 if left or unconfigured else 0


def _sinks(args: argparse.Namespace) -> list[Sink]:
    return configured_sinks(args.sink or None, environment())


def cmd_flush(store: RecordStore, args: argparse.Namespace) -> int:
    return _deliver(store, _sinks(args), args.timeout)


def cmd_resend(store: RecordStore, args: argparse.Namespace) -> int:
    sinks = _sinks(args)
    record_ids = None
    if args.names:
        found = {name: store.get(name) for name in args.names}
        missing = [name for name, stored in found.items() if stored is None]
        if missing:
            print(f"no record named {', '.join(map(repr, missing))} in {store.path}", file=sys.stderr)
            return 1
        record_ids = [stored.record.id for stored in found.values() if stored is not None]
    revived = store.requeue(["dead"], [sink.key for sink in sinks], record_ids)
    print(f"re-sending {revived} rejected deliveries", file=sys.stderr)
    return _deliver(store, sinks, args.timeout)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store", default=argparse.SUPPRESS, help="store directory (default: $CHECKPOINT_RECORDS_HOME)"
    )
    parser = argparse.ArgumentParser(
        prog="checkpoint-records",
        description="Inspect checkpoint records and deliver them.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", parents=[common], help="one line per record")
    listing.add_argument("--json", action="store_true", help="all records as one JSON array")
    listing.set_defaults(run=cmd_list)
    inspect = commands.add_parser("inspect", parents=[common], help="one whole record")
    inspect.add_argument("name", help="record name (or id)")
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
        action="append",
        metavar="URL",
        help="a sink to deliver to, as in CHECKPOINT_RECORDS_SINKS (repeatable; default: that variable)",
    )
    delivering.add_argument(
        "--timeout", type=float, default=DEFAULT_FLUSH_TIMEOUT, help="seconds to keep trying (default 60)"
    )
    flush = commands.add_parser(
        "flush", parents=[common, delivering], help="deliver everything pending; non-zero if some is left"
    )
    flush.set_defaults(run=cmd_flush)
    resend = commands.add_parser(
        "resend", parents=[common, delivering], help="re-send rejected (dead) records after fixing the cause"
    )
    resend.add_argument("names", nargs="*", help="record names or ids (default: every rejected record)")
    resend.set_defaults(run=cmd_resend)
    add_storage_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = RecordStore(getattr(args, "store", None))
        return int(args.run(store, args))
    except ConfigurationError as error:
        print(f"checkpoint-records: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

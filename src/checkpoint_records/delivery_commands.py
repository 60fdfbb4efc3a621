"""``checkpoint-records flush | resend | import | outbox``: the commands that deliver, registered by the CLI.

``flush`` first queues for each of its sinks whatever of the store that sink was never sent (records,
jobs, the pages of their logs; of one job with ``--job``), so a sink configured after a run, or a
registry started after it, gets everything. ``outbox`` says which sinks deliveries wait for, and moves
those of a sink that is gone (a mistyped URL, a retired server) to another one, or drops them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .delivery import DeliveryWorker
from .errors import FAILED, OK, ConfigurationError
from .lifecycle import cancel_abandoned
from .lookup import NotFound, existing_or_say, find_record, open_existing
from .recovery import checkpoint_folders
from .settings import Settings, parse_seconds
from .sinks import Sink, configured_sinks, document_kinds, job_sinks
from .store import DATABASE_NAME, RecordStore
from .terminal import UNCONFIGURED, delivery_state, outbox_table, progress_bar
from .words import plural

if TYPE_CHECKING:
    from .recorder import CheckpointRecorder

#: ``flush``/``resend``/``import --timeout``: someone at a terminal asked for the delivery and waits for
#: it, longer than the end of training does (the ``flush_timeout`` setting).
DEFAULT_DELIVER_TIMEOUT = 60.0
MAX_DELIVER_TIMEOUT = 86400.0


def _recorder(settings: Settings, store: RecordStore, sinks: list[Sink]) -> CheckpointRecorder:
    """A recorder for recovery from the command line (imported here: it needs transformers)."""
    from .recorder import CheckpointRecorder

    return CheckpointRecorder(settings, store=store, sinks=sinks)


def _document_name(store: RecordStore, document_id: str) -> str:
    """What the outbox entry ``document_id`` is to a person: a record's name, a job's, a page of its log."""
    stored = store.get(document_id)
    if stored is not None:
        return stored.record.name
    job = store.job(document_id)
    if job is not None:
        return f"job {job.job.name}"
    place = store.log_page_place(document_id)
    if place is None:
        return document_id
    owner = store.job(place[0])
    return f"page {place[1]} of the log of job {owner.job.name if owner is not None else place[0]}"


def deliver(
    store: RecordStore,
    sinks: list[Sink],
    timeout: float,
    record_ids: Sequence[str] | None,
    backfill: bool = False,
    job_ids: Sequence[str] | None = None,
) -> int:
    """Deliver what is pending to ``sinks`` within ``timeout``; 0 when all that was asked (the pending
    deliveries of ``record_ids``, or of every document) is delivered, else 1. With ``backfill``, each
    sink is first queued whatever it was never sent of the documents of ``job_ids`` (of every job: None)."""
    keys = [sink.key for sink in sinks]
    for name in cancel_abandoned(store, [sink.key for sink in job_sinks(sinks)]):
        print(
            f"job {name} was still Running under a process that is gone: reported Cancelled", file=sys.stderr
        )
    for sink in sinks if backfill else ():
        queued = store.outbox.backfill(sink.key, document_kinds(sink), job_ids)
        if queued:
            print(f"{sink.key}: queued {plural(queued, 'document')} it was never sent", file=sys.stderr)
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
            f"  pending for {key}, which is not configured here: pass --sink {key} (and "
            "CHECKPOINT_RECORDS_TOKEN if it needs a token), or send it elsewhere with `checkpoint-records "
            f"outbox move {key} NEW`, or give it up with `checkpoint-records outbox drop {key}`",
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
    store = existing_or_say(settings, "nothing to deliver")
    if store is None:
        return FAILED if args.job else OK
    job_ids = None
    if args.job is not None:
        job_ids = store.jobs_named(args.job)
        if not job_ids:
            print(
                f"no job named {args.job!r} in {store.path} (see: checkpoint-records jobs)", file=sys.stderr
            )
            return FAILED
    recovered = _recorder(settings, store, sinks).recover_known()  # saves a killed run never stored
    if recovered.records:
        names = ", ".join(record.name for record in recovered.records)
        print(
            f"recorded {plural(len(recovered.records), 'checkpoint')} from disk that had no record: {names}",
            file=sys.stderr,
        )
    _say_failed(recovered.failed)
    asked = None if job_ids is None else store.document_ids(job_ids)
    return deliver(store, sinks, args.timeout, asked, backfill=True, job_ids=job_ids)


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    sinks = configured_sinks(settings)
    store = RecordStore(settings.home)
    recorder = _recorder(settings, store, sinks)
    missing = 0
    job_ids = []
    for directory in args.output_dirs:
        path = Path(directory)
        if not checkpoint_folders(path):
            print(f"no checkpoint-<step> or checkpoints/checkpoint_<n> folders in {path}", file=sys.stderr)
            missing += 1
            continue
        job = recorder.job_of(path, args.run_name)  # a run recorded live keeps its job
        imported = recorder.recover(path, job)
        job_ids.append(job.id)
        print(
            f"{path}: imported {plural(len(imported.records), 'checkpoint')} as job {job.name}",
            file=sys.stderr,
        )
        _say_failed(imported.failed)
        missing += len(imported.failed)
    delivered = OK
    if sinks and job_ids:  # the honest ones go out
        asked = store.document_ids(job_ids)
        delivered = deliver(store, sinks, args.timeout, asked, backfill=True, job_ids=job_ids)
    return FAILED if missing else delivered


def _say_failed(failed: Sequence[Exception]) -> None:
    """Each checkpoint on disk that could not be recorded, with the file and field that stopped it."""
    for error in failed:
        print(f"cannot record a checkpoint: {error}", file=sys.stderr)


def cmd_resend(settings: Settings, args: argparse.Namespace) -> int:
    sinks = configured_sinks(settings)
    store = existing_or_say(settings, "nothing to re-send")
    if store is None:
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
    return deliver(store, sinks, args.timeout, record_ids)


def _named_sink(store: RecordStore, settings: Settings, text: str) -> str:
    """The sink of the outbox ``text`` names: as ``list``/``inspect``/``outbox`` print it, or its URL."""
    known = store.outbox.sinks()
    if text in known:
        return text
    try:
        key = configured_sinks(settings.replace(sinks=[text]))[0].key
    except ConfigurationError:
        key = None
    if key in known:
        return str(key)
    names = ", ".join(sorted(known)) or "none"
    raise NotFound(f"no deliveries to {text!r} in {store.path}; the outbox names: {names}")


def cmd_outbox(settings: Settings, args: argparse.Namespace) -> int:
    store = open_existing(settings)
    configured = {sink.key for sink in configured_sinks(settings)}
    if store is None:
        print(f"no store at {settings.home / DATABASE_NAME}", file=sys.stderr)
        return FAILED if args.action else OK
    if args.action is None:
        sinks = store.outbox.sinks()
        if sinks:
            print(outbox_table(sinks, configured))
        else:
            print(f"no deliveries in {store.path}", file=sys.stderr)
        return OK
    try:
        old = _named_sink(store, settings, args.old)
    except NotFound as error:
        print(error, file=sys.stderr)
        return FAILED
    if args.action == "drop":
        dropped = store.outbox.drop(old)
        print(
            f"dropped {plural(dropped, 'delivery', 'deliveries')} to {old} (kept as dropped; "
            f"`checkpoint-records outbox move {old} NEW` still sends them elsewhere)",
            file=sys.stderr,
        )
        if old in configured:
            print(f"{old} is still configured here: what is recorded next is queued for it", file=sys.stderr)
        return OK
    new = configured_sinks(settings.replace(sinks=[args.new]))[0]
    if new.key == old:
        print(f"{old} is the sink they wait for already", file=sys.stderr)
        return FAILED
    moved = store.outbox.move(old, new.key, document_kinds(new))
    print(f"moved {plural(moved, 'delivery', 'deliveries')} from {old} to {new.key}", file=sys.stderr)
    stayed = store.outbox.sinks().get(old, {})
    waiting = sum(count for state, count in stayed.items() if state != "delivered")
    if waiting:
        print(
            f"{plural(waiting, 'delivery', 'deliveries')} of documents {new.key} does not take stay for {old}: "
            f"`checkpoint-records outbox drop {old}` gives them up",
            file=sys.stderr,
        )
    print(f"deliver them with: checkpoint-records flush --sink {args.new}", file=sys.stderr)
    return OK


def _timeout(text: str) -> float:
    try:
        return parse_seconds("--timeout", text, MAX_DELIVER_TIMEOUT)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register the delivering subcommands on the CLI's subparsers."""
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
        "flush",
        parents=[common, delivering],
        help="deliver everything pending, and whatever each sink was never sent; 1 if some of it is left",
    )
    flush.add_argument(
        "--job", metavar="NAME_OR_ID", help="only this job's documents (name, id or id prefix)"
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
    outbox = commands.add_parser(
        "outbox",
        parents=[common],
        help=f"the sinks deliveries wait for ({UNCONFIGURED} ones too); move or drop those of a sink",
    )
    outbox.add_argument(
        "--sink", dest="sinks", action="append", metavar="URL", help="a sink configured here (repeatable)"
    )
    outbox.set_defaults(run=cmd_outbox, action=None)
    actions = outbox.add_subparsers(dest="action")
    move = actions.add_parser(
        "move",
        parents=[common],
        help="send another sink what one was never delivered (then: flush --sink NEW)",
    )
    move.add_argument("old", metavar="OLD", help="the sink as list/inspect/outbox name it, or its URL")
    move.add_argument("new", metavar="NEW", help="the sink URL to send them to")
    drop = actions.add_parser(
        "drop", parents=[common], help="give up what a sink was never delivered (kept as dropped)"
    )
    drop.add_argument("old", metavar="OLD", help="the sink as list/inspect/outbox name it, or its URL")

"""``checkpoint-records verify | pull | upload``: the storage subcommands, registered by the CLI."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..lookup import NotFound, find_record
from ..settings import Settings
from ..sinks import configured_sinks, record_sinks
from ..store import RecordStore
from ..words import plural
from .config import storage_config
from .uploads import Uploads
from .verify import Verification, pull, verify_local, verify_remote

DEFAULT_UPLOAD_TIMEOUT = 3600.0


def _report(name: str, where: str, result: Verification) -> int:
    for finding in result.findings:
        print(f"{finding.path}: {finding.why}", file=sys.stderr)
    if result.size_only:
        print(
            f"{plural(len(result.size_only), 'file has', 'files have')} no SHA-256 in the record (not uploaded yet): "
            "size checked only",
            file=sys.stderr,
        )
    if result.findings:
        print(
            f"{name}: {plural(len(result.findings), 'file differs', 'files differ')} from the record or is missing "
            f"({where})",
            file=sys.stderr,
        )
        return 1
    print(f"{name}: every file matches the record ({where})", file=sys.stderr)
    return 0


def _record(store: RecordStore, name: str) -> Any:
    """The record ``name`` names, as ``inspect`` reads it; None (said why) when none or several."""
    try:
        return find_record(store, name)
    except NotFound as error:
        print(error, file=sys.stderr)
        return None


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    store = RecordStore(settings.home)
    stored = _record(store, args.name)
    if stored is None:
        return 1
    record = stored.record
    if args.remote:
        return _report(record.name, record.spec.source_path, verify_remote(record, storage_config(settings)))
    return _report(record.name, record.spec.directory, verify_local(record))


def cmd_pull(settings: Settings, args: argparse.Namespace) -> int:
    store = RecordStore(settings.home)
    stored = _record(store, args.name)
    if stored is None:
        return 1
    directory = Path(args.directory)
    result = pull(stored.record, directory, storage_config(settings))
    return _report(stored.record.name, str(directory), result)


def cmd_upload(settings: Settings, args: argparse.Namespace) -> int:
    """Resume the uploads still queued (a run killed mid-upload, or failed ones with ``--retry-failed``)."""
    store = RecordStore(settings.home)
    config = storage_config(settings)
    if config is None:
        print("no storage configured: pass --storage URL or set CHECKPOINT_RECORDS_STORAGE", file=sys.stderr)
        return 2
    retried = store.uploads.due_now(retry_failed=args.retry_failed)
    if args.retry_failed:
        print(f"retrying {retried} failed files", file=sys.stderr)
    from ..delivery import DeliveryWorker

    sinks = record_sinks(configured_sinks(settings))
    delivery = DeliveryWorker(store, sinks)
    uploads = Uploads(store, config, [sink.key for sink in sinks], delivery.wake)
    delivery.start()
    try:
        left = uploads.flush(args.timeout)
        delivery.flush(min(args.timeout, 60.0))
    finally:
        uploads.close()
        delivery.close()
    failed = store.uploads.failed()
    for row in failed:
        print(f"  failed: {row.remote}: {row.error}", file=sys.stderr)
    print(f"uploads: {plural(left, 'file')} still pending, {len(failed)} failed", file=sys.stderr)
    return 1 if left or failed else 0


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register the storage subcommands on the CLI's subparsers."""
    storage = argparse.ArgumentParser(add_help=False)
    storage.add_argument(
        "--storage",
        metavar="URL",
        help="the storage the checkpoints went to (default: CHECKPOINT_RECORDS_STORAGE)",
    )
    verify = commands.add_parser(
        "verify",
        parents=[common, storage],
        help="re-hash a checkpoint's files against its record; 1 if any differ",
    )
    verify.add_argument("name", help="record name (or id)")
    verify.add_argument("--remote", action="store_true", help="check the uploaded copy instead of local disk")
    verify.set_defaults(run=cmd_verify)
    pulling = commands.add_parser(
        "pull", parents=[common, storage], help="download an uploaded checkpoint into DIR and verify it"
    )
    pulling.add_argument("name", help="record name (or id)")
    pulling.add_argument("directory", help="where to put its files")
    pulling.set_defaults(run=cmd_pull)
    upload = commands.add_parser(
        "upload",
        parents=[common, storage],
        help="finish the uploads still queued; 1 if some are left or failed",
    )
    upload.add_argument(
        "--retry-failed", action="store_true", help="try failed files again (after fixing the cause)"
    )
    upload.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_UPLOAD_TIMEOUT,
        help="seconds to keep uploading (default 3600)",
    )
    upload.set_defaults(run=cmd_upload)

"""``checkpoint-records forget JOB|NAME``: remove a job with all it holds, or one record, from the store.

It asks first at a terminal; without one (a script, a pipe) ``--yes`` must say it instead, so nothing is
removed that nobody confirmed. Checkpoint folders on disk and uploaded copies are left as they are.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import FAILED, OK, USAGE
from .lookup import NotFound, existing_or_say, find_record
from .settings import Settings
from .store import Forgotten, RecordStore
from .words import plural


def _target(store: RecordStore, text: str) -> tuple[str, str, bool]:
    """``(id, description, is_job)`` of what ``text`` names: a job (name, id, or id prefix) first, else a
    record; :class:`NotFound` when it names none, or several jobs."""
    jobs = store.jobs_named(text)
    if len(jobs) > 1:
        raise NotFound(f"{text!r} names {len(jobs)} jobs; say which by its id: {', '.join(jobs)}")
    if jobs:
        job_id = jobs[0]
        stored = store.job(job_id)
        newest = store.records_newest_first(job_id, 1)  # a job without a job document: its records say
        name = stored.job.name if stored else (newest[0].record.metadata.job_name if newest else job_id)
        return job_id, f"job {name} ({job_id})", True
    stored_record = find_record(store, text)
    record = stored_record.record
    return record.id, f"record {record.name} of job {record.metadata.job_name} ({record.id})", False


def _said(forgotten: Forgotten) -> str:
    parts = [
        plural(forgotten.records, "record"),
        plural(forgotten.deliveries, "delivery", "deliveries"),
        plural(forgotten.uploads, "upload"),
        plural(forgotten.evaluations, "evaluation"),
    ]
    if forgotten.log_entries:
        parts.append(plural(forgotten.log_entries, "log entry", "log entries"))
    return ", ".join(parts)


def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    store = existing_or_say(settings, "nothing to forget")
    if store is None:
        return FAILED
    try:
        target, description, is_job = _target(store, args.target)
    except NotFound as error:
        print(error, file=sys.stderr)
        return FAILED
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                f"checkpoint-records: forget would remove {description} from {store.path} for good; with no "
                "terminal to ask at, pass --yes to confirm",
                file=sys.stderr,
            )
            return USAGE
        held = " and all it holds (records, deliveries, log, uploads, evaluations)" if is_job else ""
        answer = input(f"remove {description}{held} from {store.path}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed", file=sys.stderr)
            return FAILED
    forgotten = store.forget_job(target) if is_job else store.forget_record(target)
    print(f"removed {description}: {_said(forgotten)}", file=sys.stderr)
    return OK


def add_command(commands: Any, common: argparse.ArgumentParser) -> None:
    forget = commands.add_parser(
        "forget",
        parents=[common],
        help="remove a job (records, deliveries, log, uploads, evaluations) or one record from the store",
    )
    forget.add_argument(
        "target", metavar="JOB|NAME", help="a job name, id or id prefix; else a record name or id"
    )
    forget.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")
    forget.set_defaults(run=cmd_forget)

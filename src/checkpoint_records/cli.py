"""The ``checkpoint-records`` command: list, inspect (and deliver) what the store holds."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import ConfigurationError
from .render import human_record, records_table, to_yaml
from .store import RecordStore, StoredRecord


def _delivery_summary(store: RecordStore, stored: StoredRecord) -> str:
    deliveries = store.deliveries(stored.record.id)
    if not deliveries:
        return "local"
    return ", ".join(f"{delivery.sink}: {delivery.state}" for delivery in deliveries)


def cmd_list(store: RecordStore, args: argparse.Namespace) -> int:
    stored = store.records()
    if args.json:
        print(json.dumps([item.record.to_dict() for item in stored], indent=2, allow_nan=False))
        return 0
    if not stored:
        print(f"no records in {store.path}", file=sys.stderr)
        return 0
    print(records_table([(item.record, _delivery_summary(store, item)) for item in stored]))
    return 0


def cmd_inspect(store: RecordStore, args: argparse.Namespace) -> int:
    stored = store.get(args.name)
    if stored is None:
        print(
            f"no record named {args.name!r} in {store.path} (see: checkpoint-records list)", file=sys.stderr
        )
        return 1
    if args.json:
        print(json.dumps(stored.record.to_dict(), indent=2, allow_nan=False))
    else:
        print(to_yaml(human_record(stored.record)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store", default=argparse.SUPPRESS, help="store directory (default: $CHECKPOINT_RECORDS_HOME)"
    )
    parser = argparse.ArgumentParser(
        prog="checkpoint-records", description="Inspect checkpoint records.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", parents=[common], help="one line per record")
    listing.add_argument("--json", action="store_true", help="all records as one JSON array")
    listing.set_defaults(run=cmd_list)
    inspect = commands.add_parser("inspect", parents=[common], help="one whole record")
    inspect.add_argument("name", help="record name (or id)")
    inspect.add_argument("--json", action="store_true", help="JSON instead of YAML")
    inspect.set_defaults(run=cmd_inspect)
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

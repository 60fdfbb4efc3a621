"""``checkpoint-records evaluate``: the evaluation worker as a command, registered by the CLI."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..errors import FAILED, ConfigurationError
from ..redaction import Redactor
from ..settings import Settings, parse_count, parse_seconds
from ..sinks import configured_sinks, record_sinks
from ..sinks.transport import HttpTransport
from ..storage.config import storage_config
from ..store import RecordStore
from ..words import plural
from .results import NAME_PATTERN, BestBy
from .runner import Command
from .sources import EvaluationSource, RegistryQueue, StoreQueue
from .worker import Worker, WorkerOptions

#: Environment variables whose values are masked in what the worker keeps of a command's output.
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "KEY", "CREDENTIAL")
#: How long the end of ``--once`` waits for the results to reach the sinks.
DELIVERY_WAIT = 60.0


def _name(text: str) -> str:
    if not NAME_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"--name {text!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return text


def _checked(parse: Any, option: str) -> Any:
    def check(text: str) -> Any:
        try:
            return parse(option, text)
        except ConfigurationError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return check


def secrets_of(settings: Settings, env: dict[str, str]) -> Redactor:
    """Everything a command's error output must not carry into a record: our tokens, the storage's
    credentials, and the environment's secrets (the command inherits them)."""
    found = [settings.token, *settings.server_tokens]
    found += [value for name, value in env.items() if any(word in name.upper() for word in _SECRET_WORDS)]
    config = storage_config(settings)
    if config is not None:
        found += config.secrets
    return Redactor(found)


def _source(settings: Settings, args: argparse.Namespace) -> tuple[EvaluationSource, RecordStore | None]:
    best = None if args.best is None else BestBy.of(args.name, args.best, args.greater_is_better)
    if args.registry is None:
        store = RecordStore(settings.home)
        sinks = [sink.key for sink in record_sinks(configured_sinks(settings))]
        return StoreQueue(store, args.name, args.job, sinks, best), store
    transport = HttpTransport(
        args.registry.rstrip("/"),
        what="--registry URL",
        authorization=f"Bearer {settings.token}" if settings.token else None,
        credential="a token" if settings.token else "",
        secrets=[settings.token],
        ca_bundle=settings.ca_bundle,
        allow_insecure_http=settings.allow_insecure_http,
    )
    return RegistryQueue(transport, args.name, args.job, best), None


def cmd_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    if args.registry is not None and getattr(args, "store", None) is not None:
        raise ConfigurationError(
            "give --store or --registry, not both: the evaluations are kept in one place"
        )
    command = Command.parse(args.evaluator_command)
    options = WorkerOptions(
        name=args.name,
        command=command,
        attempts=args.attempts,
        timeout=args.timeout,
        folder=Path(args.workdir) if args.workdir else None,
        storage=storage_config(settings),
        redact=secrets_of(settings, dict(os.environ)),
        once=args.once,
    )
    if options.folder is not None:
        options.folder.mkdir(parents=True, exist_ok=True)
    source, store = _source(settings, args)
    if args.once and args.job is not None and store is not None and not store.jobs_named(args.job):
        print(f"evaluator {args.name}: no job named {args.job!r} in {store.path}", file=sys.stderr)
        return FAILED  # asked about a job that is missing, as `list --job` says it
    from ..delivery import DeliveryWorker

    delivery = DeliveryWorker(store, record_sinks(configured_sinks(settings))) if store is not None else None
    bar = tqdm(total=0, desc=f"evaluating ({args.name})", unit="checkpoint", file=sys.stderr, disable=None)
    failed = threading.Event()

    def say(line: str) -> None:
        if ": failed after" in line:
            failed.set()
        bar.write(line, file=sys.stdout)
        sys.stdout.flush()

    worker = Worker(source, options, say, on_evaluated=lambda record: delivery.wake() if delivery else None)
    print(f"evaluator {args.name}: checkpoints from {source.where}", file=sys.stderr)
    if args.retry_failed:
        print(
            f"evaluator {args.name}: retrying {plural(source.reopen_failed(), 'failed evaluation')}",
            file=sys.stderr,
        )
    if delivery is not None:
        delivery.start()
    thread = threading.Thread(target=worker.run, name="checkpoint-records evaluate", daemon=True)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: worker.stop())
    try:
        thread.start()
        _follow(worker, source, thread, bar)
    except KeyboardInterrupt:
        worker.stop()
        thread.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()
        if delivery is not None:
            delivery.flush(DELIVERY_WAIT)
            delivery.close()
    print(f"evaluator {args.name}: {plural(worker.done, 'checkpoint')} evaluated", file=sys.stderr)
    if worker.refused is not None:
        print(f"evaluator {args.name}: stopped: {source.where}: {worker.refused}", file=sys.stderr)
        return 2 if worker.refused.status in (401, 403) else 1
    return 1 if failed.is_set() else 0


def _follow(worker: Worker, source: EvaluationSource, thread: threading.Thread, bar: tqdm[Any]) -> None:
    """Keep the progress bar (a terminal only) up to date while the worker runs."""
    shown = -1
    while thread.is_alive():
        thread.join(0.5)
        if bar.disable:
            continue
        if worker.done != shown:
            shown = worker.done
            bar.total = worker.done + source.pending()
            bar.n = worker.done
        bar.set_postfix_str(worker.current or "waiting for checkpoints", refresh=True)


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``evaluate`` on the CLI's subparsers."""
    evaluate = commands.add_parser(
        "evaluate",
        parents=[common],
        help="run an evaluator on every checkpoint ready for inference and put its metrics on the record",
        description="Run COMMAND on every checkpoint that is ready for inference and not yet evaluated by "
        "NAME (its folder as {directory}; {output}: a path the command may write its JSON report to, "
        "else JSON on stdout), and put the metrics on the record as a new revision, once.",
    )
    evaluate.add_argument(
        "--name", required=True, type=_name, help="the evaluator's name (a key of the record)"
    )
    evaluate.add_argument(
        "--command",
        dest="evaluator_command",
        required=True,
        help="the command line, split like a shell's and run without one, e.g. "
        "'python eval.py {directory} --out {output}'",
    )
    evaluate.add_argument(
        "--job", metavar="NAME_OR_ID", help="only this job's checkpoints (name, id or id prefix)"
    )
    evaluate.add_argument(
        "--registry",
        metavar="URL",
        help="take the checkpoints from a registry server and post the results there "
        "(token: CHECKPOINT_RECORDS_TOKEN) instead of a store",
    )
    evaluate.add_argument("--once", action="store_true", help="evaluate what is there, then stop")
    evaluate.add_argument(
        "--retry-failed", action="store_true", help="evaluate again the checkpoints whose evaluation failed"
    )
    evaluate.add_argument(
        "--attempts",
        type=_checked(parse_count, "--attempts"),
        default=WorkerOptions.attempts,
        help=f"attempts before an evaluation is recorded as failed (default {WorkerOptions.attempts})",
    )
    evaluate.add_argument(
        "--timeout",
        type=_checked(lambda label, text: parse_seconds(label, text, 7 * 86400.0), "--timeout"),
        default=WorkerOptions.timeout,
        help=f"seconds one run of the command may take (default {WorkerOptions.timeout:g})",
    )
    evaluate.add_argument(
        "--workdir",
        help="where pulled checkpoints and outputs go while they are evaluated (default: a temp dir)",
    )
    evaluate.add_argument(
        "--storage",
        metavar="URL",
        help="the storage the checkpoints were uploaded to, with CHECKPOINT_RECORDS_STORAGE's options "
        "(default: the record's own location, with the backend's credentials)",
    )
    evaluate.add_argument(
        "--best",
        metavar="METRIC",
        help="mark the job's best checkpoint by this metric of the evaluator's (e.g. tiny_words/acc), "
        "instead of the Trainer's metric_for_best_model (leave that unset)",
    )
    better = evaluate.add_mutually_exclusive_group()
    better.add_argument(
        "--greater-is-better",
        dest="greater_is_better",
        action="store_true",
        default=None,
        help="a higher --best is better (default: unless the metric's name ends with 'loss')",
    )
    better.add_argument(
        "--lower-is-better", dest="greater_is_better", action="store_false", help="a lower --best is better"
    )
    evaluate.set_defaults(run=cmd_evaluate)

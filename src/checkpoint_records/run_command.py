"""``checkpoint-records run -- COMMAND ...``: any command, with a record of every Trainer's checkpoints.

Nothing is added to the command or its scripts. The command runs with ``CHECKPOINT_RECORDS_ATTACH=1``,
which every process it starts inherits (``accelerate launch`` and ``torchrun`` workers, ``python -m``,
shell scripts): in each Python process of the environment, the start-up hook (:mod:`.startup`, run by
the package's ``.pth`` file) gives every Trainer a callback (:mod:`.attach`), configured by the same
``CHECKPOINT_RECORDS_*`` variables. The settings are checked here, before the command starts, and said
once. The command then replaces this process (``exec``): its exit status, and the signals sent to it
(Ctrl-C, a scheduler's SIGTERM), are its own, with no process in between to forward or lose them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from . import startup
from .errors import ConfigurationError
from .redaction import public_url
from .settings import Settings, as_variables
from .sinks import configured_sinks
from .storage import storage_config
from .store import RecordStore

#: A shell's exit codes for a command it could not run: not executable, not found.
CANNOT_EXECUTE, NOT_FOUND = 126, 127


def add_command(commands: Any, common: argparse.ArgumentParser) -> None:
    running = commands.add_parser(
        "run",
        parents=[common],
        help="run a command (python, accelerate launch, torchrun, trl...) recording every Trainer in it",
        description="Run COMMAND with a checkpoint record of every save of every transformers Trainer it "
        "and the processes it starts create, with no change to them. Exits as COMMAND does.",
        usage="checkpoint-records run [--store DIR] [--sink URL ...] -- COMMAND [ARG ...]",
    )
    running.add_argument(
        "--sink",
        dest="sinks",
        action="append",
        metavar="URL",
        help="a sink to deliver to, as in CHECKPOINT_RECORDS_SINKS (repeatable; default: that variable)",
    )
    running.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    running.set_defaults(run=cmd_run)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ConfigurationError("run needs a command: checkpoint-records run -- python train.py")
    if not startup.installed():
        raise ConfigurationError(
            "run needs the start-up hook, which this Python does not load: checkpoint_records.pth is "
            "missing from its site-packages. Install the package with pip or uv (a wheel or pip "
            "install -e), not by copying it or putting it on PYTHONPATH"
        )
    print(_announcement(settings), file=sys.stderr, flush=True)
    handed = as_variables(settings.replace(attach=True), ("home", "sinks", "attach"))
    environment = {**os.environ, **handed}
    sys.stdout.flush()
    if os.name != "posix":  # no exec that keeps the process: wait for the command and exit as it did
        return subprocess.call(command, env=environment)
    try:
        os.execvpe(command[0], command, environment)
    except FileNotFoundError:
        print(f"checkpoint-records: {command[0]}: command not found", file=sys.stderr)
        return NOT_FOUND
    except PermissionError as error:
        print(f"checkpoint-records: {command[0]}: {error.strerror}", file=sys.stderr)
        return CANNOT_EXECUTE
    raise AssertionError("exec returned")  # pragma: no cover (it never does)


def _announcement(settings: Settings) -> str:
    """What ``run`` says once, whatever the number of processes: where the records go. Building the
    sinks, the storage and the store checks them, so a bad setting stops here, before the command."""
    sinks = [sink.key for sink in configured_sinks(settings)]
    storage = storage_config(settings)
    store = RecordStore(settings.home)
    store.close()
    said = f"checkpoint-records: recording every Trainer's checkpoints in {store.path.absolute()}"
    if sinks:
        said += f", delivered to {', '.join(sinks)}"
    if storage is not None:
        said += f", files uploaded to {public_url(storage.url)}"
    return said

"""Checkpoints on disk as their own truth: what a record needs, read back from a checkpoint directory.

Every Trainer checkpoint carries ``trainer_state.json`` (global step, epoch, the log history up to that
step, the best checkpoint so far) beside its files, so a record that was never stored (the process died
between the save and the commit; a run that never had the callback) can be rebuilt after the fact, with
the id a live save would have given it. accelerate ``save_state`` folders (``checkpoints/checkpoint_<n>``)
carry no such file, and their number counts saves, not steps (:func:`accelerate_step`). A Trainer
subclass that names its folders its own way still writes ``trainer_state.json`` into each (resuming needs
it): any folder holding one is a checkpoint, at the step it says. A run known only from disk (imported,
or recovered with no job in the store) gets its job document from the same files (:func:`job_from_disk`).

``trainer_state.json`` is read as what it is, a file anyone could have written: one that is not JSON, has
a field of the wrong type, a step that is negative or beyond 64 bits, or nesting deeper than a document
may hold is a :class:`BadCheckpoint` naming the file and the field, and never stops the others.
"""

from __future__ import annotations

import re
import sys
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import Best
from .collect import read_json_object
from .history import LogEntry, LoggedMetrics, log_entry, metrics_at_step, selected_loss, step_of
from .job import JobIdentity, JobSnapshot, LossSeries, job_snapshot
from .logs import warn_once
from .validation import (
    INT64_MAX,
    MAX_UNIX_SECONDS,
    InvalidValue,
    check_value,
    escape_text,
    escaped,
    field_name,
    parse_json,
)
from .values import to_number

TRAINER_STATE = "trainer_state.json"
_TRAINER_FOLDER = re.compile(r"checkpoint-(\d+)")
_ACCELERATE_FOLDER = re.compile(r"checkpoint_(\d+)")


class BadCheckpoint(Exception):
    """A checkpoint whose own files cannot be recorded: which file, which field in it, and why."""

    def __init__(self, directory: Path, file: str, field: str, why: str) -> None:
        where = f"{escape_text(str(directory))}/{file}" + (f": {field}" if field else "")
        super().__init__(f"{where}: {why}")
        self.directory, self.file, self.field, self.why = directory, file, field, why


@dataclass(frozen=True)
class Folder:
    """A checkpoint folder of a run: its number, and whether it is accelerate's ``checkpoint_<n>`` (the
    number counts saves) rather than the Trainer's ``checkpoint-<step>`` (or a folder of another name
    holding a ``trainer_state.json``: its number is the step that file says)."""

    path: Path
    number: int
    accelerate: bool = False


@dataclass(frozen=True)
class FoundCheckpoint:
    """A checkpoint directory found on disk and what its own files say about it."""

    directory: Path
    step: int
    #: Whether ``step`` is what ``trainer_state.json`` says (else it is the folder's number).
    stated: bool = False
    epoch: float | None = None
    logged: LoggedMetrics = field(default_factory=LoggedMetrics)
    #: The whole ``log_history`` of ``trainer_state.json`` (empty for accelerate folders).
    log_history: tuple[dict[str, Any], ...] = ()
    best: Best | None = None
    #: The run's planned steps and epochs as ``trainer_state.json`` says (0: not known).
    max_steps: int = 0
    num_train_epochs: int = 0


def checkpoint_folders(run_dir: Path) -> list[Folder]:
    """The checkpoint folders of a run directory, by number: the Trainer's ``checkpoint-<step>``,
    accelerate's ``checkpoints/checkpoint_<n>``, and any other folder holding a ``trainer_state.json`` (a
    Trainer subclass's own names), at its ``global_step``."""
    found = []
    for parent, pattern in ((run_dir, _TRAINER_FOLDER), (run_dir / "checkpoints", _ACCELERATE_FOLDER)):
        for entry in _folders(parent):
            match = pattern.fullmatch(entry.name)
            if match:
                if int(match.group(1)) <= INT64_MAX:
                    found.append(Folder(entry, int(match.group(1)), pattern is _ACCELERATE_FOLDER))
            elif parent == run_dir:
                step = _state_step(entry)
                if step is not None:
                    found.append(Folder(entry, step))
    return sorted(found, key=lambda folder: (folder.number, folder.path.name))


def written_folder(run_dir: Path, step: int) -> Path | None:
    """The folder in ``run_dir`` a Trainer wrote for the save at ``step`` under a name of its own: the
    newest one whose ``trainer_state.json`` is at that step; None when there is none (rotated away)."""
    written = [entry for entry in _folders(run_dir) if _state_step(entry) == step]
    return max(written, key=modified_at) if written else None


def _folders(parent: Path) -> list[Path]:
    try:
        return [entry for entry in parent.iterdir() if entry.is_dir()]
    except OSError:
        return []


def _state_step(directory: Path) -> int | None:
    """The ``global_step`` of a folder's ``trainer_state.json`` (an integer from 0 to 2^63 - 1); None
    without one, or one that cannot be read."""
    state = read_json_object(directory / TRAINER_STATE)
    return None if state is None else step_of({"step": state.get("global_step")})


def accelerate_number(directory: Path) -> int | None:
    """The number of accelerate's folder ``checkpoints/checkpoint_<n>``, or None for any other."""
    match = _ACCELERATE_FOLDER.fullmatch(directory.name)
    return int(match.group(1)) if match and directory.parent.name == "checkpoints" else None


def read_checkpoint(folder: Folder) -> FoundCheckpoint:
    """What ``folder`` says about itself: from ``trainer_state.json`` when there is one (else its step is
    the folder's number); :class:`BadCheckpoint` when that file cannot be used."""
    directory = folder.path
    try:
        raw = (directory / TRAINER_STATE).read_bytes()
    except FileNotFoundError:
        return FoundCheckpoint(directory=directory, step=folder.number)
    except OSError as error:
        raise BadCheckpoint(
            directory, TRAINER_STATE, "", f"cannot be read: {error.strerror or error}"
        ) from None
    try:
        state = trainer_state(parse_json(raw, constants=True), directory / TRAINER_STATE)
    except InvalidValue as error:
        raise BadCheckpoint(directory, TRAINER_STATE, error.field, error.why) from None
    history = tuple(state.get("log_history") or ())
    global_step = state.get("global_step")
    step = folder.number if global_step is None else int(global_step)
    epoch, _ = to_number(state.get("epoch"))
    best = best_of(state, history)
    return FoundCheckpoint(
        directory=directory,
        step=step,
        stated=global_step is not None,
        epoch=None if epoch is None else float(epoch),
        logged=metrics_at_step(history, step, selected_loss(best.metric if best else None)),
        log_history=history,
        best=best,
        max_steps=int(state.get("max_steps") or 0),
        num_train_epochs=_count(state.get("num_train_epochs")),
    )


def trainer_state(state: Any, path: Path) -> dict[str, Any]:
    """``trainer_state.json``'s content, checked: the fields recovery reads have their types and steps
    fit in 64 bits (else :class:`~.validation.InvalidValue` naming the field). Text that is not valid
    Unicode is escaped, said once; numbers JSON cannot carry are left to :mod:`.values`."""
    if not isinstance(state, dict):
        raise InvalidValue("", "not a JSON object")
    try:
        check_value(state, numbers=False)
    except InvalidValue as problem:
        if not problem.text:
            raise
        warn_once(
            f"state-text:{path}",
            "checkpoint-records: %s: %s; it is recorded with backslash escapes",
            escape_text(str(path)),
            problem,
        )
        state = escaped(state)
    for name in ("global_step", "max_steps"):
        _step(state.get(name), name)
    for name in ("epoch", "best_metric"):
        if state.get(name) is not None and (
            isinstance(state[name], bool) or to_number(state[name]) == (None, None)
        ):
            raise InvalidValue(name, f"not a number: {_shown(state[name])}")
    if not isinstance(state.get("best_model_checkpoint") or "", str):
        raise InvalidValue("best_model_checkpoint", f"not a path: {_shown(state['best_model_checkpoint'])}")
    history = state.get("log_history") or []
    if not isinstance(history, list):
        raise InvalidValue("log_history", f"not a list: {_shown(history)}")
    for index, entry in enumerate(history):
        where = field_name("log_history", index)
        if not isinstance(entry, dict):
            raise InvalidValue(where, f"not an object: {_shown(entry)}")
        _step(entry.get("step"), field_name(where, "step"))
    return state


def _step(value: Any, name: str) -> None:
    """Refuse a step that is not an integer from 0 to 2^63 - 1 (None: not given)."""
    if value is None:
        return
    number = None if isinstance(value, bool) else to_number(value)[0]
    if number is None or number != int(number) or not 0 <= number <= INT64_MAX:
        raise InvalidValue(name, f"not a step (an integer from 0 to 2^63 - 1): {_shown(value)}")


def _shown(value: Any) -> str:
    """A value as an error shows it: short."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def accelerate_step(number: int, known: Mapping[int, int], taken: set[int]) -> int:
    """The step of the accelerate folder ``checkpoint_<number>`` that has no record and no
    ``trainer_state.json``: its number counts saves, not steps, so the step is read off the job's other
    folders of the run, ``known`` (folder number to the step recorded for it), when they were saved at a
    steady interval (``checkpoint_0`` at step 2, ``checkpoint_1`` at 4: ``checkpoint_2`` is 6); it is the
    folder's number only when the job recorded no other. Never a step another checkpoint of the job holds
    (``taken``): then it is the next free step after the folders before it."""
    pairs = sorted(known.items())
    guess: int | None = number if not pairs else None
    if len(pairs) == 1 and pairs[0][1] > 0 and pairs[0][1] % (pairs[0][0] + 1) == 0:
        guess = pairs[0][1] // (pairs[0][0] + 1) * (number + 1)  # every k steps, the first at step k
    elif len(pairs) >= 2:
        (first, start), (second, then) = pairs[0], pairs[1]
        interval, rest = divmod(then - start, second - first)
        if interval > 0 and not rest and all(s == start + interval * (n - first) for n, s in pairs):
            guess = start + interval * (number - first)
    if guess is None or guess < 0 or guess in taken:
        guess = max((s for n, s in pairs if n < number), default=-1) + 1
    while guess in taken:
        guess += 1
    return guess


def _count(value: Any) -> int:
    """A count ``trainer_state.json`` keeps (0 when missing, odd or ``sys.maxsize``'s "unknown")."""
    number = int(to_number(value)[0] or 0)
    return number if 0 < number < sys.maxsize else 0


def best_of(state: dict[str, Any], history: tuple[dict[str, Any], ...]) -> Best | None:
    """The best checkpoint ``trainer_state.json`` names, with the metric whose value matches at its step.

    The state keeps the best value but not the metric's name: it is the logged ``eval_*`` value equal to
    it at the best step (``eval_loss`` first), as ``metric_for_best_model`` always names an eval metric.
    """
    path = state.get("best_model_checkpoint")
    match = _TRAINER_FOLDER.fullmatch(Path(str(path)).name) if path else None
    if match is None:
        return None
    step = int(match.group(1))
    value, _ = to_number(state.get("best_metric"))
    metric = None
    if value is not None:
        at_step = [entry for entry in history if step_of(entry) == step]
        names = sorted(
            (key for entry in at_step for key in entry if key.startswith("eval_")),
            key=lambda key: key != "eval_loss",
        )
        metric = next(
            (key for key in names for entry in at_step if key in entry and to_number(entry[key])[0] == value),
            None,
        )
    return Best(step=step, metric=metric, value=None if value is None else float(value))


def modified_at(directory: Path) -> float:
    """When a checkpoint was written: its ``trainer_state.json``'s mtime (the Trainer writes it last),
    else the folder's; 0 when neither can be read (or its clock was past the year 9999)."""
    for path in (directory / TRAINER_STATE, directory):
        try:
            return min(max(path.stat().st_mtime, 0.0), MAX_UNIX_SECONDS)
        except OSError:
            continue
    return 0.0


def written_times(folders: Sequence[Folder]) -> list[tuple[int, float]]:
    """Each checkpoint folder's number (a Trainer checkpoint's step) and when it was written
    (:func:`modified_at`), in the same order."""
    return [(folder.number, modified_at(folder.path)) for folder in folders]


def timed_log(
    log_history: Sequence[dict[str, Any]], written: Sequence[tuple[int, float]], start: int = 0
) -> list[LogEntry]:
    """The entries of a checkpoint's ``log_history`` from position ``start`` on, as the store keeps them.
    ``log_history`` keeps no times: each entry gets the time the first checkpoint holding it was written
    (``written``: each checkpoint's step and :func:`modified_at`, oldest first, not empty), so a loss
    series rebuilt from disk keeps its points, in order."""
    steps = [step for step, _ in written]
    entries = []
    for seq in range(start, len(log_history)):
        step = step_of(log_history[seq])
        if step is not None:
            when = written[min(bisect_left(steps, step), len(steps) - 1)][1]
            entries.append(log_entry(seq, log_history[seq], when))
    return [entry for entry in entries if entry is not None]


def job_from_disk(
    job: JobIdentity,
    run_dir: Path,
    newest: FoundCheckpoint,
    written: Sequence[tuple[int, float]],
    base_model: str | None,
) -> JobSnapshot:
    """The document of a job known only from its checkpoints: ``newest`` (the last one's own account) and
    ``written`` (each checkpoint's step and :func:`modified_at`, oldest first, not empty).

    ``Success`` when the newest checkpoint reached the run's ``max_steps``; otherwise ``Cancelled``: the
    files cannot tell a run that failed, was stopped, or saved its last step nowhere. ``log_history``
    keeps no times, so each loss point gets one from :func:`timed_log`; the job was created when its
    oldest checkpoint still on disk was written and updated with the newest's.
    """
    series = LossSeries()
    for checkpoint_step, _ in written:
        series.add((), checkpoint_step=checkpoint_step)
    series.add(timed_log(newest.log_history, written))
    finished = 0 < newest.max_steps <= newest.step
    return job_snapshot(
        None,
        "Trainer",
        "Success" if finished else "Cancelled",
        base_model,
        job_id=job.id,
        job_name=job.name,
        created_at=written[0][1],
        updated_at=written[-1][1],
        global_step=newest.step,
        max_steps=newest.max_steps,
        num_train_epochs=newest.num_train_epochs,
        training_loss=series.bounded(),
        directory=str(run_dir.absolute()),
    )

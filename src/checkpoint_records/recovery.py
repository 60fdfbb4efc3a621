"""Checkpoints on disk as their own truth: what a record needs, read back from a checkpoint directory.

Every Trainer checkpoint carries ``trainer_state.json`` (global step, epoch, the log history up to that
step, the best checkpoint so far) beside its files, so a record that was never stored (the process died
between the save and the commit; a run that never had the callback) can be rebuilt after the fact, with
the id a live save would have given it. accelerate ``save_state`` folders (``checkpoints/checkpoint_<n>``)
carry no such file: their step is the folder's number. A Trainer subclass that names its folders its own
way still writes ``trainer_state.json`` into each (resuming needs it): any folder holding one is a
checkpoint, at the step it says. A run known only from disk (imported, or recovered with no job in the
store) gets its job document from the same files (:func:`job_from_disk`).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import Best
from .collect import read_json_object
from .history import LogEntry, LoggedMetrics, log_entry, metrics_at_step, selected_loss, step_of
from .job import JobIdentity, JobSnapshot, LossSeries, job_snapshot
from .values import to_number

TRAINER_STATE = "trainer_state.json"
_TRAINER_FOLDER = re.compile(r"checkpoint-(\d+)")
_ACCELERATE_FOLDER = re.compile(r"checkpoint_(\d+)")


@dataclass(frozen=True)
class FoundCheckpoint:
    """A checkpoint directory found on disk and what its own files say about it."""

    directory: Path
    step: int
    epoch: float | None = None
    logged: LoggedMetrics = field(default_factory=LoggedMetrics)
    #: The whole ``log_history`` of ``trainer_state.json`` (empty for accelerate folders).
    log_history: tuple[dict[str, Any], ...] = ()
    best: Best | None = None
    #: The run's planned steps as ``trainer_state.json`` says (0: not known).
    max_steps: int = 0


def checkpoint_folders(run_dir: Path) -> list[tuple[Path, int]]:
    """The checkpoint folders of a run directory with their step, oldest first: the Trainer's
    ``checkpoint-<step>``, accelerate's ``checkpoints/checkpoint_<n>``, and any other folder holding a
    ``trainer_state.json`` (a Trainer subclass's own names), at its ``global_step``."""
    found = []
    for parent, pattern in ((run_dir, _TRAINER_FOLDER), (run_dir / "checkpoints", _ACCELERATE_FOLDER)):
        for entry in _folders(parent):
            match = pattern.fullmatch(entry.name)
            if match:
                found.append((entry, int(match.group(1))))
            elif parent == run_dir:
                step = _state_step(entry)
                if step is not None:
                    found.append((entry, step))
    return sorted(found, key=lambda item: (item[1], item[0].name))


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
    """The ``global_step`` of a folder's ``trainer_state.json``; None without one."""
    state = read_json_object(directory / TRAINER_STATE)
    return None if state is None else step_of({"step": state.get("global_step")})


def read_checkpoint(directory: Path, step: int) -> FoundCheckpoint:
    """What ``directory`` says about itself: from ``trainer_state.json`` when there is one."""
    state = read_json_object(directory / TRAINER_STATE)
    if state is None:
        return FoundCheckpoint(directory=directory, step=step)
    history = tuple(entry for entry in state.get("log_history") or () if isinstance(entry, dict))
    global_step = step_of({"step": state.get("global_step")})
    step = step if global_step is None else global_step
    epoch, _ = to_number(state.get("epoch"))
    best = best_of(state, history)
    return FoundCheckpoint(
        directory=directory,
        step=step,
        epoch=None if epoch is None else float(epoch),
        logged=metrics_at_step(history, step, selected_loss(best.metric if best else None)),
        log_history=history,
        best=best,
        max_steps=max(int(to_number(state.get("max_steps"))[0] or 0), 0),
    )


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
    else the folder's; 0 when neither can be read."""
    for path in (directory / TRAINER_STATE, directory):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def written_times(folders: Sequence[tuple[Path, int]]) -> list[tuple[int, float]]:
    """Each checkpoint folder's step and when it was written (:func:`modified_at`), in the same order."""
    return [(step, modified_at(directory)) for directory, step in folders]


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
    keeps no times, so each loss point gets one from :func:`timed_log`; the job
    was created when its oldest checkpoint still on disk was written and updated with the newest's.
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
        training_loss=series.bounded(),
        directory=str(run_dir.absolute()),
    )

"""What the training thread hands over: a :class:`Save` or a :class:`Begin`, taken as it is.

Everything here is cheap to make on the training thread: plain values the Trainer's state (or a loop)
already holds, unconverted (a loss may still be a tensor, the best checkpoint a path). The recorder's
background thread turns them into records (:mod:`.bookkeeper`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import Best
from .job import JobIdentity
from .values import to_number

_TRAINER_FOLDER = re.compile(r"checkpoint-(\d+)")


def model_architecture(model: Any) -> str | None:
    """The class of a live model (the one under a PEFT wrapper): what ``save_pretrained`` writes as its
    architecture, for a checkpoint whose own files do not say it (an adapter of a Hub base)."""
    if model is None:
        return None
    get_base_model = getattr(model, "get_base_model", None)
    try:
        inner = get_base_model() if callable(get_base_model) else model
    except Exception:  # a wrapper that cannot say: the class is not worth failing for
        return None
    architectures = getattr(getattr(inner, "config", None), "architectures", None)
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return architectures[0]
    return type(inner).__name__ if hasattr(inner, "config") else None


def base_model_name(model: Any, hub_model_id: str | None = None) -> str | None:
    """The base model a live model was built from: a PEFT adapter's base, else ``name_or_path``."""
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, Mapping) and peft_config:
        adapter = peft_config.get("default") or next(iter(peft_config.values()))
        base = getattr(adapter, "base_model_name_or_path", None)
        if base:
            return str(base)
    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    return str(name) if name else hub_model_id or None


@dataclass(frozen=True)
class BestSoFar:
    """The best checkpoint as the Trainer's state names it at a save, unparsed (no work on the training
    thread): ``state.best_model_checkpoint``, ``args.metric_for_best_model``, ``state.best_metric``."""

    checkpoint: str
    metric: str | None
    value: Any

    def parsed(self) -> Best | None:
        match = _TRAINER_FOLDER.fullmatch(Path(self.checkpoint).name)
        if match is None:
            return None
        metric = self.metric
        if metric and not metric.startswith("eval_"):
            metric = f"eval_{metric}"  # as the Trainer looks it up
        value, _ = to_number(self.value)
        return Best(int(match.group(1)), metric, None if value is None else float(value))


@dataclass(frozen=True)
class Save:
    """What the training thread knows at a save, handed to the background as it is."""

    directory: Path
    #: The job's directory (the Trainer's output dir, accelerate's project dir).
    run_dir: Path
    job: JobIdentity
    step: int
    epoch: Any
    #: The log entries since the last hand-off (values may still be tensors: converted in the background).
    entries: Sequence[Mapping[str, Any]] = ()
    #: Position of ``entries[0]`` in the run's log; None: after the job's entries of earlier steps.
    first_seq: int | None = None
    #: Position in the log to the Unix time the entry was logged; ``logged_at`` for the others.
    log_times: Mapping[int, float] = field(default_factory=dict)
    logged_at: float | None = None
    base_model: str | None = None
    architecture: str | None = None
    world_size: int = 1
    node_suffix: str | None = None
    best: BestSoFar | None = None
    #: The eval loss the run selects by (``history.selected_loss``): with several eval sets, which one.
    loss_metric: str | None = None
    max_steps: int = 0
    #: Whether this process reports the job as a whole (the world main process does).
    reports_job: bool = True
    #: The record name's template when not the recorder's own (a loop's folders are not named by step).
    name_template: str | None = None
    #: Whether the directory was complete at the hand-off (the Trainer calls ``on_save`` after writing
    #: it): a Trainer subclass may have named it otherwise (the background finds the folder it wrote).
    written: bool = False
    #: Whether the run removes old checkpoints (``save_total_limit``): only then may a checkpoint gone by
    #: the time the background builds its record have been rotated away.
    rotates: bool = False


@dataclass(frozen=True)
class Begin:
    """A job starting: what its document needs (``args`` None for a loop without a Trainer)."""

    job: JobIdentity
    directory: Path
    args: Any = None
    model: Any = None
    base_model: str | None = None
    max_steps: int = 0
    #: The epochs the Trainer runs (``state.num_train_epochs``); 0 when not known.
    num_train_epochs: int = 0
    loss_metric: str | None = None
    rotates: bool = False
    #: Unix time of the hand-off: checkpoints written since are this run's, recorded live, not recovered.
    started_at: float | None = None

"""The Hugging Face Trainer adapter: a thin ``TrainerCallback`` over :class:`CheckpointRecorder`.

Every hook does on the training thread only what must happen there (the barrier between ranks at a
save, reading the state it needs) and hands the rest to the recorder's background thread.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .distributed import trainer_role, wait_for_everyone
from .handoff import Begin, BestSoFar, Save, base_model_name, model_architecture
from .history import selected_loss
from .job import JobIdentity, planned_epochs
from .logs import never_raises
from .record import CheckpointRecord
from .recorder import CheckpointRecorder
from .settings import Overrides, Settings

if TYPE_CHECKING:
    from typing_extensions import Unpack

CHECKPOINT_PREFIX = "checkpoint"


def checkpoint_directory(
    args: TrainingArguments, state: TrainerState, output_dir: Path | None = None
) -> Path:
    """The directory the Trainer really wrote for this save, absolute: resolved on the training thread,
    so no later change of the working directory moves it.

    A relative ``output_dir`` leads where the Trainer wrote (the working directory now); when the folder
    is not there but under ``output_dir`` (the output directory as resolved when training began: a
    callback changed the working directory after the save), that one. Hyper-parameter search writes to
    ``output_dir/<trial>/checkpoint-<step>``; the trial's directory is ``state.trial_name`` when the user
    named trials, else ``run-<id>``, found as the newest match. A Trainer subclass that names its folders
    otherwise is found by the background (:func:`~.recovery.written_folder`).
    """
    folder = f"{CHECKPOINT_PREFIX}-{state.global_step}"
    base = Path(os.path.abspath(str(args.output_dir)))
    moved = output_dir is not None and output_dir != base and not (base / folder).is_dir()
    if moved and output_dir is not None and (output_dir / folder).is_dir():
        base = output_dir
    if state.trial_name and (base / state.trial_name / folder).is_dir():
        return base / state.trial_name / folder
    if state.is_hyper_param_search and not (base / folder).is_dir():
        trials = [path for path in base.glob(f"*/{folder}") if path.is_dir()]
        if trials:
            return max(trials, key=lambda path: path.stat().st_mtime)
    return base / folder


class CheckpointRecordCallback(TrainerCallback):
    """Writes a checkpoint record on every save. Add it to ``Trainer(callbacks=[...])``.

    ``settings`` (default: resolved from the ``CHECKPOINT_RECORDS_*`` variables) with ``overrides``, any
    of the settings table's arguments (``checkpoint_records.settings.TABLE``: ``store=``, ``sinks=``,
    ``flush_timeout=``, ``storage=``...); bad configuration raises here, not at the first save.
    """

    def __init__(self, settings: Settings | None = None, **overrides: Unpack[Overrides]) -> None:
        self.recorder = CheckpointRecorder(settings, **overrides)
        #: How much of ``state.log_history`` was handed over, and when its new entries were logged.
        self._handed = 0
        self._log_times: dict[int, float] = {}
        #: Each ``output_dir`` as resolved when training began: the job's, whatever the working directory.
        self._output_dirs: dict[str, Path] = {}

    @property
    def last_record(self) -> CheckpointRecord | None:
        """The record of the latest save, once stored: waits for it up to ``flush_timeout``; None if there is
        none (yet), or if storing it failed (that failure is logged)."""
        saved = self.recorder.latest
        if saved is None:
            return None
        try:
            return saved.result(self.recorder.flush_timeout)
        except Exception:  # not stored in time, or not at all: said in the log, never raised to a reader
            return None

    def _should_record(self, args: TrainingArguments, state: TrainerState) -> bool:
        return trainer_role(args, state).records(self.recorder.record_every_node)

    def _job(self, args: TrainingArguments, run_dir: Path) -> JobIdentity:
        return self.recorder.job_for(str(run_dir), args.run_name)

    def _output_dir(self, args: TrainingArguments) -> Path:
        """``args.output_dir``, absolute as it was when training began (cheap: no file system call)."""
        given = str(args.output_dir)
        return self._output_dirs.setdefault(given, Path(os.path.abspath(given)))

    @never_raises
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._handed, self._log_times = 0, {}  # the state (a resumed one too) is handed over from its start
        self._output_dirs = {}
        output_dir = self._output_dir(args)
        if not self._should_record(args, state) or not state.is_world_process_zero:
            return  # the job as a whole is reported once
        model = kwargs.get("model")
        self.recorder.begin(
            Begin(
                job=self._job(args, output_dir),
                directory=output_dir,
                args=args,
                model=model,
                base_model=base_model_name(model, args.hub_model_id),
                max_steps=int(state.max_steps or 0),
                num_train_epochs=planned_epochs(state),
                loss_metric=selected_loss(args.metric_for_best_model),
                rotates=bool(args.save_total_limit),
                started_at=time.time(),
            )
        )

    @never_raises
    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # log_history keeps no time; the job's loss series needs it
        self._log_times[len(state.log_history) - 1] = time.time()

    @never_raises
    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Every rank has written its part (rng_state_<rank>.pth, shards) only once all of them got here.
        wait_for_everyone(getattr(args, "distributed_state", None))
        if not self._should_record(args, state):
            return
        output_dir = self._output_dir(args)
        directory = checkpoint_directory(args, state, output_dir)
        trial = state.is_hyper_param_search or bool(state.trial_name)
        run_dir = directory.parent if trial else output_dir
        history = state.log_history or []
        first, self._handed = self._handed, len(history)
        times, self._log_times = self._log_times, {}
        best = state.best_model_checkpoint
        model = kwargs.get("model")
        self.recorder.hand_off(
            Save(
                directory=directory,
                run_dir=run_dir,
                job=self._job(args, run_dir),
                step=state.global_step,
                epoch=state.epoch,
                entries=history[first:],
                first_seq=first,
                log_times=times,
                base_model=base_model_name(model, args.hub_model_id),
                architecture=model_architecture(model),
                world_size=args.world_size,
                node_suffix=trainer_role(args, state).node_suffix(self.recorder.record_every_node),
                best=BestSoFar(best, args.metric_for_best_model, state.best_metric) if best else None,
                loss_metric=selected_loss(args.metric_for_best_model),
                max_steps=int(state.max_steps or 0),
                reports_job=state.is_world_process_zero,
                written=True,
                rotates=bool(args.save_total_limit),
            )
        )

    @never_raises
    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._should_record(args, state):
            self.recorder.end("Success", state.global_step)
            self.recorder.close()  # flush (bounded), then stop what this run started: a notebook's next
            # train() starts afresh, leaving no thread or open file behind

"""The Hugging Face Trainer adapter: a thin ``TrainerCallback`` over :class:`CheckpointRecorder`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .distributed import trainer_role, wait_for_everyone
from .lifecycle import JobLifecycle
from .record import CheckpointRecord
from .recorder import CheckpointRecorder, JobIdentity, base_model_name, never_raises
from .sinks import Sink
from .storage import StorageConfig
from .store import RecordStore

CHECKPOINT_PREFIX = "checkpoint"


def checkpoint_directory(args: TrainingArguments, state: TrainerState) -> Path:
    """The directory the Trainer really wrote for this save.

    Hyper-parameter search writes to ``output_dir/<trial>/checkpoint-<step>``; the trial's directory is
    ``state.trial_name`` when the user named trials, else ``run-<id>``, found as the newest match.
    """
    folder = f"{CHECKPOINT_PREFIX}-{state.global_step}"
    base = Path(str(args.output_dir))
    if state.trial_name and (base / state.trial_name / folder).is_dir():
        return base / state.trial_name / folder
    if state.is_hyper_param_search and not (base / folder).is_dir():
        trials = [path for path in base.glob(f"*/{folder}") if path.is_dir()]
        if trials:
            return max(trials, key=lambda path: path.stat().st_mtime)
    return base / folder


class CheckpointRecordCallback(TrainerCallback):
    """Writes a checkpoint record on every save. Add it to ``Trainer(callbacks=[...])``.

    Every argument can also come from a ``CHECKPOINT_RECORDS_*`` environment variable (see
    ``checkpoint_records.settings.ENVIRONMENT``); bad configuration raises here, not at the first save.
    """

    def __init__(
        self,
        *,
        store: RecordStore | str | os.PathLike[str] | None = None,
        sinks: Sequence[Sink | str] | None = None,
        job_id: str | None = None,
        job_name: str | None = None,
        name_template: str | None = None,
        flush_timeout: float | None = None,
        record_every_node: bool | None = None,
        storage: str | StorageConfig | None = None,
        storage_options: Mapping[str, Any] | None = None,
        storage_retention: str | None = None,
    ) -> None:
        self.recorder = CheckpointRecorder(
            store=store,
            sinks=sinks,
            job_id=job_id,
            job_name=job_name,
            name_template=name_template,
            flush_timeout=flush_timeout,
            record_every_node=record_every_node,
            storage=storage,
            storage_options=storage_options,
            storage_retention=storage_retention,
        )
        self.last_record: CheckpointRecord | None = None
        self.lifecycle = JobLifecycle(self.recorder)

    def _should_record(self, args: TrainingArguments, state: TrainerState) -> bool:
        return trainer_role(args, state).records(self.recorder.record_every_node)

    def _job(self, args: TrainingArguments, run_dir: Path) -> JobIdentity:
        return self.recorder.job_for(str(run_dir), args.run_name)

    @never_raises
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not self._should_record(args, state):
            return
        self.recorder.start_delivery()  # pending work from an earlier run goes out now
        job = self._job(args, Path(str(args.output_dir)))
        self.recorder.watch_job(job)
        if state.is_world_process_zero:  # the job as a whole is reported once
            model = kwargs.get("model")
            self.lifecycle.begin(job, args, state, model, base_model_name(model, args.hub_model_id))

    @never_raises
    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.lifecycle.logged(state.global_step)

    @never_raises
    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Every rank has written its part (rng_state_<rank>.pth, shards) only once all of them got here.
        wait_for_everyone(getattr(args, "distributed_state", None))
        if not self._should_record(args, state):
            return
        directory = checkpoint_directory(args, state)
        model = kwargs.get("model")
        self.last_record = self.recorder.record_directory(
            directory,
            job=self._job(args, directory.parent),
            step=state.global_step,
            epoch=state.epoch,
            log_history=state.log_history or [],
            base_model=base_model_name(model, args.hub_model_id),
            world_size=args.world_size,
            node_suffix=trainer_role(args, state).node_suffix(self.recorder.record_every_node),
        )
        if self.recorder.job_sinks:  # progress is news only to job-level platforms
            self.lifecycle.report("Running")

    @never_raises
    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._should_record(args, state):
            self.recorder.record_rotations()
            self.lifecycle.end("Success")
            self.recorder.flush()

"""The recorder: from a checkpoint directory on disk to a durable, queued record.

This is the one implementation behind the Trainer callback and plain training loops. Everything it does
on the caller's thread is bounded and local (a directory scan, a few small reads, one SQLite
transaction); delivery to sinks happens elsewhere, from the outbox.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import transformers

from .build import SaveContext, as_deleted, build_record
from .collect import read_model_facts, scan_checkpoint
from .delivery import DeliveryWorker, FlushResult
from .distributed import accelerator_role, launcher_role, wait_for_everyone
from .identity import checkpoint_id_for, default_job_key, job_id_for
from .logs import logger, warn_once
from .readiness import assess_readiness
from .record import CheckpointRecord, utc_now_iso
from .settings import check_name_template, environment, parse_bool, parse_seconds
from .sinks import Sink, configured_sinks, job_sinks, record_sinks
from .storage import StorageConfig, Uploads, storage_config
from .store import RecordStore

DEFAULT_NAME_TEMPLATE = "{job_name}-checkpoint-{step}"
DEFAULT_FLUSH_TIMEOUT = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class JobIdentity:
    id: str
    name: str


def never_raises(method: Callable[..., T]) -> Callable[..., T | None]:
    """Run ``method``; on any exception, log it once (by method and exception type) and return None.

    Training must never pay for a failure of ours: transformers does not catch callback exceptions.
    """

    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> T | None:
        try:
            return method(*args, **kwargs)
        except Exception as error:
            warn_once(
                f"{method.__qualname__}:{type(error).__name__}",
                "checkpoint-records: %s failed and was skipped, training goes on: %s: %s",
                method.__qualname__,
                type(error).__name__,
                error,
            )
            logger.debug("traceback", exc_info=True)
            return None

    return guarded


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


class CheckpointRecorder:
    """Records checkpoints into the store and queues them for the configured sinks."""

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
        env = environment()
        self.store = store if isinstance(store, RecordStore) else RecordStore(store or env.get("HOME"))
        self.sinks = configured_sinks(sinks, env)
        self.job_id = job_id or env.get("JOB_ID")
        self.job_name = job_name or env.get("JOB_NAME")
        self.name_template = check_name_template(
            name_template or env.get("NAME_TEMPLATE") or DEFAULT_NAME_TEMPLATE
        )
        self.flush_timeout = parse_seconds(
            "flush_timeout",
            flush_timeout if flush_timeout is not None else env.get("FLUSH_TIMEOUT"),
            DEFAULT_FLUSH_TIMEOUT,
        )
        self.record_every_node = parse_bool(
            "record_every_node",
            record_every_node if record_every_node is not None else env.get("RECORD_EVERY_NODE"),
        )
        self.node = socket.gethostname()
        self.delivery = DeliveryWorker(self.store, self.sinks)
        self.uploads = Uploads(
            self.store,
            storage_config(storage, storage_options, storage_retention, env),
            [sink.key for sink in self.record_sinks],
            self.delivery.wake,
        )
        #: Directories of this job's ``available`` records, by record id: watched for rotation.
        self._live: dict[str, Path] = {}

    @property
    def record_sinks(self) -> list[Sink]:
        return record_sinks(self.sinks)

    @property
    def job_sinks(self) -> list[Sink]:
        """Sinks of job-level events (the ``training-job`` format)."""
        return job_sinks(self.sinks)

    def job_for(self, output_dir: str, run_name: str | None) -> JobIdentity:
        """The job's identity: explicit settings first, else derived from where and what it runs."""
        key = self.job_id or default_job_key(output_dir, run_name)
        name = self.job_name or run_name or Path(os.path.abspath(output_dir)).name or "job"
        return JobIdentity(id=job_id_for(key), name=name)

    def record_directory(
        self,
        directory: Path,
        *,
        job: JobIdentity,
        step: int,
        epoch: Any,
        log_history: Iterable[Mapping[str, Any]],
        base_model: str | None,
        world_size: int = 1,
        node_suffix: str | None = None,
    ) -> CheckpointRecord:
        """Build the record of ``directory`` and store it durably, queued for every sink."""
        node = self.node if node_suffix is None else f"{self.node}/{node_suffix}"
        name_fields = {"job_name": job.name, "job_id": job.id, "step": step, "node": node}
        context = SaveContext(
            record_id=checkpoint_id_for(job.id, step, node if node_suffix is not None else None),
            name=self.name_template.format(**name_fields),
            job_id=job.id,
            job_name=job.name,
            step=step,
            epoch=epoch,
            node=node,
            log_history=log_history,
            base_model=base_model,
            library_version=transformers.__version__,
            world_size=world_size,
        )
        scanned = scan_checkpoint(directory)
        record = build_record(
            context,
            scanned,
            read_model_facts(directory),
            assess_readiness(directory, scanned.files),
            utc_now_iso(),
        )
        stored = self.store.put(record, [sink.key for sink in self.record_sinks]).record
        if stored.status.status == "available":
            self._live[stored.id] = directory
        self.uploads.enqueue(stored)  # hard links and one short transaction; sent by the upload lane
        self.record_rotations()  # the Trainer's save_total_limit (or accelerate's) has just deleted some
        self.start_delivery()
        self.delivery.wake()  # last: the delivery thread then competes with training, not with this save
        return stored

    def watch_job(self, job: JobIdentity) -> None:
        """Watch the directories of ``job``'s available checkpoints on this node (those of a resumed run too)."""
        for stored in self.store.records(job.id):
            record = stored.record
            node = record.training.node
            if record.status.status == "available" and (
                node == self.node or node.startswith(f"{self.node}/")
            ):
                self._live[record.id] = Path(record.spec.directory)

    def record_rotations(self) -> None:
        """Mark the watched checkpoints whose directory is gone as ``deleted``, and queue the updates.

        A ``stat`` per watched checkpoint on the training thread; only a deletion costs a write.
        """
        for record_id, directory in list(self._live.items()):
            if directory.is_dir():
                continue
            del self._live[record_id]
            stored = self.store.get(record_id)
            if stored is not None and stored.record.status.status == "available":
                deleted = as_deleted(stored.record, utc_now_iso())
                # Not fsynced: it survives a crash, and the training thread pays no second disk flush.
                self.store.put(deleted, [sink.key for sink in self.record_sinks], durable=False)

    def start_delivery(self) -> None:
        """Start delivering in the background, pending work from earlier runs included (main process only)."""
        self.delivery.start()
        self.uploads.start()

    def flush(self) -> FlushResult:
        """Wait up to ``flush_timeout`` for uploads, then delivery; what is left stays pending for the next run
        or ``flush``."""
        self.uploads.flush(self.flush_timeout)
        result = self.delivery.flush(self.flush_timeout)
        if result.pending:
            logger.warning(
                "checkpoint-records: %d record deliveries still pending after %.1fs; they stay in %s and go out "
                "with the next run that uses this store, or with `checkpoint-records flush`.",
                result.pending,
                self.flush_timeout,
                self.store.path,
            )
        return result

    def close(self) -> None:
        """Flush (bounded) when this process delivers, then stop delivery and release the store."""
        if self.delivery.running:
            self.flush()
        self.uploads.close()
        self.delivery.close()
        self.store.close()

    def __enter__(self) -> CheckpointRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @never_raises
    def record(
        self,
        directory: str | os.PathLike[str],
        *,
        step: int,
        epoch: float | None = None,
        train_loss: Any = None,
        eval_loss: Any = None,
        metrics: Mapping[str, Any] | None = None,
        model: Any = None,
        accelerator: Any = None,
    ) -> CheckpointRecord | None:
        """Record the checkpoint a training loop of your own has just written to ``directory``.

        Call it on every process, right after the save (``accelerator.save_state`` or ``save_pretrained``):
        it waits for every process to finish writing, then records on the main process only (on each
        node's main with ``record_every_node`` when every node saves its own copy) and returns the record
        there, None elsewhere. Losses and metrics may be floats or scalar tensors. With ``accelerator``
        the job is its ``project_dir`` (where ``automatic_checkpoint_naming`` writes
        ``checkpoints/checkpoint_<n>``), else the directory's parent.
        """
        role = launcher_role() if accelerator is None else accelerator_role(accelerator)
        wait_for_everyone(accelerator)
        if not role.records(self.record_every_node):
            return None
        path = Path(directory)
        if accelerator is not None and model is not None:
            model = accelerator.unwrap_model(model)
        logged = {"step": step, "loss": train_loss, "eval_loss": eval_loss, **(metrics or {})}
        return self.record_directory(
            path,
            job=self.job_for(str(getattr(accelerator, "project_dir", None) or path.parent), None),
            step=step,
            epoch=epoch,
            log_history=[{key: value for key, value in logged.items() if value is not None}],
            base_model=base_model_name(model),
            world_size=role.world_size,
            node_suffix=role.node_suffix(self.record_every_node),
        )

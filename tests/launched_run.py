"""A tiny Trainer run for ``torchrun`` / ``accelerate launch``, configured through CHECKPOINT_RECORDS_* variables.

Usage: launched_run.py OUTPUT_DIR [--save-on-each-node] [--late-rank R] [--dataloader-workers N]
                                  [--kill-after-save STEP] [--resume]

--late-rank R gives rank R a slow disk: it writes its ``rng_state_R.pth`` only after the others reached
``on_save`` (the Trainer has no collective between writing its files and ``on_save``).
"""

from __future__ import annotations

import argparse
import sys
import weakref
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent / "examples")]

from transformers import Trainer, TrainerCallback  # noqa: E402

from checkpoint_records import CheckpointRecordCallback  # noqa: E402
from killed_run import KillAfterSave  # noqa: E402
from trainer_runs import tiny_trainer  # noqa: E402
from waiting import wait_until  # noqa: E402


class ReachedSave(TrainerCallback):
    """Leaves a mark in ``marks`` when a rank reaches ``on_save`` (before the records' barrier)."""

    def __init__(self, marks: Path) -> None:
        self.marks = marks

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.marks.mkdir(exist_ok=True)
        (self.marks / f"{state.global_step}-{args.process_index}").touch()


def make_rank_late(rank: int, marks: Path) -> None:
    """Rank ``rank`` writes its RNG state, its last file of each checkpoint, only once every other rank
    has reached ``on_save`` (:class:`ReachedSave`)."""
    save_rng_state = Trainer._save_rng_state

    def late(self: Trainer, output_dir: str) -> None:
        if self.args.process_index == rank:
            others = {index for index in range(self.args.world_size) if index != rank}
            step = self.state.global_step
            wait_until(
                lambda: all((marks / f"{step}-{index}").exists() for index in others),
                120,
                f"ranks {sorted(others)} never reached on_save at step {step}",
            )
        save_rng_state(self, output_dir)

    Trainer._save_rng_state = late  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--save-on-each-node", action="store_true")
    parser.add_argument("--late-rank", type=int)
    parser.add_argument("--dataloader-workers", type=int, default=0)
    parser.add_argument("--kill-after-save", type=int)
    parser.add_argument("--resume", action="store_true")
    options = parser.parse_args()
    callbacks: list[TrainerCallback] = [CheckpointRecordCallback()]
    if options.late_rank is not None:
        marks = Path(options.output_dir).parent / "reached-save"
        make_rank_late(options.late_rank, marks)
        callbacks.insert(0, ReachedSave(marks))
    if options.kill_after_save:
        callbacks.append(KillAfterSave(options.kill_after_save))
    trainer = tiny_trainer(
        Path(options.output_dir),
        callbacks,
        save_on_each_node=options.save_on_each_node,
        dataloader_num_workers=options.dataloader_workers,
        per_device_train_batch_size=2,
    )
    trainer.train(resume_from_checkpoint=options.resume or None)
    accelerator, wrapped = trainer.accelerator, weakref.ref(trainer.model_wrapped)
    accelerator.wait_for_everyone()
    # The DDP model goes before the process group: were its reducer the group's last holder, the group
    # would be destroyed holding the GIL and wait forever on a gloo thread that needs it to free a
    # finished collective's tensors (pytorch/pytorch#56297; seen here under load).
    del trainer
    accelerator.free_memory()
    if wrapped() is not None:
        raise RuntimeError("the DDP model outlived the trainer: the process group could hang at exit")
    accelerator.end_training()  # destroy_process_group(), once per process, as torch's docs ask


if __name__ == "__main__":
    main()

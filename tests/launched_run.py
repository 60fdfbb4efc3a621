"""A tiny Trainer run for ``torchrun`` / ``accelerate launch``, configured through CHECKPOINT_RECORDS_* variables.

Usage: launched_run.py OUTPUT_DIR [--save-on-each-node] [--late-rank R] [--dataloader-workers N]
                                  [--kill-after-save STEP] [--resume]

--late-rank R gives rank R a slow disk: it writes its ``rng_state_R.pth`` a second after the others
reached ``on_save`` (the Trainer has no collective between writing its files and ``on_save``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent / "examples")]

from transformers import Trainer, TrainerCallback  # noqa: E402

from checkpoint_records import CheckpointRecordCallback  # noqa: E402
from killed_run import KillAfterSave  # noqa: E402
from trainer_runs import tiny_trainer  # noqa: E402


def make_rank_late(rank: int) -> None:
    """Rank ``rank`` writes its RNG state, its last file of each checkpoint, a second late."""
    save_rng_state = Trainer._save_rng_state

    def late(self: Trainer, output_dir: str) -> None:
        if self.args.process_index == rank:
            time.sleep(1.0)
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
        make_rank_late(options.late_rank)
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


if __name__ == "__main__":
    main()

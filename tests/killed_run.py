"""A tiny training run configured only through CHECKPOINT_RECORDS_* variables, that can die mid-way.

Usage: python killed_run.py OUTPUT_DIR [--kill-after-save STEP | --raise-at STEP KIND] [--resume]
                             [--hold-from STEP]
With --kill-after-save, the process SIGKILLs itself right after the save at STEP returned; with
--raise-at, training raises KIND (RuntimeError or KeyboardInterrupt) at the end of that step; with
--hold-from, the recorder's background thread never commits the record of a save at STEP or later (so a
kill right after ``on_save`` returned catches the save handed over but not stored).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent / "examples")]

from transformers import TrainerCallback  # noqa: E402

from checkpoint_records import CheckpointRecordCallback  # noqa: E402
from checkpoint_records.bookkeeper import Bookkeeper  # noqa: E402
from trainer_runs import tiny_trainer  # noqa: E402


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RaiseAt(TrainerCallback):
    def __init__(self, step: int, kind: str) -> None:
        self.step, self.kind = (
            step,
            {"RuntimeError": RuntimeError, "KeyboardInterrupt": KeyboardInterrupt}[kind],
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise self.kind("stopped by the test")


def hold_records_from(step: int) -> None:
    """Block the background thread before it stores the record of a save at ``step`` or later."""
    store_record = Bookkeeper.store_record

    def held(self: Bookkeeper, record: Any, **options: Any) -> Any:
        if record.training.step >= step:
            threading.Event().wait()  # forever: the process is killed meanwhile
        return store_record(self, record, **options)

    Bookkeeper.store_record = held  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--kill-after-save", type=int)
    parser.add_argument("--raise-at", nargs=2, metavar=("STEP", "KIND"))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hold-from", type=int)
    args = parser.parse_args()
    if args.hold_from:
        hold_records_from(args.hold_from)
    callbacks: list[TrainerCallback] = [CheckpointRecordCallback()]
    if args.kill_after_save:
        callbacks.append(KillAfterSave(args.kill_after_save))
    if args.raise_at:
        callbacks.append(RaiseAt(int(args.raise_at[0]), args.raise_at[1]))
    tiny_trainer(Path(args.output_dir), callbacks).train(resume_from_checkpoint=args.resume or None)


if __name__ == "__main__":
    main()

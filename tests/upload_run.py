"""A tiny training run uploading its checkpoint to CHECKPOINT_RECORDS_STORAGE, SIGKILLed mid-upload.

Usage: python upload_run.py OUTPUT_DIR
A 12 MB ``zz-extra.bin`` is added to the checkpoint (named to go last) so its upload takes several
parts; files are sent one at a time, in path order, and the process kills itself once the first part of
``zz-extra.bin`` has gone out: every other file is complete, that one is not.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent / "examples")]

from transformers import TrainerCallback  # noqa: E402

from checkpoint_records import CheckpointRecordCallback  # noqa: E402
from checkpoint_records.storage import StorageConfig, transfer  # noqa: E402
from trainer_runs import tiny_trainer  # noqa: E402

PART = 5 * 2**20


class AddLargeFile(TrainerCallback):
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / "zz-extra.bin"
        path.write_bytes(os.urandom(12 * 2**20))


def kill_during(name: str) -> None:
    original = transfer.send

    def send(fs: Any, local: Path, target: str, part_size: int, on_progress: Any, *args: Any) -> Any:
        if local.name != name:
            return original(fs, local, target, part_size, on_progress, *args)

        def progress(sent: int) -> None:
            on_progress(sent)
            if sent > PART:  # two parts were uploaded, the upload is not complete
                os.kill(os.getpid(), signal.SIGKILL)

        return original(fs, local, target, part_size, progress, *args)

    transfer.send = send  # type: ignore[assignment]


def main() -> None:
    output_dir = Path(sys.argv[1])
    kill_during("zz-extra.bin")
    storage = StorageConfig(os.environ["UPLOAD_RUN_STORAGE"], parallel=1, part_size=PART)
    callbacks = [AddLargeFile(), CheckpointRecordCallback(storage=storage, flush_timeout=60)]
    tiny_trainer(output_dir, callbacks, max_steps=2, save_steps=2, eval_strategy="no").train()


if __name__ == "__main__":
    main()

"""Three writers revise one record at once (rotation, best-marking, the upload's state): none is lost.

Each iteration stores a checkpoint's record with its upload queued, then, released together, deletes the
checkpoint and notes the rotation, moves the best mark onto it (reading every record of the job, as the
Trainer's best moving does; from a thread, or from a second process sharing the store), and lets the
upload lane send its files and revise it. The final revision must hold all three changes, the record's
revisions must have been written one after the other, and its delivery must be queued for the final one.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from checkpoint_records.build import Best
from checkpoint_records.recorder import CheckpointRecorder
from http_server import Receiver

ITERATIONS = 25
#: Records of the job before the race: best-marking reads them all, as a long run's best moving does.
EARLIER = 40

#: The best-marking writer in a process of its own: marks the step it reads, says "done".
MARKER = """
import sys
from checkpoint_records.build import Best
from checkpoint_records.recorder import CheckpointRecorder

recorder = CheckpointRecorder(sinks=[sys.argv[2]])
job = recorder.job_for(sys.argv[1], None)
print("ready", flush=True)
for line in sys.stdin:
    step = int(line)
    recorder.books.move_best(job, Best(step, "eval_loss", 1.0 / step), None, None)
    print("done", flush=True)
recorder.store.close()
"""


def checkpoint(run: Path, step: int) -> Path:
    directory = run / f"checkpoint-{step}"
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(step.to_bytes(8, "little") * 64)
    return directory


def together(*writers: Callable[[], None]) -> None:
    """Run ``writers`` on threads of their own, released at once; raise what any of them raised."""
    start = threading.Barrier(len(writers))
    errors: list[BaseException] = []

    def run(writer: Callable[[], None]) -> None:
        try:
            start.wait(30)
            writer()
        except BaseException as error:  # said by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(writer,)) for writer in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(thread.is_alive() for thread in threads), errors


def answer(child: subprocess.Popen[str]) -> str:
    """The child's next line, waiting two minutes at most (one line per request: none stays buffered)."""
    assert child.stdout is not None
    readable, _, _ = select.select([child.stdout], [], [], 120)
    assert readable, "the best-marking process did not answer within two minutes"
    return child.stdout.readline().strip()


@contextmanager
def best_marker(
    recorder: CheckpointRecorder, run: Path, sink: str, elsewhere: bool
) -> Iterator[Callable[[int], None]]:
    """Marks a step best: the recorder's own best-marking, here or in a second process on the same store."""
    job = recorder.job_for(str(run), None)
    if not elsewhere:
        yield lambda step: recorder.books.move_best(job, Best(step, "eval_loss", 1.0 / step), None, None)
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", MARKER, str(run), sink],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert answer(child) == "ready"

        def mark(step: int) -> None:
            assert child.stdin is not None
            child.stdin.write(f"{step}\n")
            child.stdin.flush()
            assert answer(child) == "done"

        yield mark
        child.stdin.close()
        assert child.wait(60) == 0
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("best_elsewhere", [False, True], ids=["threads", "two-processes"])
def test_rotation_best_and_upload_revising_one_record_at_once_lose_nothing(
    tmp_path: Path, best_elsewhere: bool
) -> None:
    run, shared = tmp_path / "run", tmp_path / "shared"
    shared.mkdir()
    with (
        Receiver() as receiver,
        CheckpointRecorder(sinks=[receiver.url], storage=f"file://{shared}") as recorder,
        best_marker(recorder, run, receiver.url, best_elsewhere) as mark_best,
    ):
        uploading = recorder.uploads.start
        recorder.uploads.start = lambda: None  # type: ignore[method-assign]  # queued, sent in the race
        for step in range(1, EARLIER + 1):
            recorder.record(checkpoint(run, step), step=step)
        assert recorder.drain(60)
        lost: list[str] = []
        for step in range(EARLIER + 1, EARLIER + ITERATIONS + 1):
            directory = checkpoint(run, step)
            record = recorder.record(directory, step=step).result(60)
            assert record is not None and record.training.step == step

            def rotate(directory: Path = directory) -> None:
                shutil.rmtree(directory)
                recorder.books.record_rotations()

            def upload() -> None:
                recorder.uploads.start = uploading  # type: ignore[method-assign]
                assert recorder.uploads.flush(30) == 0

            together(rotate, lambda step=step: mark_best(step), upload)
            recorder.uploads.close()
            recorder.uploads.start = lambda: None  # type: ignore[method-assign]

            final = recorder.store.get(record.id)
            assert final is not None
            kept, upload_status = final.record, final.record.status.upload
            missing = [
                change
                for change, there in (
                    ("rotation", kept.status.status == "deleted"),
                    ("best", kept.training.best is True),
                    ("upload", upload_status is not None and upload_status.state == "uploaded"),
                )
                if not there
            ]
            if missing:
                lost.append(f"step {step}: {', '.join(missing)} lost (revision {final.revision})")
            revisions = recorder.store.record_revisions(record.id)
            assert [r.revision for r in revisions] == list(range(1, final.revision + 1)), revisions
            assert (revisions[-1].status, revisions[-1].best) == (kept.status.status, kept.training.best)
            assert [(d.sink, d.revision) for d in recorder.store.outbox.deliveries(record.id)] == [
                (recorder.sinks[0].key, final.revision)
            ]
        assert lost == [], lost
        best = [
            s.record.training.step
            for s in recorder.store.records(record.metadata.job_id)
            if s.record.training.best
        ]
        assert best == [EARLIER + ITERATIONS]

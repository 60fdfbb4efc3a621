"""The evaluation worker's own overhead per checkpoint (issue 24): from the moment a checkpoint is there to
evaluate until its evaluator starts.

A worker (``checkpoint-records evaluate``, a process of its own, waiting for checkpoints) watches a store.
*Ready*: a checkpoint's record, ready for inference with its folder on this machine, is committed to the
store at t0. *Uploaded*: a checkpoint (the tiny model saved with ``save_pretrained``, its tokenizer, and an
``optimizer.pt`` of the size measured) uploaded to a local moto S3 server by the real recorder; at t0 its
uploaded revision reaches the worker's store (as a registry would receive it) while its folder is not on
this machine, so the worker pulls it and checks every SHA-256 first. t1 is the evaluator's first
statement (a Python script writing ``time.time()``); t1 - t0 is the overhead: the worker noticing the
record (it looks every second: each t0 falls at a random moment of its idle wait), claiming it, checking
the folder or pulling and verifying the copy, and starting the command. The interpreter's own start is
measured apart and included in t1 - t0.

Usage: python benchmarks/evaluation.py [--rounds 8] [--sizes-mb 1,100]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cell, machine_description, moto_storage, percentile, table

from checkpoint_records.record import CheckpointRecord, FileEntry
from checkpoint_records.recorder import CheckpointRecorder
from checkpoint_records.store import RecordStore
from records_factory import make_record
from s3_server import MotoServer
from tiny import save_tiny_pretrained

MB = 10**6
EVALUATOR = """
import json, sys, time
started = time.time()
with open(sys.argv[2], "a") as log:
    log.write(f"{sys.argv[1]} {started}\\n")
print(json.dumps({"started": started}))
"""


def starts(log: Path) -> dict[str, float]:
    """Each evaluated folder's name and when its evaluator started."""
    if not log.exists():
        return {}
    found = {}
    for line in log.read_text().splitlines():
        name, started = line.rsplit(" ", 1)
        found[Path(name).name if "/" in name else name] = float(started)
    return found


def wait_for(log: Path, count: int, timeout: float = 300.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while len(found := starts(log)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker started {len(found)} evaluations of {count} within {timeout:g} s")
        time.sleep(0.005)
    return found


def start_worker(store: Path, script: Path, log: Path, folder: Path) -> subprocess.Popen[bytes]:
    command = f"{sys.executable} {script} {{directory}} {log}"
    return subprocess.Popen(
        [sys.executable, "-m", "checkpoint_records.cli", "evaluate", "--store", str(store), "--name", "bench",
         "--command", command, "--workdir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def ready_overheads(base: Path, script: Path, rounds: int) -> list[float]:
    """Records of checkpoints on this machine committed one at a time; each one's t1 - t0."""
    store_dir, log = base / "ready-store", base / "ready.log"
    RecordStore(store_dir)
    worker = start_worker(store_dir, script, log, base / "work")
    overheads = []
    try:
        for step in range(1, rounds + 1):
            directory = base / "ready" / f"checkpoint-{step}"
            directory.mkdir(parents=True)
            (directory / "model.safetensors").write_bytes(os.urandom(1000))
            record = make_record(step, job="bench")
            spec = record.spec.model_copy(update={"directory": str(directory)})
            status = record.status.model_copy(
                update={"files": [FileEntry(path="model.safetensors", size=1000)]}
            )
            sent = time.time()
            RecordStore(store_dir).put(record.model_copy(update={"spec": spec, "status": status}))
            overheads.append(wait_for(log, step)[directory.name] - sent)
            evaluated(RecordStore(store_dir), record.id)
            time.sleep(
                random.uniform(0.0, 1.0)
            )  # the next checkpoint at any moment of the worker's idle look
    finally:
        stop(worker)
    return overheads


def uploaded_overheads(base: Path, script: Path, rounds: int, size: int, endpoint: str) -> list[float]:
    """Checkpoints of ``size`` bytes uploaded by the recorder; each uploaded revision handed to the
    worker's store with the folder moved away; each one's t1 - t0 (pull and verify included)."""
    storage = moto_storage(endpoint, f"eval-{size}", "runs")
    os.environ["AWS_ENDPOINT_URL"] = endpoint  # where the worker's s3fs finds the record's copy
    training, worker_store, log = (
        base / f"training-{size}",
        base / f"worker-{size}",
        base / f"uploaded-{size}.log",
    )
    RecordStore(worker_store)
    worker = start_worker(worker_store, script, log, base / "work")
    overheads = []
    try:
        with CheckpointRecorder(
            store=training, storage=storage, job_name=f"bench-{size}", flush_timeout=600
        ) as rec:
            for step in range(1, rounds + 1):
                directory = save_tiny_pretrained(base / f"run-{size}" / f"checkpoint-{step}")  # ready
                (directory / "optimizer.pt").write_bytes(os.urandom(size))  # the bulk to pull and hash
                rec.record(directory, step=step)
                rec.drain()
                record = _uploaded(RecordStore(training), rec.last_record.id if rec.last_record else "")
                shutil.move(directory, base / f"moved-{size}-{step}")
                sent = time.time()
                RecordStore(worker_store).put(record)
                overheads.append(wait_for(log, 1)["checkpoint"] - sent)  # pulled into <work>/.../checkpoint
                evaluated(RecordStore(worker_store), record.id)
                log.unlink()
    finally:
        stop(worker)
    return overheads


def evaluated(store: RecordStore, record_id: str, timeout: float = 300.0) -> None:
    """Wait until the worker has written its result (so it is idle again, looking every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = store.get(record_id)
        if stored is not None and stored.record.status.evaluations:
            return
        time.sleep(0.01)
    raise RuntimeError(f"no result for {record_id} within {timeout:g} s")


def _uploaded(store: RecordStore, record_id: str, timeout: float = 600.0) -> CheckpointRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = store.get(record_id)
        if (
            stored is not None
            and stored.record.status.upload
            and stored.record.status.upload.state == "uploaded"
        ):
            return stored.record
        time.sleep(0.02)
    raise RuntimeError(f"{record_id} was not uploaded within {timeout:g} s")


def interpreter_start(rounds: int) -> list[float]:
    found = []
    for _ in range(rounds):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        found.append(time.perf_counter() - began)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--sizes-mb", default="1,100")
    options = parser.parse_args()
    print(machine_description())
    with tempfile.TemporaryDirectory() as temporary:
        base = Path(temporary)
        script = base / "evaluator.py"
        script.write_text(EVALUATOR)
        rows = []

        def row(case: str, seconds: list[float]) -> None:
            rows.append([case, str(len(seconds)), *(cell(percentile(seconds, q), 3) for q in (50, 90, 100))])

        row("python -c pass (the evaluator's interpreter)", interpreter_start(options.rounds))
        row("ready, folder on this machine", ready_overheads(base, script, options.rounds))
        moto = MotoServer().start()
        try:
            for size_mb in (int(text) for text in options.sizes_mb.split(",")):
                seconds = uploaded_overheads(base, script, options.rounds, size_mb * MB, moto.endpoint)
                row(f"uploaded {size_mb} MB, pulled from S3 and verified", seconds)
        finally:
            moto.stop()
    print(table(["case", "n", "p50 s", "p90 s", "max s"], rows))


if __name__ == "__main__":
    main()

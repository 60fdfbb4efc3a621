"""Uploads (issue 15): throughput next to s3fs's own ``put``.

One checkpoint directory (``--size-mb``, default 300: a third ``model.safetensors``, two thirds
``optimizer.pt``, plus small JSON files; sparse files, so creating them costs nothing) sent to the same
local moto S3 server by ``s3fs.S3FileSystem.put(recursive=True)`` and by checkpoint-records (from
``record()`` until the record's upload is complete: staging, hashing, multipart upload, commit, the
record's new revision). Ratio = ours / put (goal >= 0.9). What storage adds to a save, and the time from a
save to its upload: ``hand_off.py --storage``.

Usage: python benchmarks/upload.py [--size-mb 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import s3fs
from common import LibraryLog, cell, machine_description, median, moto_storage, summarize, table

from checkpoint_records.recorder import CheckpointRecorder
from checkpoint_records.storage import StorageConfig
from checkpoint_records.storage.config import DEFAULT_PART_SIZE
from s3_server import MotoServer

MB = 10**6


def make_checkpoint(directory: Path, size: int) -> int:
    directory.mkdir(parents=True)
    for name, part in (("model.safetensors", size // 3), ("optimizer.pt", size - size // 3)):
        with open(directory / name, "wb") as handle:
            handle.truncate(part)
    for name in ("config.json", "trainer_state.json", "scheduler.pt", "rng_state.pth"):
        (directory / name).write_bytes(os.urandom(2000))
    return sum(path.stat().st_size for path in directory.iterdir())


def upload_with_put(fs: s3fs.S3FileSystem, checkpoint: Path, round_: int) -> float:
    start = time.perf_counter()
    fs.put(f"{checkpoint}/", f"bench/put-{round_}/", recursive=True)
    seconds = time.perf_counter() - start
    fs.rm(f"bench/put-{round_}", recursive=True)  # moto keeps objects in memory: free them
    return seconds


def upload_with_recorder(work: Path, config: StorageConfig, checkpoint: Path, round_: int) -> float:
    with CheckpointRecorder(
        store=work / f"store-{round_}", job_name=f"bench{round_}", storage=config
    ) as recorder:
        start = time.perf_counter()
        recorder.record(checkpoint, step=1)  # a hand-off: the record is stored (and queued) in the background
        assert recorder.drain(3600)
        left = recorder.uploads.flush(3600)
        seconds = time.perf_counter() - start
        record = recorder.last_record
        assert record is not None and left == 0
        stored = recorder.store.get(record.id)
    assert stored is not None and stored.record.status.upload is not None
    assert stored.record.status.upload.state == "uploaded"
    return seconds


def throughput(work: Path, server: MotoServer, size_mb: int, rounds: int, part_mb: int) -> list[list[str]]:
    """Alternating put / ours / ours / put ..., so drift on a shared machine hits both alike."""
    checkpoint = work / "run" / "checkpoint-1"
    total = make_checkpoint(checkpoint, size_mb * MB)
    config = moto_storage(server.endpoint, "bench", "ours", part_size=part_mb * 2**20)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": server.endpoint})
    seconds: dict[str, list[float]] = {"put": [], "ours": []}
    for round_ in range(rounds):
        for name in ("put", "ours") if round_ % 2 == 0 else ("ours", "put"):
            if name == "put":
                seconds[name].append(upload_with_put(fs, checkpoint, round_))
            else:
                seconds[name].append(upload_with_recorder(work, config, checkpoint, round_))
            if name == "ours":
                fs.rm("bench/ours", recursive=True)
    rate = {name: total / MB / median(values) for name, values in seconds.items()}
    return [
        [
            label,
            f"{total / MB:.0f}",
            str(rounds),
            " ".join(cell(value) for value in seconds[name]),
            cell(rate[name], 1),
            cell(rate[name] / rate["put"]),
        ]
        for label, name in (("s3fs put (recursive)", "put"), ("checkpoint-records upload", "ours"))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--part-mb", type=int, default=DEFAULT_PART_SIZE // 2**20, help="multipart part size, MiB"
    )
    args = parser.parse_args()
    print(machine_description(), f"s3fs {s3fs.__version__}", sep="; ")
    log = LibraryLog.install()
    server = MotoServer().start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            print("\nThroughput to a local moto S3 server (MB/s from the median time)\n")
            rows = throughput(work, server, args.size_mb, args.rounds, args.part_mb)
            print(table(["uploader", "MB", "runs", "seconds", "MB/s", "ratio"], rows))
    finally:
        server.stop()
    print("\nlibrary messages:", *(summarize(log.messages) or ["none"]), sep="\n  ")


if __name__ == "__main__":
    main()

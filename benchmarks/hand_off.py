"""What a save costs the training thread now that it is a hand-off, and how soon the record is durable
and delivered (issue 11's table).

Not a test. ``on_save`` of a real ``CheckpointRecordCallback`` is called directly (no training in
between, so the figures are the callback's alone) on checkpoint directories built for each case, with a
healthy loopback endpoint (``endpoints.py``, its own process) as the one sink:

* ``tiny``: a small checkpoint (config, a 40 kB safetensors file, trainer_state.json).
* ``500 MB`` / ``2 GB``: the same with a ``model.safetensors`` of that size, written (not fsynced) just
  before the saves, so its write-back is in flight while the background commits with fsync; every
  checkpoint of the case hard-links the same file, so the disk holds it once.
* ``20,000 files``: each checkpoint holds 20,000 small files, one save per second (can the background
  keep up?).
* ``100,000-entry log_history``: the state's log starts with 100,000 entries and grows by 100 per save.
* ``store locked``: another process holds the store's write lock (``BEGIN IMMEDIATE``) for ``--lock``
  seconds from the first save on.

For each save: the time inside ``on_save`` (training thread), the time from the start of ``on_save`` to the
record's commit (``Bookkeeper.store_record`` returning, in the background) and to its arrival at the endpoint.
Then ``import``: checkpoints recorded per second from a directory of ``--import-count`` Trainer checkpoints.

``--storage`` (issue 15) measures instead ``tiny`` and ``500 MB`` each with storage off and on
(``storage="s3://..."`` on a local moto S3 server, ``tests/s3_server.py``), and the time from the start of
``on_save`` to the record's upload revision (every file sent and committed). Uploads go one checkpoint at
a time, so a save waits for the uploads queued before it; the 500 MB case takes ``--upload-saves`` saves
(each one 500 MB more for the server to take).

    python benchmarks/hand_off.py             # 200 saves per case (20 at 20,000 files), 2 GB included
    python benchmarks/hand_off.py --quick     # 50 saves per case (5 at 20,000 files), no 2 GB
    python benchmarks/hand_off.py --storage --saves 50 --upload-saves 3 --interval 0.05
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import LibraryLog, cell, machine_description, median, moto_storage, percentile, summarize, table
from endpoints import Endpoints
from safetensors.torch import save_file
from transformers import TrainerControl, TrainerState, TrainingArguments

from checkpoint_records import CheckpointRecordCallback, CheckpointRecorder, HttpSink
from checkpoint_records.storage import StorageConfig
from s3_server import MotoServer

CONFIG = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "_name_or_path": "tiny-gpt2"}
#: Bounds the wait for uploads (the 500 MB ones take about 20 s each to moto on a 2-core machine).
UPLOAD_TIMEOUT = 600.0
LOCKER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("ROLLBACK")
"""


#: Builds a case in its work directory (where its weights are written).
CaseMaker = Callable[[Path], "Case"]
#: Writes a checkpoint's weights into its directory.
Filler = Callable[[Path], None]


@dataclass
class Case:
    name: str
    saves: int
    #: Files of a checkpoint besides config and state: writes them into the directory.
    fill: Filler
    interval: float = 0.0
    history: int = 0
    per_save_entries: int = 1
    lock_seconds: float = 0.0
    #: Where the checkpoints upload to; None: storage off.
    storage: StorageConfig | None = None


@dataclass
class Result:
    on_save: list[float] = field(default_factory=list)
    durable: list[float] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)
    uploaded: list[float] = field(default_factory=list)
    stored: int = 0
    messages: list[str] = field(default_factory=list)


def tiny_weights(directory: Path) -> None:
    save_file({"weight": torch.zeros(100, 100)}, str(directory / "model.safetensors"))


def big_weights(size: int, workdir: Path) -> Filler:
    """A real ``size``-byte safetensors file written now (dirty pages), hard-linked into each checkpoint."""
    source = workdir / f"weights-{size}.safetensors"
    rows = size // (4 * 4096)
    save_file({"weight": torch.zeros(rows, 4096)}, str(source))

    def fill(directory: Path) -> None:
        os.link(source, directory / "model.safetensors")

    return fill


def many_files(count: int) -> Filler:
    def fill(directory: Path) -> None:
        tiny_weights(directory)
        shards = directory / "shards"
        shards.mkdir()
        for index in range(count):
            (shards / f"part-{index:05d}.bin").write_bytes(b"x")

    return fill


def checkpoint(output: Path, step: int, fill: Filler, log: list[dict[str, Any]]) -> None:
    directory = output / f"checkpoint-{step}"
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(CONFIG))
    (directory / "trainer_state.json").write_text(
        json.dumps({"global_step": step, "epoch": step / 100, "log_history": log[-10:]})
    )
    fill(directory)


def run_case(case: Case, workdir: Path, endpoints: Endpoints, log: LibraryLog, interval: float) -> Result:
    result = Result()
    first_message = len(log.messages)
    output = workdir / "output"
    job_name = f"hand-off-{slug(case.name)}"
    callback = CheckpointRecordCallback(
        store=workdir / "store",
        sinks=[HttpSink(endpoints.healthy_url)],
        job_name=job_name,
        flush_timeout=60 if case.storage is None else UPLOAD_TIMEOUT,
        storage=case.storage,
    )
    recorder = callback.recorder
    durable_at: dict[int, float] = {}
    uploaded_at: dict[int, float] = {}
    store_record, store_put = recorder.books.store_record, recorder.store.put

    def stamped(record: Any, *args: Any, **options: Any) -> Any:
        stored = store_record(record, *args, **options)
        durable_at[record.training.step] = time.monotonic()
        return stored

    def stamped_put(record: Any, *args: Any, **options: Any) -> Any:
        """The upload lane stores the record's revision with its upload state."""
        stored = store_put(record, *args, **options)
        upload = record.status.upload
        if upload is not None and upload.state == "uploaded":
            uploaded_at.setdefault(record.training.step, time.monotonic())
        return stored

    recorder.books.store_record = stamped  # type: ignore[method-assign]
    recorder.store.put = stamped_put  # type: ignore[method-assign]
    args = TrainingArguments(output_dir=str(output), report_to=[], save_strategy="steps")
    history = [{"loss": 1.0 / (i + 1), "step": i, "epoch": i / 1000} for i in range(case.history)]
    state = TrainerState(global_step=0, max_steps=case.saves, log_history=history)
    control = TrainerControl()
    callback.on_train_begin(args, state, control)
    started: dict[int, float] = {}
    locker = None
    for index in range(case.saves + 1):  # save 0: an untimed warm-up (it hands over the prefilled log)
        if index == 1:
            recorder.drain(60)
            recorder.uploads.flush(UPLOAD_TIMEOUT)  # the warm-up's upload: no queue before the first
        step = case.history + index * case.per_save_entries
        for offset in range(case.per_save_entries):
            entry_step = step - case.per_save_entries + offset + 1
            state.log_history.append(
                {"loss": 1.0 / (entry_step + 1), "step": entry_step, "epoch": entry_step / 1000}
            )
        checkpoint(output, step, case.fill, state.log_history)
        if case.lock_seconds and index == 1:
            locker = subprocess.Popen(
                [sys.executable, "-c", LOCKER, str(workdir / "store" / "records.db"), str(case.lock_seconds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        state.global_step = step
        began = time.monotonic()
        callback.on_save(args, state, control)
        if index:
            result.on_save.append(time.monotonic() - began)
            started[step] = began
        time.sleep(case.interval or interval)
    callback.on_train_end(args, state, control)
    recorder.close()
    if locker is not None:
        locker.wait(timeout=case.lock_seconds + 30)
    deadline = time.monotonic() + 30
    arrivals: dict[str, float] = {}
    while len(arrivals) < case.saves and time.monotonic() < deadline:
        arrivals = {}
        for arrival in endpoints.arrivals():
            if arrival.name.startswith(f"{job_name}-checkpoint-"):
                arrivals.setdefault(arrival.name, arrival.at)
        time.sleep(0.1)
    for step, at in started.items():
        if step in durable_at:
            result.durable.append(durable_at[step] - at)
        name = f"{job_name}-checkpoint-{step}"
        if name in arrivals:
            result.delivered.append(arrivals[name] - at)
        if step in uploaded_at:
            result.uploaded.append(uploaded_at[step] - at)
    result.stored = len(set(started) & set(durable_at))
    result.messages = log.messages[first_message:]
    return result


def import_rate(count: int, workdir: Path) -> tuple[float, int]:
    """Checkpoints per second ``CheckpointRecorder.recover`` records from ``count`` Trainer checkpoints."""
    output = workdir / "import-output"
    log: list[dict[str, Any]] = []
    for step in range(1, count + 1):
        log.append({"loss": 1.0 / step, "step": step, "epoch": step / count})
        checkpoint(output, step, tiny_weights, log)
    recorder = CheckpointRecorder(store=workdir / "import-store", sinks=[])
    start = time.perf_counter()
    recorded = recorder.recover(output).records
    elapsed = time.perf_counter() - start
    recorder.close()
    return len(recorded) / elapsed, len(recorded)


def slug(label: str) -> str:
    """A case's label as a directory, job or bucket name."""
    return label.lower().replace(" ", "-").replace(",", "")


def storage_case(label: str, saves: int, fill: Callable[[Path], Filler], endpoint: str | None) -> CaseMaker:
    """A case of ``--storage``, uploading to a bucket of its own on ``endpoint`` (None: storage off)."""

    def make(work: Path) -> Case:
        storage = None if endpoint is None else moto_storage(endpoint, slug(label), "run")
        return Case(label, saves, fill(work), storage=storage)

    return make


def storage_cases(options: argparse.Namespace, server: MotoServer) -> list[tuple[str, CaseMaker]]:
    """tiny and 500 MB, each with storage off, then on."""
    sizes: list[tuple[str, int, Callable[[Path], Filler]]] = [
        ("tiny", options.saves, lambda work: tiny_weights),
        ("500 MB", options.upload_saves, lambda work: big_weights(500 * 2**20, work)),
    ]
    return [
        (label, storage_case(label, saves, fill, endpoint))
        for size, saves, fill in sizes
        for label, endpoint in ((f"{size}, storage off", None), (f"{size}, storage on", server.endpoint))
    ]


def hand_off_cases(options: argparse.Namespace) -> list[tuple[str, CaseMaker]]:
    many = max(options.saves // 10, 5)
    cases: list[tuple[str, CaseMaker]] = [
        ("tiny", lambda work: Case("tiny", options.saves, tiny_weights)),
        ("500 MB", lambda work: Case("500 MB", options.saves, big_weights(500 * 2**20, work))),
        ("2 GB", lambda work: Case("2 GB", options.saves, big_weights(2 * 2**30, work))),
        ("20,000 files", lambda work: Case("20,000 files", many, many_files(20_000), interval=1.0)),
        (
            "100,000-entry log_history",
            lambda work: Case("100k log", options.saves, tiny_weights, history=100_000, per_save_entries=100),
        ),
        ("store locked", lambda work: Case("locked", options.saves, tiny_weights, lock_seconds=options.lock)),
    ]
    return [(label, make) for label, make in cases if not (label == "2 GB" and options.no_2gb)]


def median_p99(values: list[float], scale: float, digits: int) -> str:
    if not values:
        return "-"
    return f"{cell(median(values) * scale, digits)} / {cell(percentile(values, 99) * scale, digits)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=200)
    parser.add_argument("--lock", type=float, default=5.0, help="seconds the other process holds the lock")
    parser.add_argument("--import-count", type=int, default=1000)
    parser.add_argument(
        "--interval", type=float, default=0.0, help="seconds between saves (0: back to back, the worst case)"
    )
    parser.add_argument("--no-2gb", action="store_true", help="leave out the 2 GB case")
    parser.add_argument("--quick", action="store_true", help="50 saves per case, no 2 GB")
    parser.add_argument(
        "--storage", action="store_true", help="tiny and 500 MB with storage off and on (moto S3 server)"
    )
    parser.add_argument("--upload-saves", type=int, default=3, help="saves of the 500 MB case with --storage")
    options = parser.parse_args(argv)
    if options.quick:
        options.saves, options.no_2gb = 50, True
    torch.set_num_threads(1)
    log = LibraryLog.install()
    print(machine_description())
    server = MotoServer().start() if options.storage else None
    try:
        with tempfile.TemporaryDirectory(prefix="hand-off-") as temp:
            root = Path(temp)
            cases = hand_off_cases(options) if server is None else storage_cases(options, server)
            rows = []
            checks = []
            with Endpoints(root / "arrivals.tsv") as endpoints:
                for label, make in cases:
                    work = root / slug(label)
                    work.mkdir()
                    case = make(work)
                    result = run_case(case, work, endpoints, log, options.interval)
                    shutil.rmtree(work, ignore_errors=True)
                    row = [
                        label,
                        str(len(result.on_save)),
                        cell(median(result.on_save) * 1e3, 3),
                        cell(percentile(result.on_save, 99) * 1e3, 3),
                        cell(max(result.on_save) * 1e3, 3),
                        median_p99(result.durable, 1e3, 1),
                        median_p99(result.delivered, 1e3, 1),
                        f"{result.stored}/{case.saves}, {len(result.delivered)}/{case.saves}",
                    ]
                    if server is not None:
                        row += [median_p99(result.uploaded, 1, 2), f"{len(result.uploaded)}/{case.saves}"]
                    rows.append(row)
                    checks.append((label, result.messages))
                    print(f"  {label}: on_save median {median(result.on_save) * 1e6:.0f} us", flush=True)
            rate, imported = import_rate(options.import_count, root) if server is None else (0.0, 0)
    finally:
        if server is not None:
            server.stop()
    header = [
        "case",
        "saves",
        "on_save median ms",
        "p99 ms",
        "max ms",
        "save->durable median / p99 ms",
        "save->delivered median / p99 ms",
        "stored, delivered",
    ]
    if server is not None:
        header += ["save->uploaded median / p99 s", "uploaded"]
    print("\nTime inside on_save on the training thread, and until the record is durable and delivered\n")
    print(table(header, rows))
    if server is None:
        print(f"\nimport: {imported} checkpoints recorded at {rate:,.0f} checkpoints/s")
    print("\nChecks (checkpoint-records messages, distinct, with counts):")
    for label, messages in checks:
        print(f"{label}:", *(summarize(messages) or ["none"]), sep="\n    ")
    return 0


if __name__ == "__main__":
    sys.exit(main())

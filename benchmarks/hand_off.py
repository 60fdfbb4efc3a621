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
record's commit (``_store_record`` returning, in the background) and to its arrival at the endpoint. Then
``import``: checkpoints recorded per second from a directory of ``--import-count`` Trainer checkpoints.

    python benchmarks/hand_off.py             # 200 saves per case (20 at 20,000 files), 2 GB included
    python benchmarks/hand_off.py --quick     # 50 saves per case (5 at 20,000 files), no 2 GB
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
from common import LibraryLog, cell, machine_description, median, percentile, summarize, table
from endpoints import Endpoints
from safetensors.torch import save_file
from transformers import TrainerControl, TrainerState, TrainingArguments

from checkpoint_records import CheckpointRecordCallback, CheckpointRecorder, HttpSink

CONFIG = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "_name_or_path": "tiny-gpt2"}
LOCKER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("ROLLBACK")
"""


@dataclass
class Case:
    name: str
    saves: int
    #: Files of a checkpoint besides config and state: writes them into the directory.
    fill: Callable[[Path], None]
    interval: float = 0.0
    history: int = 0
    per_save_entries: int = 1
    lock_seconds: float = 0.0


@dataclass
class Result:
    on_save: list[float] = field(default_factory=list)
    durable: list[float] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)
    stored: int = 0
    messages: list[str] = field(default_factory=list)


def tiny_weights(directory: Path) -> None:
    save_file({"weight": torch.zeros(100, 100)}, str(directory / "model.safetensors"))


def big_weights(size: int, workdir: Path) -> Callable[[Path], None]:
    """A real ``size``-byte safetensors file written now (dirty pages), hard-linked into each checkpoint."""
    source = workdir / f"weights-{size}.safetensors"
    rows = size // (4 * 4096)
    save_file({"weight": torch.zeros(rows, 4096)}, str(source))

    def fill(directory: Path) -> None:
        os.link(source, directory / "model.safetensors")

    return fill


def many_files(count: int) -> Callable[[Path], None]:
    def fill(directory: Path) -> None:
        tiny_weights(directory)
        shards = directory / "shards"
        shards.mkdir()
        for index in range(count):
            (shards / f"part-{index:05d}.bin").write_bytes(b"x")

    return fill


def checkpoint(output: Path, step: int, fill: Callable[[Path], None], log: list[dict[str, Any]]) -> None:
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
    job_name = f"hand-off-{case.name.replace(' ', '-').replace(',', '')}"
    callback = CheckpointRecordCallback(
        store=workdir / "store", sinks=[HttpSink(endpoints.healthy_url)], job_name=job_name, flush_timeout=60
    )
    durable_at: dict[int, float] = {}
    store_record = callback.recorder._store_record

    def stamped(record: Any, **options: Any) -> Any:
        stored = store_record(record, **options)
        durable_at[record.training.step] = time.monotonic()
        return stored

    callback.recorder._store_record = stamped  # type: ignore[method-assign]
    args = TrainingArguments(output_dir=str(output), report_to=[], save_strategy="steps")
    history = [{"loss": 1.0 / (i + 1), "step": i, "epoch": i / 1000} for i in range(case.history)]
    state = TrainerState(global_step=0, max_steps=case.saves, log_history=history)
    control = TrainerControl()
    callback.on_train_begin(args, state, control)
    started: dict[int, float] = {}
    locker = None
    for index in range(case.saves + 1):  # save 0: an untimed warm-up (it hands over the prefilled log)
        if index == 1:
            callback.recorder.drain(60)
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
    callback.recorder.close()
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
    recorded = recorder.recover(output)
    elapsed = time.perf_counter() - start
    recorder.close()
    return len(recorded) / elapsed, len(recorded)


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
    options = parser.parse_args(argv)
    if options.quick:
        options.saves, options.no_2gb = 50, True
    torch.set_num_threads(1)
    log = LibraryLog.install()
    print(machine_description())
    with tempfile.TemporaryDirectory(prefix="hand-off-") as temp:
        root = Path(temp)
        many = max(options.saves // 10, 5)
        cases = [
            ("tiny", lambda work: Case("tiny", options.saves, tiny_weights)),
            ("500 MB", lambda work: Case("500 MB", options.saves, big_weights(500 * 2**20, work))),
            ("2 GB", lambda work: Case("2 GB", options.saves, big_weights(2 * 2**30, work))),
            ("20,000 files", lambda work: Case("20,000 files", many, many_files(20_000), interval=1.0)),
            (
                "100,000-entry log_history",
                lambda work: Case(
                    "100k log", options.saves, tiny_weights, history=100_000, per_save_entries=100
                ),
            ),
            (
                "store locked",
                lambda work: Case("locked", options.saves, tiny_weights, lock_seconds=options.lock),
            ),
        ]
        rows = []
        checks = []
        with Endpoints(root / "arrivals.tsv") as endpoints:
            for label, make in cases:
                if label == "2 GB" and options.no_2gb:
                    continue
                work = root / label.replace(" ", "-").replace(",", "")
                work.mkdir()
                case = make(work)
                result = run_case(case, work, endpoints, log, options.interval)
                shutil.rmtree(work, ignore_errors=True)
                rows.append(
                    [
                        label,
                        str(len(result.on_save)),
                        cell(median(result.on_save) * 1e3, 3),
                        cell(percentile(result.on_save, 99) * 1e3, 3),
                        cell(max(result.on_save) * 1e3, 3),
                        f"{cell(median(result.durable) * 1e3, 1)} / {cell(percentile(result.durable, 99) * 1e3, 1)}",
                        f"{cell(median(result.delivered) * 1e3, 1)} / {cell(percentile(result.delivered, 99) * 1e3, 1)}"
                        if result.delivered
                        else "-",
                        f"{result.stored}/{case.saves}, {len(result.delivered)}/{case.saves}",
                    ]
                )
                checks.append((label, result.messages))
                print(f"  {label}: on_save median {median(result.on_save) * 1e6:.0f} us", flush=True)
        rate, imported = import_rate(options.import_count, root)
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
    print("\nTime inside on_save on the training thread, and until the record is durable and delivered\n")
    print(table(header, rows))
    print(f"\nimport: {imported} checkpoints recorded at {rate:,.0f} checkpoints/s")
    print("\nChecks (checkpoint-records messages, distinct, with counts):")
    for label, messages in checks:
        print(f"{label}:", *(summarize(messages) or ["none"]), sep="\n    ")
    return 0


if __name__ == "__main__":
    sys.exit(main())

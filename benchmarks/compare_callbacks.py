"""Side by side with the checkpoint callbacks users run today: what each costs training per save.

Issue 6's benchmark (not a test). One invocation trains the same tiny GPT-2 with the same ``save_steps``
under each configuration:

    baseline      no checkpoint callback
    local         CheckpointRecordCallback, local store only
    http-healthy  CheckpointRecordCallback + HttpSink to a local endpoint answering 200 (keep-alive)
    http-hanging  CheckpointRecordCallback + HttpSink to a local endpoint that never answers
                  (flush_timeout=0.5 s, so on_train_end waits at most that long)
    mlflow        transformers' MLflowCallback, HF_MLFLOW_LOG_ARTIFACTS=1, SQLite tracking store
    wandb         transformers' WandbCallback, WANDB_MODE=offline, WANDB_LOG_MODEL=checkpoint

Method. Each configuration lives in its own worker process (spawned once per checkpoint size), so each
has its own peak RSS and its own global state (an MLflow active run, a W&B run). The parent runs one
training per configuration per round, one at a time, rotating the starting configuration every round,
so machine drift spreads over all configurations. In the worker, the measured callback's ``on_save``,
``on_train_begin`` and ``on_train_end`` are wrapped on the instance with ``time.perf_counter``; wall
time is ``trainer.train()`` alone (model building excluded). End-to-end latency: the worker stamps
``time.monotonic()`` as ``on_save`` returns, the endpoint process stamps the arrival of the record with
the same ``metadata.name`` (CLOCK_MONOTONIC is system-wide on Linux).

Sizes: ``tiny`` is the example's 2-layer GPT-2 with full checkpoints (weights, optimizer, scheduler, RNG
states). ``500mb`` is the same model with its position-embedding table enlarged to 3.9M rows and frozen,
so ``model.safetensors`` is about 500 MB while a training step stays cheap; it saves with
``save_only_model=True`` (a 1 GB optimizer file per save would only add the same disk time to every
configuration). Nothing leaves the machine: W&B is offline (and its base URL points at a closed local
port), MLflow writes a SQLite file and an artifact folder in a temporary directory, the hub is offline.

    python benchmarks/compare_callbacks.py            # tiny: 5 rounds x 100 steps; 500mb: 3 x 30
    python benchmarks/compare_callbacks.py --quick    # tiny only, 2 rounds x 30 steps
"""

from __future__ import annotations

import argparse
import gc
import logging
import multiprocessing
import os
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import transformers
from common import LibraryLog, cell, machine_description, median, percentile, summarize, table
from endpoints import Endpoints, free_port
from train_tiny import TinyTextDataset, tiny_arguments, tiny_model, tiny_tokenizer
from transformers import GPT2LMHeadModel, PrinterCallback, Trainer, TrainerCallback

from checkpoint_records import CheckpointRecordCallback, HttpSink, RecordStore

CONFIGS = ("baseline", "local", "http-healthy", "http-hanging", "mlflow", "wandb")
OURS = ("local", "http-healthy", "http-hanging")
SIZES = ("tiny", "500mb")
#: Rows of the frozen position table: 3.9M x 32 floats = 500 MB of model.safetensors.
PADDED_POSITIONS = 3_906_250
HANGING_FLUSH_TIMEOUT = 0.5


@dataclass(frozen=True)
class Settings:
    """What every worker of one size needs; sent to the spawned process."""

    size: str
    max_steps: int
    save_steps: int
    healthy_url: str
    hanging_url: str
    root: Path


@dataclass
class RunResult:
    wall_s: float
    job_name: str = ""
    hooks_s: float = 0.0
    on_save_s: list[float] = field(default_factory=list)
    #: (checkpoint step, monotonic times on_save was called and returned), for our callback only.
    returned: list[tuple[int, float, float]] = field(default_factory=list)
    #: What checkpoint-records logged during the run (a lane that died, a save that failed, ...).
    messages: list[str] = field(default_factory=list)
    saves: int = 0
    #: Records in our store after the run, and of those the healthy endpoint received (None: not ours).
    stored: int | None = None
    arrived: int | None = None


@dataclass(frozen=True)
class Memory:
    own_mb: float
    helpers_mb: float


class CallbackTimer:
    """Wraps one callback instance's hooks (the Trainer looks them up by name) with perf_counter."""

    def __init__(self, callback: TrainerCallback, result: RunResult) -> None:
        self.callback, self.result = callback, result
        self._wrap("on_save", self._after_save)
        self._wrap("on_train_begin", self._after_hook)
        self._wrap("on_train_end", self._after_hook)

    def _wrap(self, hook: str, after: Callable[[float, int], None]) -> None:
        original: Callable[..., Any] = getattr(self.callback, hook)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                after(time.perf_counter() - start, args[1].global_step)

        setattr(self.callback, hook, timed)

    def _after_save(self, seconds: float, step: int) -> None:
        returned_at = time.monotonic()
        self.result.on_save_s.append(seconds)
        # perf_counter and monotonic are the same clock on Linux (CLOCK_MONOTONIC). The record itself is
        # built in the background: it is matched to its arrival by step, never waited for here.
        self.result.returned.append((step, returned_at - seconds, returned_at))

    def _after_hook(self, seconds: float, step: int) -> None:
        self.result.hooks_s += seconds


def build_model(size: str) -> GPT2LMHeadModel:
    if size == "tiny":
        return tiny_model()
    model = tiny_model(n_positions=PADDED_POSITIONS)
    model.transformer.wpe.weight.requires_grad_(False)
    return model


def quiet_and_offline(config: str, workdir: Path) -> None:
    """Environment of one worker: nothing reaches the network, no progress bars, its own directories."""
    os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", DO_NOT_TRACK="1")
    if config == "mlflow":
        os.environ.update(
            MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}",
            MLFLOW_EXPERIMENT_NAME="checkpoint-records-bench",
            HF_MLFLOW_LOG_ARTIFACTS="1",
            MLFLOW_DISABLE_TELEMETRY="true",
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
            MLFLOW_LOGGING_LEVEL="ERROR",  # mlflow sets its logger's level when imported
        )
    if config == "wandb":
        for name in ("DIR", "DATA_DIR", "CACHE_DIR", "CONFIG_DIR", "ARTIFACT_DIR"):
            os.environ[f"WANDB_{name}"] = str(workdir / f"wandb-{name.lower()}")
        os.environ.update(
            WANDB_MODE="offline",
            WANDB_LOG_MODEL="checkpoint",
            WANDB_PROJECT="checkpoint-records-bench",
            WANDB_BASE_URL=f"http://127.0.0.1:{free_port()}",  # were anything to try, it is refused locally
            WANDB_SILENT="true",
            WANDB_CONSOLE="off",
            WANDB_DISABLE_GIT="true",
            WANDB_DISABLE_CODE="true",
            WANDB_ERROR_REPORTING="false",
        )
    # One intra-op thread: on a small machine shared with other work, OpenMP's spinning threads make the
    # same step swing by 10x and more; one thread keeps the baseline steady (and leaves a core for
    # background work: our delivery thread, wandb-core, the endpoint process).
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("wandb").setLevel(logging.ERROR)


def make_callback(config: str, settings: Settings, run_dir: Path, job_name: str) -> TrainerCallback | None:
    if config == "baseline":
        return None
    if config in OURS:
        url = {"http-healthy": settings.healthy_url, "http-hanging": settings.hanging_url}.get(config)
        return CheckpointRecordCallback(
            store=run_dir / "store",
            sinks=[HttpSink(url)] if url else [],
            job_name=job_name,
            flush_timeout=HANGING_FLUSH_TIMEOUT if config == "http-hanging" else None,
        )
    from transformers.integrations import MLflowCallback, WandbCallback

    return MLflowCallback() if config == "mlflow" else WandbCallback()


def finish(config: str, callback: TrainerCallback | None, run_dir: Path) -> int | None:
    """After the timed run: end what the run left running; for ours, how many records were stored."""
    if config == "wandb":
        import wandb

        wandb.finish()
    if not isinstance(callback, CheckpointRecordCallback):
        return None
    callback.recorder.close()  # stops this run's delivery threads, so the next run is measured alone
    return len(RecordStore(run_dir / "store").records())


def train_once(
    config: str, settings: Settings, workdir: Path, round_: int, steps: int, log: LibraryLog
) -> RunResult:
    first_message = len(log.messages)
    run_dir = workdir / f"round-{round_}"
    job_name = f"{config}-{settings.size}-{round_}"
    callback = make_callback(config, settings, run_dir, job_name)
    result = RunResult(wall_s=0.0, job_name=job_name)
    if callback is not None:
        CallbackTimer(callback, result)
    args = tiny_arguments(
        str(run_dir / "output"),
        run_name=job_name,
        max_steps=steps,
        save_steps=settings.save_steps,
        logging_steps=settings.save_steps,
        save_total_limit=2,
        save_only_model=settings.size != "tiny",
    )
    trainer = Trainer(
        model=build_model(settings.size),
        args=args,
        train_dataset=TinyTextDataset(size=64),
        processing_class=tiny_tokenizer(),
        callbacks=[] if callback is None else [callback],
    )
    trainer.remove_callback(PrinterCallback)
    os.sync()  # the previous run's dirty pages (up to GBs at 500mb) must not be written back during this one
    start = time.perf_counter()
    trainer.train()
    result.wall_s = time.perf_counter() - start
    result.saves = steps // settings.save_steps
    result.stored = finish(config, callback, run_dir)
    shutil.rmtree(run_dir / "output")
    result.messages = log.messages[first_message:]
    # The timing wrappers make the callback part of a reference cycle that can hold the last model;
    # collect it now, or the next run's model would count twice in peak RSS.
    del trainer, callback
    gc.collect()
    return result


def _descendants(pid: int) -> list[int]:
    """Live descendant processes, from /proc/<pid>/task/*/children (Linux)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class HelperMemory(threading.Thread):
    """Peak total RSS of the worker's descendant processes, sampled every 0.1 s.

    Sampled because helpers come and go (MLflow's requirements-inference subprocess lives for a second):
    RUSAGE_CHILDREN would miss none of them, but it charges a forked child with its parent's pages, which
    makes it read as large as the worker itself.
    """

    def __init__(self) -> None:
        super().__init__(name="helper-memory", daemon=True)
        self.peak_mb = 0.0

    def run(self) -> None:
        while True:
            total = sum(_rss_mb(pid) for pid in _descendants(os.getpid()))
            self.peak_mb = max(self.peak_mb, total)
            time.sleep(0.1)


def worker(config: str, settings: Settings, connection: Connection) -> None:
    """One configuration's process: train once per round number received; None ends it."""
    workdir = settings.root / settings.size / config
    workdir.mkdir(parents=True)
    quiet_and_offline(config, workdir)
    log = LibraryLog.install()
    if config == "mlflow":
        import mlflow

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        mlflow.create_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"], str(workdir / "mlflow-artifacts"))
    # Warm-up, not reported: a process's first Trainer run pays one-time costs (lazy imports, first
    # kernels, W&B's service start) that would otherwise land on whichever configuration runs first.
    train_once(config, settings, workdir, -1, settings.save_steps, log)
    helpers = HelperMemory()
    helpers.start()
    connection.send("ready")
    while (round_ := connection.recv()) is not None:
        connection.send(train_once(config, settings, workdir, round_, settings.max_steps, log))
    own_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    connection.send(Memory(own_mb=own_mb, helpers_mb=helpers.peak_mb))


@dataclass
class SizeResults:
    runs: dict[str, list[RunResult]]
    memory: dict[str, Memory]
    #: Seconds from on_save being called, and from it returning, to the record's arrival.
    after_call_s: list[float]
    after_return_s: list[float]


def run_size(settings: Settings, configs: list[str], rounds: int, endpoints: Endpoints) -> SizeResults:
    context = multiprocessing.get_context("spawn")
    pipes: dict[str, Connection] = {}
    processes = []
    try:
        for config in configs:
            parent_end, child_end = context.Pipe()
            process = context.Process(target=worker, args=(config, settings, child_end), name=config)
            process.start()
            pipes[config] = parent_end
            processes.append(process)
        for config in configs:
            if pipes[config].recv() != "ready":
                raise RuntimeError(f"worker {config} did not start")
        results = run_rounds(settings, configs, rounds, endpoints, pipes)
        for config in configs:
            pipes[config].send(None)
            results.memory[config] = pipes[config].recv()
        return results
    finally:  # on an error too: a worker left waiting for its next round would keep the parent alive
        for pipe in pipes.values():
            pipe.close()  # a waiting worker's recv() ends with EOFError
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()


def run_rounds(
    settings: Settings, configs: list[str], rounds: int, endpoints: Endpoints, pipes: dict[str, Connection]
) -> SizeResults:
    """One training per configuration per round, one at a time, rotating which one starts the round."""
    results = SizeResults({config: [] for config in configs}, {}, [], [])
    for round_ in range(rounds):
        order = configs[round_ % len(configs) :] + configs[: round_ % len(configs)]
        for config in order:
            pipes[config].send(round_)
            result: RunResult = pipes[config].recv()
            results.runs[config].append(result)
            print(f"  {settings.size} round {round_ + 1}/{rounds} {config:13} wall {result.wall_s:7.2f} s")
            if config == "http-healthy":
                call, back = e2e_latencies(result, endpoints)  # also sets result.arrived
                results.after_call_s += call
                results.after_return_s += back
    return results


def e2e_latencies(result: RunResult, endpoints: Endpoints) -> tuple[list[float], list[float]]:
    """Seconds from on_save's call, and from its return, to the record's first arrival, per save (the
    record is built, stored and delivered in the background after on_save handed the save over)."""
    arrived: dict[int, float] = {}
    for arrival in endpoints.arrivals():
        step = arrival.name.rpartition("-checkpoint-")[2]
        if arrival.name.startswith(f"{result.job_name}-checkpoint-") and step.isdigit():
            arrived.setdefault(int(step), arrival.at)
    found = [(arrived[step], called, back) for step, called, back in result.returned if step in arrived]
    result.arrived = len(found)
    return [at - called for at, called, _ in found], [at - back for at, _, back in found]


def report(size: str, settings: Settings, rounds: int, results: SizeResults) -> str:
    baseline_walls = [run.wall_s for run in results.runs["baseline"]]
    baseline = median(baseline_walls)
    baseline_bare = median([run.wall_s - run.hooks_s for run in results.runs["baseline"]])
    rows = []
    for config, runs in results.runs.items():
        saves = [s for run in runs for s in run.on_save_s]
        ratios = [run.wall_s / baseline for run in runs]
        bare = median([(run.wall_s - run.hooks_s) / baseline_bare for run in runs])
        memory = results.memory[config]
        after_call = after_return = "-"
        if config == "http-healthy" and results.after_call_s:
            call = [value * 1e3 for value in results.after_call_s]
            back = [value * 1e3 for value in results.after_return_s]
            after_call = f"{cell(median(call))} / {cell(percentile(call, 99))}"
            after_return = f"{cell(median(back))} / {cell(percentile(back, 99))}"
        rows.append(
            [
                config,
                str(len(saves)) if config != "baseline" else "-",
                cell(median(saves) * 1e3) if saves else "-",
                cell(percentile(saves, 99) * 1e3) if saves else "-",
                cell(median([run.hooks_s for run in runs])) if config != "baseline" else "-",
                f"{median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})",
                f"{bare:.3f}",
                f"{memory.own_mb:,.0f}",
                f"{memory.helpers_mb:,.0f}",
                after_call,
                after_return,
            ]
        )
    header = [
        "config",
        "saves",
        "on_save median ms",
        "on_save p99 ms",
        "begin+end hooks s",
        "wall / baseline (range)",
        "excl. hooks",
        "peak RSS MB",
        "helper RSS MB",
        "e2e ms from call: median / p99",
        "from return",
    ]
    title = (
        f"{size}: {settings.max_steps} steps, save every {settings.save_steps}, {rounds} rounds; "
        f"baseline wall median {baseline:.2f} s (range {min(baseline_walls):.2f}-{max(baseline_walls):.2f})"
    )
    return f"{title}\n\n{table(header, rows)}\n{speedups(results)}{checks(results)}"


def checks(results: SizeResults) -> str:
    """Did our configurations do their job: every save stored, every record delivered, nothing logged?"""
    lines = []
    for config in OURS:
        runs = results.runs.get(config, [])
        if not runs:
            continue
        saves = sum(run.saves for run in runs)
        stored = sum(run.stored or 0 for run in runs)
        line = f"{config}: {stored}/{saves} saves recorded"
        if config == "http-healthy":
            line += f", {sum(run.arrived or 0 for run in runs)}/{saves} arrived at the endpoint"
        lines.append(line)
        messages = summarize([m for run in runs for m in run.messages]) or ["none"]
        lines += [f"    {message}" for message in messages]
    return "\nChecks (checkpoint-records messages, distinct, with counts):\n" + "\n".join(lines) + "\n"


def speedups(results: SizeResults) -> str:
    """How many times our slowest on_save median fits in MLflow's and W&B's."""
    ours = [median([s for run in results.runs[c] for s in run.on_save_s]) for c in OURS if c in results.runs]
    if not ours:
        return ""
    lines = []
    for other in ("mlflow", "wandb"):
        if other in results.runs:
            theirs = median([s for run in results.runs[other] for s in run.on_save_s])
            lines.append(
                f"{other} on_save median / slowest checkpoint-records median = {theirs / max(ours):,.0f}x"
            )
    return "\n" + "\n".join(lines) + "\n" if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated: tiny, 500mb")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated subset (baseline is kept)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per size (default: tiny 5, 500mb 3)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: tiny 100, 500mb 30)")
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny only, 2 rounds x 30 steps")
    options = parser.parse_args(argv)
    sizes = ["tiny"] if options.quick else options.sizes.split(",")
    configs = ["baseline", *(c for c in options.configs.split(",") if c != "baseline")]
    unknown = {*sizes} - {*SIZES} | {*configs} - {*CONFIGS}
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")

    print(machine_description())
    reports = []
    with tempfile.TemporaryDirectory(prefix="compare-callbacks-") as temp:
        root = Path(temp)
        with Endpoints(root / "arrivals.tsv") as endpoints:
            for size in sizes:
                rounds = options.rounds or (2 if options.quick else 5 if size == "tiny" else 3)
                steps = options.steps or (30 if options.quick else 100 if size == "tiny" else 30)
                settings = Settings(
                    size, steps, options.save_steps, endpoints.healthy_url, endpoints.hanging_url, root
                )
                results = run_size(settings, configs, rounds, endpoints)
                reports.append(report(size, settings, rounds, results))
    print()
    print("\n\n".join(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

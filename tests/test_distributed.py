"""Real multi-process runs: ``accelerate launch`` and ``torchrun`` on the CPU (gloo), two simulated nodes,
a run killed mid-way and resumed, and a plain accelerate loop, each against a real HTTP server on 127.0.0.1.

In every case: exactly one record per checkpoint (per node's copy when asked), made by one process once the
checkpoint is complete on disk, delivered once, never from another process or a fork.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from checkpoint_records import CheckpointRecorder, RecordStore
from checkpoint_records.record import CheckpointRecord
from commands import cli, finished, kill_tree, started
from http_server import Receiver, Reply, first_then, free_port
from stored_records import by_step, without_recovery_fields
from waiting import wait_until

TESTS = Path(__file__).resolve().parent
LAUNCHED_RUN = TESTS / "launched_run.py"
ACCELERATE_LOOP = TESTS.parent / "examples" / "accelerate_loop.py"
NAMES = {"out-checkpoint-2", "out-checkpoint-4", "out-checkpoint-6"}
HOST = socket.gethostname()
#: Seconds a launched run may take, start to exit, before its whole process tree is killed.
LAUNCH_TIMEOUT = 300


def accelerate_launch() -> list[str]:
    """Two processes on this machine; ``--multi_gpu`` is accelerate's DDP launcher, gloo on the CPU."""
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(free_port())),
    ]


def torchrun(processes: int = 2, nodes: int = 1, node_rank: int = 0, port: int = 0) -> list[str]:
    return [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)),
        *("--nnodes", str(nodes), "--node_rank", str(node_rank)),
        *("--master_addr", "127.0.0.1", "--master_port", str(port or free_port())),
    ]


def run_env(receiver: Receiver, **variables: str) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CHECKPOINT_RECORDS_SINKS": receiver.url,
        "CHECKPOINT_RECORDS_FLUSH_TIMEOUT": "10",
        **variables,
    }


def launch(launcher: Sequence[str], *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The launcher and every rank, bounded: a hang fails the test with the whole tree killed."""
    return finished(started([*launcher, *args], env, TESTS.parent), LAUNCH_TIMEOUT)


def launch_nodes(
    node_dirs: Sequence[Path], node_envs: Sequence[dict[str, str]], *flags: str
) -> list[subprocess.CompletedProcess[str]]:
    """One ``torchrun`` per simulated node, one process each, started together as two nodes would be."""
    port = free_port()
    running = [
        started(
            [*torchrun(1, len(node_dirs), rank, port), str(LAUNCHED_RUN), str(directory), *flags],
            env,
            TESTS.parent,
        )
        for rank, (directory, env) in enumerate(zip(node_dirs, node_envs, strict=True))
    ]
    try:
        return [finished(process, LAUNCH_TIMEOUT) for process in running]
    finally:  # one node hung: the other, waiting on it, goes too
        for process in running:
            kill_tree(process)


def records(home: Path) -> dict[str, CheckpointRecord]:
    stored = RecordStore(home).records()
    assert all(item.revision == 1 for item in stored), "a checkpoint was recorded twice"
    return {item.record.id: item.record for item in stored}


def files_on_disk(directory: str) -> set[str]:
    root = Path(directory)
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def delivered_once(receiver: Receiver, count: int) -> list[dict[str, object]]:
    """Waits for ``count`` records and for the receiver to be quiet (the runs have exited: nothing else
    can arrive), then checks every request was one record, once."""
    receiver.wait_for(count)
    wait_until(receiver.quiet, 30, "the receiver still handles a request of a run that has exited")
    assert len(receiver.requests) == count, [r.payload["metadata"]["name"] for r in receiver.requests]
    receiver.assert_idempotent()
    payloads = receiver.accepted_payloads()
    assert len({payload["metadata"]["id"] for payload in payloads}) == count
    return payloads


# --- the Trainer under several processes ----------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_record_each_checkpoint_once_after_every_rank_wrote_it(
    tmp_path: Path, isolated_store: Path
) -> None:
    """Rank 1 writes its rng_state_1.pth only after rank 0 reached on_save; DataLoader workers fork."""
    with Receiver() as receiver:
        run = launch(
            accelerate_launch(),
            str(LAUNCHED_RUN),
            str(tmp_path / "out"),
            *("--late-rank", "1", "--dataloader-workers", "2"),
            env=run_env(receiver),
        )
        assert run.returncode == 0, run.stderr[-3000:]
        payloads = delivered_once(receiver, 3)
    stored = records(isolated_store)
    assert {record.name for record in stored.values()} == NAMES
    for record in stored.values():
        files = {entry.path for entry in record.status.files}
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= files
        assert files == files_on_disk(record.spec.directory)
        assert record.training.world_size == 2 and record.training.node == HOST
        assert record.training.inference_ready, record.training.inference_ready_reasons
    assert {payload["metadata"]["id"] for payload in payloads} == set(stored)
    # Imported into a fresh store, the same records: worldSize 2 from the ranks' rng_state files. (The
    # base model: only the live run knows it when config.json does not say it, see test_recovery.)
    fresh = tmp_path / "fresh-store"
    imported = cli("import", str(tmp_path / "out"), "--store", str(fresh))
    assert imported.returncode == 0, imported.stderr
    live = {record.training.step: record for record in stored.values()}
    imported_records = by_step(fresh)
    assert sorted(imported_records) == sorted(live)
    for step, record in imported_records.items():
        assert record.training.world_size == 2 and record.training.recovered
        got, want = without_recovery_fields(record), without_recovery_fields(live[step])
        got["status"]["metadata"].pop("model"), want["status"]["metadata"].pop("model")
        assert got == want


@pytest.mark.slow
def test_two_nodes_on_shared_storage_one_record_from_the_global_main(tmp_path: Path) -> None:
    """Both nodes write one checkpoint directory (rank 1 its RNG state); node 1 never writes its store."""
    stores = [tmp_path / "node0-store", tmp_path / "node1-store"]
    with Receiver() as receiver:
        envs = [run_env(receiver, CHECKPOINT_RECORDS_HOME=str(home)) for home in stores]
        runs = launch_nodes([tmp_path / "out"] * 2, envs)
        assert [run.returncode for run in runs] == [0, 0], runs[0].stderr[-3000:] + runs[1].stderr[-3000:]
        delivered_once(receiver, 3)
    assert list(stores[1].iterdir()) == []  # checked writable, never written
    stored = records(stores[0])
    assert {record.name for record in stored.values()} == NAMES
    for record in stored.values():
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= {entry.path for entry in record.status.files}
        assert record.training.node == HOST and record.training.world_size == 2


@pytest.mark.slow
@pytest.mark.parametrize("every_node", [False, True], ids=["global-main", "record-every-node"])
def test_two_nodes_saving_on_each_node(tmp_path: Path, every_node: bool) -> None:
    """save_on_each_node: by default node 0's copy is recorded once; with record_every_node each node's
    copy is, told apart by node and id, under the same job (one job id, as a scheduler would give it)."""
    dirs = [tmp_path / "node0" / "out", tmp_path / "node1" / "out"]
    stores = [tmp_path / "node0-store", tmp_path / "node1-store"]
    with Receiver() as receiver:
        envs = [
            run_env(
                receiver,
                CHECKPOINT_RECORDS_HOME=str(home),
                CHECKPOINT_RECORDS_JOB_ID="multi-node-job",
                CHECKPOINT_RECORDS_RECORD_EVERY_NODE="1" if every_node else "0",
            )
            for home in stores
        ]
        runs = launch_nodes(dirs, envs, "--save-on-each-node")
        assert [run.returncode for run in runs] == [0, 0], runs[0].stderr[-3000:] + runs[1].stderr[-3000:]
        delivered_once(receiver, 6 if every_node else 3)
    assert all((directory / "checkpoint-6" / "trainer_state.json").is_file() for directory in dirs)
    if not every_node:
        assert list(stores[1].iterdir()) == []  # checked writable, never written
        stored = records(stores[0])
        assert {record.name for record in stored.values()} == NAMES
        assert {record.training.node for record in stored.values()} == {HOST}
        assert all(record.spec.directory.startswith(str(dirs[0])) for record in stored.values())
        return
    by_node = [records(home) for home in stores]
    assert not set(by_node[0]) & set(by_node[1])  # every id is a different record
    for node, (directory, stored) in enumerate(zip(dirs, by_node, strict=True)):
        assert {record.name for record in stored.values()} == NAMES
        assert {record.training.node for record in stored.values()} == {f"{HOST}/node{node}"}
        assert all(record.spec.directory.startswith(str(directory)) for record in stored.values())
        for record in stored.values():
            files = {entry.path for entry in record.status.files}
            assert files == files_on_disk(record.spec.directory) and f"rng_state_{node}.pth" in files
            # transformers 5 writes the weights on global rank 0 only, even with save_on_each_node: node 1's
            # copy is then described as it is, not ready.
            assert record.training.inference_ready == ("model.safetensors" in files)
    assert len({record.metadata.job_id for stored in by_node for record in stored.values()}) == 1


@pytest.mark.slow
def test_a_two_process_run_killed_mid_way_and_resumed(tmp_path: Path, isolated_store: Path) -> None:
    """Killed right after the save at step 4 with the endpoint down; resumed with it up: same job, no
    duplicate, step 6 recorded by the resumed run, and what the killed run left pending delivered."""
    receiver = Receiver()
    env = run_env(receiver)
    killed = launch(torchrun(), str(LAUNCHED_RUN), str(tmp_path / "out"), "--kill-after-save", "4", env=env)
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert not (tmp_path / "out" / "checkpoint-6").exists()
    saved_before = {path: path.stat().st_mtime_ns for path in (tmp_path / "out").rglob("*") if path.is_file()}
    before = records(isolated_store)
    # checkpoint-4 was handed over just before the kill: stored, or recorded from disk by the resumed run
    names = {record.name for record in before.values()}
    assert {"out-checkpoint-2"} <= names <= {"out-checkpoint-2", "out-checkpoint-4"}
    assert {delivery.state for delivery in RecordStore(isolated_store).outbox.deliveries()} == {"pending"}
    with receiver:
        resumed = launch(torchrun(), str(LAUNCHED_RUN), str(tmp_path / "out"), "--resume", env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        delivered_once(receiver, 3)
    after = records(isolated_store)
    assert {record.name for record in after.values()} == NAMES
    assert {record.metadata.job_id for record in after.values()} == {
        next(iter(before.values())).metadata.job_id
    }
    for record_id, record in before.items():
        assert after[record_id].status.created_at == record.status.created_at  # not recorded again
    assert receiver.accepted_names() == NAMES
    assert {delivery.state for delivery in RecordStore(isolated_store).outbox.deliveries()} == {"delivered"}
    # The resumed run went on from step 4: it rewrote nothing the killed run had saved.
    assert {path: path.stat().st_mtime_ns for path in saved_before} == saved_before


# --- plain loops ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_accelerate_loop_example_under_two_processes(tmp_path: Path, isolated_store: Path) -> None:
    project = tmp_path / "loop"
    with Receiver() as receiver:
        run = launch(
            accelerate_launch(), str(ACCELERATE_LOOP), "--project-dir", str(project), env=run_env(receiver)
        )
        assert run.returncode == 0, run.stderr[-3000:]
        delivered_once(receiver, 3)
    stored = sorted(records(isolated_store).values(), key=lambda record: record.training.step)
    assert [record.name for record in stored] == [
        "loop-step-2",
        "loop-step-4",
        "loop-step-6",
    ]
    for iteration, record in enumerate(stored):
        assert record.spec.directory == str(project / "checkpoints" / f"checkpoint_{iteration}")
        files = {entry.path for entry in record.status.files}
        assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl"} <= files
        training = record.training
        assert training.layout == "accelerate-state" and not training.inference_ready
        assert any("accelerate save_state" in reason for reason in training.inference_ready_reasons)
        assert training.train_loss is not None and training.eval_loss is not None
        assert training.world_size == 2 and training.model == "tiny-gpt2"


def test_a_plain_loop_records_with_one_call_and_flushes_on_exit(tmp_path: Path, isolated_store: Path) -> None:
    directory = tmp_path / "run" / "step-3"
    directory.mkdir(parents=True)
    (directory / "weights.pt").write_bytes(b"0" * 64)
    with Receiver() as receiver:
        with CheckpointRecorder(sinks=[receiver.url], flush_timeout=10) as recorder:
            recorder.record(
                directory,
                step=3,
                train_loss=torch.tensor(1.5),
                eval_loss=float("nan"),
                metrics={"accuracy": torch.tensor(0.25)},
            )
        assert len(receiver.accepted()) == 1  # delivered by close(), on leaving the block
    record = recorder.last_record
    assert record is not None and record.name == "run-step-3"
    assert record.training.train_loss == 1.5 and record.training.eval_loss is None
    assert record.training.non_finite == {"evalLoss": "NaN"}
    assert record.training.metrics == {"accuracy": 0.25}
    assert record.training.layout == "torch-save" and record.training.world_size == 1
    assert receiver.accepted_payloads()[0]["metadata"]["id"] == record.id


# --- forks ----------------------------------------------------------------------------------------------


def test_a_forked_child_never_sends(tmp_path: Path, isolated_store: Path) -> None:
    """A fork made while a record waits to be retried (a DataLoader worker, say) sends nothing, whatever it
    calls; the parent delivers the record once."""
    directory = tmp_path / "out" / "checkpoint-1"
    directory.mkdir(parents=True)
    with Receiver(first_then(1, Reply(503, b"", {"Retry-After": "2"}))) as receiver:
        recorder = CheckpointRecorder(sinks=[receiver.url], flush_timeout=10)
        recorder.record(directory, step=1)
        wait_until(lambda: receiver.requests, 30, "the record was never sent")  # refused: the lane waits 2 s
        assert len(receiver.requests) == 1
        child = os.fork()
        if child == 0:  # pragma: no cover - the child's coverage is not collected
            code = 1
            try:
                recorder.books.start_delivery()
                recorder.delivery.wake()
                recorder.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert len(receiver.requests) == 1
        recorder.close()
        assert [request.status for request in receiver.requests] == [503, 200]

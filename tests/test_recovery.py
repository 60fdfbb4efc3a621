"""The checkpoint on disk is the source of truth: a save handed over but never stored (the process was
killed in between) is recorded afterwards from its own files, once, by the job's next run, by ``flush``
or by ``import``; ``import`` records runs that never had the callback with the ids a live run gives."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from checkpoint_records import CheckpointRecordCallback, HttpSink, RecordStore
from checkpoint_records.history import metrics_at_step
from checkpoint_records.identity import checkpoint_id_for, default_job_key, job_id_for
from commands import cli, killed_run
from http_server import Receiver
from schema_files import validate
from stored_records import by_step, without_recovery_fields
from trainer_runs import tiny_trainer


@pytest.mark.parametrize("recovery", ["resumed run", "flush", "import"])
def test_a_save_killed_before_its_commit_is_recorded_once_from_disk(
    tmp_path: Path, isolated_store: Path, recovery: str
) -> None:
    output = tmp_path / "out"
    with Receiver() as receiver:
        env = {"CHECKPOINT_RECORDS_SINKS": receiver.url}
        killed = killed_run(output, env, "--kill-after-save", "4", "--hold-from", "4")
        assert killed.returncode == -9, killed.stderr[-2000:]
        assert 4 not in by_step(isolated_store)  # handed over, never stored
        if recovery == "resumed run":
            resumed = killed_run(output, env, "--resume")
            assert resumed.returncode == 0, resumed.stderr[-2000:]
            expected = [2, 4, 6]
            # The steps logged before the crash are in the store: the job's loss series keeps them.
            (job,) = RecordStore(isolated_store).jobs()
            assert [point.step for point in job.job.training_loss] == [1, 2, 3, 4, 5, 6]
        elif recovery == "flush":
            bare = cli("flush")  # no sink configured here: recorded, queued to the sink the run had
            assert "recorded 1 checkpoint from disk" in bare.stderr and "out-checkpoint-4" in bare.stderr
            queued = {
                d.sink for d in RecordStore(isolated_store).outbox.deliveries(by_step(isolated_store)[4].id)
            }
            assert queued == {HttpSink(receiver.url).key}
            flushed = cli("flush", "--sink", receiver.url)
            assert flushed.returncode == 0, flushed.stderr
            expected = [2, 4]
        else:
            imported = cli("import", str(output), "--sink", receiver.url)
            assert imported.returncode == 0, imported.stderr
            assert "imported 1 checkpoint as job out" in imported.stderr
            expected = [2, 4]
        again = cli("import", str(output), "--sink", receiver.url)  # nothing new: nothing added or sent
        assert again.returncode == 0 and "imported 0 checkpoints" in again.stderr, again.stderr
        receiver.wait_for(len(expected))
    records = by_step(isolated_store)
    assert sorted(records) == expected
    recovered = records[4]
    assert recovered.training.recovered and not records[2].training.recovered
    state = json.loads((output / "checkpoint-4" / "trainer_state.json").read_text())
    logged = metrics_at_step(state["log_history"], 4)
    assert (
        recovered.training.train_loss == logged.train_loss
        and recovered.training.eval_loss == logged.eval_loss
    )
    assert recovered.training.train_loss_step == 4 and recovered.training.eval_loss_step == 3
    assert recovered.training.inference_ready and recovered.status.status == "available"
    # As rich as the live records: the base model the job in the store knows, the class of the model.
    assert (recovered.training.model, recovered.training.architecture) == ("tiny-gpt2", "GPT2LMHeadModel")
    assert records[2].training.model == "tiny-gpt2"
    sent = Counter(request.payload["metadata"]["id"] for request in receiver.accepted())
    assert set(sent) == {record.id for record in records.values()}
    keys = {request.headers["Idempotency-Key"] for request in receiver.accepted()}
    assert len(keys) == len(records)  # each delivered once (a re-send after a kill reuses its key)
    receiver.assert_idempotent()


def test_import_of_a_run_without_the_callback_gives_what_the_live_callback_gave(
    tmp_path: Path, isolated_store: Path
) -> None:
    output = tmp_path / "out"
    tiny_trainer(output, [CheckpointRecordCallback()], save_total_limit=2).train()
    live = by_step(isolated_store)
    other = tmp_path / "other-store"
    imported = cli("import", str(output), "--store", str(other))
    assert imported.returncode == 0, imported.stderr
    again = by_step(other)
    assert sorted(again) == [4, 6]  # checkpoint-2 was rotated away before the import
    for step, record in again.items():
        assert record.training.recovered
        got, want = without_recovery_fields(record), without_recovery_fields(live[step])
        config = json.loads((output / f"checkpoint-{step}" / "config.json").read_text())
        if "_name_or_path" not in config:  # transformers 5 no longer saves it: only the live run knew it
            want["status"]["metadata"]["model"] = ""
        assert got == want  # all else equal: the import is as rich as the live record
    series = RecordStore(other).log_series(again[6].metadata.job_id)
    assert [entry["step"] for entry in series] == [
        entry["step"] for entry in RecordStore(isolated_store).log_series(again[6].metadata.job_id)
    ]
    job_id = again[6].metadata.job_id
    live_job, job = RecordStore(isolated_store).job(job_id), RecordStore(other).job(job_id)
    assert live_job is not None and job is not None, "an imported run has a job, as a live run does"
    assert (job.job.status, job.job.global_step, job.job.max_steps) == ("Success", 6, 6)
    assert [(p.step, p.loss) for p in job.job.training_loss] == [
        (p.step, p.loss) for p in live_job.job.training_loss
    ]
    written = {
        step: (output / f"checkpoint-{step}" / "trainer_state.json").stat().st_mtime for step in (4, 6)
    }
    assert (job.job.created_at, job.job.updated_at) == (written[4], written[6])
    assert {p.timestamp for p in job.job.training_loss} == {written[4], written[6]}
    assert "Success" in cli("jobs", "--store", str(other)).stdout

    shutil.rmtree(output / "checkpoint-6")  # stopped short of max_steps: not a success
    with Receiver() as receiver:
        third = tmp_path / "third-store"
        sink = f"training-job+{receiver.url}"
        stopped = cli("import", str(output), "--store", str(third), "--sink", sink)
        assert stopped.returncode == 0, stopped.stderr
        sent = validate(receiver.wait_for(1)[0].payload, "training-job-detail")
    assert (sent["status"], sent["progress"]) == ("Cancelled", round(100 * 4 / 6, 2))
    assert len(sent["training_loss"]) == 4  # steps 1 to 4: the log of checkpoint-4


def test_import_of_accelerate_save_state_folders_takes_the_step_from_the_folder(tmp_path: Path) -> None:
    project = tmp_path / "project"
    for index in range(2):
        folder = project / "checkpoints" / f"checkpoint_{index}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"0" * 16)
        (folder / "random_states_0.pkl").write_bytes(b"1")
    assert cli("import", str(project)).returncode == 0
    records = by_step(Path(str(tmp_path / "store")))
    job_id = job_id_for(default_job_key(str(project), None))
    assert {step: record.id for step, record in records.items()} == {
        index: checkpoint_id_for(job_id, index) for index in range(2)
    }
    assert all(record.training.layout == "accelerate-state" for record in records.values())
    missing = cli("import", str(tmp_path / "nothing-here"))
    assert missing.returncode == 1 and "no checkpoint-<step>" in missing.stderr

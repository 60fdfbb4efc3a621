"""What a new user meets in the CLI: the columns of ``list``, names that identify one record, exit codes
a script can rely on, names (not UUIDs) in ``flush``/``resend``, ``--version`` and the help."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

import checkpoint_records
from checkpoint_records import ConfigurationError, HttpSink, RecordStore
from checkpoint_records.cli import _message
from checkpoint_records.delivery import DeliveryWorker
from checkpoint_records.record import CheckpointRecord
from checkpoint_records.store import Outcome
from checkpoint_records.terminal import progress_bar
from commands import cli
from http_server import Receiver, Reply
from records_factory import make_record

ROOT = Path(__file__).resolve().parent.parent


def _same_name_other_job(record: CheckpointRecord, job_id: str) -> CheckpointRecord:
    """The record another job with the same run_name writes: same name, other job, other id."""
    metadata = record.metadata.model_copy(update={"job_id": job_id, "id": job_id[:8] + record.id[8:]})
    return record.model_copy(update={"metadata": metadata})


def test_reading_an_empty_home_creates_nothing_and_says_so(isolated_store: Path) -> None:
    listed = cli("list")
    assert listed.returncode == 0 and listed.stdout == ""
    assert listed.stderr.strip() == f"no records in {isolated_store / 'records.db'}"
    assert json.loads(cli("list", "--json").stdout) == []
    jobs = cli("jobs")
    assert jobs.returncode == 0 and jobs.stderr.strip() == f"no jobs in {isolated_store / 'records.db'}"
    assert cli("inspect", "x").returncode == 1
    flushed = cli("flush")
    assert flushed.returncode == 0 and "nothing to deliver" in flushed.stderr
    assert not isolated_store.exists()


def test_version_and_help_name_the_real_defaults(isolated_store: Path) -> None:
    version = cli("--version")
    assert (
        version.returncode == 0
        and version.stdout.strip() == f"checkpoint-records {checkpoint_records.__version__}"
    )
    assert checkpoint_records.__version__ == "0.1.0"
    helped = cli("list", "--help")
    assert f"here: {isolated_store})" in " ".join(helped.stdout.split()).replace("- ", "-")
    top = cli("--help").stdout
    assert "exit codes:\n  0  done" in top and "CHECKPOINT_RECORDS_FLUSH_TIMEOUT" in top
    bad = cli("flush", "--timeout", "inf")
    assert bad.returncode == 2 and "--timeout='inf'" in bad.stderr


def test_list_has_status_best_and_a_short_delivery_column_and_a_job_filter(isolated_store: Path) -> None:
    store = RecordStore(isolated_store)
    best = make_record(4, job="alpha")
    best = best.model_copy(
        update={
            "status": best.status.model_copy(
                update={"metadata": best.training.model_copy(update={"best": True, "train_loss_step": 3})}
            )
        }
    )
    store.put(make_record(2, job="alpha"), ["https://a.example/x"])
    store.put(best)
    store.put(make_record(2, job="beta"), ["https://a.example/x", "openai+https://b.example/y"])
    claim = store.outbox.claim_due("openai+https://b.example/y", "me", 60, 10)[0]

    long_error = "HTTP 400 Bad Request: " + "a very long reason " * 30
    store.outbox.settle([Outcome(claim, "dead", 0.0, long_error)])
    configured = {"CHECKPOINT_RECORDS_SINKS": "https://a.example/x,openai+https://b.example/y"}
    lines = cli("list", env=configured).stdout.splitlines()
    assert lines[0].split()[:5] == ["NAME", "STEP", "STATUS", "READY", "BEST"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["alpha-checkpoint-2"].endswith("0/1 sent, 1 pending")
    assert " * " in rows["alpha-checkpoint-4"] and rows["alpha-checkpoint-4"].endswith("local")
    assert " 1.0000@3 " in rows["alpha-checkpoint-4"]  # logged at step 3, not the checkpoint's 4
    assert " 1.0000 " in rows["alpha-checkpoint-2"] and "@" not in rows["alpha-checkpoint-2"]
    assert rows["beta-checkpoint-2"].endswith("0/2 sent, 1 pending, 1 dead")
    unconfigured = cli("list")  # a shell not given the sinks: what waits for them is said apart
    rows = {line.split()[0]: line for line in unconfigured.stdout.splitlines()[1:]}
    assert rows["beta-checkpoint-2"].endswith("0/2 sent, 1 dead, 1 not configured")
    assert "not configured here, with deliveries waiting: https://a.example/x" in unconfigured.stderr
    assert all(" available " in row for row in rows.values())
    # Short for a terminal: at most 125 columns here, CREATED being to the second (the one time format of
    # every view, 4 columns more than the minute it showed before); the reasons are in inspect.
    assert max(len(line) for line in lines) <= 125 and "very long" not in "".join(lines)
    inspected = cli("inspect", "beta-checkpoint-2").stdout
    assert f"# delivery to openai+https://b.example/y: dead: {long_error}" in inspected
    assert "# delivery to https://a.example/x: pending (due now)" in inspected
    only_beta = cli("list", "--job", "beta").stdout.splitlines()[1:]
    assert [line.split()[0] for line in only_beta] == ["beta-checkpoint-2"]
    by_id = cli("list", "--job", make_record(2, job="alpha").metadata.job_id, "--json")
    assert sorted(record["metadata"]["name"] for record in json.loads(by_id.stdout)) == [
        "alpha-checkpoint-2",
        "alpha-checkpoint-4",
    ]
    assert "no records of job 'gamma'" in cli("list", "--job", "gamma").stderr


def test_a_name_used_by_two_jobs_is_ambiguous_until_the_job_is_said(isolated_store: Path) -> None:
    store = RecordStore(isolated_store)
    first = make_record(2, job="run")
    second = _same_name_other_job(first, "f" * 8 + first.metadata.job_id[8:])
    store.put(first)
    store.put(second)
    listing = cli("list").stdout.splitlines()
    assert listing[0].split()[:2] == ["NAME", "JOB"]
    assert sorted(line.split()[1] for line in listing[1:]) == sorted([first.metadata.job_id[:8], "ffffffff"])
    ambiguous = cli("inspect", "run-checkpoint-2")
    assert ambiguous.returncode == 1 and ambiguous.stdout == ""
    assert "names 2 records" in ambiguous.stderr
    for record in (first, second):
        assert f"{record.metadata.job_id[:8]}/run-checkpoint-2" in ambiguous.stderr
        assert record.id in ambiguous.stderr
    for text, expected in (
        (f"{first.metadata.job_id[:8]}/run-checkpoint-2", first),
        (f"{second.metadata.job_id}/run-checkpoint-2", second),
        (second.id, second),
    ):
        shown = cli("inspect", text, "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["metadata"]["id"] == expected.id
    assert cli("inspect", "run/run-checkpoint-2").returncode == 1  # the job name is shared too
    assert cli("resend", "run-checkpoint-2").returncode == 1


def test_flush_and_resend_exit_codes_and_names(tmp_path: Path, isolated_store: Path) -> None:
    rejected = Reply(400, b'{"error": "no thanks"}')
    accept = {"alpha-checkpoint-2"}
    receiver = Receiver(
        lambda index, request: Reply() if request.payload["metadata"]["name"] in accept else rejected
    )
    store = RecordStore(isolated_store)
    for record in (make_record(2, job="alpha"), make_record(4, job="alpha"), make_record(6, job="alpha")):
        store.put(record, [receiver.url])
    with receiver:
        flushed = cli("flush", "--sink", receiver.url)
        assert flushed.returncode == 1, flushed.stderr  # two of what it was asked to deliver were rejected
        assert "delivered 1, rejected 2, still pending 0" in flushed.stderr
        assert f"alpha-checkpoint-4 -> {receiver.url}: dead: HTTP 400" in flushed.stderr
        assert make_record(4, job="alpha").id not in flushed.stderr  # names, not UUIDs
        again = cli("flush", "--sink", receiver.url)
        assert again.returncode == 0 and "nothing to deliver" in again.stderr  # nothing asked
        assert "delivering" not in again.stderr  # no progress bar for 0 items
        accept.add("alpha-checkpoint-4")
        resent = cli("resend", "alpha-checkpoint-4", "--sink", receiver.url)
        assert resent.returncode == 0, (
            resent.stderr
        )  # what it was asked is delivered; checkpoint-6 is not its business
        assert "re-sending 1 rejected delivery" in resent.stderr
        still_rejected = cli("resend", "--sink", receiver.url)
        assert still_rejected.returncode == 1 and "alpha-checkpoint-6 ->" in still_rejected.stderr
    assert sorted(request.payload["metadata"]["name"] for request in receiver.accepted()) == [
        "alpha-checkpoint-2",
        "alpha-checkpoint-4",
    ]


def test_one_attempt_is_said_in_the_singular(isolated_store: Path) -> None:
    store = RecordStore(isolated_store)
    store.put(make_record(2), ["https://a.example/x"])
    claim = store.outbox.claim_due("https://a.example/x", "me", 60, 10)[0]
    store.outbox.settle([Outcome(claim, "pending", 0.0, "connection refused")])
    inspected = cli("inspect", "job-checkpoint-2").stdout
    assert "pending (due now, 1 attempt: connection refused)" in inspected


def test_an_error_that_names_the_program_is_not_prefixed_twice() -> None:
    assert (
        _message(ConfigurationError("checkpoint-records cannot write")) == "checkpoint-records cannot write"
    )
    assert _message(ConfigurationError("bad value")) == "checkpoint-records: bad value"


def test_delivery_logs_name_records_and_say_when_a_sink_recovers(
    isolated_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="checkpoint_records")
    store = RecordStore(isolated_store)
    busy, rejected = Reply(503, b"busy", {"Retry-After": "0.01"}), Reply(400, b'{"error": "no"}')
    script = [busy, Reply(), rejected]
    with Receiver(lambda index, request: script[index] if index < len(script) else Reply()) as receiver:
        for step in (2, 4):
            store.put(make_record(step), [receiver.url])
        worker = DeliveryWorker(store, [HttpSink(receiver.url)])
        worker.start()
        try:
            result = worker.flush(10)
        finally:
            worker.close()
    assert (result.delivered, result.dead, result.pending) == (1, 1, 0)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert re.search(
        rf"{re.escape(receiver.url)} is accepting records again \(record job-checkpoint-[24] delivered; "
        r"failures before it: 1\)",
        text,
    ), text
    assert re.search(rf"{re.escape(receiver.url)} rejected record job-checkpoint-[24]: HTTP 400", text), text
    assert make_record(2).id not in text and make_record(4).id not in text


def test_records_of_an_accelerate_loop_are_named_by_step_and_keep_their_folder(
    tmp_path: Path, isolated_store: Path
) -> None:
    project = tmp_path / "loop"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "accelerate_loop.py"), "--project-dir", str(project),
         "--max-steps", "4"],
        capture_output=True, text=True, timeout=300, cwd=ROOT / "examples",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for iteration, step in enumerate((2, 4)):
        shown = json.loads(cli("inspect", f"loop-step-{step}", "--json").stdout)
        assert shown["spec"]["directory"] == str(project / "checkpoints" / f"checkpoint_{iteration}")
        assert shown["status"]["metadata"]["step"] == step


def test_the_progress_bar_is_tqdm_on_a_terminal_and_absent_for_nothing() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with progress_bar(3, screen) as bar:
        bar.update(3)
    assert isinstance(bar, tqdm) and "3/3" in screen.getvalue()
    for total, stream in ((0, Terminal()), (3, io.StringIO())):  # nothing to send; not a terminal
        with progress_bar(total, stream) as bar:
            bar.update(total)
        assert stream.getvalue() == ""

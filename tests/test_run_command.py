"""``checkpoint-records run -- COMMAND``: the command's own exit status and signals, settings checked before
it starts, and TRL's own ``trl sft`` launching two processes with ``accelerate launch``, recorded."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from commands import ANNOUNCEMENT, cli, finished, job_statuses, started, stored_names
from http_server import free_port
from tiny import WORDS, save_tiny_pretrained

PYTHON = [sys.executable, "-c"]
RUN = [sys.executable, "-m", "checkpoint_records.cli", "run", "--"]


def test_run_exits_as_its_command_did_and_says_where_records_go_once(isolated_store: Path) -> None:
    result = cli("run", "--", *PYTHON, "raise SystemExit(3)")
    assert result.returncode == 3
    assert result.stderr.count(ANNOUNCEMENT) == 1, result.stderr
    assert str(isolated_store / "records.db") in result.stderr


def test_a_command_killed_by_a_signal_ends_run_by_that_signal() -> None:
    result = cli("run", "--", *PYTHON, "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert result.returncode == -signal.SIGTERM


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_sent_to_run_is_the_commands(sent: signal.Signals) -> None:
    """``run`` becomes the command (exec): a signal sent to its process id reaches the command, which
    ends as it would alone (Python dies of an uncaught KeyboardInterrupt by SIGINT)."""
    waiting = "import sys; print('ready', flush=True); sys.stdin.read()"
    with subprocess.Popen(
        [*RUN, *PYTHON, waiting],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        process.send_signal(sent)
        assert process.wait(timeout=60) == -sent


def test_bad_settings_stop_run_before_the_command_starts(tmp_path: Path) -> None:
    started = tmp_path / "started"
    touch = f"open({str(started)!r}, 'w').close()"
    result = cli("run", "--", *PYTHON, touch, env={"CHECKPOINT_RECORDS_FLUSH_TIMEOUT": "soon"})
    assert result.returncode == 2 and "CHECKPOINT_RECORDS_FLUSH_TIMEOUT='soon'" in result.stderr
    result = cli("run", "--sink", "https://[::1", "--", *PYTHON, touch)
    assert result.returncode == 2 and "is not a valid URL" in result.stderr
    assert not started.exists() and ANNOUNCEMENT not in result.stderr


def test_run_without_a_command_or_with_one_that_does_not_exist() -> None:
    result = cli("run")
    assert result.returncode == 2 and "run needs a command" in result.stderr
    result = cli("run", "--", "no-such-command-checkpoint-records")
    assert (
        result.returncode == 127 and "no-such-command-checkpoint-records: command not found" in result.stderr
    )


def test_run_hands_its_options_and_the_attach_setting_to_the_command(tmp_path: Path) -> None:
    show = (
        "import json, os; print(json.dumps({key: value for key, value in os.environ.items() "
        "if key.startswith('CHECKPOINT_RECORDS_')}))"
    )
    store, sink = tmp_path / "elsewhere", "http://127.0.0.1:9/v1/checkpoints"
    result = cli("run", "--store", str(store), "--sink", sink, "--", *PYTHON, show)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "CHECKPOINT_RECORDS_HOME": str(store),
        "CHECKPOINT_RECORDS_SINKS": sink,
        "CHECKPOINT_RECORDS_ATTACH": "True",
    }
    assert f"in {store / 'records.db'}, delivered to {sink}" in result.stderr


@pytest.mark.slow
def test_trl_sft_under_accelerate_launch_with_two_processes_is_recorded(
    tmp_path: Path, isolated_store: Path
) -> None:
    """TRL's own command, unchanged: ``trl sft`` runs ``accelerate launch`` (its launcher options are
    accelerate's), which starts two processes on the CPU (gloo), each with an ``SFTTrainer``."""
    model = save_tiny_pretrained(tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    rows = random.Random(0)
    lines = [json.dumps({"text": " ".join(rows.choice(WORDS) for _ in range(8))}) for _ in range(16)]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    launcher = ["--num_processes", "2", "--multi_gpu", "--num_machines", "1", "--mixed_precision", "no"]
    launcher += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
    sft = [
        "--model_name_or_path",
        str(model),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    sft += [
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--max_length",
        "16",
    ]
    sft += ["--use_cpu", "true", "--bf16", "false", "--disable_tqdm", "true", "--logging_steps", "1"]
    offline = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "cache"),
    }
    # Bounded like every launch: a hang kills the whole tree, ranks in sessions of their own included.
    result = finished(
        started(
            [*RUN, str(Path(sys.executable).parent / "trl"), "sft", *launcher, *sft],
            {**os.environ, **offline, "OMP_NUM_THREADS": "1"},
        ),
        600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count(ANNOUNCEMENT) == 1
    assert stored_names(isolated_store) == ["out-checkpoint-2", "out-checkpoint-4"]
    assert job_statuses(isolated_store) == ["Success"]

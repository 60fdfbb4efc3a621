"""No line of code: ``report_to=["checkpoint-records"]``, ``CHECKPOINT_RECORDS_ATTACH`` (what ``run`` sets)
and the start-up hook behind both, in real Trainer runs here and in a script run as it is."""

from __future__ import annotations

import base64
import hashlib
import json
import runpy
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from transformers import Trainer, TrainerCallback

from checkpoint_records import CheckpointRecordCallback, ConfigurationError
from checkpoint_records.attach import HOOKED, AttachedCallback
from commands import ANNOUNCEMENT, job_statuses, stored_names
from trainer_runs import tiny_trainer

TESTS = Path(__file__).resolve().parent
PLAIN_SCRIPT = TESTS / "plain_script.py"
BUILD_BACKEND = TESTS.parent / "build_backend" / "backend.py"


def ours(trainer: Trainer) -> list[TrainerCallback]:
    return [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, CheckpointRecordCallback)]


def plain_script(output_dir: Path, *flags: str, under_run: bool = False) -> list[str]:
    """``tests/plain_script.py`` (two steps, one save) run as it is, or under ``checkpoint-records run``;
    the class names of its Trainer's callbacks."""
    command = [sys.executable, str(PLAIN_SCRIPT), "--output_dir", str(output_dir)]
    command += [
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
        *flags,
    ]
    if under_run:
        command = [sys.executable, "-m", "checkpoint_records.cli", "run", "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(ANNOUNCEMENT) == (1 if under_run else 0), result.stderr[-3000:]
    names: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return names


def test_the_start_up_hook_waits_for_the_trainer_and_imports_nothing_before() -> None:
    probe = (
        "import json, sys; print(json.dumps([sorted(name for name in sys.modules if name.split('.')[0] in "
        "('transformers', 'torch', 'typing')), [type(finder).__name__ for finder in sys.meta_path]]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    loaded, finders = json.loads(result.stdout)
    assert loaded == [] and "TrainerWatch" in finders, result.stderr
    assert getattr(Trainer.train, HOOKED)  # this process imported transformers.trainer: hooked


def test_the_installed_hook_is_the_build_backends_line_listed_for_uninstall() -> None:
    """pip installed ``checkpoint_records.pth`` (regular or editable wheel) with the line the backend
    writes, and its RECORD entry (hash, size) matches the file, so ``pip uninstall`` removes it."""
    [pth] = [
        file for file in metadata.files("checkpoint-records") or [] if file.name == "checkpoint_records.pth"
    ]
    content = Path(str(pth.locate())).read_bytes()
    assert (
        content == runpy.run_path(str(BUILD_BACKEND))["LINE"]
        and pth.size == len(content)
        and pth.hash is not None
    )
    digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
    assert (pth.hash.mode, pth.hash.value) == ("sha256", digest)


def test_attach_gives_a_trainer_one_callback_that_records_every_checkpoint(
    tmp_path: Path, isolated_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHECKPOINT_RECORDS_ATTACH", "1")
    trainer = tiny_trainer(tmp_path / "out", [])
    trainer.train()
    assert [type(callback) for callback in ours(trainer)] == [AttachedCallback]
    assert stored_names(isolated_store) == ["out-checkpoint-2", "out-checkpoint-4", "out-checkpoint-6"]
    assert job_statuses(isolated_store) == ["Success"]


def test_report_to_builds_the_callback_with_the_trainer_as_any_integration(
    tmp_path: Path, isolated_store: Path
) -> None:
    trainer = tiny_trainer(tmp_path / "out", [], max_steps=2, report_to="checkpoint-records")
    assert [type(callback) for callback in ours(trainer)] == [AttachedCallback]
    trainer.train()
    assert stored_names(isolated_store) == ["out-checkpoint-2"]


@pytest.mark.parametrize("asked_by", ["attach", "report_to"])
@pytest.mark.parametrize("given", ["instance", "class", "add_callback"])
def test_a_script_that_adds_the_callback_itself_keeps_its_own_alone(
    given: str, asked_by: str, tmp_path: Path, isolated_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides: dict[str, Any] = {"max_steps": 2}
    if asked_by == "attach":
        monkeypatch.setenv("CHECKPOINT_RECORDS_ATTACH", "1")
    else:
        overrides["report_to"] = ["checkpoint-records"]
    own = CheckpointRecordCallback() if given != "class" else None
    callbacks: list[Any] = {"instance": [own], "class": [CheckpointRecordCallback], "add_callback": []}[given]
    trainer = tiny_trainer(tmp_path / "out", callbacks, **overrides)
    if given == "add_callback":
        trainer.add_callback(own)
    trainer.train()
    [kept] = ours(trainer)
    assert type(kept) is CheckpointRecordCallback and (own is None or kept is own)
    assert stored_names(isolated_store) == ["out-checkpoint-2"]


def test_a_trainer_nobody_asked_records_of_is_left_alone(tmp_path: Path, isolated_store: Path) -> None:
    trainer = tiny_trainer(tmp_path / "out", [], max_steps=2)
    trainer.train()
    assert ours(trainer) == [] and not isolated_store.exists()


def test_a_bad_attach_value_stops_training_before_its_first_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHECKPOINT_RECORDS_ATTACH", "maybe")
    trainer = tiny_trainer(tmp_path / "out", [], max_steps=2)
    with pytest.raises(ConfigurationError, match="CHECKPOINT_RECORDS_ATTACH='maybe' is not a boolean"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_run_around_a_script_that_adds_the_callback_itself_keeps_one(
    tmp_path: Path, isolated_store: Path
) -> None:
    callbacks = plain_script(tmp_path / "out", "--own", "instance", under_run=True)
    assert callbacks.count("CheckpointRecordCallback") == 1 and "AttachedCallback" not in callbacks
    assert stored_names(isolated_store) == ["out-checkpoint-2"]


def test_report_to_on_the_command_line_of_an_hf_argument_parser_script(
    tmp_path: Path, isolated_store: Path
) -> None:
    callbacks = plain_script(tmp_path / "out", "--report_to", "checkpoint-records")
    assert callbacks.count("AttachedCallback") == 1 and "CheckpointRecordCallback" not in callbacks
    assert stored_names(isolated_store) == ["out-checkpoint-2"]
    assert job_statuses(isolated_store) == ["Success"]

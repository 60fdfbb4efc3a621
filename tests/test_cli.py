"""The CLI on a store written by a real Trainer run: list, list --json, inspect as YAML and JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from checkpoint_records import CheckpointRecordCallback
from checkpoint_records.terminal import human_size, human_time
from commands import cli
from schema_files import load_schema
from trainer_runs import tiny_trainer

ROOT = Path(__file__).resolve().parent.parent
FLEXAI_SCHEMA = load_schema("flexai-checkpoint")


@pytest.fixture
def trained_store(tmp_path: Path, isolated_store: Path) -> Path:
    tiny_trainer(tmp_path / "run", [CheckpointRecordCallback()]).train()
    return isolated_store


def test_list_shows_one_line_per_record(trained_store: Path) -> None:
    result = cli("list", "--store", str(trained_store))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == [
        "NAME", "STEP", "STATUS", "READY", "BEST", "LOSS", "EVAL", "SIZE", "CREATED", "DELIVERY"
    ]  # fmt: skip
    assert [line.split()[:4] for line in lines[1:]] == [
        [f"run-checkpoint-{n}", str(n), "available", "yes"] for n in (2, 4, 6)
    ]
    assert all(line.endswith("local") for line in lines[1:])
    assert f"3 records in {trained_store / 'records.db'}" in result.stderr


def test_inspect_json_validates_against_flexai_schema_and_matches_yaml(trained_store: Path) -> None:
    listing = cli("--store", str(trained_store), "list", "--json")
    records = json.loads(listing.stdout)
    assert len(records) == 3
    for record in records:
        name = record["metadata"]["name"]
        as_json = cli("inspect", name, "--json", "--store", str(trained_store))
        assert as_json.returncode == 0, as_json.stderr
        document = json.loads(as_json.stdout)  # exactly one JSON document on stdout
        jsonschema.validate(document, FLEXAI_SCHEMA, format_checker=jsonschema.FormatChecker())
        assert document == record
        as_yaml = yaml.safe_load(cli("inspect", name, "--store", str(trained_store)).stdout)
        document["status"]["size"] = human_size(document["status"]["size"])
        for entry in document["status"]["files"]:
            entry["size"] = human_size(entry["size"])
        for key in ("createdAt", "updatedAt"):
            document["status"][key] = human_time(document["status"][key])
        assert as_yaml == document


def test_inspect_unknown_name_fails_clearly(trained_store: Path) -> None:
    result = cli("inspect", "nope", "--store", str(trained_store))
    assert result.returncode == 1
    assert "no record named 'nope'" in result.stderr and result.stdout == ""


def test_human_sizes() -> None:
    assert human_size(999) == "999 B"
    assert human_size(343_790_000) == "343.79 MB"
    assert human_size(2_500_000_000) == "2.50 GB"


def test_the_example_trains_for_real_and_prints_the_list(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples/train_tiny.py"),
            "--output-dir",
            str(tmp_path / "out"),
            "--store",
            str(tmp_path / "records"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = [
        line.split()[0] for line in result.stdout.splitlines() if line.startswith("tiny-run-checkpoint-")
    ]
    assert names == [f"tiny-run-checkpoint-{n}" for n in (4, 8, 12)]

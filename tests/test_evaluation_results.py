"""Reading what an evaluator reported and putting it on the record: the pure functions, on the shapes
evaluators really write (a JSON line after logs, nested objects, lm-evaluation-harness's results file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from checkpoint_records.errors import ConfigurationError
from checkpoint_records.evaluation.results import (
    BestBy,
    MetricsError,
    error_tail,
    headline,
    metrics_of,
    report_from,
    with_evaluation,
)
from checkpoint_records.evaluation.runner import Command
from checkpoint_records.formats.openai import OpenAIFormat
from checkpoint_records.record import Evaluation, utc_now_iso
from checkpoint_records.redaction import Redactor
from records_factory import make_record
from schema_files import validate

#: What lm-evaluation-harness 0.4 writes to <output_path>/<model>/results_<time>.json (abridged).
HARNESS = {
    "results": {
        "tiny_words": {"alias": "tiny_words", "acc,none": 0.5, "acc_stderr,none": 0.28, "sample_len": 4}
    },
    "groups": {},
    "configs": {"tiny_words": {"task": "tiny_words"}},
    "versions": {"tiny_words": 1.0},
    "n-shot": {"tiny_words": 0},
    "config": {"model": "hf", "batch_size": 4},
}


def test_stdout_json_after_log_lines_and_nested_objects_become_slash_names() -> None:
    report = report_from('loading...\n{"ignored": 1} not json\n{"loss": 2.5, "scores": {"bleu": 31}}\n', None)
    metrics, non_finite = metrics_of(report)
    assert metrics == {"loss": 2.5, "scores/bleu": 31.0} and non_finite == {}


def test_the_harness_results_file_is_found_in_its_folder_and_read_as_task_metrics(tmp_path: Path) -> None:
    folder = tmp_path / "output" / "__tmp__model"
    folder.mkdir(parents=True)
    (folder / "results_2026-01-01T00-00-00.json").write_text(json.dumps(HARNESS))
    metrics, _ = metrics_of(report_from("| Tasks |Version|...", tmp_path / "output"))
    assert metrics == {"tiny_words/acc": 0.5, "tiny_words/acc_stderr": 0.28, "tiny_words/sample_len": 4.0}
    assert headline(Evaluation(state="succeeded", metrics=metrics)) == "acc=0.5"


def test_non_finite_values_are_kept_by_their_spelling_and_nothing_to_read_is_an_error(tmp_path: Path) -> None:
    metrics, non_finite = metrics_of({"loss": float("nan"), "ppl": float("inf"), "ok": 1, "note": "text"})
    assert metrics == {"ok": 1.0} and non_finite == {"loss": "NaN", "ppl": "Infinity"}
    with pytest.raises(MetricsError, match="no JSON object on standard output"):
        report_from("done\n[1, 2]\n", None)
    with pytest.raises(MetricsError, match="wrote nothing at"):
        report_from("", tmp_path / "missing.json")
    with pytest.raises(MetricsError, match="holds no numbers"):
        metrics_of({"note": "text", "flags": [1, 2]})
    with pytest.raises(MetricsError, match="JSON list, not an object"):
        metrics_of([1, 2])


def test_an_error_tail_is_masked_before_it_is_cut() -> None:
    secret = "s3cr3t-value-99"
    text = "x" * 5000 + f" token={secret}"
    tail = error_tail(text, Redactor([secret]))
    assert tail is not None and tail.startswith("...") and tail.endswith("token=***") and len(tail) <= 2003
    assert error_tail("  \n", Redactor([])) is None


def test_openai_takes_the_first_evaluator_by_name_that_reports_a_field_and_stays_valid() -> None:
    record = make_record(4)
    now = utc_now_iso()
    for name, metrics in (
        ("b-eval", {"task/loss": 1.5}),
        ("a-eval", {"acc": 0.9, "mean_token_accuracy": 0.4}),
    ):
        record = with_evaluation(record, name, Evaluation(state="succeeded", metrics=metrics), now)
    record = with_evaluation(record, "0-broken", Evaluation(state="failed", reason="exit 1"), now)
    metrics = validate(OpenAIFormat().render(record), "openai-fine-tuning-job-checkpoint")["metrics"]
    assert metrics["full_valid_loss"] == 1.5 and metrics["full_valid_mean_token_accuracy"] == 0.4
    assert metrics["train_loss"] == 1.0 and "acc" not in metrics


def test_the_best_by_an_evaluation_metric_is_the_lowest_loss_or_the_highest_score() -> None:
    now = utc_now_iso()
    records = [
        with_evaluation(
            make_record(step), "e", Evaluation(state="succeeded", metrics={"loss": loss, "acc": acc}), now
        )
        for step, loss, acc in ((2, 3.0, 0.2), (4, 2.0, 0.1), (6, 2.5, 0.3))
    ]
    by_loss = BestBy.of("e", "loss").choose(records)
    assert [r.training.step for r in map(by_loss, records) if r.training.best] == [4]
    by_acc = BestBy.of("e", "acc").choose(records)
    marked = [r for r in map(by_acc, records) if r.training.best]
    assert [(r.training.step, r.training.best_metric, r.training.best_metric_value) for r in marked] == [
        (6, "e/acc", 0.3)
    ]
    untouched = BestBy.of("other", "loss").choose(records)
    assert [untouched(r) for r in records] == records


def test_a_command_must_name_the_checkpoint_and_is_never_shell_syntax(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"must name the checkpoint's folder as \{directory\}"):
        Command.parse("python eval.py")
    with pytest.raises(ConfigurationError, match="cannot be split"):
        Command.parse("python 'eval.py {directory}")
    command = Command.parse("python eval.py --model={directory} --out {output} '; rm -rf /'")
    odd = tmp_path / "a dir; $(touch x)"
    assert command.argv(odd, tmp_path / "o") == [
        "python",
        "eval.py",
        f"--model={odd}",
        "--out",
        str(tmp_path / "o"),
        "; rm -rf /",
    ]
    assert command.writes_output and not Command.parse("run {directory}").writes_output

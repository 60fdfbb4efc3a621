"""What an evaluator reported, read and put on the record: pure functions.

An evaluator reports its metrics as a JSON object, on standard output or in the file (or folder) its
command names with ``{output}``. Nested objects become ``outer/inner`` names; lm-evaluation-harness's
results file (``{"results": {task: {"acc,none": ...}}}``, found in the folder ``--output_path`` names)
becomes ``task/acc``. Only numbers are metrics: a NaN or infinity is kept by its spelling, as the
record keeps every non-JSON value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..build import Best, with_best
from ..record import CheckpointRecord, Evaluation, utc_now_iso
from ..redaction import Redactor
from ..store.documents import Change
from ..values import to_number

#: An evaluator's name: it is a key of the record, a column of ``list`` and part of a metric's name.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: How much of a failed command's error output the record keeps.
ERROR_TAIL_CHARACTERS = 2000
#: lm-evaluation-harness names each metric ``metric,filter``; ``none`` is no filter.
_NO_FILTER = ",none"


class MetricsError(Exception):
    """The evaluator's report could not be read as metrics: the message says where and why."""


def report_from(stdout: str, output: Path | None) -> Any:
    """The JSON the evaluator reported: in ``output`` when its command names one, else on stdout (all of
    it, or its last line that is a JSON object, after any log lines)."""
    if output is not None:
        return _read_output(output)
    text = stdout.strip()
    for candidate in (text, *reversed(text.splitlines())):
        try:
            found = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(found, dict):
            return found
    raise MetricsError("the command printed no JSON object on standard output (and names no {output})")


def _read_output(output: Path) -> Any:
    if output.is_dir():  # lm-evaluation-harness: <output>/<model>/results_<time>.json
        found = sorted(output.rglob("results*.json"), key=lambda path: path.stat().st_mtime) or sorted(
            output.rglob("*.json"), key=lambda path: path.stat().st_mtime
        )
        if not found:
            raise MetricsError(f"the command wrote no JSON file in {{output}} ({output})")
        output = found[-1]
    elif not output.is_file():
        raise MetricsError(f"the command wrote nothing at {{output}} ({output})")
    try:
        return json.loads(output.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise MetricsError(f"{output} is not JSON: {error}") from None


def metrics_of(report: Any) -> tuple[dict[str, float], dict[str, str]]:
    """The report's numbers by name, and the names of its non-finite ones with their spelling."""
    if not isinstance(report, Mapping):
        raise MetricsError(f"the report is a JSON {type(report).__name__}, not an object of metrics")
    results = report.get("results")
    if isinstance(results, Mapping) and isinstance(report.get("configs", report.get("versions")), Mapping):
        report = results  # lm-evaluation-harness: only its results are metrics
    metrics: dict[str, float] = {}
    non_finite: dict[str, str] = {}
    for name, value in _flattened(report, ""):
        number, spelling = to_number(value) if not isinstance(value, str) else (None, None)
        if number is not None:
            metrics[name] = float(number)
        elif spelling is not None:
            non_finite[name] = spelling
    if not metrics and not non_finite:
        raise MetricsError("the report holds no numbers")
    return metrics, non_finite


def _flattened(data: Mapping[str, Any], prefix: str) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = prefix + str(key).removesuffix(_NO_FILTER)
        if isinstance(value, Mapping):
            found += _flattened(value, name + "/")
        elif not isinstance(value, (list, bool)) and value is not None:
            found.append((name, value))
    return found


def error_tail(text: str, redact: Redactor) -> str | None:
    """The end of an error output, secrets masked before it is cut; None when there was none."""
    masked = redact(text).strip()
    if not masked:
        return None
    return masked if len(masked) <= ERROR_TAIL_CHARACTERS else "..." + masked[-ERROR_TAIL_CHARACTERS:]


def with_evaluation(record: CheckpointRecord, name: str, result: Evaluation, now: str) -> CheckpointRecord:
    """The record's next revision: ``result`` as evaluator ``name``'s, updated ``now``."""
    evaluations = {**record.status.evaluations, name: result}
    status = record.status.model_copy(update={"evaluations": evaluations, "updated_at": now})
    return record.model_copy(update={"status": status})


@dataclass(frozen=True)
class BestBy:
    """The best checkpoint chosen by an evaluator's metric (``evaluate --best``), not the Trainer's."""

    evaluator: str
    metric: str
    #: As the Trainer's ``greater_is_better``: by default, lower is better for a loss, higher otherwise.
    greater_is_better: bool

    @classmethod
    def of(cls, evaluator: str, metric: str, greater_is_better: bool | None = None) -> BestBy:
        greater = not metric.endswith("loss") if greater_is_better is None else greater_is_better
        return cls(evaluator, metric, greater)

    def choose(self, records: Sequence[CheckpointRecord]) -> Change:
        """The change that marks the best of ``records`` (those not deleted, whose evaluation by this
        evaluator reported the metric) and unmarks the others; no change while none reported it."""
        scored = [
            (evaluation.metrics[self.metric], record)
            for record in records
            if record.status.status != "deleted"
            and (evaluation := record.status.evaluations.get(self.evaluator)) is not None
            and evaluation.state == "succeeded"
            and self.metric in evaluation.metrics
        ]
        if not scored:
            return lambda record: record
        pick = max if self.greater_is_better else min
        value, best = pick(scored, key=lambda pair: pair[0])
        mark = Best(best.training.step, f"{self.evaluator}/{self.metric}", value)
        now = utc_now_iso()

        def marked(record: CheckpointRecord) -> CheckpointRecord:
            return with_best(record, mark if record.id == best.id else None, now)

        return marked


def prominent(metrics: Mapping[str, float]) -> list[str]:
    """The metric names, the headline first: top-level before nested, a standard error last."""
    return sorted(metrics, key=lambda name: (name.count("/"), name.endswith("stderr"), name))


def headline(evaluation: Evaluation) -> str:
    """An evaluation in a few characters, for ``list``: ``acc=0.512``, ``failed``, ``skipped``."""
    if evaluation.state != "succeeded":
        return evaluation.state
    if not evaluation.metrics:
        return "done"
    name = prominent(evaluation.metrics)[0]
    return f"{name.rsplit('/', 1)[-1]}={evaluation.metrics[name]:.4g}"

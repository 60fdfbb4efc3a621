"""What both benchmarks share: statistics, the machine description, tables, and the repo's tiny builders."""

from __future__ import annotations

import logging
import math
import os
import platform
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from checkpoint_records.storage import StorageConfig

ROOT = Path(__file__).resolve().parent.parent
# The example's tiny GPT-2, tokenizer and dataset (no download), and the tests' pure record factory.
for folder in (ROOT / "examples", ROOT / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default); NaN for no values.

    With fewer than 100 values p99 lies between the two largest, so read it as "about the worst".
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def cell(value: float | None, digits: int = 2) -> str:
    """A table cell: fixed digits, "-" for nothing to show."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table padded to line up in a terminal too."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(str(value).ljust(width) for value, width in zip(row, widths, strict=True))
            + " |"
        )

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for text in info:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def _revision() -> str:
    """The commit measured, and whether the working tree differed from it (read-only git calls)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"checkpoint-records {commit}{' + uncommitted changes in src/' if changed else ''}"


def machine_description() -> str:
    """One paragraph naming the machine, the software and the revision, to print above every table."""
    packages = ", ".join(
        f"{name} {_version(name)}" for name in ("torch", "transformers", "requests", "mlflow", "wandb")
    )
    return (
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {_cpu_model()}, {os.cpu_count()} cores; "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}; {packages}; "
        f"{_revision()}"
    )


class LibraryLog(logging.Handler):
    """Keeps checkpoint-records' messages instead of printing them, so a run can report what went wrong.

    ``warn_once`` logs a problem at WARNING the first time in a process and at DEBUG afterwards; both
    count here (they all start with "checkpoint-records:"), so a failure that repeats in a later run of
    the same process is still seen.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING or message.startswith("checkpoint-records:"):
            self.messages.append(" ".join(message.split())[:300])

    @classmethod
    def install(cls) -> LibraryLog:
        handler = cls()
        logger = logging.getLogger("checkpoint_records")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(handler)
        return handler


def summarize(messages: Sequence[str], limit: int = 8) -> list[str]:
    """Distinct messages with their counts, most frequent first (store paths folded into one)."""
    counts = Counter(re.sub(r"/\S+/records\.db", "<store>/records.db", message) for message in messages)
    return [f"{count} x {message}" for message, count in counts.most_common(limit)]


def moto_storage(endpoint: str, bucket: str, prefix: str, **config: Any) -> StorageConfig:
    """Storage on a local moto S3 server (``s3_server.MotoServer``): fake credentials, the bucket created.

    Imported here, not above: the benchmarks without storage must not need boto3 or s3fs.
    """
    import boto3

    from checkpoint_records.storage import StorageConfig

    for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return StorageConfig(f"s3://{bucket}/{prefix}", {"client_kwargs": {"endpoint_url": endpoint}}, **config)

"""Configuration from arguments and ``CHECKPOINT_RECORDS_*`` environment variables, checked up front.

An argument wins over its environment variable. An unknown ``CHECKPOINT_RECORDS_*`` variable is an
error rather than a silently ignored typo.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import ConfigurationError

PREFIX = "CHECKPOINT_RECORDS_"

#: Every variable this library reads, with what it sets.
ENVIRONMENT = {
    "HOME": "directory of the embedded store (default: per-user cache directory)",
    "SINKS": "comma-separated sink URLs, e.g. https://host/v1/checkpoints or openai+https://host/path",
    "TOKEN": "bearer token sent to the sinks given by CHECKPOINT_RECORDS_SINKS",
    "CA_BUNDLE": "CA bundle path used to verify the sinks' TLS certificates",
    "ALLOW_INSECURE_HTTP": "1 to allow sending a token over plain http:// to a non-loopback host",
    "JOB_ID": "job id (a UUID, or any string that names the job stably across resumes)",
    "JOB_NAME": "job name (default: run_name, else the output directory's name)",
    "NAME_TEMPLATE": "record name template, default '{job_name}-checkpoint-{step}'",
    "FLUSH_TIMEOUT": "seconds on_train_end waits for delivery before leaving the rest pending (default 5)",
    "RECORD_EVERY_NODE": "1 to record every node's copy when save_on_each_node=True",
    "STORAGE": "fsspec URL the checkpoints' files are uploaded to, e.g. s3://bucket/prefix (storage extra)",
    "STORAGE_RETENTION": "keep (default) or mirror: delete the remote copy when rotation deletes it locally",
    "STORAGE_PARALLEL": "how many files of a checkpoint are uploaded at once (default 4)",
}


def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``CHECKPOINT_RECORDS_*`` settings present, keyed without the prefix; unknown ones fail."""
    env = os.environ if env is None else env
    found = {key[len(PREFIX) :]: value for key, value in env.items() if key.startswith(PREFIX)}
    unknown = sorted(set(found) - set(ENVIRONMENT))
    if unknown:
        known = ", ".join(PREFIX + name for name in ENVIRONMENT)
        raise ConfigurationError(
            f"unknown environment variable(s) {', '.join(PREFIX + name for name in unknown)}; "
            f"checkpoint-records reads: {known}"
        )
    return found


def parse_bool(name: str, value: str | bool | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name}={value!r} is not a boolean: use 1/0, true/false, yes/no or on/off")


def parse_seconds(name: str, value: str | float | None, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={value!r} is not a number of seconds") from None
    if not seconds >= 0:
        raise ConfigurationError(f"{name}={value!r} must be zero or more seconds")
    return seconds


def check_name_template(template: str) -> str:
    try:
        template.format(job_name="job", job_id="id", step=0, node="node")
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigurationError(
            f"name template {template!r} is invalid ({error!r}); it may use {{job_name}}, {{job_id}}, "
            "{step} and {node}"
        ) from None
    if "{step" not in template:
        raise ConfigurationError(f"name template {template!r} must contain {{step}} so names are unique")
    return template

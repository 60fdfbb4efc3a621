"""Every setting in one table, resolved once: argument > ``CHECKPOINT_RECORDS_*`` variable > default.

The recorder (and so the callback), the sinks and the store all take their configuration from
:func:`resolve_settings`, so a setting is read, checked and explained in one place, and every command
of the CLI and every training run react the same way to the same environment. An error names the
field (argument and variable) and says what to change. An unknown ``CHECKPOINT_RECORDS_*`` variable,
or one whose prefix is misspelled, is an error with a "did you mean" rather than a silently ignored typo.
"""

from __future__ import annotations

import difflib
import math
import os
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    "SERVER_TOKENS": "comma-separated tokens `checkpoint-records serve` accepts as bearer tokens",
    "STORAGE": "fsspec URL the checkpoints' files are uploaded to, e.g. s3://bucket/prefix (storage extra)",
    "STORAGE_RETENTION": "keep (default) or mirror: delete the remote copy when rotation deletes it locally",
    "STORAGE_PARALLEL": "how many files of a checkpoint are uploaded at once (default 4)",
}


def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``CHECKPOINT_RECORDS_*`` variables present, keyed without the prefix, for what is configured
    outside :func:`resolve_settings`; unknown or misspelled ones fail with a "did you mean"."""
    env = os.environ if env is None else env
    check_environment(env)
    return {key[len(PREFIX) :]: value for key, value in env.items() if key.startswith(PREFIX)}


#: Trainer runs: the name ends like the folder the Trainer wrote (``checkpoint-<step>``).
DEFAULT_NAME_TEMPLATE = "{job_name}-checkpoint-{step}"
#: Loops of your own (``CheckpointRecorder.record``): their folders are numbered otherwise (accelerate's
#: ``checkpoint_<n>`` counts saves), so the name says that its number is the step.
DEFAULT_LOOP_NAME_TEMPLATE = "{job_name}-step-{step}"
#: The fields a name template may use, each as a plain ``{field}`` (no attribute, index or format spec).
NAME_FIELDS = ("job_name", "job_id", "step", "node")
DEFAULT_FLUSH_TIMEOUT = 5.0
#: A longer wait at the end of training is a run that does not end: the rest stays queued anyway.
MAX_FLUSH_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Setting:
    """One row of the table: the argument's name and how its text is read (what it sets: ENVIRONMENT)."""

    name: str
    #: ``parse(label, value)``: the value (an argument's or a variable's text) checked, or raises.
    parse: Callable[[str, Any], Any]
    #: The keyword the recorder and the callback take it as, when that differs from ``name``.
    argument: str = ""

    @property
    def variable(self) -> str:
        return PREFIX + self.name.upper()

    @property
    def help(self) -> str:
        return ENVIRONMENT[self.name.upper()]

    def label(self, from_environment: bool) -> str:
        return self.variable if from_environment else self.argument or self.name


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of a recorder, a command or a store."""

    home: Path
    sinks: tuple[Any, ...]
    token: str | None
    ca_bundle: str | None
    allow_insecure_http: bool
    job_id: str | None
    job_name: str | None
    #: None: the default of where the record comes from (a Trainer or a loop of your own).
    name_template: str | None
    flush_timeout: float
    record_every_node: bool


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


def parse_seconds(name: str, value: str | float | None, default: float, maximum: float) -> float:
    """A number of seconds in ``[0, maximum]``; infinity, NaN and absurd values are refused."""
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={value!r} is not a number of seconds") from None
    if not seconds >= 0:
        raise ConfigurationError(f"{name}={value!r} must be zero or more seconds")
    if not math.isfinite(seconds) or seconds > maximum:
        raise ConfigurationError(
            f"{name}={value!r} is more than the {maximum:g} seconds allowed: what is not delivered by "
            "then stays queued for the next run or `checkpoint-records flush`"
        )
    return seconds


def check_name_template(template: str, name: str = "name_template") -> str:
    """A record name template made only of text and plain ``{job_name}``/``{job_id}``/``{step}``/``{node}``.

    Attribute or index access (``{step.__class__}``) and format specs (``{step:>100000000}``) are refused:
    a name is an identifier, and a template must not be a way to run code or fill the disk.
    """
    allowed = ", ".join(f"{{{field}}}" for field in NAME_FIELDS)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ConfigurationError(f"{name}={template!r} is invalid ({error}); it may use {allowed}") from None
    used = set()
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in NAME_FIELDS or spec or conversion:
            shown = (
                "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            )
            raise ConfigurationError(
                f"{name}={template!r}: {shown} is not allowed; use only the plain fields {allowed}"
            )
        used.add(field)
    if "step" not in used:
        raise ConfigurationError(f"{name}={template!r} must contain {{step}} so names are unique")
    return template


def _text(name: str, value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _sinks(name: str, value: Any) -> tuple[Any, ...]:
    """A sequence of sinks (objects or URLs), or the variable's comma-separated URLs."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(url.strip() for url in value.split(",") if url.strip())
    return tuple(value)


def _flush_timeout(name: str, value: Any) -> float:
    return parse_seconds(name, value, DEFAULT_FLUSH_TIMEOUT, MAX_FLUSH_TIMEOUT)


def _template(name: str, value: Any) -> str | None:
    return None if value is None else check_name_template(str(value), name)


def _bool(name: str, value: Any) -> bool:
    return parse_bool(name, value)


def default_home(env: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/checkpoint-records``, else ``~/.cache/checkpoint-records``; never a relative path."""
    cache = env.get("XDG_CACHE_HOME", "")
    if os.path.isabs(cache):
        return Path(cache) / "checkpoint-records"
    user_home = env["HOME"] if "HOME" in env else os.path.expanduser("~")
    if not os.path.isabs(user_home):
        raise ConfigurationError(
            f"HOME={user_home!r} gives no per-user cache directory for the store: set "
            f"{PREFIX}HOME (or pass store=...) to a writable directory"
        )
    return Path(user_home) / ".cache" / "checkpoint-records"


def _home(name: str, value: Any) -> Path:
    """An explicit store directory; empty is a mistake (it would mean the working directory)."""
    if str(value).strip() == "":
        raise ConfigurationError(
            f"{name} is empty: give the store's directory, or unset it to use the default per-user cache"
        )
    return Path(value).expanduser()


#: Every setting the recorder, the sinks and the store resolve, in the order the README lists them.
TABLE = (
    Setting("home", _home, "store"),
    Setting("sinks", _sinks),
    Setting("token", _text),
    Setting("ca_bundle", _text),
    Setting("allow_insecure_http", _bool),
    Setting("job_id", _text),
    Setting("job_name", _text),
    Setting("name_template", _template),
    Setting("flush_timeout", _flush_timeout),
    Setting("record_every_node", _bool),
)
_BY_NAME = {setting.name: setting for setting in TABLE}


def check_environment(env: Mapping[str, str]) -> None:
    """Refuse unknown ``CHECKPOINT_RECORDS_*`` variables and misspelled prefixes, with a "did you mean"."""
    variables = [PREFIX + name for name in ENVIRONMENT]
    wrong = []
    for key in sorted(env):
        ours = key.startswith(PREFIX)
        if (ours and key not in variables) or (
            not ours and difflib.get_close_matches(key.upper(), variables, n=1, cutoff=0.85)
        ):
            close = difflib.get_close_matches(key.upper(), variables, n=1, cutoff=0.6)
            wrong.append(f"{key} (did you mean {close[0]}?)" if close else key)
    if wrong:
        raise ConfigurationError(
            f"unknown environment variable(s): {'; '.join(wrong)}. checkpoint-records reads "
            f"{', '.join(variables)}"
        )


def resolve_settings(env: Mapping[str, str] | None = None, **arguments: Any) -> Settings:
    """Every setting, each from its argument when given (not None), else its variable, else its default."""
    env = os.environ if env is None else env
    unknown = sorted(set(arguments) - set(_BY_NAME))
    if unknown:
        raise TypeError(f"resolve_settings() got unknown setting(s) {', '.join(unknown)}")
    check_environment(env)
    resolved: dict[str, Any] = {}
    for setting in TABLE:
        value, from_environment = arguments.get(setting.name), False
        if value is None and setting.variable in env:
            value, from_environment = env[setting.variable], True
        label = setting.label(from_environment)
        if setting.name == "home" and value is None:
            resolved["home"] = default_home(env)
        else:
            resolved[setting.name] = setting.parse(label, value)
    return Settings(**resolved)

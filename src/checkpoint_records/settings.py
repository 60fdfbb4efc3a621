"""Every ``CHECKPOINT_RECORDS_*`` setting in one table, resolved once: argument, else variable, else default.

:class:`Settings` is the table: each of its fields is one setting, declared once by :func:`setting` with
its parser, help text, default, the keyword argument it is given as and its variable. The variables read,
``checkpoint-records --help``, the "did you mean" for a mistyped variable or argument and the resolved
:class:`Settings` all come from it (:data:`TABLE`). Adding a setting is one field of :class:`Settings`,
its line in :class:`Overrides` (the argument's type, for type checkers; a test keeps the two equal) and
its use.

The callback, the recorder, every command, the registry server's tokens and the storage take their
configuration from :func:`resolve_settings`, or from :meth:`Settings.replace` on settings resolved
before, so every run and every command react the same way to the same environment. An error names the
argument or the variable and says what to change; an unknown ``CHECKPOINT_RECORDS_*`` variable, a near
miss of the prefix, or an unknown argument is an error with a "did you mean", never a silent typo.

Nothing else reads a ``CHECKPOINT_RECORDS_*`` variable. MLflow's ``MLFLOW_*`` variables are MLflow's own
convention, honoured for the MLflow sink as MLflow's clients honour them: :func:`mlflow_environment` is
the one place they are read.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar

from .errors import ConfigurationError
from .redaction import MASK, public_url
from .signing import SigningSecret, parse_signing_secret

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .sinks import Sink
    from .storage import StorageConfig
    from .store import RecordStore

PREFIX = "CHECKPOINT_RECORDS_"

#: Trainer runs: the name ends like the folder the Trainer wrote (``checkpoint-<step>``).
DEFAULT_NAME_TEMPLATE = "{job_name}-checkpoint-{step}"
#: Loops of your own (``CheckpointRecorder.record``): their folders are numbered otherwise (accelerate's
#: ``checkpoint_<n>`` counts saves), so the name says that its number is the step.
DEFAULT_LOOP_NAME_TEMPLATE = "{job_name}-step-{step}"
#: The fields a name template may use, each as a plain ``{field}`` (no attribute, index or format spec).
NAME_FIELDS = ("job_name", "job_id", "step", "node")
#: The end of training waits at most this long: a longer wait is a run that does not end, and what is
#: not delivered by then stays queued anyway.
MAX_FLUSH_TIMEOUT = 3600.0
#: What rotation does to a checkpoint's uploaded copy: keep it, or delete it too.
Retention = Literal["keep", "mirror"]
RETENTIONS: tuple[Retention, ...] = ("keep", "mirror")
#: How many files of one checkpoint are uploaded at once, unless set.
DEFAULT_STORAGE_PARALLEL = 4

T = TypeVar("T")

# -- parsers: ``parse(label, value)`` checks an argument's value or a variable's text (never empty: that
# is the same as not given), naming ``label`` (the argument or the variable) in its error.


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


def parse_seconds(name: str, value: str | float, maximum: float) -> float:
    """A number of seconds in ``[0, maximum]``; infinity, NaN and absurd values are refused."""
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


def parse_count(name: str, value: Any) -> int:
    """A whole number, 1 or more."""
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={value!r} is not a whole number") from None
    if count < 1:
        raise ConfigurationError(f"{name}={value!r} must be 1 or more")
    return count


def parse_retention(name: str, value: Any) -> Retention:
    for retention in RETENTIONS:
        if value == retention:
            return retention
    raise ConfigurationError(f"{name}={value!r} is not one of: {', '.join(RETENTIONS)}")


def check_storage_url(name: str, url: str) -> str:
    """An fsspec URL (or an absolute path): a bare ``bucket/prefix`` would be a local relative path."""
    if "://" not in url and not os.path.isabs(url):
        raise ConfigurationError(
            f"{name}={public_url(url)!r} is not a URL: use e.g. s3://bucket/prefix, gs://bucket/prefix "
            "or file:///shared/checkpoints"
        )
    return url


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
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if field_name not in NAME_FIELDS or spec or conversion:
            shown = (
                "{"
                + field_name
                + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "")
                + "}"
            )
            raise ConfigurationError(
                f"{name}={template!r}: {shown} is not allowed; use only the plain fields {allowed}"
            )
        used.add(field_name)
    if "step" not in used:
        raise ConfigurationError(f"{name}={template!r} must contain {{step}} so names are unique")
    return template


def _text(name: str, value: Any) -> str:
    return str(value)


def _listed(name: str, value: Any, what: str) -> tuple[Any, ...]:
    """A list given as such, or as the comma-separated text of a variable (blank items dropped)."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a list of {what}, not {type(value).__name__}")
    return tuple(value)


def _sinks(name: str, value: Any) -> tuple[Sink | str, ...]:
    return _listed(name, value, "sinks or sink URLs")


def _tokens(name: str, value: Any) -> tuple[str, ...]:
    """The server's tokens: an empty one (``--token "$UNSET"``, ``a,,b``, ``VAR=``) is refused, as it
    would otherwise be dropped and leave the server open while its user believes it is closed."""
    items = value.split(",") if isinstance(value, str) else _listed(name, value, "tokens")
    tokens = tuple(str(token).strip() for token in items)
    if not tokens or not all(tokens):
        raise ConfigurationError(
            f"{name} has an empty token (an unset variable expanded to nothing?): `checkpoint-records "
            "serve` would run without authentication. Give each token (--token T, or "
            f"{PREFIX}SERVER_TOKENS=T1,T2), or none at all to serve on loopback without one"
        )
    return tokens


def _database(name: str, value: Any) -> str:
    """A PostgreSQL URL for the registry's store (its password better in PGPASSWORD or ~/.pgpass)."""
    url = str(value).strip()
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError(
            f"{name} must be a PostgreSQL URL, postgresql://USER@HOST:PORT/DATABASE, not "
            f"{public_url(url)!r}; unset it to keep the registry in its SQLite file"
        )
    return url


def _end_of_training_seconds(name: str, value: Any) -> float:
    return parse_seconds(name, value, MAX_FLUSH_TIMEOUT)


def _template(name: str, value: Any) -> str:
    return check_name_template(str(value), name)


def _home(name: str, value: Any) -> Path:
    """An explicit store directory; empty is a mistake (it would mean the working directory)."""
    if not str(value).strip():
        raise ConfigurationError(
            f"{name} is empty: give the store's directory, or unset it to use the default per-user cache"
        )
    return Path(value).expanduser()


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


def _storage(name: str, value: Any) -> str | StorageConfig:
    """A URL, checked here; a ``StorageConfig`` (an argument only) is checked where storage is set up."""
    return check_storage_url(name, value.strip()) if isinstance(value, str) else value


def _options(name: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a mapping of fsspec options, not {type(value).__name__}")
    return value


# -- how a value is shown in ``repr(settings)``: never a secret


def _hidden(value: Any) -> str:
    return repr(MASK) if value else repr(value)


def _public(value: Any) -> str:
    """A storage URL or ``StorageConfig`` without its credentials (userinfo, query, options)."""
    return repr(value) if value is None else repr(public_url(value if isinstance(value, str) else value.url))


@dataclass(frozen=True)
class Setting:
    """One row of the table: how a setting is given, checked, defaulted and explained."""

    #: ``parse(label, value)``: the value checked, or a ``ConfigurationError`` naming ``label``.
    parse: Callable[[str, Any], Any]
    help: str
    default: Any = None
    #: For a default that depends on the environment: ``default_from(env)``.
    default_from: Callable[[Mapping[str, str]], Any] | None = None
    #: The field of :class:`Settings`.
    name: str = ""
    #: The keyword the callback, the recorder and :func:`resolve_settings` take it as.
    argument: str = ""
    #: ``CHECKPOINT_RECORDS_<NAME>``; None for a setting that is an argument only.
    variable: str | None = None
    #: How ``repr(settings)`` shows the value (secrets masked).
    shown: Callable[[Any], str] = repr
    #: Whether an empty value (``VAR=``) is the same as none; else ``parse`` refuses it.
    empty_is_unset: bool = True

    def read(self, label: str, value: Any) -> Any:
        """The value checked, or None when none was given."""
        if value is None or (self.empty_is_unset and isinstance(value, str) and not value):
            return None
        return self.parse(label, value)

    def default_in(self, env: Mapping[str, str]) -> Any:
        return self.default if self.default_from is None else self.default_from(env)

    @property
    def description(self) -> str:
        """The help text with the default, as ``--help`` lists it."""
        if self.default is None or self.default is False or self.default == ():
            return self.help
        default = f"{self.default:g}" if isinstance(self.default, float) else self.default
        return f"{self.help} (default {default})"


_ROW = "checkpoint_records.setting"


def setting(
    parse: Callable[[str, Any], T],
    help: str,
    *,
    default: T | None = None,
    default_from: Callable[[Mapping[str, str]], T] | None = None,
    argument: str = "",
    variable: bool = True,
    shown: Callable[[Any], str] = repr,
    empty_is_unset: bool = True,
) -> T:
    """A field of :class:`Settings` and its row of the table (named after the field; the argument too,
    unless ``argument`` says otherwise; the variable ``CHECKPOINT_RECORDS_<NAME>`` unless ``variable`` is
    False). Typed as the value, as ``dataclasses.field`` is, so the field's type is checked against
    what ``parse`` returns."""
    row = Setting(
        parse,
        help,
        default,
        default_from,
        argument=argument,
        variable="" if variable else None,
        shown=shown,
        empty_is_unset=empty_is_unset,
    )
    return field(metadata={_ROW: row})


@dataclass(frozen=True, repr=False)
class Settings:
    """The resolved configuration of a run, a command or a server: see :func:`resolve_settings`."""

    home: Path = setting(
        _home,
        "directory of the embedded store (default: $XDG_CACHE_HOME/checkpoint-records, else "
        "~/.cache/checkpoint-records)",
        default_from=default_home,
        argument="store",
        empty_is_unset=False,
    )
    sinks: tuple[Sink | str, ...] = setting(
        _sinks,
        "comma-separated sink URLs, e.g. https://host/v1/checkpoints or openai+https://host/path",
        default=(),
    )
    token: str | None = setting(_text, "bearer token sent to the sinks given by URL", shown=_hidden)
    ca_bundle: str | None = setting(_text, "CA bundle path used to verify the sinks' TLS certificates")
    allow_insecure_http: bool = setting(
        parse_bool, "1 to allow sending a token over plain http:// to a non-loopback host", default=False
    )
    job_id: str | None = setting(
        _text, "job id (a UUID, or any string that names the job stably across resumes)"
    )
    job_name: str | None = setting(_text, "job name (default: run_name, else the output directory's name)")
    #: None: the default of where the record comes from (a Trainer or a loop of your own).
    name_template: str | None = setting(
        _template,
        f"record name template (default {DEFAULT_NAME_TEMPLATE!r}; {DEFAULT_LOOP_NAME_TEMPLATE!r} for "
        "loops of your own)",
    )
    flush_timeout: float = setting(
        _end_of_training_seconds,
        "seconds the end of training waits for delivery before leaving the rest pending",
        default=5.0,
    )
    record_every_node: bool = setting(
        parse_bool, "1 to record every node's copy when save_on_each_node=True", default=False
    )
    attach: bool = setting(
        parse_bool,
        "1: every transformers Trainer of this process and of the processes it starts gets a callback "
        "(what `checkpoint-records run` sets)",
        default=False,
    )
    storage: str | StorageConfig | None = setting(
        _storage,
        "fsspec URL the checkpoints' files are uploaded to, e.g. s3://bucket/prefix (storage extra)",
        shown=_public,
    )
    storage_options: Mapping[str, Any] | None = setting(
        _options, "fsspec options of the storage (endpoint, credentials)", variable=False, shown=_hidden
    )
    storage_retention: Retention = setting(
        parse_retention, "keep, or mirror: delete the remote copy when rotation deletes it", default="keep"
    )
    storage_parallel: int = setting(
        parse_count, "how many files of a checkpoint are uploaded at once", default=DEFAULT_STORAGE_PARALLEL
    )
    signing_secret: SigningSecret | None = setting(
        parse_signing_secret,
        "Standard Webhooks secret (whsec_ + base64) HTTP sinks sign every delivery with, and `serve` "
        "verifies them with",
        shown=_hidden,
        empty_is_unset=False,
    )
    server_database: str | None = setting(
        _database,
        "PostgreSQL URL (postgresql://USER@HOST:PORT/DB) `checkpoint-records serve` keeps the registry in, "
        "shared by any number of `serve` processes (password: PGPASSWORD or ~/.pgpass); unset: SQLite",
        shown=_public,
    )
    server_tokens: tuple[str, ...] = setting(
        _tokens,
        "comma-separated tokens `checkpoint-records serve` accepts as bearer tokens (none empty)",
        default=(),
        shown=_hidden,
        empty_is_unset=False,
    )

    def replace(self, **overrides: Unpack[Overrides]) -> Settings:
        """These settings with ``overrides`` (arguments, as the callback takes them) checked and in place."""
        return dataclasses.replace(self, **_arguments(overrides))

    def __repr__(self) -> str:
        shown = ", ".join(f"{row.name}={row.shown(getattr(self, row.name))}" for row in TABLE)
        return f"Settings({shown})"


def _rows() -> tuple[Setting, ...]:
    """The rows :func:`setting` made, completed with what the field says: name, argument, variable."""
    rows = []
    for spec in dataclasses.fields(Settings):
        row: Setting = spec.metadata[_ROW]
        variable = None if row.variable is None else PREFIX + spec.name.upper()
        rows.append(
            dataclasses.replace(row, name=spec.name, argument=row.argument or spec.name, variable=variable)
        )
    return tuple(rows)


#: Every setting, in the order ``--help`` and docs/reference.md list them.
TABLE = _rows()
#: Each setting's argument, by the name of its field (``home`` is given as ``store``).
_ARGUMENT_OF = {row.name: row.argument for row in TABLE}


class Overrides(TypedDict, total=False):
    """The keyword arguments the callback, the recorder and :func:`resolve_settings` take: one per row of
    the table, typed as they may be given (None: not given)."""

    store: RecordStore | str | os.PathLike[str] | None
    sinks: Sequence[Sink | str] | str | None
    token: str | None
    ca_bundle: str | os.PathLike[str] | None
    allow_insecure_http: bool | str | None
    job_id: str | None
    job_name: str | None
    name_template: str | None
    flush_timeout: float | str | None
    record_every_node: bool | str | None
    attach: bool | str | None
    storage: str | StorageConfig | None
    storage_options: Mapping[str, Any] | None
    storage_retention: Retention | str | None
    storage_parallel: int | str | None
    signing_secret: SigningSecret | str | None
    server_database: str | None
    server_tokens: Sequence[str] | str | None


def _suggestion(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _arguments(given: Mapping[str, object]) -> dict[str, Any]:
    """The arguments given (not None), each checked by its row, by field name; an unknown one is a
    ``TypeError``, as for any unexpected keyword argument, with a "did you mean"."""
    arguments = list(_ARGUMENT_OF.values())
    unknown = sorted(set(given) - set(arguments))
    if unknown:
        named = "; ".join(name + _suggestion(_ARGUMENT_OF.get(name, name), arguments) for name in unknown)
        raise TypeError(f"unknown setting(s): {named}. The settings are {', '.join(arguments)}")
    checked = {row.name: row.read(row.argument, given.get(row.argument)) for row in TABLE}
    return {name: value for name, value in checked.items() if value is not None}


def variables() -> list[str]:
    """Every ``CHECKPOINT_RECORDS_*`` variable read, in the table's order."""
    return [row.variable for row in TABLE if row.variable is not None]


def check_environment(env: Mapping[str, str]) -> None:
    """Refuse unknown ``CHECKPOINT_RECORDS_*`` variables and misspelled prefixes, with a "did you mean"."""
    known = variables()
    wrong = []
    for key in sorted(env):
        ours = key.startswith(PREFIX)
        if (ours and key not in known) or (
            not ours and difflib.get_close_matches(key.upper(), known, n=1, cutoff=0.85)
        ):
            wrong.append(key + _suggestion(key.upper(), known))
    if wrong:
        raise ConfigurationError(
            f"unknown environment variable(s): {'; '.join(wrong)}. checkpoint-records reads {', '.join(known)}"
        )


def resolve_settings(env: Mapping[str, str] | None = None, /, **overrides: Unpack[Overrides]) -> Settings:
    """Every setting, each from its argument when given (not None), else its variable, else its default."""
    env = os.environ if env is None else env
    given = _arguments(overrides)
    check_environment(env)
    values = {}
    for row in TABLE:
        value = given.get(row.name)
        if value is None and row.variable is not None and row.variable in env:
            value = row.read(row.variable, env[row.variable])
        values[row.name] = row.default_in(env) if value is None else value
    return Settings(**values)


def setting_from_environment(name: str, env: Mapping[str, str] | None = None) -> Any:
    """The one setting ``name`` (a field of :class:`Settings`), from its variable, else its default,
    without looking at the others: for the start-up hook, which runs in processes that use no other."""
    env = os.environ if env is None else env
    row = next(row for row in TABLE if row.name == name)
    value = None if row.variable is None else row.read(row.variable, env.get(row.variable))
    return row.default_in(env) if value is None else value


def as_variables(settings: Settings, names: Iterable[str]) -> dict[str, str]:
    """The ``CHECKPOINT_RECORDS_*`` variables that give another process the settings ``names`` as they
    are resolved here (a path made absolute, a list as comma-separated text): how ``checkpoint-records
    run`` hands its options to the command it runs."""
    variables = {}
    for row in TABLE:
        if row.name in names and row.variable is not None:
            value = getattr(settings, row.name)
            if isinstance(value, Path):
                value = value.absolute()
            variables[row.variable] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return variables


@dataclass(frozen=True)
class MlflowEnvironment:
    """MLflow's own variables, read as MLflow's clients read them, for the MLflow sink."""

    experiment: str | None
    token: str | None = field(repr=False)
    username: str | None
    password: str | None = field(repr=False)
    ca_bundle: str | None
    #: Asks to skip TLS verification, which the sink refuses (it always verifies).
    insecure_tls: bool


def mlflow_environment(env: Mapping[str, str] | None = None) -> MlflowEnvironment:
    """``MLFLOW_EXPERIMENT_NAME``, ``MLFLOW_TRACKING_TOKEN`` / ``_USERNAME`` / ``_PASSWORD``,
    ``MLFLOW_TRACKING_SERVER_CERT_PATH`` and ``MLFLOW_TRACKING_INSECURE_TLS``; empty means unset."""
    env = os.environ if env is None else env
    return MlflowEnvironment(
        experiment=env.get("MLFLOW_EXPERIMENT_NAME") or None,
        token=env.get("MLFLOW_TRACKING_TOKEN") or None,
        username=env.get("MLFLOW_TRACKING_USERNAME") or None,
        password=env.get("MLFLOW_TRACKING_PASSWORD") or None,
        ca_bundle=env.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None,
        insecure_tls=parse_bool("MLFLOW_TRACKING_INSECURE_TLS", env.get("MLFLOW_TRACKING_INSECURE_TLS")),
    )

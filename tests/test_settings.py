"""One settings table: argument > environment > default, errors naming the field, typos caught everywhere."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from checkpoint_records import CheckpointRecordCallback, CheckpointRecorder, ConfigurationError, RecordStore
from checkpoint_records.settings import (
    TABLE,
    Overrides,
    Settings,
    mlflow_environment,
    resolve_settings,
    setting_from_environment,
)
from checkpoint_records.signing import SigningSecret
from checkpoint_records.sinks import HttpSink
from checkpoint_records.storage import StorageConfig
from commands import cli

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks libraries' example secret


def test_an_argument_wins_over_its_variable_which_wins_over_the_default(tmp_path: Path) -> None:
    env = {"CHECKPOINT_RECORDS_FLUSH_TIMEOUT": "7", "CHECKPOINT_RECORDS_HOME": str(tmp_path / "env")}
    assert resolve_settings(env).flush_timeout == 7.0
    assert resolve_settings(env, flush_timeout=2).flush_timeout == 2.0
    assert resolve_settings(env).home == tmp_path / "env"
    assert resolve_settings(env, store=tmp_path / "arg").home == tmp_path / "arg"
    defaults = resolve_settings({"HOME": str(tmp_path)})
    assert defaults.home == tmp_path / ".cache" / "checkpoint-records"
    assert defaults.name_template is None and defaults.sinks == ()  # each caller's own default
    assert (
        resolve_settings({"HOME": "/h", "XDG_CACHE_HOME": str(tmp_path)}).home
        == tmp_path / "checkpoint-records"
    )
    assert resolve_settings(
        {**env, "CHECKPOINT_RECORDS_SINKS": " https://a.example/x ,, b+https://c/y "}
    ).sinks == (
        "https://a.example/x",
        "b+https://c/y",
    )


#: A valid text for every variable in the table, and what it is read as.
READ_AS: dict[str, tuple[str, object]] = {
    "CHECKPOINT_RECORDS_HOME": ("/srv/records", Path("/srv/records")),
    "CHECKPOINT_RECORDS_SINKS": (
        "https://a.example/x, openai+https://b.example/y",
        ("https://a.example/x", "openai+https://b.example/y"),
    ),
    "CHECKPOINT_RECORDS_TOKEN": ("t0ken", "t0ken"),
    "CHECKPOINT_RECORDS_CA_BUNDLE": ("/etc/ca.pem", "/etc/ca.pem"),
    "CHECKPOINT_RECORDS_ALLOW_INSECURE_HTTP": ("yes", True),
    "CHECKPOINT_RECORDS_JOB_ID": ("job-7", "job-7"),
    "CHECKPOINT_RECORDS_JOB_NAME": ("sweep", "sweep"),
    "CHECKPOINT_RECORDS_NAME_TEMPLATE": ("{job_name}@{step}", "{job_name}@{step}"),
    "CHECKPOINT_RECORDS_FLUSH_TIMEOUT": ("2.5", 2.5),
    "CHECKPOINT_RECORDS_RECORD_EVERY_NODE": ("1", True),
    "CHECKPOINT_RECORDS_ATTACH": ("1", True),
    "CHECKPOINT_RECORDS_STORAGE": ("s3://bucket/prefix", "s3://bucket/prefix"),
    "CHECKPOINT_RECORDS_STORAGE_RETENTION": ("mirror", "mirror"),
    "CHECKPOINT_RECORDS_STORAGE_PARALLEL": ("8", 8),
    "CHECKPOINT_RECORDS_SIGNING_SECRET": (SECRET, SigningSecret(SECRET)),
    "CHECKPOINT_RECORDS_SERVER_DATABASE": (
        "postgresql://r@db:5432/registry",
        "postgresql://r@db:5432/registry",
    ),
    "CHECKPOINT_RECORDS_SERVER_TOKENS": ("one, two", ("one", "two")),
}
#: A text every variable that checks its value refuses.
REFUSED = {
    "CHECKPOINT_RECORDS_ALLOW_INSECURE_HTTP": "maybe",
    "CHECKPOINT_RECORDS_NAME_TEMPLATE": "{job_name}",
    "CHECKPOINT_RECORDS_FLUSH_TIMEOUT": "soon",
    "CHECKPOINT_RECORDS_RECORD_EVERY_NODE": "2",
    "CHECKPOINT_RECORDS_ATTACH": "maybe",
    "CHECKPOINT_RECORDS_STORAGE": "bucket/prefix",
    "CHECKPOINT_RECORDS_STORAGE_RETENTION": "forever",
    "CHECKPOINT_RECORDS_STORAGE_PARALLEL": "0",
    "CHECKPOINT_RECORDS_SERVER_TOKENS": "one, two,",  # an empty entry: an unset variable expanded
    "CHECKPOINT_RECORDS_SERVER_DATABASE": "/srv/registry.db",  # SQLite is --store's
    "CHECKPOINT_RECORDS_SIGNING_SECRET": "whsec_c2hvcnQ=",  # 5 bytes: the spec wants 24 or more
}


def test_every_variable_of_the_table_is_read_and_parsed() -> None:
    assert sorted(READ_AS) == sorted(row.variable for row in TABLE if row.variable)
    for row in TABLE:
        if row.variable is None:
            continue
        text, expected = READ_AS[row.variable]
        assert expected != row.default_in({"HOME": "/h"}), row.variable  # the variable made a difference
        assert getattr(resolve_settings({"HOME": "/h", row.variable: text}), row.name) == expected
        # the start-up hook reads one setting alone, by the same row
        assert setting_from_environment(row.name, {"HOME": "/h", row.variable: text}) == expected
        if row.variable in REFUSED:
            with pytest.raises(ConfigurationError, match=row.variable):
                resolve_settings({"HOME": "/h", row.variable: REFUSED[row.variable]})
        # the argument wins, and is parsed by the same row: text works as the variable's does
        assert getattr(resolve_settings({"HOME": "/h"}, **{row.argument: text}), row.name) == expected


def test_an_empty_variable_is_the_default_unless_empty_would_open_a_door() -> None:
    empty = {row.variable: "" for row in TABLE if row.variable and row.empty_is_unset}
    settings = resolve_settings({"HOME": "/h", **empty})
    for row in TABLE:
        if row.empty_is_unset:
            assert getattr(settings, row.name) == row.default_in({}), row.name
    refused = [row.variable for row in TABLE if row.variable and not row.empty_is_unset]
    assert {"CHECKPOINT_RECORDS_SERVER_TOKENS", "CHECKPOINT_RECORDS_SIGNING_SECRET"} <= set(refused)
    for variable in refused:
        with pytest.raises(ConfigurationError, match=variable):
            resolve_settings({"HOME": "/h", variable: ""})


def test_the_typed_arguments_are_the_tables() -> None:
    assert list(Overrides.__annotations__) == [row.argument for row in TABLE]
    assert [row.name for row in TABLE] == list(Settings.__dataclass_fields__)
    assert all(row.help for row in TABLE)


@pytest.mark.parametrize("make", [CheckpointRecordCallback, CheckpointRecorder, resolve_settings])
def test_an_unknown_argument_is_refused_with_a_suggestion(make: Any) -> None:
    with pytest.raises(TypeError, match=r"flush_timout \(did you mean flush_timeout\?\)"):
        make(flush_timout=1)
    with pytest.raises(
        TypeError, match=r"home \(did you mean store\?\)"
    ):  # the field's name, not its argument
        make(home="/x")
    with pytest.raises(TypeError, match=r"unknown setting\(s\): colour\. The settings are store, sinks"):
        make(colour="blue")
    if make is not resolve_settings:  # the one positional argument is a Settings, nothing else
        with pytest.raises(TypeError, match=r"settings must be a Settings .*not str; give a store directory"):
            make("/tmp/store")


def test_arguments_are_parsed_by_the_table_and_errors_name_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"flush_timeout='abc' is not a number of seconds"):
        CheckpointRecordCallback(flush_timeout="abc")
    with pytest.raises(ConfigurationError, match=r"storage_parallel=0 must be 1 or more"):
        CheckpointRecorder(storage_parallel=0)
    with pytest.raises(ConfigurationError, match="sinks must be a list of sinks or sink URLs, not HttpSink"):
        CheckpointRecorder(sinks=HttpSink("http://127.0.0.1:9/x"))
    with pytest.raises(ConfigurationError, match="storage must be an fsspec URL or a StorageConfig, not int"):
        CheckpointRecorder(storage=7)
    settings = resolve_settings().replace(flush_timeout="7", record_every_node="on")
    assert (settings.flush_timeout, settings.record_every_node) == (7.0, True)


def test_settings_with_overrides_and_the_objects_the_arguments_always_took(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "open")
    sink = HttpSink("http://127.0.0.1:9/x")
    storage = StorageConfig("file://" + str(tmp_path / "files"), retention="mirror")
    settings = resolve_settings({"HOME": "/h", "CHECKPOINT_RECORDS_FLUSH_TIMEOUT": "9"}, job_name="base")
    with CheckpointRecorder(
        settings, store=store, sinks=[sink], storage=storage, flush_timeout=1
    ) as recorder:
        assert recorder.store is store and recorder.sinks == [sink]
        assert recorder.uploads.config is storage
        assert (recorder.flush_timeout, recorder.job_name) == (1.0, "base")
    callback = CheckpointRecordCallback(settings, store=tmp_path / "s")
    assert callback.recorder.store.home == tmp_path / "s" and callback.recorder.flush_timeout == 9.0
    callback.recorder.close()


def test_secrets_never_show_in_the_settings() -> None:
    settings = resolve_settings(
        {
            "HOME": "/h",
            "CHECKPOINT_RECORDS_TOKEN": "t0ken-secret",
            "CHECKPOINT_RECORDS_SERVER_TOKENS": "srv-secret",
            "CHECKPOINT_RECORDS_SIGNING_SECRET": SECRET,
        },
        storage="s3://AKIAKEY:aws-secret@bucket/p?sig=url-secret",
        storage_options={"secret": "option-secret"},
    )
    shown = repr(settings)
    assert "bucket/p" in shown and "token='***'" in shown and "signing_secret='***'" in shown
    hidden = ("t0ken", "srv-", "aws-", "AKIA", "url-", "option-", SECRET[6:14])
    assert not any(secret in shown for secret in hidden)
    assert SECRET[6:14] not in repr(settings.signing_secret) + str(settings.signing_secret)
    mlflow = repr(
        mlflow_environment({"MLFLOW_TRACKING_TOKEN": "ml-secret", "MLFLOW_TRACKING_PASSWORD": "pw-secret"})
    )
    assert "ml-secret" not in mlflow and "pw-secret" not in mlflow


@pytest.mark.parametrize(
    ("variable", "meant"),
    [
        ("CHECKPOINT_RECORDS_STORAGE_RETENTON", "CHECKPOINT_RECORDS_STORAGE_RETENTION"),
        ("CHECKPOINT_RECORDS_STORAGE_PARALEL", "CHECKPOINT_RECORDS_STORAGE_PARALLEL"),
        ("CHECKPOINT_RECORD_STORAGE", "CHECKPOINT_RECORDS_STORAGE"),
        ("CHECKPOINT_RECORDS_SERVER_TOKEN", "CHECKPOINT_RECORDS_SERVER_TOKENS"),
    ],
)
def test_a_mistyped_storage_or_server_variable_is_caught_like_the_others(
    variable: str, meant: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    suggestion = f"{variable} (did you mean {meant}?)"
    result = cli("serve", "--store", str(tmp_path / "s"), env={variable: "x"})
    assert result.returncode == 2 and suggestion in result.stderr, result.stderr
    monkeypatch.setenv(variable, "x")
    with pytest.raises(ConfigurationError, match=re.escape(suggestion)):
        CheckpointRecordCallback()


def test_help_and_the_docs_list_every_variable() -> None:
    helped = cli("--help")
    assert helped.returncode == 0
    readme = "".join(path.read_text() for path in (ROOT / "README.md", ROOT / "docs/reference.md"))
    for row in TABLE:
        if row.variable:
            assert f"  {row.variable} " in helped.stdout, row.variable
            assert f"`{row.variable}`" in readme, row.variable
        assert f"`{row.argument}`" in readme, row.argument
    assert "(default 5)" in helped.stdout  # defaults come from the table too


@pytest.mark.parametrize("value", ["1e9", "inf", "nan", "-1", "3601"])
def test_an_endless_flush_timeout_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigurationError, match="CHECKPOINT_RECORDS_FLUSH_TIMEOUT") as refused:
        resolve_settings({"CHECKPOINT_RECORDS_FLUSH_TIMEOUT": value, "HOME": "/h"})
    assert value in str(refused.value)
    with pytest.raises(ConfigurationError, match="flush_timeout="):
        resolve_settings({"HOME": "/h"}, flush_timeout=float(value))
    assert resolve_settings({"CHECKPOINT_RECORDS_FLUSH_TIMEOUT": "3600", "HOME": "/h"}).flush_timeout == 3600


def test_an_empty_home_is_an_error_not_the_working_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CHECKPOINT_RECORDS_HOME is empty"):
        resolve_settings({"CHECKPOINT_RECORDS_HOME": "", "HOME": str(tmp_path)})
    with pytest.raises(ConfigurationError, match="store is empty"):
        CheckpointRecorder(store="")
    with pytest.raises(ConfigurationError, match=r"HOME=''.*CHECKPOINT_RECORDS_HOME"):
        resolve_settings({"HOME": ""})
    with pytest.raises(ConfigurationError, match="HOME='relative'"):
        resolve_settings({"HOME": "relative", "XDG_CACHE_HOME": "also-relative"})


@pytest.mark.parametrize(
    "template",
    [
        "{step.__class__}",
        "{step:>100000000}",
        "{step!r}",
        "{job_name[0]}-{step}",
        "{0}-{step}",
        "{}-{step}",
        "{model}-{step}",
        "{job_name}",
        "{step",
    ],
)
def test_name_templates_may_only_use_plain_fields(template: str) -> None:
    with pytest.raises(ConfigurationError, match="CHECKPOINT_RECORDS_NAME_TEMPLATE"):
        resolve_settings({"CHECKPOINT_RECORDS_NAME_TEMPLATE": template, "HOME": "/h"})
    with pytest.raises(ConfigurationError, match="name_template="):
        CheckpointRecordCallback(name_template=template)


def test_plain_name_templates_are_accepted() -> None:
    template = "{job_name}/{job_id}/{node}-step{step}-{{literal}}"
    assert resolve_settings({"HOME": "/h"}, name_template=template).name_template == template


@pytest.mark.parametrize(
    ("variable", "meant"),
    [
        ("CHECKPOINT_RECORD_SINKS", "CHECKPOINT_RECORDS_SINKS"),
        ("CHECKPOINTS_RECORDS_TOKEN", "CHECKPOINT_RECORDS_TOKEN"),
        ("checkpoint_records_home", "CHECKPOINT_RECORDS_HOME"),
        ("CHECKPOINT_RECORDS_FLUSH_TIMOUT", "CHECKPOINT_RECORDS_FLUSH_TIMEOUT"),
        ("CHECKPOINT_RECORDS_SINK", "CHECKPOINT_RECORDS_SINKS"),
    ],
)
def test_a_mistyped_variable_gets_a_did_you_mean(variable: str, meant: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{variable} \\(did you mean {meant}\\?\\)"):
        resolve_settings({variable: "x", "HOME": "/h"})


def test_unrelated_variables_are_left_alone() -> None:
    resolve_settings({"HOME": "/h", "CHECKPOINT_DIR": "/x", "RECORDS": "1", "HF_HOME": "/y"})


def test_every_command_and_the_callback_treat_a_typo_the_same(
    monkeypatch: pytest.MonkeyPatch, isolated_store: Path
) -> None:
    env = {"CHECKPOINT_RECORD_SINKS": "http://127.0.0.1:9/x"}
    for command in (["list"], ["list", "--json"], ["jobs"], ["inspect", "x"], ["flush"], ["resend"]):
        result = cli(*command, env=env)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith(
            "checkpoint-records: unknown environment variable(s): CHECKPOINT_RECORD_SINKS "
            "(did you mean CHECKPOINT_RECORDS_SINKS?)"
        ), result.stderr
        assert result.stderr.count("checkpoint-records:") == 1
    assert not isolated_store.exists()  # nothing was created on the way to the error
    monkeypatch.setenv("CHECKPOINT_RECORD_SINKS", "http://127.0.0.1:9/x")
    with pytest.raises(ConfigurationError, match="did you mean CHECKPOINT_RECORDS_SINKS"):
        CheckpointRecordCallback()


def test_a_malformed_sink_url_is_a_configuration_error_without_its_secret() -> None:
    with pytest.raises(ConfigurationError, match="not a valid URL") as refused:
        CheckpointRecorder(sinks=["http://[::1/x?api_key=s3cret"])
    assert "s3cret" not in str(refused.value)
    result = cli("flush", "--sink", "http://[::1/x?api_key=s3cret")
    assert result.returncode == 2 and "not a valid URL" in result.stderr and "s3cret" not in result.stderr

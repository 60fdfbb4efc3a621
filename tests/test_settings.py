"""One settings table: argument > environment > default, errors naming the field, typos caught everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpoint_records import CheckpointRecordCallback, CheckpointRecorder, ConfigurationError
from checkpoint_records.settings import TABLE, Settings, environment, resolve_settings
from commands import cli


def test_an_argument_wins_over_its_variable_which_wins_over_the_default(tmp_path: Path) -> None:
    env = {"CHECKPOINT_RECORDS_FLUSH_TIMEOUT": "7", "CHECKPOINT_RECORDS_HOME": str(tmp_path / "env")}
    assert resolve_settings(env).flush_timeout == 7.0
    assert resolve_settings(env, flush_timeout=2).flush_timeout == 2.0
    assert resolve_settings(env).home == tmp_path / "env"
    assert resolve_settings(env, home=tmp_path / "arg").home == tmp_path / "arg"
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


def test_the_table_and_the_settings_agree() -> None:
    assert [setting.name for setting in TABLE] == list(Settings.__dataclass_fields__)
    assert all(setting.variable.startswith("CHECKPOINT_RECORDS_") and setting.help for setting in TABLE)
    # What is configured elsewhere (the server's tokens, say) is read through environment(), same checks.
    assert environment({"CHECKPOINT_RECORDS_HOME": "/h", "HOME": "/h"}) == {"HOME": "/h"}
    with pytest.raises(ConfigurationError, match="did you mean CHECKPOINT_RECORDS_TOKEN"):
        environment({"CHECKPOINT_RECORDS_TOKNE": "x"})


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

"""Config validation: every error names the file and the key; the CLI prints one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from agent_testkit import ListSource
from cdrstats_agent.config import load_config, parse_config, sample_config
from cdrstats_agent.errors import ConfigError
from cdrstats_agent.options import Options
from cdrstats_agent.plugin import Source


class FakePlugin:
    name = "fake"
    description = "a plugin for config tests"
    sample_config = '[[source]]\nname = "demo"\nplugin = "fake"\ntotal = 10\n'

    def create_source(self, name: str, options: Mapping[str, Any]) -> Source:
        opts = Options(options)
        total = opts.integer("total", 10, minimum=0)
        opts.finish()
        return ListSource(name, total)


PLUGINS = {"fake": FakePlugin()}

GOOD = """
[agent]
state_dir = "/tmp/x"
log_level = "debug"
spool_max_mb = 64
spool_sync = "normal"

[collector]
urls = ["http://127.0.0.1:8080/", "https://c2.example:8443"]
batch_max_cdrs = 1000
batch_max_age_s = 0.5
timeout_s = 10
backoff_max_s = 30

[[source]]
name = "pbx1-master"
plugin = "fake"
total = 5

[[source]]
name = "pbx2"
plugin = "fake"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, plugins=PLUGINS)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    return message[len(f"{path}: ") :]


def test_good_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), plugins=PLUGINS)
    assert str(config.agent.state_dir) == "/tmp/x"
    assert (config.agent.log_level, config.agent.spool_max_mb) == ("debug", 64)
    assert config.agent.spool_max_bytes == 64 << 20 and config.agent.spool_sync == "normal"
    c = config.collector
    assert c.urls == ("http://127.0.0.1:8080", "https://c2.example:8443")
    assert (c.batch_max_cdrs, c.batch_max_age_s, c.timeout_s, c.backoff_max_s) == (
        1000,
        0.5,
        10.0,
        30.0,
    )
    assert [(s.name, s.plugin) for s in config.sources] == [
        ("pbx1-master", "fake"),
        ("pbx2", "fake"),
    ]
    assert isinstance(config.sources[0].source, ListSource)
    assert config.sources[0].source.total == 5
    assert dict(config.sources[0].options) == {"total": 5}


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), plugins=PLUGINS)
    assert str(config.agent.state_dir) == "/var/lib/cdrstats-agent"
    assert config.agent.spool_sync == "full" and config.agent.spool_max_mb == 512
    assert config.collector.urls == () and config.collector.batch_max_cdrs == 5000
    assert config.collector.batch_max_age_s == 1.0 and config.collector.backoff_max_s == 60.0
    assert config.sources == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[source]]\nplugin = "fake"\n', "source[0].name: is required and missing"),
        ('[[source]]\nname = "a"\n', "source[0].plugin: is required and missing"),
        ("[agent]\nspool_max_mb = 'big'\n", "agent.spool_max_mb: must be an integer, got str"),
        ("[agent]\nspool_max_mb = 0\n", "agent.spool_max_mb: must be at least 1, got 0"),
        ("[agent]\nstate_dir = 3\n", "agent.state_dir: must be a string, got int 3"),
        ("[agent]\nspool_sync = 'off'\n", "agent.spool_sync: must be one of full, normal"),
        ("[agent]\nlog_level = 'loud'\n", "agent.log_level: must be one of debug, info"),
        ("[agent]\ncolour = 1\n", "agent.colour: is not a known option"),
        ("[agnet]\n", "agnet: is not a known option"),
        ("agent = 1\n", "agent: must be a table, got int"),
        ("[collector]\nurls = 'http://x'\n", "collector.urls: must be a list of strings"),
        ("[collector]\nurls = ['ftp://x']\n", "collector.urls[0]: 'ftp://x' must be an http"),
        ("[collector]\nurls = ['http://a', 'http://a']\n", "collector.urls: lists the same URL"),
        ("[collector]\nbatch_max_cdrs = 0\n", "collector.batch_max_cdrs: must be at least 1"),
        ("[collector]\ntimeout_s = 0\n", "collector.timeout_s: must be greater than 0"),
        ("[collector]\nbackoff_max_s = true\n", "collector.backoff_max_s: must be a number, got a"),
        ("[collector]\nretries = 3\n", "collector.retries: is not a known option"),
        ("source = 1\n", "source: must be an array of tables"),
        ("source = [1]\n", "source[0]: must be a table, got int"),
        (
            '[[source]]\nname = "a"\nplugin = "cvs"\n',
            "source[0].plugin: no plugin named 'cvs' (installed: fake)",
        ),
        (
            '[[source]]\nname = "a"\nplugin = "fake"\ntotl = 3\n',
            "source[0].totl: is not a known option",
        ),
        (
            '[[source]]\nname = "a"\nplugin = "fake"\ntotal = "x"\n',
            "source[0].total: must be an integer, got str",
        ),
        ('[[source]]\nname = "a b"\nplugin = "fake"\n', "source[0].name: 'a b' is not a valid"),
        (
            '[[source]]\nname = "a"\nplugin = "fake"\n[[source]]\nname = "a"\nplugin = "fake"\n',
            "source[1].name: 'a' is already the name of source[0]",
        ),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text).startswith(expected)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[agent]\nlog_level = 'info'\nspool_max_mb = = 3\n")
    assert message.startswith("line 3, column 16: TOML syntax error:")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.toml: config file not found"):
        load_config(tmp_path / "nope.toml", plugins=PLUGINS)


def test_a_plugin_that_crashes_while_validating(tmp_path: Path) -> None:
    class Broken(FakePlugin):
        def create_source(self, name: str, options: Mapping[str, Any]) -> Source:
            raise KeyError("oops")

    with pytest.raises(ConfigError, match=r"source\[0\]: plugin 'fake' failed to validate"):
        parse_config('[[source]]\nname = "a"\nplugin = "fake"\n', plugins={"fake": Broken()})


def test_sample_config_is_a_valid_config(tmp_path: Path) -> None:
    text = sample_config(FakePlugin())
    config = load_config(write(tmp_path, text), plugins=PLUGINS)
    assert [s.name for s in config.sources] == ["demo"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdrstats_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", ["run", "check", "status"])
def test_cli_prints_one_line_and_exits_2(tmp_path: Path, command: str) -> None:
    path = write(tmp_path, '[agent]\nspool_max_mb = "lots"\n')
    result = run_cli(command, "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"{path}: agent.spool_max_mb: must be an integer, got str 'lots'\n"


def test_cli_unknown_plugin_via_entry_points(tmp_path: Path) -> None:
    path = write(tmp_path, '[[source]]\nname = "pbx1"\nplugin = "cvs"\n')
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: source[0].plugin: no plugin named 'cvs' (installed:")
    assert result.stderr.count("\n") == 1


def test_cli_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent\n")
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: line 1, column 7: TOML syntax error")


def test_cli_missing_config(tmp_path: Path) -> None:
    result = run_cli("check", "--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert "absent.toml: config file not found" in result.stderr


def test_cli_sample_config_unknown_plugin() -> None:
    result = run_cli("sample-config", "nosuchplugin")
    assert result.returncode == 2
    assert "no plugin named 'nosuchplugin'" in result.stderr


def test_every_option_and_command_is_documented() -> None:
    from dataclasses import fields

    from cdrstats_agent.cli import _parser
    from cdrstats_agent.config import AgentSettings, CollectorSettings

    doc = (Path(__file__).resolve().parents[2] / "docs" / "agent.md").read_text()
    for settings in (AgentSettings, CollectorSettings):
        for f in fields(settings):
            assert f"| `{f.name}` |" in doc, f"docs/agent.md does not document {f.name}"
    sub = next(a for a in _parser()._actions if a.dest == "command")
    assert sub.choices is not None
    for command in sub.choices:
        assert f"| `{command}" in doc, f"docs/agent.md does not document {command}"

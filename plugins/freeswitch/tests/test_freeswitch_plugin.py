"""The plugin as the agent sees it: entry point, sample configs, options, actions, docs."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cdrstats_agent.errors import ConfigError
from cdrstats_agent.plugin import Source, discover
from cdrstats_freeswitch.plugin import (
    SAMPLES,
    FreeswitchLiveSource,
    FreeswitchPlugin,
    FreeswitchSource,
)

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
DOC = HERE.parents[2] / "docs" / "plugins" / "freeswitch.md"


def test_entry_point_finds_the_plugin() -> None:
    plugin = discover()["freeswitch"]
    assert isinstance(plugin, FreeswitchPlugin)
    assert "Event Socket" in plugin.description


def _uncomment(sample: str) -> str:
    """The sample with its commented settings turned on (`# key = value` lines)."""
    out = []
    for line in sample.splitlines():
        m = re.match(r"^# ?(\[\[source\]\]|\[source\.esl\]|[a-z_]+ = .*)$", line)
        out.append(m.group(1) if m else line)
    return "\n".join(out)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_each_sample_builds_a_source(kind: str) -> None:
    """Every option of every kind, uncommented, is accepted (so none is misspelt)."""
    doc = tomllib.loads(_uncomment(SAMPLES[kind]))
    (table,) = doc["source"]
    if kind != "csv":
        assert "esl" not in table
    source = FreeswitchPlugin().create_source(table.pop("name"), table)
    assert isinstance(source, Source) and source.store.__class__.__name__.lower().startswith(kind)
    if kind == "csv":
        assert isinstance(source, FreeswitchLiveSource)


def test_sample_config_command_prints_every_kind() -> None:
    done = subprocess.run(
        [Path(sys.executable).parent / "cdrstats-agent", "sample-config", "freeswitch"],
        capture_output=True,
        text=True,
        check=True,
    )
    for kind in SAMPLES:
        assert f'store = "{kind}"' in done.stdout
    doc = tomllib.loads(done.stdout)  # the printed file is valid TOML with one csv source
    assert [s["store"] for s in doc["source"]] == ["csv"]


def test_no_native_block_action() -> None:
    """FreeSWITCH has no runtime blocklist: the agent's host firewall backend blocks."""
    for table in ({"store": "csv"}, {"store": "csv", "esl": {}}):
        source = FreeswitchPlugin().create_source("fs", table)
        assert isinstance(source, FreeswitchSource)
        assert "block_ip" not in source.actions() and "unblock_ip" not in source.actions()
    assert not hasattr(FreeswitchPlugin().create_source("fs", {"store": "csv"}), "live")


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ({}, "store", "is required"),
        ({"store": "mysql"}, "store", "must be one of"),
        ({"store": "pg"}, "dsn", "is required"),
        ({"store": "sqlite", "interval": 0}, "interval", "at least"),
        ({"store": "http", "port": 70000}, "port", "TCP port"),
        ({"store": "csv", "country_code": "033"}, "country_code", "country calling code"),
        ({"store": "csv", "national_prefix": "x"}, "national_prefix", "digits"),
        ({"store": "csv", "esl": {"pasword": "x"}}, "esl.pasword", "not a known option"),
        ({"store": "csv", "esl": {"port": "8021"}}, "esl.port", "an integer"),
        ({"store": "csv", "esl": "127.0.0.1"}, "esl", "a table"),
        ({"store": "csv", "esl": {"host": "::1"}}, "esl.host", "IPv4"),
    ],
)
def test_option_errors_name_the_key(table: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        FreeswitchPlugin().create_source("fs", table)
    assert info.value.key == key and problem in str(info.value)


def test_every_option_is_documented() -> None:
    options = set()
    for sample in SAMPLES.values():
        options |= set(re.findall(r"^#? ?([a-z_]+) =", sample, flags=re.MULTILINE))
    options -= {"name", "plugin"}
    readme = README.read_text()
    doc = DOC.read_text()
    for option in sorted(options):
        assert f"`{option}`" in readme, f"README.md does not document `{option}`"
    assert "block_ip" in doc and "firewall" in doc

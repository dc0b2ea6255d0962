"""The plugin as the agent sees it: entry point, sample configs, the source's interface."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cdrstats_agent.plugin import Source, discover, supports_live
from cdrstats_asterisk.plugin import (
    SAMPLE_CONFIG,
    SAMPLES,
    AsteriskLiveSource,
    AsteriskPlugin,
    AsteriskSource,
)
from cdrstats_asterisk.table import TableSource


def test_registered_under_the_entry_point() -> None:
    plugin = discover()["asterisk"]
    assert isinstance(plugin, AsteriskPlugin)


@pytest.mark.parametrize("store", sorted(SAMPLES))
def test_each_sample_builds_its_source(store: str) -> None:
    (table,) = tomllib.loads(SAMPLES[store])["source"]
    assert table["store"] == store
    source = AsteriskPlugin().create_source(table.pop("name"), table)
    assert isinstance(source, Source)
    assert source.store == store
    if store != "csv":
        assert isinstance(source.reader, TableSource)


def test_sample_config_is_valid_toml_with_every_store_documented() -> None:
    (table,) = tomllib.loads(SAMPLE_CONFIG)["source"]
    assert table["store"] == "csv"
    for store in SAMPLES:
        assert f'store = "{store}"' in SAMPLE_CONFIG
    # the commented [source.ami] block builds once uncommented
    ami_lines = [
        line[2:] for line in SAMPLES["csv"].splitlines() if line.startswith("# ") and "=" in line
    ]
    assert any(line.startswith("username") for line in ami_lines)


def test_cli_prints_the_sample() -> None:
    agent = Path(sys.executable).parent / "cdrstats-agent"
    out = subprocess.run(
        [agent, "sample-config", "asterisk"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert 'plugin = "asterisk"' in out.stdout


def test_ami_block_gives_a_live_source_without_native_actions() -> None:
    source = AsteriskPlugin().create_source(
        "pbx",
        {"store": "csv", "path": "/nonexistent/Master.csv",
         "ami": {"username": "cdrstats", "secret": "s", "port": 5039}},
    )  # fmt: skip
    assert isinstance(source, AsteriskLiveSource)
    assert source.ami.port == 5039
    assert source.actions() == {}  # block_ip: the agent's firewall backend
    without = AsteriskPlugin().create_source("pbx", {"store": "csv"})
    assert isinstance(without, AsteriskSource) and not supports_live(without)
    assert supports_live(source)

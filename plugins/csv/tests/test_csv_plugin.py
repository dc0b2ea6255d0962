"""The plugin as the agent sees it: entry point, sample config, options, check(), close()."""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import cdrstats_agent
import cdrstats_csv
import pytest
from cdrstats_agent.errors import ConfigError, SourceError
from cdrstats_agent.plugin import Source, discover
from cdrstats_csv.plugin import OPTIONS, CsvPlugin, CsvSource
from csv_testkit import LiveReader, append, drain, keys_of, make_source

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
SAMPLE_TOML = HERE.parent / "sample.toml"
GENERIC = {"fields": {"start": 2}, "key": 1, "time_format": "epoch"}


def test_entry_point_finds_the_plugin() -> None:
    plugin = discover()["csv"]
    assert isinstance(plugin, CsvPlugin)
    assert plugin.name == "csv" and "CSV" in plugin.description


def test_source_satisfies_the_protocol(tmp_path: Path) -> None:
    source = make_source({**GENERIC, "path": str(tmp_path)})
    assert isinstance(source, Source) and source.name == "test"


def _documented_keys(text: str) -> set[str]:
    return set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE)) - {"name", "plugin"}


def test_sample_config_builds_a_source_and_lists_every_option() -> None:
    sample = CsvPlugin.sample_config
    table = tomllib.loads(sample)["source"][0]
    assert table["plugin"] == "csv"
    assert isinstance(CsvPlugin().create_source(table["name"], table), CsvSource)
    assert _documented_keys(sample) == set(OPTIONS)


def test_sample_toml_and_readme_cover_every_option() -> None:
    sample = SAMPLE_TOML.read_text(encoding="utf-8")
    for table in tomllib.loads(sample)["source"]:
        CsvPlugin().create_source(table["name"], table)
    readme = README.read_text(encoding="utf-8")
    missing = [key for key in OPTIONS if f"`{key}`" not in readme]
    assert missing == []


def test_options_are_validated_without_io(tmp_path: Path) -> None:
    nowhere = tmp_path / "does" / "not" / "exist"
    source = CsvPlugin().create_source(
        "s", {"plugin": "csv", "name": "s", "path": str(nowhere), "preset": "asterisk"}
    )
    assert source.path == str(nowhere) and not nowhere.parent.exists()
    with pytest.raises(ConfigError) as caught:
        CsvPlugin().create_source("s", {"preset": "asterisk"})
    assert caught.value.key == "path" and "required" in str(caught.value)


async def test_check_accepts_missing_file_in_existing_directory(tmp_path: Path) -> None:
    await make_source({**GENERIC, "path": str(tmp_path / "Master.csv")}).check()
    (tmp_path / "Master.csv").write_text("k1,1\n")
    await make_source({**GENERIC, "path": str(tmp_path / "Master.csv")}).check()
    await make_source({**GENERIC, "path": str(tmp_path)}).check()


async def test_check_reports_missing_directory_and_odd_files(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "Master.csv"
    with pytest.raises(SourceError, match=re.escape(str(missing)) + ": does not exist"):
        await make_source({**GENERIC, "path": str(missing)}).check()
    with pytest.raises(SourceError, match="/dev/null: neither a regular file nor a directory"):
        await make_source({**GENERIC, "path": "/dev/null"}).check()


_CHECK_SCRIPT = """
import asyncio, sys
from cdrstats_csv.plugin import CsvPlugin
source = CsvPlugin().create_source("s", {"path": sys.argv[1], "preset": "asterisk"})
try:
    asyncio.run(source.check())
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print("OK")
"""


def _check_as_unprivileged(path: Path) -> str:
    """Run check() as a user the file permissions apply to (root reads everything)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join(
            str(Path(str(m.__file__)).resolve().parents[1]) for m in (cdrstats_csv, cdrstats_agent)
        ),
    }
    if os.geteuid() != 0:
        command = [sys.executable, "-c", _CHECK_SCRIPT, str(path)]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no `nobody` user to drop to")
    for python in (
        sys.executable,
        "/usr/bin/python3",
        "/usr/local/bin/python3",
        shutil.which("python3"),
    ):
        if not python:
            continue
        try:
            done = subprocess.run(
                [python, "-c", _CHECK_SCRIPT, str(path)],
                user="nobody",
                env=env,
                cwd="/",
                capture_output=True,
                text=True,
                check=False,
            )
        except PermissionError:
            continue  # an interpreter under /root, say
        if done.returncode == 0:
            return done.stdout.strip()
    pytest.skip("no Python 3.11+ interpreter that the `nobody` user may run")


def test_check_names_the_path_and_the_permission_problem() -> None:
    base = Path(tempfile.mkdtemp(prefix="csvcheck-"))
    try:
        base.chmod(0o755)
        secret = base / "Master.csv"
        secret.write_text("x\n")
        secret.chmod(0o600)
        message = _check_as_unprivileged(secret)
        assert message.startswith(f"SourceError {secret}: cannot read: permission denied")
        assert "mode 0600" in message and "the agent runs as" in message
        closed = base / "closed"
        closed.mkdir(mode=0o700)
        message = _check_as_unprivileged(closed)
        assert message.startswith(f"SourceError {closed}: cannot list directory")
        assert "mode 0700" in message
        secret.chmod(0o644)
        assert _check_as_unprivileged(secret) == "OK"
    finally:
        for child in base.iterdir():
            child.chmod(0o700)
            (child.rmdir if child.is_dir() else child.unlink)()
        base.rmdir()


async def test_checkpoint_format(tmp_path: Path) -> None:
    path = tmp_path / "cdr.csv"
    path.write_text("k1,1700000001\n")
    results = await drain(make_source({**GENERIC, "path": str(path)}))
    doc = json.loads(results[-1].checkpoint)
    assert doc["v"] == 1 and isinstance(doc["scanned_at"], float)
    (entry,) = doc["files"]
    st = path.stat()
    assert entry["path"] == str(path) and (entry["dev"], entry["ino"]) == (st.st_dev, st.st_ino)
    assert (entry["offset"], entry["line"], entry["fp_len"]) == (14, 1, 14)
    assert set(entry) == {
        "path",
        "dev",
        "ino",
        "offset",
        "line",
        "fp",
        "fp_len",
        "tail",
        "tail_len",
    }


async def test_rejected_rows_are_logged_with_file_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cdr.csv"
    path.write_text("k1,1700000001\nk2,never\n")
    with caplog.at_level(logging.WARNING, logger="cdrstats.plugins.csv"):
        source = make_source({**GENERIC, "path": str(path)})
        results = await drain(source)
    assert keys_of(results) == ["k1"]
    events = [r for r in caplog.records if r.getMessage() == "row_rejected"]
    assert len(events) == 1
    fields = events[0].cdrstats_fields  # type: ignore[attr-defined]
    assert fields["where"] == f"{path}:2" and "column 2" in fields["reason"]
    assert source.stats == {"records": 2, "cdrs": 1, "rejected": 1, "quote_recovered": 0}


async def test_close_releases_files(tmp_path: Path) -> None:
    path = tmp_path / "cdr.csv"
    path.write_text("k1,1700000001\n")
    source = make_source({**GENERIC, "path": str(path)})
    reader = LiveReader(source)
    before = len(os.listdir("/proc/self/fd"))
    assert keys_of(await reader.until_idle()) == ["k1"]
    assert len(os.listdir("/proc/self/fd")) == before + 1
    await source.close()
    assert len(os.listdir("/proc/self/fd")) == before
    append(path, "k2,1700000002\n")  # the reader goes on if polled again (reopens)
    assert keys_of(await reader.until_idle()) == ["k2"]
    await reader.close()
    assert len(os.listdir("/proc/self/fd")) == before

"""Docs that cannot drift: every option in the README, every kamailio.cfg snippet in the rig."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from cdrstats_kamailio import config
from cdrstats_kamailio.records import MAPPABLE_FIELDS
from kamailio_testkit import ACC_EXTRA_COLUMNS, CDR_EXTRA_COLUMNS, kamailio_cfg

PLUGIN = Path(__file__).resolve().parents[1]
README = (PLUGIN / "README.md").read_text()
PAGE = (PLUGIN.parents[1] / "docs" / "plugins" / "kamailio.md").read_text()


def option_keys() -> set[str]:
    source = Path(config.__file__).read_text()
    keys = set(re.findall(r'opts\.\w+\(\s*"([a-z_]+)"', source))
    keys |= set(re.findall(r'\("([a-z_]+_table)", "', source))
    return keys


def test_every_option_and_field_is_in_the_readme() -> None:
    keys = option_keys()
    assert {"db_url", "records", "rpc_url", "ban_table", "acc_table"} <= keys
    documented = {k for k in keys if f"`{k}`" in README}
    if "`[source.fields]`" in README:
        documented.add("fields")
    missing = sorted(keys - documented)
    assert missing == [], f"options not documented in plugins/kamailio/README.md: {missing}"
    fields = [f for f in MAPPABLE_FIELDS if f"`{f}`" not in README]
    assert fields == [], f"fields not documented: {fields}"


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block of a Markdown text."""
    blocks: list[tuple[str, str]] = []
    lang: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        mark = re.match(r"^\s*```(\w*)\s*$", line)
        if mark and lang is None:
            lang, body = str(mark[1]), []
        elif mark and lang is not None:
            blocks.append((lang, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def test_cfg_snippets_of_the_docs_are_what_the_tests_run() -> None:
    """Each line of the page's kamailio.cfg snippets is a line of the rig's kamailio.cfg."""
    cfg = kamailio_cfg("mysql://u@h/db", 5060, 5071, {"answer": 5090})
    cfg_lines = {line.strip() for line in cfg.splitlines()}
    blocks = fenced_blocks(PAGE)
    assert len(blocks) >= 8
    checked = 0
    for lang, block in blocks:
        if lang == "sql":
            columns = re.findall(r"ADD COLUMN (\w+) ", block)
            assert set(columns) == {c for c, _ in ACC_EXTRA_COLUMNS}
            continue
        for line in block.splitlines():
            text = line.strip()
            if not text or text == "}":
                continue
            assert text in cfg_lines, f"docs snippet line not in the tested kamailio.cfg: {text}"
            checked += 1
    assert checked > 40
    for column, _ in CDR_EXTRA_COLUMNS:
        assert f"{column}=$dlg_var(" in PAGE


def test_sample_config_command_prints_the_plugin_sample() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "cdrstats-agent"), "sample-config", "kamailio"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert 'plugin = "kamailio"' in done.stdout and "db_url" in done.stdout

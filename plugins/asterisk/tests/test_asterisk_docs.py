"""The README and docs page stay true: every option documented and accepted, the example
output is what the plugin gives."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asterisk_testkit import REPO, drain, make_source
from cdrstats_agent.errors import ConfigError
from cdrstats_agent.model import Direction, Disposition
from cdrstats_asterisk.plugin import OPTIONS

README = (REPO / "plugins" / "asterisk" / "README.md").read_text()
PAGE = (REPO / "docs" / "plugins" / "asterisk.md").read_text()

VALUES: dict[str, Any] = {
    "store": "csv", "timezone": "UTC", "usegmtime": False, "trunks": ["c"], "country_code": "33",
    "international_prefix": "00", "national_prefix": "0", "disposition_map": {"X": "FAILED"},
    "src_ip_field": "userfield", "interval": 1.0, "chunk_cdrs": 10, "start_at": "end",
    "ami": {"username": "u", "secret": "s"}, "path": "/tmp/x", "columns": 21,
    "encoding": "utf-8", "pattern": "*.csv", "exclude": [], "host": "h", "port": 1,
    "user": "u", "password": "p", "database": "d", "unix_socket": "/run/s", "table": "cdr",
    "id_column": "id", "lookback": 5, "connect_timeout": 2.0, "conninfo": "host=x",
}  # fmt: skip


@pytest.mark.parametrize("group", sorted(OPTIONS))
def test_every_option_is_documented_and_accepted(group: str) -> None:
    for option in OPTIONS[group]:
        assert f"`{option}`" in README, f"{option} is not in plugins/asterisk/README.md"
    if group in ("common", "ami"):
        return
    table = {k: VALUES[k] for k in OPTIONS[group] if k != "store"}
    if group != "csv":
        table.pop("src_ip_field", None)
    source = make_source({"store": group, **table})
    assert source.store == group
    with pytest.raises(ConfigError, match="is not a known option"):
        make_source({"store": group, **table, "no_such_option": 1})


def test_common_and_ami_options_are_accepted() -> None:
    table = {k: VALUES[k] for k in OPTIONS["common"]}
    table["ami"] = {k: VALUES.get(k, 1.0) for k in OPTIONS["ami"]}
    table["ami"].update(port=5038, username="u", secret="s", auth_failures=False)
    source = make_source(table)
    assert source.ami is not None and source.ami.backoff_max == 1.0


async def test_the_readme_example(tmp_path: Path) -> None:
    (line,) = re.findall(r'^"acme",.*$', README, flags=re.M)
    path = tmp_path / "Master.csv"
    path.write_text(line + "\n")
    source = make_source({"store": "csv", "path": str(path), "timezone": "Europe/Paris",
                          "trunks": ["carrier"]})  # fmt: skip
    (cdr,) = (await drain(source, None, want=1)).cdrs
    assert cdr.key == "1772445600.1:7"
    assert (cdr.start, cdr.answer, cdr.end) == (
        datetime(2026, 3, 2, 10, 0, tzinfo=UTC), datetime(2026, 3, 2, 10, 0, 5, tzinfo=UTC),
        datetime(2026, 3, 2, 10, 1, 5, tzinfo=UTC),
    )  # fmt: skip
    assert (cdr.duration, cdr.billsec, cdr.ring_time) == (65, 60, 5)
    assert cdr.disposition is Disposition.ANSWERED
    assert (cdr.caller, cdr.caller_name, cdr.callee) == ("1000", "Doe, John", "0612345678")
    assert (cdr.trunk, cdr.direction) == ("carrier", Direction.OUTBOUND)
    assert cdr.call_group == "1772445600.1"


def test_docs_page_is_linked_and_names_the_block_ip_method() -> None:
    plugins = (REPO / "docs" / "plugins.md").read_text()
    assert "(plugins/asterisk.md)" in plugins
    assert "host firewall backend" in PAGE and "type = acl" in PAGE

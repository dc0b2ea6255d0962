"""store = "csv": cdr_csv's Master.csv in its three layouts, through the csv plugin's follower."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from asterisk_testkit import COLUMNS_21, REFERENCE, csv_line, drain, make_source, row
from cdrstats_agent.model import Direction, Disposition

pytestmark = pytest.mark.timeout(60)

PARIS = ZoneInfo("Europe/Paris")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


async def test_reference_master_csv_18_columns(tmp_path: Path) -> None:
    source = make_source(
        {"store": "csv", "path": str(REFERENCE / "testsuite_self_test_Master.csv"),
         "usegmtime": True}
    )  # fmt: skip
    got = await drain(source, None, want=2)
    assert not got.rejected
    first, second = got.cdrs
    assert first.key == "1270167992.0" and second.key == "1270168442.0"
    assert first.start == utc(2010, 4, 2, 0, 26, 32)
    assert first.end == utc(2010, 4, 2, 0, 26, 39)
    assert (first.duration, first.billsec) == (7, 7)
    assert first.disposition is Disposition.ANSWERED
    assert first.callee == "1"
    assert first.trunk is None  # Console/dsp is not a peer
    assert first.extra["amaflags"] == "DOCUMENTATION"


async def test_three_layouts_in_one_file_and_edge_values(tmp_path: Path) -> None:
    full = [
        row("1700000000.1", clid='"Doe, John "JD"" <+33123456789>', src="+33123456789",
            linkedid="1700000000.1", sequence=11),
        row("1700000000.2", clid='"Zoë Ångström 李" <2000>', src="2000", disposition="NO ANSWER",
            answer="", billsec=0, duration=30, end="2026-03-02 10:00:30", sequence=12),
        row("1700000000.3", disposition="BUSY", answer="", billsec=0, sequence=13),
        row("1700000000.4", disposition="CONGESTION", answer="", billsec=0, sequence=14),
        row("1700000000.5", disposition="CANCEL", answer="", billsec=0, sequence=15),
        row("1700000000.6", disposition="FAILED", answer="", billsec=0, sequence=16),
    ]  # fmt: skip
    lines = [csv_line(r) for r in full]
    lines.append(csv_line(row("1700000001.1", sequence=17), COLUMNS_21[:18]))
    lines.append(csv_line(row("1700000002.1", src="3000"), COLUMNS_21[:16]))
    path = tmp_path / "Master.csv"
    path.write_text("".join(lines), encoding="utf-8")
    got = await drain(make_source({"store": "csv", "path": str(path), "timezone": "UTC"}),
                      None, want=8)  # fmt: skip
    assert not got.rejected
    by = {c.extra.get("uniqueid", c.key): c for c in got.cdrs}
    quoted = got.cdrs[0]
    assert quoted.key == "1700000000.1:11"
    assert quoted.caller_name == 'Doe, John "JD"'
    assert quoted.caller == "+33123456789"
    assert quoted.call_group == "1700000000.1"
    unanswered = got.cdrs[1]
    assert unanswered.caller_name == "Zoë Ångström 李"
    assert unanswered.answer is None and unanswered.billsec == 0
    assert unanswered.disposition is Disposition.NO_ANSWER
    assert unanswered.ring_time == 30
    assert [c.disposition for c in got.cdrs[2:6]] == [
        Disposition.BUSY, Disposition.FAILED, Disposition.CANCELLED, Disposition.FAILED,
    ]  # fmt: skip
    eighteen, sixteen = got.cdrs[6], got.cdrs[7]
    assert eighteen.key == "1700000001.1" and eighteen.call_group is None
    assert len(sixteen.key) == 64 and sixteen.caller == "3000"  # content hash
    assert by  # every row mapped


async def test_forced_layout_rejects_other_rows_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "Master.csv"
    path.write_text(csv_line(row("1.1")) + csv_line(row("1.2"), COLUMNS_21[:18]))
    got = await drain(make_source({"store": "csv", "path": str(path), "columns": 21}), None,
                      want=2)  # fmt: skip
    assert [c.key for c in got.cdrs] == ["1.1:1"]
    (bad,) = got.rejected
    assert bad.where == f"{path}:2"
    assert "has 18 columns, expected 21" in bad.reason


async def test_transfer_rows_share_a_linkedid(tmp_path: Path) -> None:
    # A blind transfer: the caller's leg to 200, then the transferred leg to 300.
    legs = [
        row("1700000100.10", dst="200", dstchannel="PJSIP/200-00000011", linkedid="1700000100.10",
            sequence=40, end="2026-03-02 10:00:20", duration=20, billsec=15),
        row("1700000100.12", dst="300", channel="PJSIP/200-00000011",
            dstchannel="PJSIP/300-00000013", linkedid="1700000100.10", sequence=41),
        row("1700000100.10", dst="300", dstchannel="PJSIP/300-00000013",
            linkedid="1700000100.10", sequence=42, start="2026-03-02 10:00:20",
            answer="2026-03-02 10:00:25"),
    ]  # fmt: skip
    path = tmp_path / "Master.csv"
    path.write_text("".join(csv_line(r) for r in legs))
    got = await drain(make_source({"store": "csv", "path": str(path)}), None, want=3)
    assert {c.call_group for c in got.cdrs} == {"1700000100.10"}
    assert [c.key for c in got.cdrs] == [
        "1700000100.10:40", "1700000100.12:41", "1700000100.10:42",
    ]  # fmt: skip


async def test_local_time_across_the_end_of_dst(tmp_path: Path) -> None:
    # Paris, 2026-10-25: 03:00 CEST becomes 02:00 CET. A call from 02:50 CEST (00:50Z) to
    # 02:10 CET (01:10Z): 20 minutes, with an end that reads earlier than its start.
    r = row("1793000000.1", start="2026-10-25 02:50:00", answer="2026-10-25 02:50:10",
            end="2026-10-25 02:10:00", duration=1200, billsec=1190)  # fmt: skip
    path = tmp_path / "Master.csv"
    path.write_text(csv_line(r))
    got = await drain(make_source({"store": "csv", "path": str(path),
                                   "timezone": "Europe/Paris"}), None, want=1)  # fmt: skip
    (cdr,) = got.cdrs
    assert cdr.start == utc(2026, 10, 25, 0, 50)
    assert cdr.answer == utc(2026, 10, 25, 0, 50, 10)
    assert cdr.end == utc(2026, 10, 25, 1, 10)


async def test_trunk_direction_and_source_ip_from_userfield(tmp_path: Path) -> None:
    rows = [
        row("1.1", channel="PJSIP/carrier-0000001", dstchannel="PJSIP/100-00000002",
            userfield="203.0.113.7"),
        row("1.2", channel="PJSIP/100-00000003", dstchannel="PJSIP/carrier-00000004",
            userfield="not an ip"),
        row("1.3", channel="PJSIP/100-00000005", dstchannel="PJSIP/101-00000006"),
    ]  # fmt: skip
    path = tmp_path / "Master.csv"
    path.write_text("".join(csv_line(r) for r in rows))
    source = make_source({"store": "csv", "path": str(path), "trunks": ["carrier"],
                          "src_ip_field": "userfield"})  # fmt: skip
    got = await drain(source, None, want=3)
    inbound, outbound, internal = got.cdrs
    assert (inbound.trunk, inbound.direction, inbound.src_ip) == (
        "carrier", Direction.INBOUND, "203.0.113.7",
    )  # fmt: skip
    assert (outbound.trunk, outbound.direction, outbound.src_ip) == (
        "carrier", Direction.OUTBOUND, None,
    )  # fmt: skip
    assert outbound.extra["userfield"] == "not an ip"  # kept raw, not lost
    assert (internal.trunk, internal.direction) == (None, Direction.INTERNAL)


async def test_rotation_and_restart_read_every_row_once(tmp_path: Path) -> None:
    path = tmp_path / "Master.csv"
    path.write_text("".join(csv_line(row(f"5.{i}", sequence=i)) for i in range(3)))
    source = make_source({"store": "csv", "path": str(tmp_path)})
    first = await drain(source, None, want=3)
    # logrotate: rename, more rows land in the old inode, then a new Master.csv
    os.rename(path, tmp_path / "Master.csv.1")
    rotated = tmp_path / "Master.csv.1"
    rotated.write_text(rotated.read_text() + csv_line(row("5.3", sequence=3)))
    path.write_text("".join(csv_line(row(f"5.{i}", sequence=i)) for i in range(4, 6)))
    second = await drain(source, first.checkpoint, want=3)
    keys = [c.key for c in first.cdrs + second.cdrs]
    assert sorted(keys) == sorted(f"5.{i}:{i}" for i in range(6))


async def test_one_accountcode_file(tmp_path: Path) -> None:
    (tmp_path / "Master.csv").write_text(csv_line(row("6.1")) + csv_line(row("6.2")))
    (tmp_path / "acme.csv").write_text(csv_line(row("6.1")))
    got = await drain(make_source({"store": "csv", "path": str(tmp_path / "acme.csv")}),
                      None, want=1)  # fmt: skip
    assert [c.key for c in got.cdrs] == ["6.1:1"]
    assert got.cdrs[0].accountcode == "acme"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "store: is required"),
        ({"store": "odbc"}, "store: must be one of csv, mysql, pgsql, sqlite, mysql-legacy"),
        ({"store": "csv", "columns": 17}, "columns: must be 16, 18 or 21, got 17"),
        ({"store": "csv", "src_ip_field": "ip"}, "src_ip_field: no column 'ip'"),
        ({"store": "csv", "host": "db"}, "host: is not a known option"),
        ({"store": "mysql", "columns": 21}, "columns: is not a known option"),
        ({"store": "mysql", "table": "cdr; drop"}, "table: must be a plain SQL name"),
        ({"store": "pgsql"}, "conninfo: is required and missing"),
        ({"store": "pgsql", "conninfo": "not a dsn"}, "conninfo: is not a PostgreSQL connection"),
        ({"store": "csv", "timezone": "Mars/Base"}, "timezone: unknown timezone 'Mars/Base'"),
        ({"store": "csv", "ami": {"secret": "x"}}, "ami.username: is required and missing"),
        ({"store": "csv", "ami": {"username": "u", "secret": "s", "prot": 1}},
         "ami.prot: is not a known option"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(options: dict[str, object], message: str) -> None:
    from cdrstats_agent.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        make_source(options)
    assert message in str(info.value)

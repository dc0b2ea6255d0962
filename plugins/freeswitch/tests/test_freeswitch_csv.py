"""mod_cdr_csv files: templates, rotation, restarts, broken rows, legs, per-accountcode files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from cdrstats_agent.errors import ConfigError, SourceError
from cdrstats_agent.model import Disposition
from freeswitch_testkit import (
    REFERENCE,
    TEMPLATES,
    Reader,
    append_lines,
    call_variables,
    make_source,
    render,
)

OPTS = {"store": "csv", "timezone": "Europe/Paris"}


def lines(template: str, numbers: range, **changes: str) -> list[str]:
    return [render(template, {**call_variables(n), **changes}) for n in numbers]


def test_builtin_templates_are_the_switch_templates() -> None:
    """`example` is the vanilla cdr_csv.conf.xml's; `default` keeps mod_cdr_csv's stray space."""
    conf = (REFERENCE / "vanilla_cdr_csv.conf.xml").read_text()
    example = re.search(r'<template name="example">(.*?)</template>', conf)
    assert example is not None and example.group(1) == TEMPLATES["example"]
    assert TEMPLATES["default"].endswith('"${bleg_uuid}", "${accountcode}"')


@pytest.mark.parametrize("name", ["example", "default"])
async def test_builtin_templates(tmp_path: Path, name: str) -> None:
    append_lines(tmp_path / "Master.csv", lines(TEMPLATES[name], range(20)))
    reader = Reader(make_source({**OPTS, "path": str(tmp_path), "template": name}))
    try:
        cdrs = await reader.take(20)
        assert [c.key for c in cdrs] == [call_variables(n)["uuid"] for n in range(20)]
        first = cdrs[0]
        assert first.accountcode == "acct0" and first.caller_name == "Caller 0"
        assert first.duration == 33 and first.billsec == 30
        assert first.start.isoformat() == "2026-03-01T09:00:00+00:00"
        assert (first.read_codec is not None) == (name == "example")
        await reader.quiet()
    finally:
        await reader.close()


async def test_custom_template_with_epochs_and_sip_fields(tmp_path: Path) -> None:
    template = (
        "${uuid}|${call_uuid}|${direction}|${caller_id_number}|${destination_number}|"
        "${start_epoch}|${answer_epoch}|${end_epoch}|${billsec}|${hangup_cause}|"
        "${sip_gateway_name}|${sip_received_ip}|${sip_term_status}|${sip_user_agent}|"
        "${sip_hangup_disposition}|${custom_var}"
    )
    v = {
        **call_variables(1, answered=False),
        "hangup_cause": "USER_BUSY",
        "sip_gateway_name": "carrier-a",
        "sip_received_ip": "2001:db8::5",
        "sip_term_status": "486",
        "sip_user_agent": "Zoiper 5",
        "sip_hangup_disposition": "recv_refuse",
        "custom_var": "x=1",
        "direction": "outbound",
    }
    v["call_uuid"] = v["uuid"]
    append_lines(tmp_path / "Master.csv", [render(template, v)])
    reader = Reader(make_source({**OPTS, "path": str(tmp_path), "template": template}))
    try:
        (cdr,) = await reader.take(1)
        assert cdr.disposition is Disposition.BUSY and cdr.hangup_cause == 17
        assert (cdr.sip_code, cdr.trunk, cdr.src_ip) == (486, "carrier-a", "2001:db8::5")
        assert cdr.user_agent == "Zoiper 5" and cdr.direction == "outbound"
        assert cdr.extra == {
            "hangup_cause": "USER_BUSY",
            "sip_hangup_disposition": "recv_refuse",
            "custom_var": "x=1",
        }
        assert cdr.start.timestamp() == int(v["start_epoch"])
    finally:
        await reader.close()


@pytest.mark.parametrize("rotate_on_hup", [True, False])
async def test_rotation_without_loss_or_duplicates(tmp_path: Path, rotate_on_hup: bool) -> None:
    """`cdr_csv rotate` / SIGHUP: renamed to Master.csv.<Y-m-d-H-M-S> with rotate-on-hup,
    else the same file is only closed and reopened for append."""
    master = tmp_path / "Master.csv"
    template = TEMPLATES["example"]
    append_lines(master, lines(template, range(0, 5)))
    reader = Reader(make_source({**OPTS, "path": str(tmp_path)}))
    try:
        await reader.take(5)
        append_lines(master, lines(template, range(5, 8)))  # written before the HUP, unread
        if rotate_on_hup:
            os.rename(master, tmp_path / "Master.csv.2026-03-01-10-15-00")
        append_lines(master, lines(template, range(8, 12)))  # the new (or reopened) file
        await reader.take(7)
        checkpoint = reader.checkpoint
        await reader.quiet()
        # A restart from the checkpoint reads only what came after, across a second rotation.
        await reader.close()
        append_lines(master, lines(template, range(12, 14)))
        if rotate_on_hup:
            os.rename(master, tmp_path / "Master.csv.2026-03-01-10-30-00")
        append_lines(master, lines(template, range(14, 15)))
        reader2 = Reader(make_source({**OPTS, "path": str(tmp_path)}), checkpoint)
        try:
            await reader2.take(3)
            await reader2.quiet()
        finally:
            await reader2.close()
        keys = [c.key for c in reader.cdrs + reader2.cdrs]
        assert sorted(keys) == sorted(call_variables(n)["uuid"] for n in range(15))
    finally:
        await reader.close()


async def test_broken_rows_are_counted_not_fatal(tmp_path: Path) -> None:
    template = TEMPLATES["example"]
    good = lines(template, range(3))
    recoverable = render(template, {**call_variables(3), "caller_id_name": 'The "Boss'})
    ambiguous = render(template, {**call_variables(4), "caller_id_name": 'A","B'})
    bad_stamp = render(
        template,
        {**call_variables(5), "start_stamp": "yesterday", "answer_stamp": "", "end_stamp": ""},
    )
    no_uuid = render(template, {**call_variables(6), "uuid": ""})
    append_lines(
        tmp_path / "Master.csv",
        [good[0], recoverable, ambiguous, good[1], bad_stamp, "garbage line", no_uuid, good[2]],
    )
    source = make_source({**OPTS, "path": str(tmp_path)})
    reader = Reader(source)
    try:
        await reader.take(8)
        names = [c.caller_name for c in reader.cdrs]
        assert names == ["Caller 0", 'The "Boss', "Caller 1", "Caller 2"]
        where = [r.where.rsplit(":", 1)[1] for r in reader.rejected]
        assert where == ["3", "5", "6", "7"]
        reasons = " | ".join(r.reason for r in reader.rejected)
        assert "contains a separator" in reasons and "start_stamp: not a time" in reasons
        assert "does not match the template" in reasons and "uuid: missing" in reasons
        assert source.store.stats["quote_recovered"] == 1
    finally:
        await reader.close()
    strict = make_source({**OPTS, "path": str(tmp_path), "broken_quotes": "reject"})
    reader = Reader(strict)
    try:
        await reader.take(8)
        assert len(reader.cdrs) == 3 and "broken_quotes" in reader.rejected[0].reason
    finally:
        await reader.close()


async def test_per_accountcode_files_each_cdr_once(tmp_path: Path) -> None:
    """Without master-file-only the switch writes each CDR to Master.csv and <accountcode>.csv."""
    template = TEMPLATES["example"]
    for n in range(9):
        line = lines(template, range(n, n + 1))
        append_lines(tmp_path / "Master.csv", line)
        append_lines(tmp_path / f"acct{n % 3}.csv", line)
    only_master = Reader(make_source({**OPTS, "path": str(tmp_path)}))
    both = Reader(make_source({**OPTS, "path": str(tmp_path), "pattern": "*.csv*"}))
    one_account = Reader(make_source({**OPTS, "path": str(tmp_path), "pattern": "acct1.csv*"}))
    try:
        await only_master.take(9)
        await both.take(9)
        await one_account.take(3)
        await both.quiet()
        assert sorted(c.key for c in both.cdrs) == sorted(c.key for c in only_master.cdrs)
        assert {c.accountcode for c in one_account.cdrs} == {"acct1"}
    finally:
        for r in (only_master, both, one_account):
            await r.close()


async def test_legs_a_and_ab(tmp_path: Path) -> None:
    template = "${uuid},${call_uuid},${start_epoch},${end_epoch},${duration},${billsec}"
    a = call_variables(1)
    b = {**call_variables(2), "call_uuid": a["uuid"]}
    a["call_uuid"] = a["uuid"]
    append_lines(tmp_path / "Master.csv", [render(template, b), render(template, a)])
    default = Reader(make_source({**OPTS, "path": str(tmp_path), "template": template}))
    every = Reader(make_source({**OPTS, "path": str(tmp_path), "template": template, "legs": "ab"}))
    try:
        await every.take(2)
        assert [(c.key, c.call_group) for c in every.cdrs] == [
            (b["uuid"], a["uuid"]),
            (a["uuid"], a["uuid"]),
        ]
        await default.take(1)
        assert [c.key for c in default.cdrs] == [a["uuid"]]
        await default.quiet()
        assert default.source.store.stats["b_legs"] == 1
    finally:
        await default.close()
        await every.close()


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"template": "nonsense"}, "template", "must be example, default"),
        ({"template": "${caller_id_number},${start_epoch}"}, "template", "has no ${uuid}"),
        ({"template": "${uuid}${start_epoch}"}, "template", "nothing between them"),
        ({"pattern": "a/b"}, "pattern", "file name pattern"),
        ({"broken_quotes": "maybe"}, "broken_quotes", "must be one of"),
        ({"encoding": "utf-16"}, "encoding", "not ASCII-compatible"),
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown timezone"),
        ({"legs": "b"}, "legs", "must be one of"),
        ({"dsn": "x"}, "dsn", "not a known option"),
    ],
)
def test_option_errors_name_the_key(options: dict[str, str], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_source({**OPTS, "path": "/nonexistent", **options})
    assert info.value.key == key and problem in str(info.value)


async def test_check(tmp_path: Path) -> None:
    await make_source({**OPTS, "path": str(tmp_path)}).check()
    await make_source({**OPTS, "path": str(tmp_path / "Master.csv")}).check()  # not yet created
    with pytest.raises(SourceError, match="does not exist, nor does its directory"):
        await make_source({**OPTS, "path": str(tmp_path / "no" / "Master.csv")}).check()


async def test_a_restart_after_an_uncommitted_result_reads_it_again(tmp_path: Path) -> None:
    """The runner's commit failed: read() is called again from the last committed checkpoint
    on the same source object, and must deliver the same CDRs again (none remembered)."""
    append_lines(tmp_path / "Master.csv", lines(TEMPLATES["example"], range(3)))
    source = make_source({**OPTS, "path": str(tmp_path), "pattern": "*.csv*"})
    first = Reader(source)
    await first.take(3)
    await first.agen.aclose()
    again = Reader(source, None)
    try:
        await again.take(3)
        assert [c.key for c in again.cdrs] == [c.key for c in first.cdrs]
    finally:
        await again.close()

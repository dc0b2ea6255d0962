"""The mapping engine and its helpers, without files: times, durations, layouts, keys."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cdrstats_agent.model import CDR, Direction, Disposition
from cdrstats_agent.normalize import channel_peer, split_callerid
from cdrstats_csv.config import mapping_from_options
from cdrstats_csv.mapping import Rejection
from cdrstats_csv.stamps import (
    StampError,
    local_candidates,
    parse_duration,
    parse_time,
    resolve,
)

PARIS = ZoneInfo("Europe/Paris")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def mapped(options: Mapping[str, Any], line: bytes, header: tuple[str, ...] | None = None) -> CDR:
    result = mapping_from_options(options).map_record(line, header)
    assert isinstance(result, CDR), result
    return result


def rejected(options: Mapping[str, Any], line: bytes) -> str:
    result = mapping_from_options(options).map_record(line)
    assert isinstance(result, Rejection), result
    return result.reason


# --- normalize.py helpers added for this plugin -------------------------------------------


@pytest.mark.parametrize(
    ("channel", "peer"),
    [
        ("SIP/trunk1-0000001", "trunk1"),
        ("PJSIP/provider-000a", "provider"),
        ("PJSIP/my-provider-0000000f", "my-provider"),
        ("IAX2/peer-1234", "peer"),
        ("SIP/10.0.0.1-00000002<ZOMBIE>", "10.0.0.1"),
        ("AsyncGoto/SIP/trunk2-00000003", "trunk2"),
        ("Local/100@default-00000001;2", None),
        ("Console/dsp", None),
        ("", None),
        ("garbage", None),
    ],
)
def test_channel_peer(channel: str, peer: str | None) -> None:
    assert channel_peer(channel) == peer


@pytest.mark.parametrize(
    ("clid", "parts"),
    [
        ('"Alice" <1001>', ("Alice", "1001")),
        ('"Al "Boss" Smith" <100>', ('Al "Boss" Smith', "100")),
        ("Bob <1002>", ("Bob", "1002")),
        ("<1003>", ("", "1003")),
        ("+33612345678", ("", "+33612345678")),
        ("Reception", ("Reception", "")),
        ("", ("", "")),
    ],
)
def test_split_callerid(clid: str, parts: tuple[str, str]) -> None:
    assert split_callerid(clid) == parts


# --- times ----------------------------------------------------------------------------------


def test_local_times_in_dst_gap_and_overlap() -> None:
    # Spring forward 2024-03-31 02:00 CET -> 03:00 CEST: 02:30 does not exist and is read
    # with the offset before the jump (+01:00).
    assert local_candidates(datetime(2024, 3, 31, 2, 30), PARIS) == (utc(2024, 3, 31, 1, 30),)
    # Fall back 2024-10-27 03:00 CEST -> 02:00 CET: 02:30 exists twice, earlier first.
    assert local_candidates(datetime(2024, 10, 27, 2, 30), PARIS) == (
        utc(2024, 10, 27, 0, 30),
        utc(2024, 10, 27, 1, 30),
    )
    assert local_candidates(datetime(2024, 7, 1, 12, 0), PARIS) == (utc(2024, 7, 1, 10, 0),)


def test_resolve_prefers_order_then_duration_then_first_occurrence() -> None:
    first, second = utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 1, 30)
    end = (utc(2024, 10, 27, 1, 40),)
    # Ambiguous start, 70 minutes long: the first occurrence fits the duration.
    assert resolve((first, second), None, end, 4200, None)[0] == first
    # 10 minutes long: the second one.
    assert resolve((first, second), None, end, 600, None)[0] == second
    # Nothing to decide with: the first occurrence.
    assert resolve((first, second), None, None, None, None)[0] == first


@pytest.mark.parametrize(
    ("text", "formats", "expected"),
    [
        ("2024-01-15 10:00:00", ("%Y-%m-%d %H:%M:%S",), utc(2024, 1, 15, 9, 0)),
        ("15/01/2024 10:00", ("%d/%m/%Y %H:%M",), utc(2024, 1, 15, 9, 0)),
        ("2024-01-15T10:00:00Z", ("iso8601",), utc(2024, 1, 15, 10, 0)),
        ("2024-01-15T10:00:00.250+02:00", ("iso8601",), utc(2024, 1, 15, 8, 0, 0, 250000)),
        ("2024-01-15T10:00:00", ("iso8601",), utc(2024, 1, 15, 9, 0)),
        ("1705312800", ("epoch",), utc(2024, 1, 15, 10, 0)),
        ("1705312800.5", ("epoch",), utc(2024, 1, 15, 10, 0, 0, 500000)),
        ("1705312800123", ("epoch_ms",), utc(2024, 1, 15, 10, 0, 0, 123000)),
        ("1705312800123456", ("epoch_us",), utc(2024, 1, 15, 10, 0, 0, 123456)),
        ("1705312800", ("%Y-%m-%d %H:%M:%S", "epoch"), utc(2024, 1, 15, 10, 0)),
    ],
)
def test_parse_time_formats(text: str, formats: tuple[str, ...], expected: datetime) -> None:
    assert parse_time(text, formats, PARIS) == (expected,)


def test_parse_time_unset_and_errors() -> None:
    assert parse_time("", ("epoch",), UTC) is None
    assert parse_time("0", ("epoch",), UTC) is None  # FreeSWITCH: never answered
    assert parse_time("1970-01-01 01:00:00", ("%Y-%m-%d %H:%M:%S",), PARIS) is None
    with pytest.raises(StampError, match="not a time in format epoch"):
        parse_time("soon", ("epoch",), UTC)


@pytest.mark.parametrize(
    ("text", "unit", "seconds"),
    [
        ("65", "s", 65),
        ("65.9", "s", 65),
        ("", "s", None),
        ("65900", "ms", 65),
        ("999", "ms", 0),
        ("01:01:05", "hms", 3665),
        ("101:00:00", "hms", 363600),
        ("2:05", "hms", 125),
        ("0:00:07.5", "hms", 7),
    ],
)
def test_parse_duration(text: str, unit: str, seconds: int | None) -> None:
    assert parse_duration(text, unit) == seconds


@pytest.mark.parametrize(
    ("text", "unit", "problem"),
    [
        ("-1", "s", "negative duration"),
        ("abc", "s", "not a duration in seconds"),
        ("1e999999", "ms", "duration too large"),
        ("ten", "ms", "not a duration in milliseconds"),
        ("1:2:3:4", "hms", "HH:MM:SS"),
        ("00:61:00", "hms", "HH:MM:SS"),
        ("-0:00:01", "hms", "negative duration"),
    ],
)
def test_parse_duration_errors(text: str, unit: str, problem: str) -> None:
    with pytest.raises(StampError, match=problem):
        parse_duration(text, unit)


# --- mapping ----------------------------------------------------------------------------------

ASTERISK_21 = (
    b'"acc","1001","0140000000","ctx","""Alice"" <1001>","PJSIP/alice-00000001",'
    b'"PJSIP/provider-0000000a","Dial","x","2024-03-01 08:00:00","2024-03-01 08:00:04",'
    b'"2024-03-01 08:02:04",124,120,"ANSWERED","DOCUMENTATION","1709280000.10","","peer",'
    b'"1709280000.1",3'
)


def test_asterisk_21_columns_fields_key_extra() -> None:
    cdr = mapped({"preset": "asterisk", "timezone": "UTC", "country_code": "33"}, ASTERISK_21)
    assert cdr.key == "1709280000.10:3"
    assert cdr.call_group == "1709280000.1"
    assert (cdr.start, cdr.answer, cdr.end) == (
        utc(2024, 3, 1, 8, 0),
        utc(2024, 3, 1, 8, 0, 4),
        utc(2024, 3, 1, 8, 2, 4),
    )
    assert (cdr.duration, cdr.billsec, cdr.ring_time) == (124, 120, 4)
    assert cdr.disposition is Disposition.ANSWERED
    assert (cdr.caller, cdr.caller_name, cdr.callee) == ("1001", "Alice", "0140000000")
    assert cdr.callee_e164 == "+33140000000" and cdr.caller_e164 is None
    assert cdr.trunk == "provider" and cdr.direction is Direction.UNKNOWN
    assert cdr.extra["peeraccount"] == "peer" and cdr.extra["sequence"] == "3"
    assert "start" not in cdr.extra and "src" not in cdr.extra


def test_trunks_option_derives_direction() -> None:
    options = {"preset": "asterisk", "timezone": "UTC", "trunks": ["provider"]}
    assert mapped(options, ASTERISK_21).direction is Direction.OUTBOUND
    inbound = ASTERISK_21.replace(b"PJSIP/alice-00000001", b"SIP/x-1").replace(
        b"PJSIP/provider-0000000a", b"SIP/y-2"
    )
    cdr = mapped(options, inbound)
    assert cdr.direction is Direction.INTERNAL and cdr.trunk is None


def test_user_fields_override_a_preset() -> None:
    cdr = mapped(
        {
            "preset": "asterisk",
            "timezone": "UTC",
            "fields": {"user_agent": "userfield"},
            "key": "linkedid",
        },
        ASTERISK_21.replace(b'"1709280000.10","",', b'"1709280000.10","MyPhone 1.0",'),
    )
    assert cdr.user_agent == "MyPhone 1.0" and cdr.key == "1709280000.1"
    assert "userfield" not in cdr.extra


def test_content_hash_key_is_sha256_of_the_raw_record() -> None:
    line = ASTERISK_21.rsplit(b',"1709280000.10"', 1)[0]  # cut to 16 columns
    line = line.rsplit(b',"1709280000.10","","peer"', 1)[0]
    cdr = mapped({"preset": "asterisk", "timezone": "UTC"}, line)
    assert cdr.key == hashlib.sha256(line).hexdigest()


def test_overlong_key_is_hashed() -> None:
    long_id = "x" * 300
    cdr = mapped(
        {"fields": {"start": 1}, "key": 2, "time_format": "epoch"},
        f"1705312800,{long_id}".encode(),
    )
    assert cdr.key == hashlib.sha256(long_id.encode()).hexdigest()


def test_header_binding_is_per_header() -> None:
    mapping = mapping_from_options(
        {"header": True, "timezone": "UTC", "fields": {"start": "when", "caller": "from"}}
    )
    first = mapping.parse_header(b"when,from,other")
    second = mapping.parse_header(b"from,other,when")
    assert first == ("when", "from", "other") and second == ("from", "other", "when")
    a = mapping.map_record(b"2024-01-01 00:00:00,100,x", first)
    b = mapping.map_record(b"200,y,2024-01-01 00:00:00", second)
    assert isinstance(a, CDR) and isinstance(b, CDR)
    assert (a.caller, a.extra) == ("100", {"other": "x"})
    assert (b.caller, b.extra) == ("200", {"other": "y"})
    missing = mapping.map_record(b"1,2", ("when", "to"))
    assert missing == Rejection("header has no column 'from' (fields.caller)")


def test_map_document_for_uploads() -> None:
    mapping = mapping_from_options(
        {"header": True, "timezone": "UTC", "fields": {"start": "start"}, "key": "id"}
    )
    cdrs, rejected = mapping.map_document(
        b'id,start,note\n1,2024-01-01 00:00:00,"multi\nline"\n2,bad,\n3,2024-01-01 00:00:01,x',
        "upload.csv",
    )
    assert [c.key for c in cdrs] == ["1", "3"]
    assert cdrs[0].extra == {"id": "1", "note": "multi\nline"}
    assert [(r.where, r.reason.split(":")[0]) for r in rejected] == [
        ("upload.csv:4", "column 2 'start'")
    ]


def test_first_non_empty_column_wins() -> None:
    options = {"fields": {"start": [1, 2], "caller": [3, 4]}, "time_format": "epoch"}
    cdr = mapped(options, b",1705312800,,200")
    assert cdr.start == utc(2024, 1, 15, 10, 0) and cdr.caller == "200"


def test_rejections_name_column_and_value() -> None:
    options = {"column_names": ["s", "d"], "fields": {"start": "s", "duration": "d"}}
    assert rejected({**options, "timezone": "UTC"}, b"2024-02-30 10:00:00,5") == (
        "column 1 's': not a time in format %Y-%m-%d %H:%M:%S or iso8601: '2024-02-30 10:00:00'"
    )
    assert rejected({**options, "timezone": "UTC"}, b"2024-02-01 10:00:00,-5") == (
        "column 2 'd': negative duration: '-5'"
    )
    assert rejected({**options, "timezone": "UTC"}, b"2024-02-01 10:00:00") == (
        "has 1 columns, expected 2"
    )


def test_dispositions_from_text_map_and_cause() -> None:
    options = {
        "fields": {"start": 1, "billsec": 2, "disposition": 3, "hangup_cause": 4},
        "time_format": "epoch",
        "disposition_map": {"done": "answered"},
    }
    base = b"1705312800,"
    assert mapped(options, base + b"5,DONE,").disposition is Disposition.ANSWERED
    assert mapped(options, base + b"0,NO ANSWER,").disposition is Disposition.NO_ANSWER
    assert mapped(options, base + b"0,,USER_BUSY").disposition is Disposition.BUSY
    assert mapped(options, base + b"0,,17").disposition is Disposition.BUSY
    assert mapped(options, base + b"7,,16").disposition is Disposition.ANSWERED
    unknown = mapped(options, base + b"0,MAYBE,487")
    assert unknown.disposition is Disposition.CANCELLED and unknown.extra["col3"] == "MAYBE"

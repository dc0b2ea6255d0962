"""The mapping engine's shortcuts give exactly what the general code gives.

`Mapping.map_row` (bulk imports: no `CDR` object), `stamps.time_parser` (formats compiled
once), the whole-number path of `parse_duration`, the digits-only path of E.164 and the
dotted-quad path of `src_ip` are each compared with the code they shortcut.
"""

from __future__ import annotations

import ipaddress
import random
import tomllib
from collections.abc import Callable
from datetime import UTC, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from cdrstats_agent import wire
from cdrstats_agent.errors import ConfigError
from cdrstats_agent.normalize import to_e164
from cdrstats_csv.config import mapping_from_options
from cdrstats_csv.mapping import Mapping, MappingSpec, Rejection, _ip_text
from cdrstats_csv.records import (
    CsvSplitter,
    RawRecord,
    RecordError,
    Split,
    split_csv,
    split_records,
)
from cdrstats_csv.stamps import (
    MAX_DURATION,
    StampError,
    local_candidates,
    parse_duration,
    parse_time,
    time_parser,
)
from csv_testkit import CASES

CASE_DIRS = sorted(p for p in CASES.iterdir() if (p / "input.csv").exists())


def _mapping(case_config: dict[str, object]) -> Mapping | None:
    options = {k: v for k, v in case_config.items() if k not in ("chunk_cdrs", "poll_interval")}
    try:
        return mapping_from_options(options, "source")
    except ConfigError:
        return None


@pytest.mark.parametrize("case", CASE_DIRS, ids=[p.name for p in CASE_DIRS])
def test_map_row_is_the_wire_row_of_map_record(case: object) -> None:
    from pathlib import Path

    assert isinstance(case, Path)
    mapping = _mapping(tomllib.loads((case / "config.toml").read_text(encoding="utf-8")))
    if mapping is None:
        pytest.skip("an error case (config refused)")
    records = split_records((case / "input.csv").read_bytes(), quote=mapping.quote_byte, final=True)
    header = None
    checked = 0
    for i, record in enumerate(records.records):
        data = (
            record.data[3:] if i == 0 and record.data.startswith(b"\xef\xbb\xbf") else record.data
        )
        if mapping.header and header is None:
            parsed = mapping.parse_header(data)
            assert not isinstance(parsed, Rejection)
            header = parsed
            continue
        cdr = mapping.map_record(data, header)
        row = mapping.map_row(data, header)
        if isinstance(cdr, Rejection):
            assert row == cdr
        else:
            assert row == wire.cdr_to_row(cdr)
            checked += 1
    assert checked or "err" in case.name or "broken" in case.name


ZONES = [UTC, ZoneInfo("UTC"), ZoneInfo("Europe/Paris"), timezone(timedelta(hours=-5))]
FORMATS = [
    ["%d/%m/%Y %H:%M:%S"],
    ["%m/%d/%Y %H:%M:%S"],
    ["%d.%m.%Y", "%d.%m.%Y %H:%M"],
    ["%Y-%m-%d %H:%M:%S", "iso8601"],
    ["%m/%d/%Y %I:%M %p", "epoch"],
    ["iso8601", "epoch_ms"],
]
TEXTS = [
    "03/02/2025 10:04:05",
    "31/03/2024 02:30:00",  # a gap in Paris
    "27/10/2024 02:30:00",  # twice in Paris
    "2025-02-03 10:04:05",
    "2024-10-27 02:30:00",
    "2025-02-03T10:04:05+02:00",
    "2025-02-03T10:04:05z",
    "1738577045",
    "1738577045123",
    "02/03/2025 10:04 PM",
    "01/01/1970 00:00:00",
    "",
    "  ",
    "yesterday",
    "31/02/2025 10:00:00",
    "03/02/2025 24:00:00",
    "03/02/2025 23:59:60",
    "02/ 3/2025 10:04:05",  # strptime's %d takes " 3"
    "03/0\u0662/2025 10:04:05",  # a non-ASCII digit
    "03/02/2025 10:04+01",
    "03/02/2025\t10:04:05",
    "03-02-2025 10:04:05",
    "03.02.2025",
    "03.02.2025 10:04",
    "3.2.2025",
]


@pytest.mark.parametrize("zone", ZONES, ids=str)
def test_time_parser_agrees_with_parse_time(zone: object) -> None:
    assert isinstance(zone, UTC.__class__ | ZoneInfo)
    for formats in FORMATS:
        parse = time_parser(formats, zone)
        for text in TEXTS:
            try:
                expected: object = parse_time(text, formats, zone)
            except StampError as exc:
                expected = str(exc)
            try:
                got: object = parse(text)
            except StampError as exc:
                got = str(exc)
            assert got == expected, (formats, text)


def _duration_exact(text: str, unit: str) -> int | None:
    value = Decimal(text.strip())
    if unit == "ms":
        value /= 1000
    if value > MAX_DURATION:
        raise StampError("duration too large")
    return int(value)


@pytest.mark.parametrize("unit", ["s", "ms"])
def test_whole_number_durations_agree_with_decimal(unit: str) -> None:
    limit = MAX_DURATION * (1000 if unit == "ms" else 1)
    for text in ["0", "7", " 61 ", "12.5", "0.999", "1999", "000123", f"{limit}", f"{limit}.5"]:
        try:
            expected: object = _duration_exact(text, unit)
        except StampError as exc:
            expected = str(exc)
        try:
            got: object = parse_duration(text, unit)
        except StampError as exc:
            got = str(exc)
        assert got == expected, text
    assert parse_duration("\u0661\u0662", unit) == _duration_exact("\u0661\u0662", unit)
    with pytest.raises(StampError, match="not a duration"):
        parse_duration("1e", unit)


@pytest.mark.parametrize("plan", [("33", "00", "0"), (None, "00", "0"), ("1", "011", "1")])
def test_digits_only_e164_agrees_with_to_e164(plan: tuple[str | None, str, str]) -> None:
    country, intl, national = plan
    mapping = Mapping(
        MappingSpec(
            fields={},
            country_code=country,
            international_prefix=intl,
            national_prefix=national,
        )
    )
    numbers = ["0033612345678", "0612345678", "612345678", "011442071234567", "18005551234"]
    numbers += ["00", "0", "1000", "0044 20 7123 4567", "+33612345678", "sip:0612345678@x"]
    numbers += ["00000000000", "0123456789012345678", "٠٦١٢٣٤٥٦٧٨"]
    for number in numbers:
        expected = to_e164(number, country, international_prefix=intl, national_prefix=national)
        assert mapping._e164(number) == expected, number


def test_dotted_quad_shortcut_agrees_with_ipaddress() -> None:
    texts = ["10.0.0.1", "255.255.255.255", "0.0.0.0", "256.1.1.1", "01.2.3.4", "1.2.3"]
    texts += ["1.2.3.4.5", "::1", "2001:DB8::1", "fe80::1%eth0", "\u0661.2.3.4", "1.2.3.4 ", "x"]
    for text in texts:
        try:
            expected: str | None = str(ipaddress.ip_address(text))
        except ValueError:
            expected = None
        assert _ip_text(text) == expected, text


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_reused_reader_splits_like_a_reader_per_record(delimiter: str) -> None:
    """`CsvSplitter` (one csv.reader for a whole file) against `split_csv` (one per record),
    on random texts made of the characters that matter, in one sequence (a broken record
    must not leak into the next)."""
    rnd = random.Random(9)
    splitter = CsvSplitter(delimiter=delimiter)
    for _ in range(20_000):
        text = "".join(rnd.choice('ab,;\t"\n\r \x00') for _ in range(rnd.randint(0, 12)))
        try:
            expected: object = split_csv(text, delimiter=delimiter)
        except RecordError as exc:
            expected = str(exc)
        try:
            got: object = splitter.split(text)
        except RecordError as exc:
            got = str(exc)
        assert got == expected, repr(text)


def _strip_cr_ref(data: bytes) -> bytes:
    return data[:-1] if data.endswith(b"\r") else data


def _reference_split_records(
    buf: bytes,
    *,
    first_line: int = 1,
    quote: int | None = 0x22,
    max_lines: int = 20,
    final: bool = False,
    flush_open_quotes: bool = False,
    accept: Callable[[bytes], bool] | None = None,
    limit: int | None = None,
) -> Split:
    """`split_records` before its loop was inlined (the general code)."""
    records: list[RawRecord] = []
    pos = 0
    lines = 0
    size = len(buf)

    def line_end(at: int) -> tuple[int, int] | None:
        """(end of the line's content, start of the next line) or None if incomplete."""
        nl = buf.find(b"\n", at)
        if nl >= 0:
            return nl, nl + 1
        if final and at < size:
            return size, size
        return None

    while pos < size and (limit is None or len(records) < limit):
        first = line_end(pos)
        if first is None:
            break
        content_end, next_pos = first
        data = _strip_cr_ref(buf[pos:content_end])
        if not data.strip(b" \t"):
            pos, lines = next_pos, lines + 1
            continue
        if quote is None or data.count(quote) % 2 == 0:
            records.append(RawRecord(data, pos, next_pos, first_line + lines, 1))
            pos, lines = next_pos, lines + 1
            continue
        # An open quote: look for the line that closes it.
        parity = 1
        span = 1
        end = next_pos
        closed_at: tuple[int, int] | None = None
        waiting = False
        while span < max_lines:
            more = line_end(end)
            if more is None:
                waiting = not final
                break
            more_content, more_next = more
            parity = (parity + buf.count(quote, end, more_content)) % 2
            span += 1
            if parity == 0:
                closed_at = (more_content, more_next)
                break
            end = more_next
        if waiting and not flush_open_quotes:
            return Split(records, pos, lines, open_quote=True)
        if closed_at is not None:
            joined = _strip_cr_ref(buf[pos : closed_at[0]])
            if accept is None or accept(joined):
                records.append(RawRecord(joined, pos, closed_at[1], first_line + lines, span))
                pos, lines = closed_at[1], lines + span
                continue
        # Never balanced (or not a plausible record): the first line alone, as it is.
        records.append(RawRecord(data, pos, next_pos, first_line + lines, 1))
        pos, lines = next_pos, lines + 1
    return Split(records, pos, lines)


@pytest.mark.parametrize("final", [False, True])
def test_split_records_agrees_with_its_reference(final: bool) -> None:
    """Random buffers of the bytes that matter, cut by both (records are named tuples now)."""
    rnd = random.Random(5)

    def odd(joined: bytes) -> bool:
        return len(joined) % 3 != 0

    for _ in range(5_000):
        buf = bytes(rnd.choice(b'a,"\n\r \t') for _ in range(rnd.randint(0, 40)))
        for quote in (0x22, None):
            got = split_records(
                buf, quote=quote, max_lines=3, final=final, first_line=7, accept=odd
            )
            want = _reference_split_records(
                buf, quote=quote, max_lines=3, final=final, first_line=7, accept=odd
            )
            assert (
                [tuple(r) for r in got.records],
                got.consumed,
                got.lines,
                got.open_quote,
            ) == (
                [(r.data, r.start, r.end, r.line, r.lines) for r in want.records],
                want.consumed,
                want.lines,
                want.open_quote,
            ), buf


@pytest.mark.parametrize(
    "zone_name", ["Europe/Paris", "America/St_Johns", "Australia/Lord_Howe", "America/Sao_Paulo"]
)
def test_hour_offsets_agree_with_local_candidates_around_transitions(zone_name: str) -> None:
    """time_parser keeps one UTC offset per wall-clock hour without a DST change; every
    10 minutes over the days around each 2024 transition (and a quiet day) it agrees with
    `local_candidates`, stamp by stamp, gaps and overlaps included."""
    from datetime import datetime

    zone = ZoneInfo(zone_name)
    parse = time_parser(["%Y-%m-%d %H:%M:%S"], zone)
    starts = []
    day = datetime(2024, 1, 1)
    while day.year == 2024:  # the days whose offset at noon differs from the day before
        if zone.utcoffset(day + timedelta(hours=12)) != zone.utcoffset(day - timedelta(hours=12)):
            starts.append(day - timedelta(days=1))
        day += timedelta(days=1)
    starts.append(datetime(2024, 7, 10))
    checked = 0
    for first in starts:
        for step in range(3 * 24 * 6):
            naive = first + timedelta(minutes=10 * step)
            for text in (naive.strftime("%Y-%m-%d %H:%M:%S"), naive.strftime("%Y-%m-%d %H:%M:59")):
                at = datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
                assert parse(text) == local_candidates(at, zone), text
                checked += 1
    assert checked >= 2 * 3 * 24 * 6 * (
        1 + (zone_name != "America/Sao_Paulo")
    )  # (no DST since 2019)


def test_whole_epochs_agree_with_decimal() -> None:
    for fmt in ("epoch", "epoch_ms", "epoch_us"):
        parse = time_parser([fmt], UTC)
        scale = {"epoch": 1, "epoch_ms": 1000, "epoch_us": 1_000_000}[fmt]
        for text in ["1738577045", "0", "31536000", "99999999999", "100000000000", "1738577045.5"]:
            text = text if "." in text else str(int(text) * scale)
            for candidate in (
                text,
                str(10**11 * scale),
                str(10**11 * scale + 1),
                "12345678901234567890123",
            ):
                try:
                    expected: object = parse_time(candidate, [fmt], UTC)
                except StampError as exc:
                    expected = str(exc)
                try:
                    got: object = parse(candidate)
                except StampError as exc:
                    got = str(exc)
                assert got == expected, (fmt, candidate)

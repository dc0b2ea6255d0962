"""Timestamps and durations as switches write them, turned into UTC datetimes and seconds.

Local wall-clock stamps are converted with an IANA zone, and the two awkward hours a year
are handled the same way every time:

* a stamp that does not exist (the clock jumped forward over it) is read with the UTC offset
  in force *before* the jump: `2024-03-31 02:30` in Europe/Paris is `00:30Z` + 1 h = `01:30Z`;
* a stamp that exists twice (the clock went back) has two candidate instants; `resolve`
  picks, for the start, answer and end stamps of one call together, the combination that keeps
  them in order and agrees best with the duration and billsec the switch wrote; on a tie, the
  earlier instant (the first occurrence) wins.

Stamps before 1971 are treated as unset: FreeSWITCH writes the Unix epoch, rendered in local
time, for a call that was never answered.
"""

from __future__ import annotations

import itertools
import operator
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

KEYWORD_FORMATS = ("epoch", "epoch_ms", "epoch_us", "iso8601")
"""Time formats that are not strptime patterns."""

DURATION_UNITS = ("s", "ms", "hms")
MAX_DURATION = 10 * 366 * 86400
"""Ten years: anything longer is a broken value, not a call."""

_UNSET_BEFORE = datetime(1971, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PLAIN = "%Y-%m-%d %H:%M:%S"


class StampError(ValueError):
    """A value that is not a time or duration in the configured format."""


@cache
def local_zone() -> tzinfo:
    """The host's zone: `$TZ`, else /etc/timezone, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    candidates = [name] if name else []
    try:
        with open("/etc/timezone", encoding="ascii") as fh:
            candidates.append(fh.read().strip())
    except (OSError, UnicodeDecodeError):
        pass
    for candidate in candidates:
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    try:
        with open("/etc/localtime", "rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ValueError):
        return UTC


def check_format(fmt: str) -> str | None:
    """None if `fmt` is usable as a time format, else why not."""
    if fmt in KEYWORD_FORMATS:
        return None
    if "%" not in fmt:
        return f"{fmt!r} is neither a strptime pattern nor one of {', '.join(KEYWORD_FORMATS)}"
    sample = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
    try:
        datetime.strptime(sample.strftime(fmt), fmt)
    except ValueError as exc:
        return f"{fmt!r} is not a usable strptime pattern ({exc})"
    return None


def local_candidates(naive: datetime, zone: tzinfo) -> tuple[datetime, ...]:
    """The UTC instants a local wall-clock time can mean: one, or two in a DST overlap."""
    offset = zone.utcoffset(naive)
    if offset is not None and offset == zone.utcoffset(naive.replace(fold=1)):
        return ((naive - offset).replace(tzinfo=UTC),)  # the usual case: one offset, no fold
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return (first,)
    back = [c.astimezone(zone).replace(tzinfo=None, fold=0) for c in (first, second)]
    if back[0] == naive and back[1] == naive:
        return (min(first, second), max(first, second))
    # A gap: fold=0 reads it with the offset in force before the jump.
    return (first,)


def _number(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise StampError("not a number") from None
    if not value.is_finite():
        raise StampError("not a number")
    return value


def parse_time(text: str, formats: Sequence[str], zone: tzinfo) -> tuple[datetime, ...] | None:
    """Candidate UTC instants of a stamp (see module doc); None when empty or unset."""
    text = text.strip()
    if not text:
        return None
    for fmt in formats:
        parsed = _parse_one(text, fmt, zone)
        if parsed is not None:
            if parsed[0] < _UNSET_BEFORE:
                return None
            return parsed
    raise StampError(f"not a time in format {' or '.join(formats)}")


_FAST_FIELDS = {
    "d": "(?P<d>[0-9]{1,2})",
    "m": "(?P<m>[0-9]{1,2})",
    "Y": "(?P<Y>[0-9]{4})",
    "H": "(?P<H>[0-9]{1,2})",
    "M": "(?P<M>[0-9]{1,2})",
    "S": "(?P<S>[0-9]{1,2})",
}


@cache
def _fast_pattern(fmt: str) -> re.Pattern[str] | None:
    """A regex doing what strptime does for simple numeric formats (`%d/%m/%Y %H:%M:%S`...).

    strptime costs several µs a call; a text it does not match falls back to strptime, so the
    results are the same.
    """
    parts: list[str] = []
    seen: set[str] = set()
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c == "%":
            d = fmt[i + 1 : i + 2]
            if d not in _FAST_FIELDS or d in seen:
                return None
            seen.add(d)
            parts.append(_FAST_FIELDS[d])
            i += 2
            continue
        if c == " ":
            parts.append(r"\s+")
        elif c in "/-.:T":
            parts.append(re.escape(c))
        else:
            return None
        i += 1
    if not {"d", "m", "Y"} <= seen:
        return None
    return re.compile("".join(parts))


_WIDTHS = {"d": 2, "m": 2, "Y": 4, "H": 2, "M": 2, "S": 2}


@dataclass(frozen=True, slots=True)
class _FixedWidth:
    """A simple numeric format written zero-padded (`%d/%m/%Y %H:%M:%S` as `03/02/2025
    10:04:05`): where its separators are, and how to rewrite a text as ISO 8601."""

    width: int
    separators: Callable[[str], Any]
    expected: Any
    parts: Callable[[str], tuple[str, ...]]
    iso: str


@cache
def _fixed_width(fmt: str) -> _FixedWidth | None:
    """The zero-padded layout of a format `_fast_pattern` handles, or None.

    A text of exactly that width with the separators in place is rewritten as ISO 8601 and
    read by `datetime.fromisoformat` (C, checks digits and ranges), several times faster than
    the regex; any other text takes the regex path.
    """
    if _fast_pattern(fmt) is None:
        return None
    pos = 0
    seps: list[tuple[int, str]] = []
    where: dict[str, slice] = {}
    i = 0
    while i < len(fmt):
        if fmt[i] == "%":
            d = fmt[i + 1]
            where[d] = slice(pos, pos + _WIDTHS[d])
            pos += _WIDTHS[d]
            i += 2
        else:
            seps.append((pos, fmt[i]))
            pos += 1
            i += 1
    order = [where.get(d, slice(0, 0)) for d in "YmdHMS"]
    missing = [d not in where for d in "YmdHMS"]
    iso = "%s-%s-%sT" + ":".join("00" if gone else "%s" for gone in missing[3:])
    used = [s for s, gone in zip(order, missing, strict=True) if not gone]
    if not seps:
        return None
    return _FixedWidth(
        pos,
        operator.itemgetter(*(p for p, _ in seps)),
        tuple(c for _, c in seps) if len(seps) > 1 else seps[0][1],
        operator.itemgetter(*used),
        iso,
    )


def _fast(text: str, pattern: re.Pattern[str]) -> datetime | None:
    found = pattern.fullmatch(text)
    if found is None:
        return None
    g = found.groupdict()
    return datetime(
        int(g["Y"]),
        int(g["m"]),
        int(g["d"]),
        int(g.get("H") or 0),
        int(g.get("M") or 0),
        int(g.get("S") or 0),
    )


def _parse_one(text: str, fmt: str, zone: tzinfo) -> tuple[datetime, ...] | None:
    if fmt in ("epoch", "epoch_ms", "epoch_us"):
        try:
            value = _number(text)
        except StampError:
            return None
        scale = {"epoch": 1, "epoch_ms": 1000, "epoch_us": 1_000_000}[fmt]
        if abs(value) > 10**11 * scale:  # beyond year 5000: not this unit
            return None
        micros = int(value * 1_000_000 / scale)
        try:
            return (_EPOCH + timedelta(microseconds=micros),)
        except OverflowError:
            return None
    try:
        if fmt == "iso8601" or (fmt == _PLAIN and len(text) == 19 and text[10] == " "):
            stamp = datetime.fromisoformat(text.replace("z", "Z"))
        else:
            fast = _fast_pattern(fmt)
            stamp = (fast and _fast(text, fast)) or datetime.strptime(text, fmt)
    except ValueError:
        return None
    if stamp.tzinfo is not None and stamp.utcoffset() is not None:
        return (stamp.astimezone(UTC),)
    return local_candidates(stamp, zone)


_FIXED_ZONE_KEYS = frozenset(
    {"UTC", "Etc/UTC", "GMT", "Etc/GMT", "Universal", "Etc/Universal", "Zulu", "Etc/Zulu"}
)


def _fixed_offset(zone: tzinfo) -> timedelta | None:
    """The zone's UTC offset if it never changes (UTC, a fixed offset), else None."""
    if isinstance(zone, timezone):
        return zone.utcoffset(None)
    if isinstance(zone, ZoneInfo) and zone.key in _FIXED_ZONE_KEYS:
        return timedelta(0)
    return None


TimeParser = Callable[[str], "tuple[datetime, ...] | None"]


def time_parser(formats: Sequence[str], zone: tzinfo) -> TimeParser:
    """`parse_time` with its formats and zone fixed: the per-value work only.

    Same results as `parse_time(text, formats, zone)`; built once per column (a mapping
    parses millions of stamps with the same formats).
    """
    fixed = _fixed_offset(zone)
    hours: dict[tuple[int, int, int, int], timedelta | None] = {}

    def to_utc(stamp: datetime) -> tuple[datetime, ...]:
        if stamp.tzinfo is not None and stamp.utcoffset() is not None:
            return (stamp.astimezone(UTC),)
        if fixed is not None:
            return ((stamp - fixed).replace(tzinfo=UTC),)  # (the fast path does this inline)
        hour = (stamp.year, stamp.month, stamp.day, stamp.hour)
        offset = hours.get(hour, _UNKNOWN)
        if offset is _UNKNOWN:
            if len(hours) >= 10_000:
                hours.clear()
            offset = hours[hour] = _steady_offset(stamp, zone)
        if offset is not None:
            return ((stamp - offset).replace(tzinfo=UTC),)
        return local_candidates(stamp, zone)  # an hour with a DST change: each stamp alone

    def step(fmt: str) -> Callable[[str], tuple[datetime, ...] | None]:
        if fmt in ("epoch", "epoch_ms", "epoch_us"):
            unit = {"epoch": 1_000_000, "epoch_ms": 1000, "epoch_us": 1}[fmt]
            limit = 10**11 * (1_000_000 // unit)

            def epoch(text: str) -> tuple[datetime, ...] | None:
                if text.isdigit() and text.isascii():  # whole numbers: exact without Decimal
                    value = int(text)
                    if value <= limit:
                        try:
                            return (_EPOCH + timedelta(microseconds=value * unit),)
                        except OverflowError:
                            return None
                return _parse_one(text, fmt, zone)

            return epoch
        fromiso = datetime.fromisoformat
        if fmt == "iso8601":

            def iso(text: str) -> tuple[datetime, ...] | None:
                try:
                    return to_utc(fromiso(text.replace("z", "Z")))
                except ValueError:
                    return None

            return iso
        fast = _fast_pattern(fmt)
        strptime = datetime.strptime
        plain = fmt == _PLAIN
        layout = _fixed_width(fmt)
        width = layout.width if layout is not None else -1
        iso_utc = layout.iso + "+00:00" if layout is not None else ""

        def pattern(text: str) -> tuple[datetime, ...] | None:
            if (
                len(text) == width
                and layout is not None
                and layout.separators(text) == layout.expected
            ):
                try:
                    if fixed is None:
                        return to_utc(fromiso(layout.iso % layout.parts(text)))
                    stamp = fromiso(iso_utc % layout.parts(text))
                    return (stamp - fixed,) if fixed else (stamp,)
                except ValueError:
                    pass  # not ASCII digits, or out of range: the general path decides
            try:
                if plain and len(text) == 19 and text[10] == " ":
                    stamp = fromiso(text)
                elif fast is not None and (found := fast.fullmatch(text)) is not None:
                    g = found.groupdict()
                    stamp = datetime(
                        int(g["Y"]),
                        int(g["m"]),
                        int(g["d"]),
                        int(g.get("H") or 0),
                        int(g.get("M") or 0),
                        int(g.get("S") or 0),
                        tzinfo=None if fixed is None else UTC,
                    )
                    if fixed is not None:  # a naive stamp in a fixed zone: shift it
                        return (stamp - fixed,) if fixed else (stamp,)
                else:
                    stamp = strptime(text, fmt)
            except ValueError:
                return None
            return to_utc(stamp)

        return pattern

    steps = tuple(step(fmt) for fmt in formats)
    message = f"not a time in format {' or '.join(formats)}"

    def parse(text: str) -> tuple[datetime, ...] | None:
        text = text.strip()
        if not text:
            return None
        for one in steps:
            parsed = one(text)
            if parsed is not None:
                return None if parsed[0] < _UNSET_BEFORE else parsed
        raise StampError(message)

    return parse


_UNKNOWN = timedelta(days=-99_999)  # (a sentinel: no zone has this offset)


def _steady_offset(naive: datetime, zone: tzinfo) -> timedelta | None:
    """The zone's UTC offset during the whole wall-clock hour of `naive` if it is one offset
    with no gap nor overlap in that hour (then every stamp of the hour has one instant),
    else None."""
    start = naive.replace(minute=0, second=0, microsecond=0, fold=0)
    end = start.replace(minute=59, second=59, microsecond=999_999)
    offsets = {
        zone.utcoffset(start),
        zone.utcoffset(start.replace(fold=1)),
        zone.utcoffset(end),
        zone.utcoffset(end.replace(fold=1)),
    }
    if len(offsets) != 1:
        return None
    (offset,) = offsets
    return offset


def parse_duration(text: str, unit: str) -> int | None:
    """Whole seconds (truncated, as switches count them); None when empty."""
    text = text.strip()
    if not text:
        return None
    if unit != "hms" and text.isascii():
        # the usual case, without Decimal: whole numbers, or a dot and decimals (truncated)
        whole, dot, decimals = text.partition(".")
        if whole.isdigit() and (not dot or decimals.isdigit()):
            number = int(whole)
            whole_seconds = number // 1000 if unit == "ms" else number
            if whole_seconds < MAX_DURATION:
                return whole_seconds  # (at the limit, the exact rule below decides)
    if unit == "hms":
        negative = text.startswith("-")
        parts = text.lstrip("+-").split(":")
        if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
            raise StampError("not a duration in HH:MM:SS")
        hours, minutes, seconds = ([Decimal(0)] * (3 - len(parts))) + [_number(p) for p in parts]
        if (minutes >= 60 and len(parts) == 3) or seconds >= 60:
            raise StampError("not a duration in HH:MM:SS")
        total = hours * 3600 + minutes * 60 + seconds
        value = -total if negative else total
    else:
        try:
            value = _number(text)
        except StampError:
            name = "seconds" if unit == "s" else "milliseconds"
            raise StampError(f"not a duration in {name}") from None
        if unit == "ms":
            value = value / 1000
    if value < 0:
        raise StampError("negative duration")
    if value > MAX_DURATION:
        raise StampError("duration too large")
    return int(value)


def resolve(
    start: tuple[datetime, ...] | None,
    answer: tuple[datetime, ...] | None,
    end: tuple[datetime, ...] | None,
    duration: int | None,
    billsec: int | None,
) -> tuple[datetime | None, datetime | None, datetime | None]:
    """Choose one instant per stamp (see the module doc for the rule)."""
    if (
        (start is None or len(start) == 1)
        and (answer is None or len(answer) == 1)
        and (end is None or len(end) == 1)
    ):  # the usual case: no stamp in a DST overlap
        return (
            None if start is None else start[0],
            None if answer is None else answer[0],
            None if end is None else end[0],
        )
    options = [c if c is not None else (None,) for c in (start, answer, end)]
    if all(len(o) == 1 for o in options):
        return options[0][0], options[1][0], options[2][0]

    def score(combo: tuple[datetime | None, ...]) -> tuple[int, float, float]:
        s, a, e = combo
        known = [t for t in (s, a, e) if t is not None]
        disorder = sum(1 for x, y in itertools.pairwise(known) if y < x)
        dur = abs((e - s).total_seconds() - duration) if s and e and duration is not None else 0
        bill = abs((e - a).total_seconds() - billsec) if a and e and billsec is not None else 0
        return disorder, dur, bill

    best = min(itertools.product(*options), key=score)
    return best[0], best[1], best[2]


def seconds_between(earlier: datetime, later: datetime) -> int:
    """Whole seconds from `earlier` to `later`, truncated toward zero."""
    return int((later - earlier).total_seconds())

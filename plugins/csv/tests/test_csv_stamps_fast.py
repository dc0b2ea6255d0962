"""stamps.py's fast path for simple numeric formats gives what strptime gives, or falls back."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cdrstats_csv.stamps import StampError, _fast_pattern, parse_time

FORMATS = [
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%m-%d-%Y %H:%M:%S",
    "%d.%m.%Y",
    "%Y/%m/%dT%H:%M:%S",
    "%d/%m/%Y %I:%M %p",  # not fast: strptime only
]
TEXTS = [
    "03/02/2025 10:04:05",
    "3/2/2025 1:4:5",
    "03/02/2025 10:04",
    "03/02/2025  10:04:05",
    "31/02/2025 10:04:05",
    "03/02/2025 24:00:00",
    "02-03-2025 10:04:05",
    "03.02.2025",
    "2025/02/03T10:04:05",
    "2025/02/03t10:04:05",
    "03/02/2025 10:04 PM",
    " 3/02/2025 10:04:05",
    "03/02/25 10:04:05",
    "٠٣/02/2025 10:04:05",
]


def _strptime(text: str, fmt: str) -> datetime | None:
    try:
        return datetime.strptime(text, fmt).replace(tzinfo=UTC)
    except ValueError:
        return None


@pytest.mark.parametrize("fmt", FORMATS)
def test_fast_path_agrees_with_strptime(fmt: str) -> None:
    for text in TEXTS:
        expected = _strptime(text, fmt)
        try:
            got = parse_time(text, [fmt], UTC)
        except StampError:
            got = None
        assert (got[0] if got else None) == expected, (text, fmt)


def test_which_formats_are_fast() -> None:
    assert _fast_pattern("%d/%m/%Y %H:%M:%S") is not None
    assert _fast_pattern("%d/%m/%Y") is not None
    assert _fast_pattern("%H:%M:%S") is None  # no date
    assert _fast_pattern("%d/%m/%Y %I:%M %p") is None
    assert _fast_pattern("%d/%d/%Y") is None

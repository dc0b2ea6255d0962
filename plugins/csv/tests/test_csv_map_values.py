"""`Mapping.map_values`: rows already split (database rows as text) map like CSV records;
and the fast path of `local_candidates` gives what the general one gives."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cdrstats_agent.model import CDR, Disposition
from cdrstats_csv.config import mapping_from_options
from cdrstats_csv.mapping import Rejection
from cdrstats_csv.stamps import local_candidates

ROW = [
    "acme", "1000", "2000", "default", '"Ann, \\"A\\"" <1000>', "PJSIP/carrier-00000001",
    "PJSIP/200-00000002", "Dial", "PJSIP/200", "2026-01-10 10:00:00", "2026-01-10 10:00:05",
    "2026-01-10 10:01:05", "65", "60", "ANSWERED", "DOCUMENTATION", "1768039200.1", "",
]  # fmt: skip


def test_values_map_like_the_same_record_in_a_file() -> None:
    mapping = mapping_from_options({"preset": "asterisk", "usegmtime": True})
    line = ",".join('"' + v.replace('"', '""') + '"' for v in ROW).encode()
    from_file = mapping.map_record(line)
    from_values = mapping.map_values(list(ROW), b"ignored: the key comes from uniqueid")
    assert isinstance(from_file, CDR) and isinstance(from_values, CDR)
    assert from_values == from_file
    assert from_values.key == "1768039200.1"
    assert from_values.disposition is Disposition.ANSWERED
    assert from_values.trunk == "200"


def test_raw_feeds_the_content_hash_when_the_key_is_empty() -> None:
    mapping = mapping_from_options({"preset": "asterisk", "usegmtime": True})
    row = list(ROW)
    row[16] = ""
    result = mapping.map_values(row, b"raw-bytes")
    assert isinstance(result, CDR)
    assert result.key == hashlib.sha256(b"raw-bytes").hexdigest()


def test_bad_values_and_unknown_layouts_are_rejections() -> None:
    mapping = mapping_from_options({"preset": "asterisk", "usegmtime": True})
    row = list(ROW)
    row[11] = "yesterday"
    bad = mapping.map_values(row, b"")
    assert isinstance(bad, Rejection) and "column 12 'end'" in bad.reason
    short = mapping.map_values(ROW[:5], b"")
    assert isinstance(short, Rejection) and "has 5 columns, expected 16, 18 or 21" in short.reason


def _slow_candidates(naive: datetime, zone: ZoneInfo) -> tuple[datetime, ...]:
    """local_candidates as it was before its one-offset fast path (the reference)."""
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return (first,)
    back = [c.astimezone(zone).replace(tzinfo=None, fold=0) for c in (first, second)]
    if back[0] == naive and back[1] == naive:
        return (min(first, second), max(first, second))
    return (first,)


@pytest.mark.parametrize(
    "zone", ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "UTC", "Asia/Kolkata"]
)
def test_local_candidates_fast_path_changes_nothing(zone: str) -> None:
    tz = ZoneInfo(zone)
    t = datetime(2026, 1, 1)
    while t < datetime(2027, 1, 1):
        assert local_candidates(t, tz) == _slow_candidates(t, tz), t
        t += timedelta(minutes=7)
    for transition in (datetime(2026, 3, 29, 2, 30), datetime(2026, 10, 25, 2, 30)):
        assert local_candidates(transition, tz) == _slow_candidates(transition, tz)

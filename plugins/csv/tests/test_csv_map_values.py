"""`Mapping.map_values`: rows already split (database rows as text) map like CSV records."""

from __future__ import annotations

import hashlib

from cdrstats_agent.model import CDR, Disposition
from cdrstats_csv.config import mapping_from_options
from cdrstats_csv.mapping import Rejection

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

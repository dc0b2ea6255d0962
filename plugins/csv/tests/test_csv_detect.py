"""detect.py: encoding, delimiter, header and decimal-comma guesses; what is not text."""

from __future__ import annotations

import pytest
from cdrstats_agent.errors import ConfigError
from cdrstats_csv.config import mapping_from_options
from cdrstats_csv.detect import (
    NotText,
    check_text,
    detect,
    detect_encoding,
    has_header,
    sniff_delimiter,
)
from cdrstats_csv.mapping import Rejection

ROWS = [
    ["id", "start", "caller", "name", "duration"],
    ["1", "2025-01-05 10:00:00", "0142000001", "Zoë", "12"],
    ["2", "2025-01-05 10:01:00", "0142000002", "Jean, fils", "61"],
]


def _csv(delimiter: str, rows: list[list[str]] = ROWS) -> str:
    def cell(v: str) -> str:
        return f'"{v}"' if delimiter in v or "," in v else v

    return "".join(delimiter.join(cell(v) for v in row) + "\r\n" for row in rows)


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_is_found_despite_commas_in_quoted_values(delimiter: str) -> None:
    found = detect(_csv(delimiter).encode(), complete=True)
    assert (found.delimiter, found.columns, found.header) == (delimiter, 5, True)


def test_single_column_text_falls_back_to_comma() -> None:
    assert sniff_delimiter("2025-01-05 10:00:00\n2025-01-05 10:01:00\n") == (",", 1)
    assert sniff_delimiter("a|b;c\n1|2;3\n4|5;6\n") in (("|", 2), (";", 2))


def test_encodings() -> None:
    text = _csv(";")
    assert detect_encoding(text.encode("utf-8")) == ("utf-8", False)
    assert detect_encoding(b"\xef\xbb\xbf" + text.encode("utf-8")) == ("utf-8", True)
    assert detect_encoding("Œuvre; €\n".encode("cp1252"), complete=True) == ("cp1252", False)
    # 0x81 is undefined in cp1252: only Latin-1 decodes it
    assert detect_encoding(b"caf\xe9\x81\n", complete=True) == ("latin-1", False)
    # a sample cut inside a UTF-8 character is still UTF-8, a whole file is not
    cut = "abc é".encode()[:-1]
    assert detect_encoding(cut) == ("utf-8", False)
    assert detect_encoding(cut, complete=True) == ("cp1252", False)
    found = detect(b"\xef\xbb\xbf" + text.encode(), complete=True)
    assert (found.encoding, found.bom, found.header) == ("utf-8", True, True)


def test_header_presence() -> None:
    assert has_header(ROWS)
    assert not has_header(ROWS[1:])
    assert not has_header([["a", "a"], ["1", "2"]])  # repeated names: not a header
    assert not has_header([["x", "y"], ["a", "b"]])  # nothing looks like data after it
    assert detect(_csv(",", ROWS[1:]).encode(), complete=True).header is False


def test_decimal_comma_with_semicolons_only() -> None:
    rows = [["start", "secs"], ["2025-01-05 10:00:00", "12,5"]]
    assert detect(_csv(";", rows).encode(), complete=True).decimal_comma
    assert not detect(_csv(",", rows).encode(), complete=True).decimal_comma
    assert not detect(_csv(";", [["start", "secs"], ["2025-01-05", "12"]]).encode()).decimal_comma


def test_not_text() -> None:
    with pytest.raises(NotText, match=r"empty \(0 bytes\)"):
        check_text(b"")
    with pytest.raises(NotText, match="byte 4 is NUL"):
        check_text(b"GIF\x00\x01\x02")
    with pytest.raises(NotText, match="control characters"):
        check_text(bytes(range(1, 9)) * 10)
    with pytest.raises(NotText, match="only blank lines"):
        detect(b"\r\n  \n", complete=True)
    check_text(b"a;b\r\n1;2\n")  # no error


def test_decimal_comma_option_in_the_mapping() -> None:
    options = {"fields": {"start": 1, "duration": 2}, "delimiter": ";"}
    comma = mapping_from_options({**options, "decimal_comma": True})
    cdr = comma.map_record(b"2025-01-05 10:00:00;12,9")
    assert not isinstance(cdr, Rejection) and cdr.duration == 12
    plain = mapping_from_options(options)
    refused = plain.map_record(b"2025-01-05 10:00:00;12,9")
    assert isinstance(refused, Rejection) and "not a duration in seconds" in refused.reason
    with pytest.raises(ConfigError, match="decimal_comma"):
        mapping_from_options({**options, "decimal_comma": "yes"})

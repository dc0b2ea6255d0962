"""Guessing how an unknown CSV file is written, from its first bytes. Pure functions, no I/O.

Used by the collector's CSV import (uploads from any switch or carrier) to fill the mapping
options a profile leaves open; every guess can be overridden by the profile.

* encoding: UTF-8 (with or without a byte-order mark), else Windows-1252 (a superset of
  Latin-1 for printable text), else Latin-1 (decodes any byte);
* delimiter: among `,` `;` tab `|`, the one that splits the sample's records into the same
  number of values most consistently (quoted values are honoured);
* header: the first record names columns when none of its values looks like data (a number,
  a time) while the records after it have such values in those columns;
* decimal comma: with `;` as delimiter, numbers written `12,5`.

A sample holding NUL bytes, or too few printable characters, is not text: `NotText`.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass

DELIMITERS = (",", ";", "\t", "|")
BOM = b"\xef\xbb\xbf"
SAMPLE_BYTES = 64 * 1024
"""How much of a file the guesses look at."""

_DATA = re.compile(r"^\s*[-+]?(\d+([.,:/ T-]\d+)*)\s*(Z|[+-]\d\d:?\d\d)?\s*$")
_DECIMAL_COMMA = re.compile(r"^\s*-?\d+,\d+\s*$")


class NotText(ValueError):
    """The bytes are not a text file (binary, or empty); the message says what was seen."""


@dataclass(frozen=True, slots=True)
class Detected:
    encoding: str
    """A Python codec name: `utf-8`, `cp1252` or `latin-1`."""
    bom: bool
    """The file starts with a UTF-8 byte-order mark (skip its 3 bytes)."""
    delimiter: str
    header: bool
    decimal_comma: bool
    columns: int
    """Values per record in the sample (the most common count)."""


def detect_encoding(sample: bytes, complete: bool = False) -> tuple[str, bool]:
    """(codec, has BOM) of a sample; `complete` when the sample is the whole file.

    A sample cut inside a multi-byte UTF-8 character is still UTF-8.
    """
    bom = sample.startswith(BOM)
    body = sample[3:] if bom else sample
    try:
        body.decode("utf-8")
        return "utf-8", bom
    except UnicodeDecodeError as exc:
        if not complete and exc.start >= len(body) - 3 and exc.reason == "unexpected end of data":
            return "utf-8", bom
    if bom:
        return "utf-8", bom  # a BOM says UTF-8; bad bytes are reported per row
    try:
        body.decode("cp1252")
        return "cp1252", False
    except UnicodeDecodeError:
        return "latin-1", False


def check_text(sample: bytes) -> None:
    """Raise NotText when the sample cannot be a CSV file."""
    if not sample:
        raise NotText("the file is empty (0 bytes)")
    if b"\x00" in sample:
        at = sample.index(b"\x00")
        raise NotText(
            f"this is not a text file: byte {at + 1} is NUL (a binary file, or UTF-16 text,"
            " renamed .csv?)"
        )
    controls = sum(1 for b in sample if b < 0x20 and b not in (0x09, 0x0A, 0x0D))
    if controls * 20 > len(sample):
        raise NotText(
            f"this is not a text file: {controls} of its first {len(sample)} bytes are control"
            " characters"
        )


def _rows(text: str, delimiter: str, limit: int = 50) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.strip()]
    reader = csv.reader(lines[:limit], delimiter=delimiter, quotechar='"')
    rows: list[list[str]] = []
    try:
        for row in reader:
            rows.append(row)
    except csv.Error:
        pass
    return rows


def sniff_delimiter(text: str) -> tuple[str, int]:
    """(delimiter, values per record) that cut the sample most consistently; `,` if none."""
    best = (",", 1)
    best_score = (0.0, 0)
    for delimiter in DELIMITERS:
        rows = _rows(text, delimiter)
        if not rows:
            continue
        counts = Counter(len(r) for r in rows)
        columns, seen = counts.most_common(1)[0]
        if columns < 2:
            continue
        score = (seen / len(rows), columns)
        if score > best_score:
            best, best_score = (delimiter, columns), score
    return best


def _looks_like_data(value: str) -> bool:
    return bool(_DATA.match(value))


def has_header(rows: list[list[str]]) -> bool:
    """Whether the first row names the columns (see the module doc)."""
    if len(rows) < 2:
        return bool(rows) and not any(_looks_like_data(v) for v in rows[0] if v.strip())
    first, rest = rows[0], rows[1:]
    if any(_looks_like_data(v) for v in first if v.strip()):
        return False
    if len(set(v.strip() for v in first)) != len(first):
        return False
    return any(any(i < len(r) and _looks_like_data(r[i]) for r in rest) for i in range(len(first)))


def detect(sample: bytes, complete: bool = False) -> Detected:
    """Every guess for a file's first bytes (`complete`: the sample is the whole file)."""
    check_text(sample)
    encoding, bom = detect_encoding(sample, complete)
    body = sample[3:] if bom else sample
    text = body.decode(encoding, errors="replace")
    if not complete:
        cut = text.rfind("\n")
        text = text[: cut + 1] if cut > 0 else text
    if not text.strip():
        raise NotText("the file holds no records (only blank lines)")
    delimiter, columns = sniff_delimiter(text)
    rows = _rows(text, delimiter)
    header = has_header(rows)
    data = rows[1:] if header else rows
    decimal_comma = delimiter != "," and any(_DECIMAL_COMMA.match(v) for row in data for v in row)
    return Detected(encoding, bom, delimiter, header, decimal_comma, columns)

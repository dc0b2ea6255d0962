"""Cutting CSV bytes into records, and records into values. Pure functions, no I/O.

Two record syntaxes exist in the wild:

* RFC 4180 (Asterisk cdr_csv, spreadsheets, carriers): a value may be quoted, a quote inside a
  quoted value is doubled, and a quoted value may contain newlines, so one record can span
  several physical lines. `split_records` follows the quote parity to find record ends.
* Templates (FreeSWITCH mod_cdr_csv): the line is the template text with each `${var}`
  replaced by the raw value, with no escaping at all. `Template.split` recovers the values
  when the line can only be cut one way, and says why otherwise.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

NEWLINE = 0x0A


class RawRecord(NamedTuple):
    """One record as found in the bytes, without its line terminator.

    (A named tuple, not a dataclass: millions are made per imported file, and a tuple is
    built in a third of the time.)
    """

    data: bytes
    start: int
    """Offset of its first byte in the buffer given to `split_records`."""
    end: int
    """Offset just after its terminator (where the next record starts)."""
    line: int
    """Number of its first physical line (1-based, counted from `first_line`)."""
    lines: int
    """Physical lines it spans (more than 1 for quoted newlines)."""


@dataclass(frozen=True, slots=True)
class Split:
    """What `split_records` found: complete records and how far it got."""

    records: list[RawRecord]
    consumed: int
    """Bytes consumed: complete records and blank lines; the rest waits for more data."""
    lines: int
    """Physical lines consumed."""
    open_quote: bool = False
    """Stopped at a record whose quote is still open, with complete lines after it."""


def _strip_cr(data: bytes) -> bytes:
    return data[:-1] if data.endswith(b"\r") else data


def split_records(
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
    """Cut `buf` into complete records.

    A record ends at a newline outside quotes (`quote` is the quote byte, None when records
    are always one line). A line left with an open quote is joined with the following lines
    until the quotes balance, at most `max_lines` lines; if they never balance, or if
    `accept` refuses the joined text, the first line alone is the record (the mapping will
    reject it) and cutting goes on from the next line, so one broken row never swallows the
    good rows after it. Blank lines are skipped. A last line without newline, or an open
    quote at the end of `buf`, waits for more data unless `final` (end of a finished file);
    `flush_open_quotes` stops waiting for the quote only (the caller saw no new data come).
    `limit` bounds the number of records returned.
    """
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

    find = buf.find
    append = records.append
    while pos < size and (limit is None or len(records) < limit):
        # (line_end, inlined: this loop runs once per line of every imported file)
        nl = find(b"\n", pos)
        if nl >= 0:
            content_end, next_pos = nl, nl + 1
        elif final:
            content_end = next_pos = size
        else:
            break
        if content_end > pos and buf[content_end - 1] == 0x0D:  # CRLF
            content_end -= 1
        data = buf[pos:content_end]
        if data[:1] in b" \t" and not data.strip(b" \t"):  # (b"" is in any bytes)
            pos, lines = next_pos, lines + 1
            continue
        if quote is None or data.count(quote) % 2 == 0:
            append(RawRecord(data, pos, next_pos, first_line + lines, 1))
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
            joined = _strip_cr(buf[pos : closed_at[0]])
            if accept is None or accept(joined):
                records.append(RawRecord(joined, pos, closed_at[1], first_line + lines, span))
                pos, lines = closed_at[1], lines + span
                continue
        # Never balanced (or not a plausible record): the first line alone, as it is.
        records.append(RawRecord(data, pos, next_pos, first_line + lines, 1))
        pos, lines = next_pos, lines + 1
    return Split(records, pos, lines)


class RecordError(ValueError):
    """A record that cannot be cut into values; the message says why, for an operator."""


def split_csv(text: str, *, delimiter: str = ",", quotechar: str = '"') -> list[str]:
    """The values of one RFC 4180 record (doubled quotes, quoted newlines)."""
    reader = csv.reader(
        [text], delimiter=delimiter, quotechar=quotechar, doublequote=True, strict=True
    )
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise RecordError(f"malformed CSV ({exc})") from None
    if len(rows) != 1:
        raise RecordError("malformed CSV (a newline outside quotes)")
    return rows[0]


class CsvSplitter:
    """`split_csv` with one `csv.reader` kept for every record of a file (building a reader
    per record costs more than reading the record). Same values, same errors."""

    def __init__(self, *, delimiter: str = ",", quotechar: str = '"') -> None:
        self._pending: list[str] = []
        self._reader = csv.reader(
            self, delimiter=delimiter, quotechar=quotechar, doublequote=True, strict=True
        )

    def __iter__(self) -> CsvSplitter:
        return self

    def __next__(self) -> str:
        """The reader's input: the record being split, then nothing (end of data)."""
        if self._pending:
            return self._pending.pop()
        raise StopIteration

    def split(self, text: str) -> list[str]:
        self._pending.append(text)
        try:
            return next(self._reader)
        except csv.Error as exc:
            raise RecordError(f"malformed CSV ({exc})") from None
        except StopIteration:  # (an empty input: not reached, the text is always read)
            return []
        finally:
            self._pending.clear()


@dataclass(frozen=True, slots=True)
class Template:
    """A mod_cdr_csv style template: literal text around `${var}` references."""

    literals: tuple[str, ...]
    """Text before the first variable, between variables, and after the last one."""
    names: tuple[str, ...]
    """The variables, in order (`caller_id_name`, `regex('${x}'|^.)`, ...)."""

    @classmethod
    def parse(cls, text: str) -> Template:
        """Parse a template; ValueError with a readable reason if it cannot be used."""
        body = text[:-1] if text.endswith("\n") else text
        body = body[:-1] if body.endswith("\r") else body
        if "\n" in body or "\r" in body:
            raise ValueError("must be one line (FreeSWITCH writes one line per call)")
        literals: list[str] = []
        names: list[str] = []
        pos = 0
        current: list[str] = []
        while pos < len(body):
            if body.startswith("${", pos):
                depth, i = 1, pos + 2
                while i < len(body) and depth:
                    if body.startswith("${", i):
                        depth, i = depth + 1, i + 2
                        continue
                    if body[i] == "}":
                        depth -= 1
                    i += 1
                if depth:
                    raise ValueError(f"unclosed '${{' at character {pos + 1}")
                name = body[pos + 2 : i - 1].strip()
                if not name:
                    raise ValueError(f"empty '${{}}' at character {pos + 1}")
                if names and not current:
                    raise ValueError(
                        f"'${{{names[-1]}}}' and '${{{name}}}' have nothing between them, "
                        "so their values cannot be told apart"
                    )
                literals.append("".join(current))
                names.append(name)
                current = []
                pos = i
            else:
                current.append(body[pos])
                pos += 1
        literals.append("".join(current))
        if not names:
            raise ValueError("has no ${variable}")
        return cls(tuple(literals), tuple(names))

    @property
    def text(self) -> str:
        parts = [self.literals[0]]
        for name, literal in zip(self.names, self.literals[1:], strict=True):
            parts.append("${" + name + "}")
            parts.append(literal)
        return "".join(parts)

    def split(self, line: str) -> list[str]:
        """The raw values of a line written with this template.

        Values are not escaped by the switch, so a value may contain a separator (a `"`
        followed by `,"` in a caller name). The line is accepted only if there is exactly one
        way to cut it: the earliest and the latest placements of the separators agree.
        """
        head, tail = self.literals[0], self.literals[-1]
        seps = self.literals[1:-1]
        if (
            not line.startswith(head)
            or not line.endswith(tail)
            or len(line) < len(head) + len(tail)
        ):
            raise RecordError(
                f"does not match the template: expected the line to start with {head!r} "
                f"and end with {tail!r}"
            )
        stop = len(line) - len(tail)
        # Earliest placement.
        early: list[int] = []
        pos = len(head)
        for sep in seps:
            at = line.find(sep, pos, stop)
            if at < 0:
                index = len(early)
                raise RecordError(
                    f"does not match the template: no {sep!r} after field {index + 1} "
                    f"({self.names[index]}) of {len(self.names)}"
                )
            early.append(at)
            pos = at + len(sep)
        # Latest placement.
        late: list[int] = []
        end = stop
        for sep in reversed(seps):
            at = line.rfind(sep, len(head), end)
            late.append(at)
            end = at
        late.reverse()
        if early != late:
            extra = sum(line.count(sep, len(head), stop) for sep in set(seps)) - len(seps)
            raise RecordError(
                f"cannot be cut into the template's {len(self.names)} fields: a value contains "
                f"a separator ({max(extra, 1)} more than the template has; FreeSWITCH does not "
                "escape quotes in values)"
            )
        values: list[str] = []
        pos = len(head)
        for sep, at in zip(seps, early, strict=True):
            values.append(line[pos:at])
            pos = at + len(sep)
        values.append(line[pos:stop])
        return values

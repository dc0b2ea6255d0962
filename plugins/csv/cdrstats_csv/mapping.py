"""The mapping engine: one CSV record in, one `CDR` (or the reason why not) out.

Pure and free of file-following concerns, so that the collector can map uploaded files with
the same code (`Mapping.map_document`). A `MappingSpec` says which column feeds which CDR
field; presets (`presets.py`) and the `[[source]]` options (`config.py`) both build one.

Columns are referred to by name (header line, preset or `column_names`) or by number,
counted from 1. What the switch does not write is derived:

* start from end - duration (or from answer) when there is no start column;
* end from start + duration; answer from end - billsec when billsec > 0;
* duration = end - start, billsec = end - answer (0 when unanswered; the whole duration
  when the disposition says ANSWERED but no answer time is written);
* ring_time = answer - start, or end - start when unanswered (unknown when answered
  without an answer time);
* disposition from the hangup cause and billsec when there is no disposition column
  (or its text is unknown);
* trunk and direction from Asterisk-style channel names (`channel`, `dstchannel` inputs);
* caller/callee E.164 from `country_code` and the dialling prefixes;
* the key: the key column(s) joined with `:`, or else the sha256 (hex) of the raw record;
  a key longer than 200 characters is replaced by its own sha256.

Every column that feeds no CDR field is kept in `extra`, under its name or `col<N>`; so is the
raw text of a mapped value that could not be understood (an unknown hangup cause name).
"""

from __future__ import annotations

import codecs
import hashlib
import ipaddress
import re
from collections.abc import Mapping as MappingABC
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from cdrstats_agent.model import CDR, Direction, Disposition
from cdrstats_agent.normalize import (
    channel_peer,
    disposition_from_q850,
    disposition_from_text,
    q850_from_text,
    split_callerid,
    to_e164,
)
from cdrstats_agent.plugin import Rejected

from .records import CsvSplitter, RecordError, Template, split_records
from .stamps import (
    StampError,
    TimeParser,
    local_zone,
    parse_duration,
    resolve,
    seconds_between,
    time_parser,
)

ColRef = str | int
"""A column: its name, or its number counted from 1."""

TIME_FIELDS = ("start", "answer", "end")
DURATION_FIELDS = ("duration", "billsec", "ring_time")
TEXT_FIELDS = ("caller", "caller_name", "callee", "accountcode")
OPTIONAL_TEXT_FIELDS = ("read_codec", "write_codec", "trunk", "user_agent", "call_group")
CODED_FIELDS = ("disposition", "direction", "hangup_cause", "sip_code", "src_ip")
INPUT_ONLY_FIELDS = ("channel", "dstchannel")
"""Not CDR fields: Asterisk channel names from which trunk and direction are derived."""
MAPPABLE_FIELDS = (
    TIME_FIELDS
    + DURATION_FIELDS
    + TEXT_FIELDS
    + OPTIONAL_TEXT_FIELDS
    + CODED_FIELDS
    + INPUT_ONLY_FIELDS
)
TRANSFORMS = ("callerid_name", "callerid_number")

DEFAULT_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "iso8601")
MAX_KEY_CHARS = 200
"""A longer key (from overlong key columns) is replaced by its sha256 (hex)."""

_DIRECTIONS = {
    "inbound": Direction.INBOUND,
    "in": Direction.INBOUND,
    "incoming": Direction.INBOUND,
    "outbound": Direction.OUTBOUND,
    "out": Direction.OUTBOUND,
    "outgoing": Direction.OUTBOUND,
    "internal": Direction.INTERNAL,
    "local": Direction.INTERNAL,
}


@dataclass(frozen=True, slots=True)
class FieldInput:
    """One column feeding a CDR field; a field may list several, the first non-empty wins."""

    column: ColRef
    time_formats: tuple[str, ...] | None = None
    """For a time field: formats for this column instead of the mapping's."""
    transform: str | None = None
    """`callerid_name` / `callerid_number`: take that part of `"Name" <number>`."""


@dataclass(frozen=True)
class MappingSpec:
    """Everything a `Mapping` needs; see the module doc and README for each part."""

    fields: MappingABC[str, tuple[FieldInput, ...]]
    key: tuple[ColRef, ...] = ()
    layouts: tuple[tuple[str, ...], ...] = ()
    """Known column lists, one per column count (a row picks the one with its length)."""
    header: bool = False
    """The first record of each file names the columns."""
    template: Template | None = None
    """Records are lines written with this template (no CSV quoting) instead of RFC 4180."""
    delimiter: str = ","
    quotechar: str = '"'
    max_record_lines: int = 20
    time_formats: tuple[str, ...] = DEFAULT_TIME_FORMATS
    timezone: tzinfo | None = None
    """Zone of local stamps; None means the host's zone."""
    duration_unit: str = "s"
    dispositions: MappingABC[str, Disposition] = field(default_factory=dict)
    """Extra disposition texts (upper case) on top of the Asterisk ones."""
    country_code: str | None = None
    international_prefix: str = "00"
    national_prefix: str = "0"
    trunks: frozenset[str] = frozenset()
    """Peer names that are trunks; when set, direction follows from channel names."""
    encoding: str = "utf-8"
    broken_quotes: str = "recover"
    """Template records with a `"` inside a value: `recover` (when unambiguous) or `reject`."""
    decimal_comma: bool = False
    """Numbers in duration columns are written `12,5` (spreadsheets in many locales)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record gives no CDR, for an operator."""

    reason: str


@dataclass(slots=True)
class _Bound:
    """A spec resolved against one concrete list of columns."""

    count: int
    labels: tuple[str, ...]
    named: bool
    inputs: dict[str, list[tuple[int, FieldInput]]]
    key: list[int]
    extra: list[int]
    extra_items: tuple[tuple[str, int], ...] = ()
    """(label, index) of the columns kept in `extra`."""
    times: tuple[tuple[int, list[tuple[int, FieldInput]]], ...] = ()
    """(slot in TIME_FIELDS, inputs) of the mapped time fields; the same for the others:"""
    durations: tuple[tuple[int, list[tuple[int, FieldInput]]], ...] = ()
    texts: tuple[tuple[int, list[tuple[int, FieldInput]]], ...] = ()
    optional: tuple[tuple[int, list[tuple[int, FieldInput]]], ...] = ()


def _show(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def ascii_compatible(encoding: str) -> bool:
    """True if `encoding` writes `"`, `,` and newline as their ASCII bytes (not UTF-16...)."""
    try:
        return '",\n\r'.encode(encoding) == b'",\n\r'
    except (LookupError, UnicodeError):
        return False


class Mapping:
    """A compiled `MappingSpec`. Not thread-safe (caches bindings); cheap to build."""

    def __init__(self, spec: MappingSpec) -> None:
        self.spec = spec
        self.encoding = codecs.lookup(spec.encoding).name
        self._bound: dict[object, _Bound | Rejection] = {}
        self._parsers: dict[tuple[str, ...], TimeParser] = {}
        self._by_input: dict[int, TimeParser] = {}
        """The parser of each time `FieldInput` of the spec (by id: they live as long)."""
        self._splitter = CsvSplitter(delimiter=spec.delimiter, quotechar=spec.quotechar)
        self._known_counts = tuple(sorted({len(layout) for layout in spec.layouts}))
        self.quote_recovered = 0
        """Template records read although a value contained a quote (counted, see README)."""

    # --- record syntax ------------------------------------------------------------------

    @property
    def header(self) -> bool:
        return self.spec.header

    @property
    def quote_byte(self) -> int | None:
        """The quote byte that lets a record span lines, or None (one line per record)."""
        if self.spec.template is not None or self.spec.max_record_lines <= 1:
            return None
        return self.spec.quotechar.encode(self.encoding)[0]

    @property
    def max_record_lines(self) -> int:
        return self.spec.max_record_lines

    def decode(self, data: bytes) -> str:
        try:
            text = data.decode(self.encoding)
        except UnicodeDecodeError as exc:
            bad = data[exc.start : exc.start + 1]
            raise RecordError(
                f"cannot be decoded as {self.encoding} (byte 0x{bad.hex()} at position "
                f"{exc.start + 1}); set the `encoding` option (latin-1, cp1252...)"
            ) from None
        return text[1:] if text.startswith("\ufeff") else text  # a byte-order mark

    def split(self, data: bytes) -> list[str]:
        """The values of one record; RecordError says why it cannot be cut."""
        text = self.decode(data)
        if self.spec.template is not None:
            return self.spec.template.split(text)
        return self._splitter.split(text)

    def plausible(self, data: bytes) -> bool:
        """Whether a multi-line candidate record reads as one record (see split_records)."""
        try:
            values = self.split(data)
        except RecordError:
            return False
        return not self._known_counts or len(values) in self._known_counts

    def parse_header(self, data: bytes) -> tuple[str, ...] | Rejection:
        try:
            names = tuple(v.strip() for v in self.split(data))
        except RecordError as exc:
            return Rejection(f"header {exc}")
        return names

    # --- binding ------------------------------------------------------------------------

    def _bind(self, names: tuple[str, ...] | None, count: int, strict: bool) -> _Bound | Rejection:
        def resolve_ref(ref: ColRef, what: str) -> int | Rejection | None:
            if isinstance(ref, int):
                if ref <= count:
                    return ref - 1
                if strict:
                    return Rejection(f"has {count} columns, {what} needs column {ref}")
                return None
            if names is not None and ref in names:
                return names.index(ref)
            if strict:
                return Rejection(f"header has no column {ref!r} ({what})")
            return None

        inputs: dict[str, list[tuple[int, FieldInput]]] = {}
        used: set[int] = set()
        for name, sources in self.spec.fields.items():
            resolved: list[tuple[int, FieldInput]] = []
            for source in sources:
                index = resolve_ref(source.column, f"fields.{name}")
                if isinstance(index, Rejection):
                    return index
                if index is not None:
                    resolved.append((index, source))
                    if name not in INPUT_ONLY_FIELDS:
                        used.add(index)
            if resolved:
                inputs[name] = resolved
        key: list[int] = []
        for ref in self.spec.key:
            index = resolve_ref(ref, "key")
            if isinstance(index, Rejection):
                return index
            if index is not None:
                key.append(index)
        labels = tuple(
            names[i] if names is not None and names[i] else f"col{i + 1}" for i in range(count)
        )
        extra = [i for i in range(count) if i not in used]

        def mapped(names: tuple[str, ...]) -> tuple[tuple[int, list[tuple[int, FieldInput]]], ...]:
            return tuple((slot, inputs[n]) for slot, n in enumerate(names) if n in inputs)

        return _Bound(
            count,
            labels,
            names is not None,
            inputs,
            key,
            extra,
            tuple((labels[i], i) for i in extra),
            mapped(TIME_FIELDS),
            mapped(DURATION_FIELDS),
            mapped(TEXT_FIELDS),
            mapped(OPTIONAL_TEXT_FIELDS),
        )

    def _bound_for(self, count: int, header: tuple[str, ...] | None) -> _Bound | Rejection:
        if self.spec.header:
            if header is None:
                return Rejection("no header line read for this file")
            if count != len(header):
                return Rejection(f"has {count} columns, the header has {len(header)}")
            cache_key: object = header
            names: tuple[str, ...] | None = header
            strict = True
        elif self.spec.layouts:
            matching = [layout for layout in self.spec.layouts if len(layout) == count]
            if not matching:
                counts = [str(n) for n in self._known_counts]
                expected = " or ".join(filter(None, (", ".join(counts[:-1]), counts[-1])))
                return Rejection(f"has {count} columns, expected {expected}")
            cache_key, names, strict = count, matching[0], False
        else:
            cache_key, names, strict = count, None, True
        bound = self._bound.get(cache_key)
        if bound is None:
            bound = self._bind(names, count, strict)
            if len(self._bound) > 64:
                self._bound.clear()
            self._bound[cache_key] = bound
        return bound

    # --- mapping ------------------------------------------------------------------------

    def _check(
        self, data: bytes, header: tuple[str, ...] | None
    ) -> tuple[list[str], _Bound] | Rejection:
        """A record's values and binding, or why it cannot be mapped."""
        try:
            values = self.split(data)
        except RecordError as exc:
            return Rejection(str(exc))
        bound = self._bound_for(len(values), header)
        if isinstance(bound, Rejection):
            return bound
        if self.spec.template is not None:
            quoted = [i for i, v in enumerate(values) if '"' in v]
            if quoted:
                if self.spec.broken_quotes == "reject":
                    i = quoted[0]
                    return Rejection(
                        f"{self._where(bound, i)}: value {_show(values[i])} contains a '\"' "
                        '(FreeSWITCH writes values unescaped; broken_quotes = "reject")'
                    )
                self.quote_recovered += 1
        return values, bound

    def map_record(self, data: bytes, header: tuple[str, ...] | None = None) -> CDR | Rejection:
        """One CDR from one raw record (bytes as in the file, without line terminator)."""
        checked = self._check(data, header)
        if isinstance(checked, Rejection):
            return checked
        try:
            return CDR(*self._fields(data, *checked))
        except _Reject as exc:
            return Rejection(exc.reason)

    def map_row(self, data: bytes, header: tuple[str, ...] | None = None) -> list[Any] | Rejection:
        """`map_record` straight to the wire row (`wire.cdr_to_row` of the CDR), for bulk
        imports: the same values without building the `CDR` object."""
        checked = self._check(data, header)
        if isinstance(checked, Rejection):
            return checked
        try:
            row = self._fields(data, *checked)
        except _Reject as exc:
            return Rejection(exc.reason)
        start, answer, end = row[1], row[2], row[3]
        row[1] = _micros(start)
        row[2] = None if answer is None else _micros(answer)
        row[3] = None if end is None else _micros(end)
        row[6] = _ENUM_TEXT[row[6]]
        row[7] = _ENUM_TEXT[row[7]]
        return row

    def map_values(self, values: list[str], raw: bytes) -> CDR | Rejection:
        """One CDR from values already split (a database row as text, in a layout's order).

        `raw` stands for the record's bytes: it feeds the content-hash key when the key
        columns are empty. Used by plugins that read tables with the same column names.
        """
        bound = self._bound_for(len(values), None)
        if isinstance(bound, Rejection):
            return bound
        try:
            return CDR(*self._fields(raw, values, bound))
        except _Reject as exc:
            return Rejection(exc.reason)

    def _parser(self, formats: tuple[str, ...]) -> TimeParser:
        parser = self._parsers.get(formats)
        if parser is None:
            zone = self.spec.timezone if self.spec.timezone is not None else local_zone()
            parser = self._parsers[formats] = time_parser(formats, zone)
        return parser

    @staticmethod
    def _where(bound: _Bound, index: int) -> str:
        if bound.named:
            return f"column {index + 1} {bound.labels[index]!r}"
        return f"column {index + 1}"

    def _fields(self, data: bytes, values: list[str], bound: _Bound) -> list[Any]:
        """The CDR's values in `CDR_FIELDS` order (raises _Reject with the reason).

        The per-record hot path of every import: only the mapped fields are looked at.
        """
        spec = self.spec
        inputs = bound.inputs
        sources: list[tuple[int, FieldInput]] | None
        extra: dict[str, str] = {label: values[i] for label, i in bound.extra_items}

        def keep_raw(index: int) -> None:
            extra[bound.labels[index]] = values[index]

        stamps: list[tuple[datetime, ...] | None] = [None, None, None]
        for slot, sources in bound.times:
            got = _pick(values, sources)
            if got is None:
                continue
            value, index, source = got
            try:
                parse = self._by_input.get(id(source))
                if parse is None:
                    parse = self._by_input[id(source)] = self._parser(
                        source.time_formats or spec.time_formats
                    )
                stamps[slot] = parse(value)
            except StampError as exc:
                raise _Reject(f"{self._where(bound, index)}: {exc}: {_show(value)}") from None

        durations: list[int | None] = [None, None, None]
        for slot, sources in bound.durations:
            got = _pick(values, sources)
            if got is None:
                continue
            value, index, _ = got
            if spec.decimal_comma:
                value = value.replace(",", ".")
            try:
                durations[slot] = parse_duration(value, spec.duration_unit)
            except StampError as exc:
                raise _Reject(f"{self._where(bound, index)}: {exc}: {_show(value)}") from None

        duration, billsec, ring_time = durations
        start, answer, end = resolve(stamps[0], stamps[1], stamps[2], duration, billsec)
        if start is None:
            if end is not None and duration is not None:
                start = end - timedelta(seconds=duration)
            elif answer is not None:
                start = answer
            else:
                columns = [self._where(bound, i) for i, _ in inputs.get("start", ())]
                where = " or ".join(columns) if columns else "no start column is mapped"
                raise _Reject(f"no start time ({where}: empty)")
        if end is None and duration is not None:
            end = start + timedelta(seconds=duration)
        if answer is None and billsec and end is not None:
            answer = end - timedelta(seconds=billsec)
        if answer is not None and answer < start:
            raise _Reject(f"answer time {answer.isoformat()} is before start {start.isoformat()}")
        if end is not None and end < (answer or start):
            what = "answer" if answer is not None else "start"
            raise _Reject(
                f"end time {end.isoformat()} is before {what} {(answer or start).isoformat()}"
            )
        hangup_cause: int | None = None
        sources = inputs.get("hangup_cause")
        got = _pick(values, sources) if sources else None
        if got is not None:
            hangup_cause = q850_from_text(got[0])
            if hangup_cause is None:
                keep_raw(got[1])

        disposition: Disposition | None = None
        sources = inputs.get("disposition")
        got = _pick(values, sources) if sources else None
        if got is not None:
            text = got[0].upper()
            disposition = spec.dispositions.get(text) or disposition_from_text(text)
            if disposition is None:
                keep_raw(got[1])

        if duration is None:
            duration = seconds_between(start, end) if end is not None else 0
        if billsec is None:
            if answer is not None and end is not None:
                billsec = seconds_between(answer, end)
            elif answer is None and disposition is Disposition.ANSWERED:
                billsec = duration  # answered, but only the length is written: all of it
            else:
                billsec = 0
        if ring_time is None:
            if answer is not None:
                ring_time = seconds_between(start, answer)
            elif end is not None and disposition is not Disposition.ANSWERED:
                ring_time = seconds_between(start, end)

        if disposition is None:
            disposition = disposition_from_q850(hangup_cause, billsec, answer is not None)

        sip_code: int | None = None
        sources = inputs.get("sip_code")
        got = _pick(values, sources) if sources else None
        if got is not None:
            if got[0].isdigit() and 100 <= int(got[0]) <= 699:
                sip_code = int(got[0])
            else:
                keep_raw(got[1])

        src_ip: str | None = None
        sources = inputs.get("src_ip")
        got = _pick(values, sources) if sources else None
        if got is not None:
            src_ip = _ip_text(got[0].strip("[]"))
            if src_ip is None:
                keep_raw(got[1])

        direction = Direction.UNKNOWN
        sources = inputs.get("direction")
        got = _pick(values, sources) if sources else None
        if got is not None:
            direction = _DIRECTIONS.get(got[0].lower(), Direction.UNKNOWN)
            if direction is Direction.UNKNOWN:
                keep_raw(got[1])

        texts = ["", "", "", ""]
        for slot, sources in bound.texts:
            if (got := _pick(values, sources)) is not None:
                texts[slot] = got[0]
        optional: list[str | None] = [None, None, None, None, None]
        for slot, sources in bound.optional:
            if (got := _pick(values, sources)) is not None:
                optional[slot] = got[0]

        if "channel" in inputs or "dstchannel" in inputs:
            channel, dstchannel = inputs.get("channel"), inputs.get("dstchannel")
            trunk, derived = self._trunk(
                _pick(values, channel) if channel else None,
                _pick(values, dstchannel) if dstchannel else None,
            )
            if optional[2] is None:
                optional[2] = trunk
            if direction is Direction.UNKNOWN and derived is not None:
                direction = derived

        caller, caller_name, callee, accountcode = texts
        e164 = self._e164
        caller_e164 = e164(caller) if caller else None
        callee_e164 = e164(callee) if callee else None

        if len(bound.key) == 1:
            key = values[bound.key[0]].strip() or hashlib.sha256(data).hexdigest()
        else:
            key_values = [values[i].strip() for i in bound.key]
            key = ":".join(key_values) if any(key_values) else hashlib.sha256(data).hexdigest()
        if len(key) > MAX_KEY_CHARS:
            key = hashlib.sha256(key.encode()).hexdigest()

        read_codec, write_codec, trunk_name, user_agent, call_group = optional
        return [
            key,
            start,
            answer,
            end,
            duration,
            billsec,
            disposition,
            direction,
            caller,
            caller_name,
            callee,
            caller_e164,
            callee_e164,
            accountcode,
            hangup_cause,
            sip_code,
            ring_time,
            src_ip,
            read_codec,
            write_codec,
            trunk_name,
            user_agent,
            call_group,
            extra,
        ]

    def _e164(self, number: str) -> str | None:
        """`normalize.to_e164` with the mapping's numbering plan; digits-only numbers (the
        usual case) take a shortcut giving the same answer."""
        spec = self.spec
        if number.isdigit() and number.isascii():
            intl, national = spec.international_prefix, spec.national_prefix
            if intl and number.startswith(intl):
                rest = number[len(intl) :]
            elif spec.country_code and national and number.startswith(national):
                rest = spec.country_code + number[len(national) :]
            else:
                return None
            if not rest.isdigit() or not (8 <= len(rest) <= 15) or rest[0] == "0":
                return None
            return "+" + rest
        return to_e164(
            number,
            spec.country_code,
            international_prefix=spec.international_prefix,
            national_prefix=spec.national_prefix,
        )

    def _trunk(
        self,
        channel: tuple[str, int, FieldInput] | None,
        dstchannel: tuple[str, int, FieldInput] | None,
    ) -> tuple[str | None, Direction | None]:
        """Trunk and direction from channel names (see README: `trunks`)."""
        src_peer = channel_peer(channel[0]) if channel else None
        dst_peer = channel_peer(dstchannel[0]) if dstchannel else None
        trunks = self.spec.trunks
        if not trunks:
            return dst_peer or src_peer, None
        if dst_peer in trunks:
            return dst_peer, Direction.OUTBOUND
        if src_peer in trunks:
            return src_peer, Direction.INBOUND
        if channel is None and dstchannel is None:
            return None, None
        return None, Direction.INTERNAL

    # --- whole documents (collector uploads) ----------------------------------------------

    def map_document(self, data: bytes, name: str) -> tuple[list[CDR], list[Rejected]]:
        """Map a complete file held in memory; rejected rows say `name:line` and why."""
        split = split_records(
            data,
            quote=self.quote_byte,
            max_lines=self.max_record_lines,
            final=True,
            accept=self.plausible,
        )
        cdrs: list[CDR] = []
        rejected: list[Rejected] = []
        header: tuple[str, ...] | None = None
        records = split.records
        if self.header and records:
            first, records = records[0], records[1:]
            parsed = self.parse_header(first.data)
            if isinstance(parsed, Rejection):
                rejected.append(Rejected(f"{name}:{first.line}", parsed.reason))
                return cdrs, rejected + [
                    Rejected(f"{name}:{r.line}", "no usable header") for r in records
                ]
            header = parsed
        for record in records:
            result = self.map_record(record.data, header)
            if isinstance(result, Rejection):
                rejected.append(Rejected(f"{name}:{record.line}", result.reason))
            else:
                cdrs.append(result)
        return cdrs, rejected


_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)


def _ip_text(text: str) -> str | None:
    """The address written normally (`ipaddress`), or None if `text` is not one."""
    if _IPV4.fullmatch(text) is not None:
        return text  # dotted quad without leading zeros: already what ipaddress writes
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _pick(
    values: list[str], sources: Sequence[tuple[int, FieldInput]]
) -> tuple[str, int, FieldInput] | None:
    """The first non-empty value among a field's columns: (value, column index, input)."""
    for index, source in sources:
        value = values[index].strip()
        if source.transform is not None:  # (only the TRANSFORMS)
            name, number = split_callerid(value)
            if source.transform == "callerid_name":
                value = name
            elif source.transform == "callerid_number":
                value = number
        if value:
            return value, index, source
    return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENUM_TEXT: dict[Disposition | Direction, str] = {
    **{d: d.value for d in Disposition},
    **{d: d.value for d in Direction},
}


def _micros(value: datetime) -> int:
    """µs since the Unix epoch of an aware datetime (as `wire.to_us`)."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class _Reject(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

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
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

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

from .records import RecordError, Template, split_csv, split_records
from .stamps import (
    StampError,
    local_zone,
    parse_duration,
    parse_time,
    resolve,
    seconds_between,
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
        return split_csv(text, delimiter=self.spec.delimiter, quotechar=self.spec.quotechar)

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
        return _Bound(count, labels, names is not None, inputs, key, extra)

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

    def map_record(self, data: bytes, header: tuple[str, ...] | None = None) -> CDR | Rejection:
        """One CDR from one raw record (bytes as in the file, without line terminator)."""
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
        try:
            return self._map(data, values, bound)
        except _Reject as exc:
            return Rejection(exc.reason)

    def map_values(self, values: list[str], raw: bytes) -> CDR | Rejection:
        """One CDR from values already split (a database row as text, in a layout's order).

        `raw` stands for the record's bytes: it feeds the content-hash key when the key
        columns are empty. Used by plugins that read tables with the same column names.
        """
        bound = self._bound_for(len(values), None)
        if isinstance(bound, Rejection):
            return bound
        try:
            return self._map(raw, values, bound)
        except _Reject as exc:
            return Rejection(exc.reason)

    @staticmethod
    def _where(bound: _Bound, index: int) -> str:
        if bound.named:
            return f"column {index + 1} {bound.labels[index]!r}"
        return f"column {index + 1}"

    def _map(self, data: bytes, values: list[str], bound: _Bound) -> CDR:
        spec = self.spec
        extra: dict[str, str] = {bound.labels[i]: values[i] for i in bound.extra}

        def pick(name: str) -> tuple[str, int, FieldInput] | None:
            for index, source in bound.inputs.get(name, ()):
                value = values[index].strip()
                if source.transform == "callerid_name":
                    value = split_callerid(value)[0]
                elif source.transform == "callerid_number":
                    value = split_callerid(value)[1]
                if value:
                    return value, index, source
            return None

        def keep_raw(index: int) -> None:
            extra[bound.labels[index]] = values[index]

        zone = spec.timezone if spec.timezone is not None else local_zone()
        stamps: dict[str, tuple[datetime, ...] | None] = {}
        for name in TIME_FIELDS:
            got = pick(name)
            if got is None:
                stamps[name] = None
                continue
            value, index, source = got
            try:
                stamps[name] = parse_time(value, source.time_formats or spec.time_formats, zone)
            except StampError as exc:
                raise _Reject(f"{self._where(bound, index)}: {exc}: {_show(value)}") from None

        durations: dict[str, int | None] = {}
        for name in DURATION_FIELDS:
            got = pick(name)
            if got is None:
                durations[name] = None
                continue
            value, index, _ = got
            if spec.decimal_comma:
                value = value.replace(",", ".")
            try:
                durations[name] = parse_duration(value, spec.duration_unit)
            except StampError as exc:
                raise _Reject(f"{self._where(bound, index)}: {exc}: {_show(value)}") from None

        duration, billsec = durations["duration"], durations["billsec"]
        start, answer, end = resolve(
            stamps["start"], stamps["answer"], stamps["end"], duration, billsec
        )
        if start is None:
            if end is not None and duration is not None:
                start = end - timedelta(seconds=duration)
            elif answer is not None:
                start = answer
            else:
                columns = [self._where(bound, i) for i, _ in bound.inputs.get("start", ())]
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
        got = pick("hangup_cause")
        if got is not None:
            hangup_cause = q850_from_text(got[0])
            if hangup_cause is None:
                keep_raw(got[1])

        disposition: Disposition | None = None
        got = pick("disposition")
        if got is not None:
            text = got[0].upper()
            disposition = spec.dispositions.get(text) or disposition_from_text(text)
            if disposition is None:
                keep_raw(got[1])

        if duration is None:
            duration = seconds_between(start, end) if end is not None else 0
        ring_time = durations["ring_time"]
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
        got = pick("sip_code")
        if got is not None:
            if got[0].isdigit() and 100 <= int(got[0]) <= 699:
                sip_code = int(got[0])
            else:
                keep_raw(got[1])

        src_ip: str | None = None
        got = pick("src_ip")
        if got is not None:
            try:
                src_ip = str(ipaddress.ip_address(got[0].strip("[]")))
            except ValueError:
                keep_raw(got[1])

        direction = Direction.UNKNOWN
        got = pick("direction")
        if got is not None:
            direction = _DIRECTIONS.get(got[0].lower(), Direction.UNKNOWN)
            if direction is Direction.UNKNOWN:
                keep_raw(got[1])

        texts = {name: (got[0] if (got := pick(name)) else "") for name in TEXT_FIELDS}
        optional = {
            name: (got[0] if (got := pick(name)) else None) for name in OPTIONAL_TEXT_FIELDS
        }

        if "channel" in bound.inputs or "dstchannel" in bound.inputs:
            trunk, derived = self._trunk(pick("channel"), pick("dstchannel"))
            if optional["trunk"] is None:
                optional["trunk"] = trunk
            if direction is Direction.UNKNOWN and derived is not None:
                direction = derived

        country = spec.country_code
        e164 = {
            name: to_e164(
                texts[name],
                country,
                international_prefix=spec.international_prefix,
                national_prefix=spec.national_prefix,
            )
            if texts[name]
            else None
            for name in ("caller", "callee")
        }

        key_values = [values[i].strip() for i in bound.key]
        key = ":".join(key_values) if any(key_values) else hashlib.sha256(data).hexdigest()
        if len(key) > MAX_KEY_CHARS:
            key = hashlib.sha256(key.encode()).hexdigest()

        return CDR(
            key=key,
            start=start,
            answer=answer,
            end=end,
            duration=duration,
            billsec=billsec,
            disposition=disposition,
            direction=direction,
            caller=texts["caller"],
            caller_name=texts["caller_name"],
            callee=texts["callee"],
            caller_e164=e164["caller"],
            callee_e164=e164["callee"],
            accountcode=texts["accountcode"],
            hangup_cause=hangup_cause,
            sip_code=sip_code,
            ring_time=ring_time,
            src_ip=src_ip,
            read_codec=optional["read_codec"],
            write_codec=optional["write_codec"],
            trunk=optional["trunk"],
            user_agent=optional["user_agent"],
            call_group=optional["call_group"],
            extra=dict(extra),
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


class _Reject(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

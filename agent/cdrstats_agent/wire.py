"""The wire format between agent and collector, version 1 (specified in docs/protocol.md).

Written once here; the collector imports it. Pure functions over bytes: no sockets, no clocks
except where a caller passes `now`.

Layers of a CDR batch:
  envelope = msgpack {"v": 1, "type": "cdr_batch", "agent": id, "payload": bin, "sig": bin}
  payload  = msgpack {"agent": id, "seq": int, "sent_at": µs, "body": bin}
  body     = msgpack {"fields": [names], "cdrs": [[values in field order], ...]}
`sig` is the agent's Ed25519 signature of the payload bytes. The body is built once, when the
batch is formed in the spool, and is identical on every redelivery; the payload is re-signed at
each send with a fresh `sent_at`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .model import CDR, CDR_FIELDS, Direction, Disposition
from .plugin import (
    AUTH_TEXT_MAX,
    AUTH_TRANSPORTS,
    LIVE_DATA_KEYS,
    LIVE_DIRECTIONS,
    LIVE_INT_KEYS,
    LIVE_KINDS,
    LIVE_STATES,
    LIVE_TEXT_KEYS,
    LIVE_TIME_KEYS,
)

PROTOCOL_VERSION = 1
MAX_BODY_BYTES = 32 * 1024 * 1024
"""Largest request body a collector accepts by default (413 above)."""
CLOCK_WINDOW_S = 300
"""How far an agent's `sent_at` may be from the collector's clock, either way."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class WireError(ValueError):
    """A message that does not follow the protocol; the text says what and where."""


# --- timestamps -----------------------------------------------------------------------------


def to_us(value: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)


def now_us() -> int:
    return time.time_ns() // 1000


# --- CDR rows ---------------------------------------------------------------------------------


def cdr_to_row(cdr: CDR) -> list[Any]:
    """A CDR as its wire row: values in `CDR_FIELDS` order, datetimes as µs, enums as str."""
    return [
        cdr.key,
        to_us(cdr.start),
        None if cdr.answer is None else to_us(cdr.answer),
        None if cdr.end is None else to_us(cdr.end),
        cdr.duration,
        cdr.billsec,
        str(cdr.disposition),
        str(cdr.direction),
        cdr.caller,
        cdr.caller_name,
        cdr.callee,
        cdr.caller_e164,
        cdr.callee_e164,
        cdr.accountcode,
        cdr.hangup_cause,
        cdr.sip_code,
        cdr.ring_time,
        cdr.src_ip,
        cdr.read_codec,
        cdr.write_codec,
        cdr.trunk,
        cdr.user_agent,
        cdr.call_group,
        cdr.extra,
    ]


def pack_cdr(cdr: CDR) -> bytes:
    """One CDR packed as a msgpack array, ready to be spliced into a batch body."""
    packed: bytes = msgpack.packb(cdr_to_row(cdr), use_bin_type=True)
    return packed


_TS = {"start", "answer", "end"}
_INT = {"duration", "billsec", "hangup_cause", "sip_code", "ring_time"}
_STR = {"key", "caller", "caller_name", "callee", "accountcode"}
_OPT_STR = {
    "caller_e164",
    "callee_e164",
    "src_ip",
    "read_codec",
    "write_codec",
    "trunk",
    "user_agent",
    "call_group",
}
_REQUIRED = {"key", "start"}
_INT_LIMIT = 2**31 - 1


def _check_value(name: str, value: Any) -> Any:
    """Type check of one wire value; returns the value as the model wants it."""
    if name in _TS:
        if value is None and name != "start":
            return None
        if type(value) is not int or not (0 <= value < 2**53):
            raise WireError(f"{name} must be an integer of microseconds since the epoch")
        return value
    if name in _INT:
        if value is None and name not in ("duration", "billsec"):
            return None
        if type(value) is not int or not (0 <= value <= _INT_LIMIT):
            raise WireError(f"{name} must be a non-negative integer, got {value!r:.40}")
        return value
    if name in _STR:
        if type(value) is not str:
            raise WireError(f"{name} must be a string, got {type(value).__name__}")
        if name == "key" and not value:
            raise WireError("key must not be empty")
        return value
    if name in _OPT_STR:
        if value is not None and type(value) is not str:
            raise WireError(f"{name} must be a string or nil, got {type(value).__name__}")
        return value
    if name == "disposition":
        try:
            return Disposition(value)
        except ValueError:
            raise WireError(
                f"disposition {value!r:.40} is not one of {[d.value for d in Disposition]}"
            ) from None
    if name == "direction":
        try:
            return Direction(value)
        except ValueError:
            raise WireError(
                f"direction {value!r:.40} is not one of {[d.value for d in Direction]}"
            ) from None
    if name == "extra":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise WireError("extra must be a map with string keys")
        return value
    raise WireError(f"unknown field {name!r}")  # pragma: no cover - fields are checked first


_DEFAULTS: dict[str, Any] = {
    "duration": 0,
    "billsec": 0,
    "disposition": "FAILED",
    "direction": "unknown",
    "caller": "",
    "caller_name": "",
    "callee": "",
    "accountcode": "",
    "extra": {},
}
_DISPOSITIONS = frozenset(d.value for d in Disposition)
_DIRECTIONS = frozenset(d.value for d in Direction)
_NONE = type(None)


def _column_ok(name: str, col: list[Any]) -> bool:
    """Fast whole-column check; False sends the column to the per-value check for the message."""
    try:
        if name in _TS or name in _INT:
            values = (
                col
                if name in ("start", "duration", "billsec")
                else [v for v in col if v is not None]
            )
            limit = 2**53 if name in _TS else _INT_LIMIT + 1
            return not values or (
                set(map(type, values)) == {int} and min(values) >= 0 and max(values) < limit
            )
        if name in _STR:
            return set(map(type, col)) <= {str} and (name != "key" or all(col))
        if name in _OPT_STR:
            return set(map(type, col)) <= {str, _NONE}
        if name == "disposition":
            return set(col) <= _DISPOSITIONS
        if name == "direction":
            return set(col) <= _DIRECTIONS
        if name == "extra":
            return set(map(type, col)) <= {dict} and all(
                type(k) is str for d in col if d for k in d
            )
    except TypeError:  # unhashable or unorderable values: let the slow path name them
        return False
    return False


def check_rows(fields: Sequence[str], rows: Sequence[Any]) -> list[list[Any]]:
    """Validate decoded wire rows and return them in `CDR_FIELDS` order.

    Fields the sender omits take the model's defaults; unknown fields are an error (a newer
    agent talking to an older collector must be told, not silently truncated). Enum fields stay
    strings. Checks run a column at a time (fast); a column that fails is checked value by value
    so the error names the first bad CDR and field. Rows sent in `CDR_FIELDS` order are
    returned as they are, not copied.
    """
    unknown = [f for f in fields if f not in CDR_FIELDS]
    if unknown:
        raise WireError(f"unknown CDR fields {unknown}")
    missing = _REQUIRED - set(fields)
    if missing:
        raise WireError(f"required CDR fields missing: {sorted(missing)}")
    width = len(fields)
    for n, row in enumerate(rows):
        if type(row) is not list or len(row) != width:
            raise WireError(f"cdrs[{n}]: expected an array of {width} values")
    if tuple(fields) == CDR_FIELDS:
        out: list[list[Any]] = rows if isinstance(rows, list) else list(rows)
    else:
        index = [fields.index(name) if name in fields else None for name in CDR_FIELDS]
        out = [
            [
                row[i] if i is not None else _DEFAULTS.get(name)
                for i, name in zip(index, CDR_FIELDS, strict=True)
            ]
            for row in rows
        ]
    for c, name in enumerate(CDR_FIELDS):
        col = [row[c] for row in out]
        if not _column_ok(name, col):
            for n, value in enumerate(col):
                try:
                    _check_value(name, value)
                except WireError as exc:
                    raise WireError(f"cdrs[{n}]: {exc}") from None
    return out


def row_to_cdr(row: Sequence[Any]) -> CDR:
    """A checked wire row (as returned by `check_rows`) back into a CDR."""
    values = dict(zip(CDR_FIELDS, row, strict=True))
    values["disposition"] = Disposition(values["disposition"])
    values["direction"] = Direction(values["direction"])
    for name in _TS:
        if values[name] is not None:
            values[name] = from_us(values[name])
    return CDR(**values)


# --- batch body -----------------------------------------------------------------------------


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 2**16:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


_FIELDS_PREFIX: bytes = b"".join(
    [b"\x82", msgpack.packb("fields"), msgpack.packb(list(CDR_FIELDS)), msgpack.packb("cdrs")]
)


def build_body(packed_rows: Sequence[bytes], count: int | None = None) -> bytes:
    """A batch body from CDRs already packed with `pack_cdr` (no re-encoding).

    Each item is one packed CDR, or, when `count` is given, a run of several packed CDRs
    concatenated (as `pack_cdrs` returns them); `count` is then the number of CDRs in all.
    """
    n = len(packed_rows) if count is None else count
    return _FIELDS_PREFIX + _array_header(n) + b"".join(packed_rows)


def pack_cdrs(cdrs: Iterable[CDR]) -> bytes:
    """Several CDRs packed and concatenated: the same bytes as joining `pack_cdr` of each."""
    return b"".join([pack_cdr(cdr) for cdr in cdrs])


def split_rows(packed: bytes, count: int) -> tuple[bytes, bytes]:
    """Split concatenated packed CDRs after the first `count` of them (no re-encoding)."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(packed)
    try:
        for _ in range(count):
            unpacker.skip()
    except msgpack.OutOfData:
        raise WireError(f"packed rows hold fewer than {count} CDRs") from None
    offset = unpacker.tell()
    return packed[:offset], packed[offset:]


def body_rows(body: bytes) -> tuple[int, bytes]:
    """The number of CDRs in a body built by `build_body`, and their packed bytes."""
    if not body.startswith(_FIELDS_PREFIX):
        raise WireError("batch body does not start with the v1 field list")
    rest = body[len(_FIELDS_PREFIX) :]
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(rest[:5])
    try:
        count = unpacker.read_array_header()
    except (msgpack.OutOfData, msgpack.UnpackValueError, ValueError):
        raise WireError("batch body has no 'cdrs' array") from None
    return count, rest[len(_array_header(count)) :]


def split_body(body: bytes) -> tuple[bytes, bytes]:
    """Split a body built by `build_body` into two bodies of about half the CDRs each."""
    count, rows = body_rows(body)
    if count < 2:
        raise WireError("a batch of fewer than two CDRs cannot be split")
    first, second = split_rows(rows, count // 2)
    return build_body([first], count // 2), build_body([second], count - count // 2)


@dataclass(frozen=True, slots=True)
class Body:
    fields: list[str]
    rows: list[Any]


def parse_body(body: bytes) -> Body:
    try:
        doc = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:
        raise WireError(f"batch body is not valid msgpack: {exc}") from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("fields"), list)
        or not isinstance(doc.get("cdrs"), list)
    ):
        raise WireError("batch body must be a map with 'fields' and 'cdrs' arrays")
    fields = doc["fields"]
    if not all(isinstance(f, str) for f in fields) or len(set(fields)) != len(fields):
        raise WireError("batch body 'fields' must be distinct strings")
    return Body(fields=fields, rows=doc["cdrs"])


def body_digest(body: bytes) -> bytes:
    """The identity of a batch's content, used to recognise a redelivery."""
    return hashlib.sha256(body).digest()


# --- keys -------------------------------------------------------------------------------------


def key_to_text(key: SigningKey | VerifyKey) -> str:
    return base64.b64encode(bytes(key)).decode("ascii")


def verify_key_from_text(text: str) -> VerifyKey:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise WireError("public key is not valid base64") from None
    if len(raw) != 32:
        raise WireError("public key must be 32 bytes (Ed25519)")
    return VerifyKey(raw)


def signing_key_from_text(text: str) -> SigningKey:
    raw = base64.b64decode(text.strip(), validate=True)
    if len(raw) != 32:
        raise WireError("private key must be a 32-byte Ed25519 seed")
    return SigningKey(raw)


# --- signed envelopes -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """An envelope whose shape is checked but whose signature is not yet verified."""

    type: str
    signer: str
    payload: bytes
    sig: bytes

    def open(self, key: VerifyKey) -> dict[str, Any]:
        """Verify the signature and return the decoded payload map."""
        try:
            key.verify(self.payload, self.sig)
        except BadSignatureError:
            raise WireError("bad signature") from None
        try:
            payload = msgpack.unpackb(self.payload, raw=False)
        except Exception as exc:
            raise WireError(f"payload is not valid msgpack: {exc}") from None
        if not isinstance(payload, dict):
            raise WireError("payload must be a map")
        return payload


def seal(type_: str, signer: str, payload: dict[str, Any], key: SigningKey) -> bytes:
    """Pack and sign a payload as an envelope of `type_` from `signer`."""
    packed = msgpack.packb(payload, use_bin_type=True)
    sig = key.sign(packed).signature
    envelope: bytes = msgpack.packb(
        {"v": PROTOCOL_VERSION, "type": type_, "agent": signer, "payload": packed, "sig": sig},
        use_bin_type=True,
    )
    return envelope


def unseal(data: bytes, expected_type: str) -> Envelope:
    """Check an envelope's shape (no signature check yet: that needs the signer's key)."""
    try:
        doc = msgpack.unpackb(data, raw=False, max_bin_len=MAX_BODY_BYTES)
    except Exception as exc:
        raise WireError(f"envelope is not valid msgpack: {exc}") from None
    if not isinstance(doc, dict):
        raise WireError("envelope must be a msgpack map")
    if doc.get("v") != PROTOCOL_VERSION:
        raise WireError(
            f"unsupported protocol version {doc.get('v')!r}, this side speaks {PROTOCOL_VERSION}"
        )
    if doc.get("type") != expected_type:
        raise WireError(f"envelope type must be {expected_type!r}, got {doc.get('type')!r}")
    signer, payload, sig = doc.get("agent"), doc.get("payload"), doc.get("sig")
    if not isinstance(signer, str) or not signer:
        raise WireError("envelope 'agent' must be a non-empty string")
    if not isinstance(payload, bytes) or not isinstance(sig, bytes) or len(sig) != 64:
        raise WireError("envelope needs binary 'payload' and a 64-byte 'sig'")
    return Envelope(type=expected_type, signer=signer, payload=payload, sig=sig)


# --- CDR batches --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    """The agent's spool as it was when a batch was sent (optional `spool` map of a batch).

    Advisory: it is not covered by the batch's digest (a resend may carry fresher figures),
    and a malformed one is ignored by the collector, never a reason to refuse CDRs.
    """

    batches: int
    """Formed batches waiting besides the one sent."""
    cdrs: int
    """CDRs waiting besides the batch's (in formed batches and not yet batched)."""
    lag_s: float
    """How long the oldest CDR of the batch sent had been in the spool (delivery lag)."""

    def to_wire(self) -> dict[str, Any]:
        return {"batches": self.batches, "cdrs": self.cdrs, "lag_s": self.lag_s}


SPOOL_MAX_LAG_S = 10 * 365 * 86_400.0


def spool_status(value: Any) -> SpoolStatus:
    """Check a batch's `spool` map; raises `WireError` naming the bad field."""
    if not isinstance(value, dict):
        raise WireError("spool must be a map")
    batches: Any = value.get("batches")
    cdrs: Any = value.get("cdrs")
    lag: Any = value.get("lag_s")
    for name, count in (("batches", batches), ("cdrs", cdrs)):
        if type(count) is not int or not 0 <= count <= 2**53:
            raise WireError(f"spool.{name} must be a non-negative integer")
    if type(lag) not in (int, float) or not 0 <= lag <= SPOOL_MAX_LAG_S:
        raise WireError(f"spool.lag_s must be a number of seconds from 0 to {SPOOL_MAX_LAG_S:g}")
    return SpoolStatus(batches=batches, cdrs=cdrs, lag_s=float(lag))


@dataclass(frozen=True, slots=True)
class Batch:
    agent: str
    seq: int
    sent_at: int
    body: bytes
    spool: SpoolStatus | None = None
    """The spool status sent with the batch (None: not sent, or malformed)."""
    spool_error: str | None = None
    """Why a `spool` map that was sent was ignored."""


def seal_batch(
    agent: str,
    seq: int,
    body: bytes,
    key: SigningKey,
    sent_at: int | None = None,
    spool: SpoolStatus | None = None,
) -> bytes:
    payload: dict[str, Any] = {
        "agent": agent,
        "seq": seq,
        "sent_at": now_us() if sent_at is None else sent_at,
        "body": body,
    }
    if spool is not None:
        payload["spool"] = spool.to_wire()
    return seal("cdr_batch", agent, payload, key)


def open_batch(envelope: Envelope, key: VerifyKey) -> Batch:
    payload = envelope.open(key)
    agent, seq, sent_at, body = (payload.get(k) for k in ("agent", "seq", "sent_at", "body"))
    if agent != envelope.signer:
        raise WireError("payload agent differs from envelope agent")
    if type(seq) is not int or seq < 1:
        raise WireError("seq must be a positive integer")
    if type(sent_at) is not int:
        raise WireError("sent_at must be an integer of microseconds")
    if not isinstance(body, bytes):
        raise WireError("body must be binary")
    spool, spool_error = None, None
    if "spool" in payload:
        try:
            spool = spool_status(payload["spool"])
        except WireError as exc:
            spool_error = str(exc)
    return Batch(
        agent=agent, seq=seq, sent_at=sent_at, body=body, spool=spool, spool_error=spool_error
    )


@dataclass(slots=True)
class Ack:
    """The collector's answer to a batch; the same bytes are returned for a redelivery."""

    seq: int
    accepted: int
    duplicates: int
    redelivery: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "redelivery": self.redelivery,
        }


# --- commands (collector → agent; executed from a later release) ------------------------------

COMMAND_VERBS = ("block_ip", "unblock_ip")
"""Verbs the agent may run. Plugins can declare more; anything else is refused."""


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    seq: int
    agent: str
    verb: str
    args: dict[str, Any] = field(default_factory=dict)
    issued_at: int = 0
    expires_at: int = 0


COLLECTOR_SIGNER = "collector"


def seal_command(cmd: Command, key: SigningKey) -> bytes:
    payload = {
        "id": cmd.id,
        "seq": cmd.seq,
        "agent": cmd.agent,
        "verb": cmd.verb,
        "args": cmd.args,
        "issued_at": cmd.issued_at,
        "expires_at": cmd.expires_at,
    }
    return seal("command", COLLECTOR_SIGNER, payload, key)


def open_command(data: bytes, key: VerifyKey, *, agent: str, last_seq: int, now: int) -> Command:
    """Verify a command for this agent: signature, target, expiry and sequence."""
    envelope = unseal(data, "command")
    payload = envelope.open(key)
    try:
        cmd = Command(**payload)
    except TypeError as exc:
        raise WireError(f"malformed command: {exc}") from None
    if cmd.agent != agent:
        raise WireError(f"command {cmd.id} is for agent {cmd.agent!r}, not this one")
    if cmd.expires_at <= now:
        raise WireError(f"command {cmd.id} expired")
    if cmd.seq <= last_seq:
        raise WireError(f"command {cmd.id} replayed (seq {cmd.seq} <= {last_seq})")
    return cmd


# --- signed requests (agent → collector, for calls without a signed body) ---------------------


def sign_request(
    key: SigningKey, agent: str, method: str, path: str, ts: int, body: bytes = b""
) -> str:
    """Value of the `Authorization` header: `CDRStats agent=<id>,ts=<µs>,sig=<base64>`."""
    message = _request_message(agent, method, path, ts, body)
    sig = base64.b64encode(key.sign(message).signature).decode("ascii")
    return f"CDRStats agent={agent},ts={ts},sig={sig}"


def _request_message(agent: str, method: str, path: str, ts: int, body: bytes) -> bytes:
    return "\n".join(
        [agent, method.upper(), path, str(ts), hashlib.sha256(body).hexdigest()]
    ).encode()


def parse_authorization(header: str) -> tuple[str, int, bytes]:
    scheme, _, rest = header.partition(" ")
    if scheme != "CDRStats":
        raise WireError("Authorization scheme must be CDRStats")
    parts = dict(p.split("=", 1) for p in rest.split(",") if "=" in p)
    try:
        return parts["agent"], int(parts["ts"]), base64.b64decode(parts["sig"], validate=True)
    except (KeyError, ValueError):
        raise WireError("Authorization needs agent, ts and base64 sig") from None


def verify_request(
    key: VerifyKey, header: str, method: str, path: str, body: bytes, now: int
) -> str:
    """Check a signed request; returns the agent id."""
    agent, ts, sig = parse_authorization(header)
    if abs(now - ts) > CLOCK_WINDOW_S * 1_000_000:
        raise WireError("request timestamp outside the clock window")
    try:
        key.verify(_request_message(agent, method, path, ts, body), sig)
    except BadSignatureError:
        raise WireError("bad signature") from None
    return agent


def iter_chunks(
    items: Sequence[bytes], max_count: int, max_bytes: int
) -> Iterable[Sequence[bytes]]:
    """Split packed rows into runs bounded by count and bytes (at least one row each)."""
    start, size = 0, 0
    for i, item in enumerate(items):
        if i > start and (i - start >= max_count or size + len(item) > max_bytes):
            yield items[start:i]
            start, size = i, 0
        size += len(item)
    if start < len(items):
        yield items[start:]


# --- live calls (agent → collector; not spooled) ------------------------------------------------
#
#   envelope = {"v": 1, "type": "live", "agent": id, "payload": bin, "sig": bin}
#   payload  = {"agent": id, "stream": str, "seq": int, "sent_at": µs,
#               "sources": [{"source": name, "events": [event, ...]}, ...]}
#   event    = {"kind": "started" | "answered" | "ended", "call_id": str, "at": µs, "data": map}
#            | {"kind": "snapshot", "at": µs, "calls": [map with "call_id" + data keys, ...]}
#   payload["auth_failures"] (optional, at most LIVE_MAX_AUTH_FAILURES) =
#              [{"source": name, "at": µs, "src_ip": str, + optional src_port, username,
#                sip_code, reason, transport, method, service}, ...]
# `stream` is random per agent run and `seq` counts the run's live messages from 1; the collector
# applies a message only when it is newer than the last one applied for the agent (see
# docs/protocol.md, "Live calls"). Data keys and their types are those of plugin.LiveEvent.

# The data keys are plugin.LIVE_DATA_KEYS (the plugin contract), imported at the top.
_LIVE_KEYS = frozenset(LIVE_DATA_KEYS)
LIVE_MAX_TEXT = 1024
"""Longest call id, source name part or data string accepted (characters)."""
LIVE_MAX_STREAM = 64


@dataclass(frozen=True, slots=True)
class LiveStream:
    """The events of one source in a live message, in the order the source yielded them."""

    source: str
    events: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class LiveMessage:
    agent: str
    stream: str
    seq: int
    sent_at: int
    sources: list[LiveStream]
    auth_failures: list[dict[str, Any]] = field(default_factory=list)
    """The failed registrations that passed `check_auth_failure` (wire form)."""
    auth_rejected: list[str] = field(default_factory=list)
    """What was wrong with each one that did not (left out; the rest is applied)."""

    @property
    def event_count(self) -> int:
        return sum(len(s.events) for s in self.sources)


def epoch_to_us(value: float) -> int:
    """UNIX epoch seconds (int or float) to integer µs."""
    return round(value * 1_000_000)


def check_live_value(key: str, value: Any) -> Any:
    """Check one live data value on the wire; raises WireError saying what is wrong."""
    if key in LIVE_TEXT_KEYS:
        if type(value) is not str:
            raise WireError(f"{key} must be a string, got {type(value).__name__}")
        if len(value) > LIVE_MAX_TEXT:
            raise WireError(f"{key} is longer than {LIVE_MAX_TEXT} characters")
        if "\x00" in value:
            raise WireError(f"{key} contains a NUL character")
        if key == "src_ip":
            try:
                addr = ipaddress.ip_address(value)
            except ValueError:
                addr = None
            if addr is None or getattr(addr, "scope_id", None):
                raise WireError(f"src_ip {value!r:.60} is not an IP address") from None
    elif key == "direction":
        if value not in LIVE_DIRECTIONS:
            raise WireError(f"direction {value!r:.40} is not one of {list(LIVE_DIRECTIONS)}")
    elif key == "state":
        if value not in LIVE_STATES:
            raise WireError(f"state {value!r:.40} is not one of {list(LIVE_STATES)}")
    elif key in LIVE_TIME_KEYS:
        if type(value) is not int or not (0 <= value < 2**53):
            raise WireError(f"{key} must be an integer of microseconds since the epoch")
    elif key in LIVE_INT_KEYS:
        if type(value) is not int or not (0 <= value <= _INT_LIMIT):
            raise WireError(f"{key} must be a non-negative integer, got {value!r:.40}")
    else:
        raise WireError(f"unknown live data key {key!r:.60}")
    return value


def _check_live_map(doc: Any, where: str, *, with_call_id: bool) -> None:
    if not isinstance(doc, dict):
        raise WireError(f"{where} must be a map")
    for key, value in doc.items():
        if with_call_id and key == "call_id":
            continue
        if not isinstance(key, str):
            raise WireError(f"{where}: keys must be strings")
        try:
            check_live_value(key, value)
        except WireError as exc:
            raise WireError(f"{where}.{key}: {exc}") from None
    if with_call_id:
        _check_call_id(doc.get("call_id"), f"{where}.call_id")


def _check_call_id(value: Any, where: str) -> None:
    if type(value) is not str or not value:
        raise WireError(f"{where} must be a non-empty string")
    if len(value) > LIVE_MAX_TEXT:
        raise WireError(f"{where} is longer than {LIVE_MAX_TEXT} characters")
    if "\x00" in value:
        raise WireError(f"{where} contains a NUL character")


def check_live_event(event: Any, where: str = "event") -> None:
    """Check one wire event (a map); raises WireError naming the place and the problem."""
    if not isinstance(event, dict):
        raise WireError(f"{where} must be a map")
    kind = event.get("kind")
    if kind not in LIVE_KINDS:
        raise WireError(f"{where}.kind {kind!r:.40} is not one of {list(LIVE_KINDS)}")
    at = event.get("at")
    if type(at) is not int or not (0 <= at < 2**53):
        raise WireError(f"{where}.at must be an integer of microseconds since the epoch")
    if kind == "snapshot":
        allowed = {"kind", "at", "calls"}
        calls = event.get("calls")
        if not isinstance(calls, list):
            raise WireError(f"{where}.calls must be an array")
        for n, call in enumerate(calls):
            _check_live_map(call, f"{where}.calls[{n}]", with_call_id=True)
    else:
        allowed = {"kind", "at", "call_id", "data"}
        _check_call_id(event.get("call_id"), f"{where}.call_id")
        _check_live_map(event.get("data", {}), f"{where}.data", with_call_id=False)
    unknown = sorted(str(k) for k in event if k not in allowed)
    if unknown:
        raise WireError(f"{where}: unknown keys {unknown} for a {kind!r} event")


def seal_live(
    agent: str,
    stream: str,
    seq: int,
    sources: Sequence[LiveStream],
    key: SigningKey,
    sent_at: int | None = None,
    auth_failures: Sequence[dict[str, Any]] = (),
) -> bytes:
    """A signed `live` envelope carrying wire events (as `live_event_to_wire` builds them)
    and failed registrations (as `auth_failure_to_wire` builds them; the key is left out
    when there are none, so that a collector that predates it reads the message the same)."""
    payload: dict[str, Any] = {
        "agent": agent,
        "stream": stream,
        "seq": seq,
        "sent_at": now_us() if sent_at is None else sent_at,
        "sources": [{"source": s.source, "events": s.events} for s in sources],
    }
    if auth_failures:
        payload["auth_failures"] = list(auth_failures)
    return seal("live", agent, payload, key)


def live_payload(envelope: Envelope) -> dict[str, Any]:
    """The decoded payload of a `live` envelope whose signature was already verified."""
    try:
        payload = msgpack.unpackb(envelope.payload, raw=False)
    except Exception as exc:
        raise WireError(f"payload is not valid msgpack: {exc}") from None
    if not isinstance(payload, dict):
        raise WireError("payload must be a map")
    return payload


def check_live_payload(payload: dict[str, Any], signer: str) -> LiveMessage:
    """Check a decoded `live` payload entirely (every event); raises WireError naming where."""
    agent, stream, seq, sent_at, sources = (
        payload.get(k) for k in ("agent", "stream", "seq", "sent_at", "sources")
    )
    if agent != signer:
        raise WireError("payload agent differs from envelope agent")
    if type(stream) is not str or not (0 < len(stream) <= LIVE_MAX_STREAM) or "\x00" in stream:
        raise WireError(f"stream must be a string of 1 to {LIVE_MAX_STREAM} characters")
    if type(seq) is not int or not (1 <= seq < 2**63):
        raise WireError("seq must be a positive integer")
    if type(sent_at) is not int:
        raise WireError("sent_at must be an integer of microseconds")
    if not isinstance(sources, list):
        raise WireError("sources must be an array")
    out: list[LiveStream] = []
    seen: set[str] = set()
    for i, entry in enumerate(sources):
        where = f"sources[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"source", "events"}:
            raise WireError(f"{where} must be a map with 'source' and 'events'")
        name, events = entry["source"], entry["events"]
        if type(name) is not str or not (0 < len(name) <= 64) or "\x00" in name:
            raise WireError(f"{where}.source must be a string of 1 to 64 characters")
        if name in seen:
            raise WireError(f"{where}.source {name!r} appears twice")
        seen.add(name)
        if not isinstance(events, list):
            raise WireError(f"{where}.events must be an array")
        for n, event in enumerate(events):
            check_live_event(event, f"{where}.events[{n}]")
        out.append(LiveStream(name, events))
    failures, rejected = _check_auth_failures(payload.get("auth_failures"))
    return LiveMessage(agent, stream, seq, sent_at, out, failures, rejected)


def live_event_to_wire(event: Any) -> tuple[dict[str, Any], list[str]]:
    """A plugin's `LiveEvent` as a wire event, and the problems found in it.

    Lenient where the collector is strict: a data value of the wrong type, an unknown key or
    a snapshot call without a call id is left out and reported in the returned list (so that
    one bad field from a plugin does not lose the whole message). An event that cannot be
    forwarded at all (unknown kind, no call id, no time) raises WireError.
    """
    problems: list[str] = []
    kind = getattr(event, "kind", None)
    if kind not in LIVE_KINDS:
        raise WireError(f"live event kind {kind!r:.40} is not one of {list(LIVE_KINDS)}")
    at = getattr(event, "at", None)
    if isinstance(at, bool) or not isinstance(at, int | float) or not (0 <= at < 2**53 / 1e6):
        raise WireError(f"live {kind} event: 'at' must be epoch seconds, got {at!r:.40}")
    out: dict[str, Any] = {"kind": kind, "at": epoch_to_us(at)}
    if kind == "snapshot":
        calls: list[dict[str, Any]] = []
        for n, call in enumerate(getattr(event, "calls", ()) or ()):
            if not isinstance(call, Mapping):
                problems.append(f"calls[{n}] is not a mapping")
                continue
            call_id = call.get("call_id")
            if (
                not isinstance(call_id, str)
                or not call_id
                or len(call_id) > LIVE_MAX_TEXT
                or ("\x00" in call_id)
            ):
                problems.append(f"calls[{n}].call_id {call_id!r:.40} is not a usable call id")
                continue
            clean = _clean_data(call, problems, f"calls[{n}].", skip="call_id")
            clean["call_id"] = call_id
            calls.append(clean)
        out["calls"] = calls
        return out, problems
    call_id = getattr(event, "call_id", None)
    if (
        not isinstance(call_id, str)
        or not call_id
        or len(call_id) > LIVE_MAX_TEXT
        or ("\x00" in call_id)
    ):
        raise WireError(f"live {kind} event: call_id {call_id!r:.40} is not a usable call id")
    out["call_id"] = call_id
    data = getattr(event, "data", None) or {}
    if not isinstance(data, Mapping):
        problems.append("data is not a mapping")
        data = {}
    out["data"] = _clean_data(data, problems, "data.")
    return out, problems


def _clean_data(
    data: Mapping[Any, Any], problems: list[str], where: str, skip: str = ""
) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in data.items():
        if key == skip or value is None:
            continue
        if key not in _LIVE_KEYS:
            problems.append(f"{where}{key!s:.40}: not a live data key (left out)")
            continue
        if (
            key in LIVE_TIME_KEYS
            and not isinstance(value, bool)
            and isinstance(value, int | float)
            and 0 <= value < 2**53 / 1e6
        ):
            value = epoch_to_us(value)
        try:
            clean[key] = check_live_value(key, value)
        except WireError as exc:
            problems.append(f"{where}{exc} (left out)")
    return clean


# --- failed registrations (auth failures) on the live channel ---------------------------------
#
# Each one is checked on its own at the collector: a bad one is left out and reported
# (`LiveMessage.auth_rejected`), the rest of the message is applied. Only the list itself
# (not an array, more than LIVE_MAX_AUTH_FAILURES) makes the whole message invalid.

LIVE_MAX_AUTH_FAILURES = 1000
"""Most failed registrations in one live message (the agent sends at most this many)."""
AUTH_KEYS = frozenset(
    {"source", "at", "src_ip", "src_port", "username", "sip_code", "reason", "transport",
     "method", "service"}
)  # fmt: skip
_AUTH_TEXT = ("username", "reason", "service")
_METHOD_MAX = 32


def _auth_ip(value: Any) -> str:
    """The address in canonical text (IPv4-mapped IPv6 as IPv4); WireError otherwise."""
    if type(value) is not str or len(value) > 64:
        raise WireError(f"src_ip {value!r:.60} is not an IP address")
    text = value.strip().removeprefix("[").removesuffix("]")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise WireError(f"src_ip {value!r:.60} is not an IP address") from None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            raise WireError(f"src_ip {value!r:.60} has a zone (%...)")
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
    return str(addr)


def _check_auth_value(key: str, value: Any) -> Any:
    if key == "src_port":
        if type(value) is not int or not 0 < value <= 65535:
            raise WireError(f"src_port must be an integer from 1 to 65535, got {value!r:.40}")
    elif key == "sip_code":
        if type(value) is not int or not 100 <= value <= 699:
            raise WireError(f"sip_code must be an integer from 100 to 699, got {value!r:.40}")
    elif key == "transport":
        if value not in AUTH_TRANSPORTS:
            raise WireError(f"transport {value!r:.40} is not one of {list(AUTH_TRANSPORTS)}")
    elif key == "method":
        if (
            type(value) is not str
            or not 0 < len(value) <= _METHOD_MAX
            or not value.isascii()
            or not value.isalpha()
            or not value.isupper()
        ):
            raise WireError(f"method {value!r:.40} is not a SIP method (REGISTER, INVITE...)")
    elif key in _AUTH_TEXT:
        if type(value) is not str:
            raise WireError(f"{key} must be a string, got {type(value).__name__}")
        if len(value) > AUTH_TEXT_MAX:
            raise WireError(f"{key} is longer than {AUTH_TEXT_MAX} characters")
        if "\x00" in value:
            raise WireError(f"{key} contains a NUL character")
    return value


def check_auth_failure(doc: Any, where: str = "auth_failure") -> dict[str, Any]:
    """One failed registration on the wire, checked; raises WireError naming the problem."""
    if not isinstance(doc, dict):
        raise WireError(f"{where} must be a map")
    unknown = sorted(str(k) for k in doc if k not in AUTH_KEYS)
    if unknown:
        raise WireError(f"{where}: unknown keys {unknown}")
    name = doc.get("source")
    if type(name) is not str or not (0 < len(name) <= 64) or "\x00" in name:
        raise WireError(f"{where}.source must be a string of 1 to 64 characters")
    at = doc.get("at")
    if type(at) is not int or not (0 <= at < 2**53):
        raise WireError(f"{where}.at must be an integer of microseconds since the epoch")
    try:
        out: dict[str, Any] = {"source": name, "at": at, "src_ip": _auth_ip(doc.get("src_ip"))}
    except WireError as exc:
        raise WireError(f"{where}.{exc}") from None
    for key in AUTH_KEYS - {"source", "at", "src_ip"}:
        if key in doc:
            try:
                out[key] = _check_auth_value(key, doc[key])
            except WireError as exc:
                raise WireError(f"{where}.{exc}") from None
    return out


def _check_auth_failures(value: Any) -> tuple[list[dict[str, Any]], list[str]]:
    if value is None:
        return [], []
    if not isinstance(value, list):
        raise WireError("auth_failures must be an array")
    if len(value) > LIVE_MAX_AUTH_FAILURES:
        raise WireError(
            f"auth_failures holds {len(value)} entries, more than {LIVE_MAX_AUTH_FAILURES}"
        )
    good: list[dict[str, Any]] = []
    bad: list[str] = []
    for n, doc in enumerate(value):
        try:
            good.append(check_auth_failure(doc, f"auth_failures[{n}]"))
        except WireError as exc:
            bad.append(str(exc))
    return good, bad


def auth_failure_to_wire(source: str, item: Any) -> tuple[dict[str, Any], list[str]]:
    """A plugin's `AuthFailure` as a wire map, and the problems found in it.

    Lenient like `live_event_to_wire`: an optional field of the wrong type is left out and
    reported, a text too long is cut. No usable source address or time raises WireError.
    """
    problems: list[str] = []
    at = getattr(item, "at", None)
    if isinstance(at, bool) or not isinstance(at, int | float) or not (0 < at < 2**53 / 1e6):
        raise WireError(f"auth failure: 'at' must be epoch seconds, got {at!r:.40}")
    out: dict[str, Any] = {
        "source": source,
        "at": epoch_to_us(at),
        "src_ip": _auth_ip(getattr(item, "src_ip", None)),
    }
    for key in ("src_port", "username", "sip_code", "reason", "transport", "method", "service"):
        value = getattr(item, key, None)
        if value is None or value == "":
            continue
        if key == "transport" and isinstance(value, str):
            value = value.lower()
        if key == "method" and isinstance(value, str):
            value = value.upper()
        if key in _AUTH_TEXT and isinstance(value, str) and len(value) > AUTH_TEXT_MAX:
            value = value[:AUTH_TEXT_MAX]
        try:
            out[key] = _check_auth_value(key, value)
        except WireError as exc:
            problems.append(f"{exc} (left out)")
    return out, problems

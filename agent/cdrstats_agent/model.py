"""The normalized call-detail record every plugin produces and the collector stores.

One `CDR` is one call (or one call leg, where a switch writes legs) as seen by one switch.
Timestamps are timezone-aware UTC datetimes; durations are whole seconds, as switches count them.
The field order of `CDR_FIELDS` is the order on the wire (see `docs/protocol.md`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Disposition(StrEnum):
    """How the call ended, in the five values the whole product uses."""

    ANSWERED = "ANSWERED"
    NO_ANSWER = "NO_ANSWER"
    BUSY = "BUSY"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    INTERNAL = "internal"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class CDR:
    """A normalized call-detail record.

    `key` is the natural key of the record within its switch (FreeSWITCH uuid, Asterisk
    uniqueid+sequence, Kamailio Call-ID+from-tag, a configured CSV column or a content hash).
    The collector stores each (tenant, switch, start, key) once, whatever is redelivered.
    """

    key: str
    start: datetime
    answer: datetime | None = None
    end: datetime | None = None
    duration: int = 0
    billsec: int = 0
    disposition: Disposition = Disposition.FAILED
    direction: Direction = Direction.UNKNOWN
    caller: str = ""
    caller_name: str = ""
    callee: str = ""
    caller_e164: str | None = None
    callee_e164: str | None = None
    accountcode: str = ""
    hangup_cause: int | None = None
    sip_code: int | None = None
    ring_time: int | None = None
    src_ip: str | None = None
    read_codec: str | None = None
    write_codec: str | None = None
    trunk: str | None = None
    user_agent: str | None = None
    call_group: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("start", "answer", "end"):
            value = getattr(self, name)
            if value is not None and (value.tzinfo is None or value.utcoffset() is None):
                raise ValueError(f"CDR {self.key!r}: {name} must be timezone-aware, got {value!r}")


CDR_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(CDR))
"""Field names in wire order."""

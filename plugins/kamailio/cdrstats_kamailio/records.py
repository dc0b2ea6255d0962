"""Pure mapping from Kamailio accounting rows to CDR fields: codes, times, mapped columns.

No I/O here. A row is a plain `dict[str, Any]` as the database driver returned it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any

from cdrstats_agent.model import Disposition
from cdrstats_agent.normalize import to_e164

# SIP final response -> Q.850 cause (RFC 3398 section 8.2.6.1; 487 keeps the number used by
# FreeSWITCH's ORIGINATOR_CANCEL, as cdrstats_agent.normalize does).
Q850_BY_SIP: dict[int, int] = {
    400: 41, 401: 21, 402: 21, 403: 21, 404: 1, 405: 63, 406: 79, 407: 21, 408: 102,
    410: 22, 413: 127, 414: 127, 415: 79, 416: 127, 420: 127, 421: 127, 423: 127,
    480: 18, 481: 41, 482: 25, 483: 25, 484: 28, 485: 1, 486: 17, 487: 487, 488: 127,
    500: 41, 501: 79, 502: 38, 503: 41, 504: 102, 505: 127, 513: 127,
    600: 17, 603: 21, 604: 1, 606: 58,
}  # fmt: skip

MAPPABLE_FIELDS = (
    "caller",
    "caller_name",
    "callee",
    "accountcode",
    "src_ip",
    "trunk",
    "user_agent",
    "read_codec",
    "write_codec",
    "sip_code",
)
"""CDR fields a column (db_extra / cdr_extra) can be mapped to with `[source.fields]`."""


def disposition_from_sip(code: int) -> Disposition:
    """Disposition of a call from its final SIP response code."""
    if 200 <= code < 300:
        return Disposition.ANSWERED
    if code in (486, 600):
        return Disposition.BUSY
    if code == 487:
        return Disposition.CANCELLED
    if code in (408, 480):
        return Disposition.NO_ANSWER
    return Disposition.FAILED


def q850_from_sip(code: int) -> int | None:
    if 200 <= code < 300:
        return 16
    if code in Q850_BY_SIP:
        return Q850_BY_SIP[code]
    return {4: 127, 5: 41, 6: 31}.get(code // 100)


def sip_code(value: Any) -> int:
    """The integer SIP code of a `sip_code` column (VARCHAR(3) in Kamailio's schema)."""
    text = str(value if value is not None else "").strip()
    if len(text) != 3 or not text.isdigit() or not 100 <= int(text) <= 699:
        raise ValueError(f"sip_code {text!r} is not a SIP response code")
    return int(text)


def to_utc(value: Any, tz: tzinfo) -> datetime:
    """A DATETIME / timestamp column (naive, in the switch's local time) as aware UTC."""
    if isinstance(value, datetime):
        stamp = value if value.tzinfo is not None else value.replace(tzinfo=tz)
        return stamp.astimezone(UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC)
    if isinstance(value, str):
        try:
            return to_utc(datetime.fromisoformat(value.strip()), tz)
        except ValueError:
            pass
    raise ValueError(f"time {value!r} is not a date and time")


def text(value: Any) -> str:
    """A column value as text (bytes decoded, None as empty)."""
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


@functools.lru_cache(maxsize=4096)
def valid_ip(value: str) -> str | None:
    """`value` if it is an IP address (the collector stores src_ip as inet), else None."""
    candidate = value.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def mapped_fields(
    row: Mapping[str, Any], fields: Mapping[str, str], country_code: str | None
) -> dict[str, Any]:
    """CDR keyword arguments from the columns named in `fields` (CDR field -> column)."""
    out: dict[str, Any] = {}
    for field, column in fields.items():
        if column not in row:
            continue
        value = text(row[column]).strip()
        if field == "sip_code":
            continue  # handled by the caller: it decides the disposition
        if field == "src_ip":
            out["src_ip"] = valid_ip(value)
        elif field in ("caller", "caller_name", "callee", "accountcode"):
            out[field] = value
        else:
            out[field] = value or None
    if country_code is not None:
        for field in ("caller", "callee"):
            if out.get(field):
                out[f"{field}_e164"] = to_e164(out[field], country_code)
    return out


def extra_columns(row: Mapping[str, Any], skip: frozenset[str]) -> dict[str, str]:
    """Every column not in `skip`, as text, for the CDR's `extra`."""
    return {k: text(v) for k, v in row.items() if k not in skip}

"""Dialog-based CDRs: one `acc_cdrs` row (acc with `cdr_enable`) -> one CDR. Pure, no I/O.

The core columns are `start_time`, `end_time` and `duration` (seconds, float); everything
else comes from `cdr_extra`. The natural key needs the Call-ID and From tag, which acc_cdrs
only has when `cdr_extra` writes them (see the README).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import tzinfo
from typing import Any

from cdrstats_agent.model import CDR, Disposition

from .pairing import natural_key
from .records import (
    disposition_from_sip,
    extra_columns,
    mapped_fields,
    q850_from_sip,
    sip_code,
    text,
    to_utc,
)

CDRS_CORE = frozenset({"id", "start_time", "end_time", "duration"})


def cdr_from_cdrs_row(
    row: Mapping[str, Any],
    *,
    fields: Mapping[str, str],
    key_columns: tuple[str, str],
    tz: tzinfo,
    country_code: str | None,
) -> CDR:
    """The CDR of one acc_cdrs row; ValueError naming the column when a value is unusable."""
    callid = text(row.get(key_columns[0])).strip()
    from_tag = text(row.get(key_columns[1])).strip()
    if not callid or not from_tag:
        raise ValueError(f"{key_columns[0]} or {key_columns[1]} is empty (check cdr_extra)")
    start = to_utc(row.get("start_time"), tz)
    end = to_utc(row.get("end_time"), tz)
    try:
        seconds = float(row.get("duration") or 0)
    except (TypeError, ValueError):
        raise ValueError(f"duration {row.get('duration')!r} is not a number") from None
    if seconds < 0:
        raise ValueError(f"duration {seconds} is negative")
    code: int | None = None
    code_column = fields.get("sip_code")
    if code_column and text(row.get(code_column)).strip():
        code = sip_code(row.get(code_column))
    answered = (code is not None and 200 <= code < 300) or (code is None and seconds > 0)
    billsec = round(seconds) if answered else 0
    if code is not None:
        disposition = disposition_from_sip(code)
    else:
        disposition = Disposition.ANSWERED if answered else Disposition.FAILED
    return CDR(
        key=natural_key(callid, from_tag),
        start=start,
        answer=start if answered else None,
        end=end,
        duration=billsec if answered else max(0, round((end - start).total_seconds())),
        billsec=billsec,
        disposition=disposition,
        sip_code=code,
        hangup_cause=q850_from_sip(code) if code is not None else None,
        call_group=callid,
        extra={**extra_columns(row, CDRS_CORE), "duration_exact": seconds},
        **mapped_fields(row, fields, country_code),
    )

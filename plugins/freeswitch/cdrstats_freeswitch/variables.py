"""One FreeSWITCH CDR as channel variables in, one `CDR` (or why not) out.

Every store FreeSWITCH writes (mod_cdr_csv lines, mod_cdr_sqlite rows, mod_cdr_pg_csv rows,
mod_json_cdr / mod_xml_cdr documents) is, in the end, a set of channel variables named as in
the switch (`uuid`, `start_epoch`, `hangup_cause`...). This module turns such a set into the
model's CDR, the same way for every store. Pure: no I/O.

Rules (README "Normalization"):

* key: `uuid`; a row without one is rejected.
* legs: a B leg is a channel whose `call_uuid` / `originator` / `originating_leg_uuid` names
  another channel. With `legs = "a"` (default) B legs are skipped: the call is the A leg's CDR,
  whose `bleg_uuid` (in `extra`) names the B leg. With `legs = "ab"` both are kept, each keyed
  by its own uuid, with `call_group` = the A leg's uuid.
* times: `*_uepoch`, then `*_epoch`, then `*_stamp` (local time in the switch's zone). An
  epoch of 0 (or a stamp before 1971) means "never" (an unanswered call's answer).
* hangup cause: `hangup_cause_q850`, else the cause name (`NORMAL_CLEARING`) through the
  agent's Q.850 table; SIP code: `sip_term_status`, else `sip:NNN` of
  `proto_specific_hangup_cause` / `last_bridge_proto_specific_hangup_cause`.
* disposition: from the cause and whether the call was answered, refined by the SIP code
  (486/600 busy, 487 cancelled) and `sip_hangup_disposition` (`recv_cancel`: cancelled).
* source IP `sip_received_ip` > `sip_network_ip` > `network_addr`; trunk `sip_gateway_name`, or
  the gateway of the bridged channel (`bridge_channel` = `sofia/gateway/<gateway>/...`);
  codecs `read_codec` / `write_codec`; user agent `sip_user_agent`; direction: outbound when a
  gateway was used, else the channel's `direction` variable.
* everything else goes to `extra` under the variable's name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from cdrstats_agent.model import CDR, Direction, Disposition
from cdrstats_agent.normalize import disposition_from_q850, q850_from_text, to_e164
from cdrstats_csv.stamps import StampError, local_zone, parse_time, resolve

LEGS = ("a", "ab")
MAX_DURATION = 10 * 366 * 86400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNSET_BEFORE = datetime(1971, 1, 1, tzinfo=UTC)
_STAMP_FORMATS = ("%Y-%m-%d %H:%M:%S", "iso8601")

_USED = frozenset(
    {
        "uuid",
        "caller_id_number",
        "ani",
        "sip_from_user",
        "caller_id_name",
        "destination_number",
        "sip_req_user",
        "accountcode",
        "account_code",
        "duration",
        "billsec",
        "hangup_cause_q850",
        "read_codec",
        "write_codec",
        "sip_user_agent",
        "sip_gateway_name",
        "sip_received_ip",
        "sip_network_ip",
        "network_addr",
        "sip_term_status",
        "call_uuid",
        "direction",
    }
    | {f"{w}_{s}" for w in ("start", "answer", "end") for s in ("stamp", "epoch", "uepoch")}
)
"""Variables that feed a model field; all others go to `extra` (hangup_cause is kept too)."""

_PLAIN_TYPES = frozenset({str, int, float, bool})
_DIRECTIONS = {"inbound": Direction.INBOUND, "outbound": Direction.OUTBOUND}
_A_LEG_VARIABLES = ("call_uuid", "originator", "originating_leg_uuid")


@dataclass(frozen=True, slots=True)
class Settings:
    """How to read one switch's CDRs (from the source's options)."""

    timezone: tzinfo | None = None
    """Zone of local `*_stamp` values; None: the agent host's zone."""
    legs: str = "a"
    country_code: str | None = None
    international_prefix: str = "00"
    national_prefix: str = "0"
    hours: dict[str, timedelta | None] = field(default_factory=dict, compare=False, repr=False)
    """UTC offset of each local hour (`YYYY-MM-DD HH`) seen, None when it holds a change."""

    @property
    def zone(self) -> tzinfo:
        return self.timezone if self.timezone is not None else local_zone()


@dataclass(frozen=True, slots=True)
class Skipped:
    """A B leg left out because `legs = "a"`: its call is the A leg's CDR."""

    a_leg: str


class Invalid(ValueError):
    """Variables that cannot form a CDR; the message says which one and why."""


def _text(value: Any) -> str:
    if type(value) is str:
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def a_leg_of(variables: Mapping[str, Any]) -> str | None:
    """The A leg's uuid if this channel is a B leg (see module doc), else None."""
    uuid = _text(variables.get("uuid"))
    for name in _A_LEG_VARIABLES:
        other = _text(variables.get(name))
        if other and other != uuid:
            return other
    return None


def _epoch(value: str, scale: int) -> datetime | None:
    try:
        number = int(value) if value.isdigit() else float(value)
    except ValueError:
        raise StampError("not an epoch number") from None
    if number <= 0:
        return None
    try:
        stamp = _EPOCH + timedelta(microseconds=int(number * 1_000_000 // scale))
    except OverflowError:
        raise StampError("epoch out of range") from None
    return stamp if stamp >= _UNSET_BEFORE else None


def _hour_offset(hour: str, zone: tzinfo, hours: dict[str, timedelta | None]) -> timedelta | None:
    """The UTC offset of every stamp of a local hour (`YYYY-MM-DD HH`), or None when the hour
    holds a change of offset (DST): those stamps take the csv plugin's careful path."""
    if hour in hours:
        return hours[hour]
    try:
        top = datetime.fromisoformat(hour + ":00:00")
    except ValueError:
        return None
    offsets = {
        moment.replace(tzinfo=zone, fold=fold).utcoffset()
        for moment in (top, top.replace(minute=59, second=59))
        for fold in (0, 1)
    }
    offset = offsets.pop() if len(offsets) == 1 else None
    if len(hours) > 4096:
        hours.clear()
    hours[hour] = offset
    return offset


_TIME_NAMES = {
    which: (f"{which}_uepoch", f"{which}_epoch", f"{which}_stamp")
    for which in ("start", "answer", "end")
}


def _times(
    variables: Mapping[str, Any],
    texts: Mapping[str, str],
    which: str,
    zone: tzinfo,
    hours: dict[str, timedelta | None] | None = None,
) -> tuple[datetime, ...] | None:
    """Candidate instants of `which` (start/answer/end), preferring epoch fields.

    `texts` are the variables as stripped strings; `variables` the raw values (a PostgreSQL
    timestamptz arrives as a datetime)."""
    uepoch, epoch, stamp_name = _TIME_NAMES[which]
    for name, scale in ((uepoch, 1_000_000), (epoch, 1)):
        text = texts.get(name)
        if text:
            try:
                stamp = _epoch(text, scale)
            except StampError as exc:
                raise Invalid(f"{name}: {exc}: {text[:40]!r}") from None
            return None if stamp is None else (stamp,)
    name = stamp_name
    raw = variables.get(name)
    if isinstance(raw, datetime):  # PostgreSQL timestamptz
        if raw.tzinfo is None:
            raw = raw.replace(tzinfo=zone)
        raw = raw.astimezone(UTC)
        return None if raw < _UNSET_BEFORE else (raw,)
    text = texts.get(name, "")
    if not text:
        return None
    if len(text) == 19 and text[10] == " " and hours is not None:
        offset = _hour_offset(text[:13], zone, hours)
        if offset is not None:
            try:
                stamp = (datetime.fromisoformat(text) - offset).replace(tzinfo=UTC)
            except ValueError:
                pass
            else:
                return None if stamp < _UNSET_BEFORE else (stamp,)
    try:
        found: tuple[datetime, ...] | None = parse_time(text, _STAMP_FORMATS, zone)
        return found
    except StampError as exc:
        raise Invalid(f"{name}: {exc}: {text[:40]!r}") from None


def _seconds(variables: Mapping[str, Any], name: str) -> int | None:
    raw = variables.get(name)
    if raw is None or raw == "":
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        text = _text(raw)
        try:
            value = int(text) if text.lstrip("-").isdigit() else int(float(text))
        except ValueError:
            raise Invalid(f"{name}: not a number of seconds: {text[:40]!r}") from None
    if value < 0 or value > MAX_DURATION:
        raise Invalid(f"{name}: out of range: {value}")
    return value


def _sip_code(variables: Mapping[str, Any]) -> int | None:
    status = _text(variables.get("sip_term_status"))
    if status.isdigit() and 100 <= int(status) <= 699:
        return int(status)
    for name in ("proto_specific_hangup_cause", "last_bridge_proto_specific_hangup_cause"):
        text = _text(variables.get(name))
        if text.startswith("sip:") and text[4:].isdigit() and 100 <= int(text[4:]) <= 699:
            return int(text[4:])
    return None


def _ip(variables: Mapping[str, Any]) -> str | None:
    for name in ("sip_received_ip", "sip_network_ip", "network_addr"):
        text = _text(variables.get(name))
        if text:
            try:
                return str(ipaddress.ip_address(text.strip("[]")))
            except ValueError:
                continue
    return None


def e164_of_digits(
    digits: str, country_code: str | None, international_prefix: str, national_prefix: str
) -> str | None:
    """`normalize.to_e164` for a number made of digits only (the common case), without its
    character filtering: same rules, same result (tested against it)."""
    if international_prefix and digits.startswith(international_prefix):
        rest = digits[len(international_prefix) :]
    elif country_code and national_prefix and digits.startswith(national_prefix):
        rest = country_code + digits[len(national_prefix) :]
    else:
        return None
    if not (8 <= len(rest) <= 15) or rest[0] == "0" or not rest.isdigit():
        return None
    return "+" + rest


def _gateway_of(channel: str) -> str | None:
    """The gateway of a Sofia channel name `sofia/gateway/<gateway>/<number>`, else None."""
    if channel.startswith("sofia/gateway/"):
        name = channel[14:].split("/", 1)[0]
        return name or None
    return None


def _disposition(
    cause: int | None, billsec: int, answered: bool, sip_code: int | None, sip_disp: str
) -> Disposition:
    if answered or billsec > 0:
        return Disposition.ANSWERED
    if sip_code in (486, 600):
        return Disposition.BUSY
    if sip_code == 487 or sip_disp == "recv_cancel":
        return Disposition.CANCELLED
    return disposition_from_q850(cause, billsec, answered)


def to_cdr(variables: Mapping[str, Any], settings: Settings) -> CDR | Skipped:
    """The CDR of one channel's variables; `Skipped` for a B leg with legs = "a".

    Raises `Invalid` naming the variable that cannot be read.
    """
    texts = {k: v.strip() if type(v) is str else _text(v) for k, v in variables.items()}
    get = texts.get
    uuid = get("uuid", "")
    if not uuid:
        raise Invalid("uuid: missing or empty (the natural key of a FreeSWITCH CDR)")
    a_leg = a_leg_of(texts)
    if a_leg is not None and settings.legs == "a":
        return Skipped(a_leg)
    zone = settings.zone
    hours = settings.hours
    start_c = _times(variables, texts, "start", zone, hours)
    answer_c = _times(variables, texts, "answer", zone, hours)
    end_c = _times(variables, texts, "end", zone, hours)
    duration = _seconds(texts, "duration")
    billsec = _seconds(texts, "billsec")
    if (
        (start_c is None or len(start_c) == 1)
        and (answer_c is None or len(answer_c) == 1)
        and (end_c is None or len(end_c) == 1)
    ):
        start = start_c[0] if start_c else None
        answer = answer_c[0] if answer_c else None
        end = end_c[0] if end_c else None
    else:  # a stamp in a DST overlap: the combination that agrees with the durations
        start, answer, end = resolve(start_c, answer_c, end_c, duration, billsec)
    if start is None:
        if end is not None and duration is not None:
            start = end - timedelta(seconds=duration)
        elif answer is not None:
            start = answer
        else:
            raise Invalid("start_stamp/start_epoch: missing or empty: no start time")
    if end is None and duration is not None:
        end = start + timedelta(seconds=duration)
    if answer is not None and answer < start:
        raise Invalid(f"answer time {answer.isoformat()} is before start {start.isoformat()}")
    if end is not None and end < (answer or start):
        raise Invalid(f"end time {end.isoformat()} is before {(answer or start).isoformat()}")
    if duration is None:
        duration = int((end - start).total_seconds()) if end is not None else 0
    if billsec is None:
        billsec = int((end - answer).total_seconds()) if answer and end else 0
    if answer is not None:
        ring_time: int | None = int((answer - start).total_seconds())
    elif end is not None:
        ring_time = int((end - start).total_seconds())
    else:
        ring_time = None

    extra: dict[str, Any] = {}
    cause: int | None = None
    q850 = get("hangup_cause_q850", "")
    if q850.isdigit():
        cause = int(q850)
    name = get("hangup_cause", "")
    if cause is None and name:
        cause = q850_from_text(name)
    sip_code = _sip_code(texts)
    sip_disp = get("sip_hangup_disposition", "")
    disposition = _disposition(cause, billsec, answer is not None, sip_code, sip_disp)

    trunk = get("sip_gateway_name") or _gateway_of(get("bridge_channel", ""))
    direction = _DIRECTIONS.get(get("direction", "").lower(), Direction.UNKNOWN)
    if trunk is not None:
        direction = Direction.OUTBOUND

    for key, value in variables.items():
        if key in _USED or value is None:
            continue
        extra[key] = value if type(value) in _PLAIN_TYPES else texts[key]
    if a_leg is not None:
        extra.setdefault("call_uuid", a_leg)

    caller = get("caller_id_number") or get("ani") or get("sip_from_user") or ""
    callee = get("destination_number") or get("sip_req_user") or ""
    cc = settings.country_code

    def e164(number: str) -> str | None:
        if not number:
            return None
        if number.isdigit():
            return e164_of_digits(
                number, cc, settings.international_prefix, settings.national_prefix
            )
        found: str | None = to_e164(
            number,
            cc,
            international_prefix=settings.international_prefix,
            national_prefix=settings.national_prefix,
        )
        return found

    return CDR(
        key=uuid,
        start=start,
        answer=answer,
        end=end,
        duration=duration,
        billsec=billsec,
        disposition=disposition,
        direction=direction,
        caller=caller,
        caller_name=get("caller_id_name", ""),
        callee=callee,
        caller_e164=e164(caller),
        callee_e164=e164(callee),
        accountcode=get("accountcode") or get("account_code") or "",
        hangup_cause=cause,
        sip_code=sip_code,
        ring_time=ring_time,
        src_ip=_ip(texts),
        read_codec=get("read_codec") or None,
        write_codec=get("write_codec") or None,
        trunk=trunk,
        user_agent=get("sip_user_agent") or None,
        call_group=a_leg or uuid,
        extra=extra,
    )

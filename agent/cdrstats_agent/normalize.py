"""Pure helpers that turn switch-specific values into the model's: disposition, Q.850, E.164.

No I/O here: every function is a plain mapping, cheap to test with data.
"""

from __future__ import annotations

from .model import Disposition

# Q.850 cause codes by the names FreeSWITCH (and Asterisk's Cause-txt in upper snake case) use.
Q850_BY_NAME: dict[str, int] = {
    "UNALLOCATED_NUMBER": 1,
    "NO_ROUTE_TRANSIT_NET": 2,
    "NO_ROUTE_DESTINATION": 3,
    "CHANNEL_UNACCEPTABLE": 6,
    "CALL_AWARDED_DELIVERED": 7,
    "NORMAL_CLEARING": 16,
    "USER_BUSY": 17,
    "NO_USER_RESPONSE": 18,
    "NO_ANSWER": 19,
    "SUBSCRIBER_ABSENT": 20,
    "CALL_REJECTED": 21,
    "NUMBER_CHANGED": 22,
    "REDIRECTION_TO_NEW_DESTINATION": 23,
    "EXCHANGE_ROUTING_ERROR": 25,
    "DESTINATION_OUT_OF_ORDER": 27,
    "INVALID_NUMBER_FORMAT": 28,
    "FACILITY_REJECTED": 29,
    "RESPONSE_TO_STATUS_ENQUIRY": 30,
    "NORMAL_UNSPECIFIED": 31,
    "NORMAL_CIRCUIT_CONGESTION": 34,
    "NETWORK_OUT_OF_ORDER": 38,
    "NORMAL_TEMPORARY_FAILURE": 41,
    "SWITCH_CONGESTION": 42,
    "ACCESS_INFO_DISCARDED": 43,
    "REQUESTED_CHAN_UNAVAIL": 44,
    "PRE_EMPTED": 45,
    "FACILITY_NOT_SUBSCRIBED": 50,
    "OUTGOING_CALL_BARRED": 52,
    "INCOMING_CALL_BARRED": 54,
    "BEARERCAPABILITY_NOTAUTH": 57,
    "BEARERCAPABILITY_NOTAVAIL": 58,
    "SERVICE_UNAVAILABLE": 63,
    "BEARERCAPABILITY_NOTIMPL": 65,
    "CHAN_NOT_IMPLEMENTED": 66,
    "FACILITY_NOT_IMPLEMENTED": 69,
    "SERVICE_NOT_IMPLEMENTED": 79,
    "INVALID_CALL_REFERENCE": 81,
    "INCOMPATIBLE_DESTINATION": 88,
    "INVALID_MSG_UNSPECIFIED": 95,
    "MANDATORY_IE_MISSING": 96,
    "MESSAGE_TYPE_NONEXIST": 97,
    "WRONG_MESSAGE": 98,
    "IE_NONEXIST": 99,
    "INVALID_IE_CONTENTS": 100,
    "WRONG_CALL_STATE": 101,
    "RECOVERY_ON_TIMER_EXPIRE": 102,
    "MANDATORY_IE_LENGTH_ERROR": 103,
    "PROTOCOL_ERROR": 111,
    "INTERWORKING": 127,
    # FreeSWITCH's own causes beyond Q.850 (switch_call_cause_t), kept with FreeSWITCH's numbers
    "ORIGINATOR_CANCEL": 487,
    "LOSE_RACE": 502,
    "USER_NOT_REGISTERED": 606,
    "ALLOTTED_TIMEOUT": 602,
    "MEDIA_TIMEOUT": 604,
    "PROGRESS_TIMEOUT": 607,
    "SUCCESS": 142,
    "CRASH": 500,
    "SYSTEM_SHUTDOWN": 501,
    "MANAGER_REQUEST": 503,
    "BLIND_TRANSFER": 600,
    "ATTENDED_TRANSFER": 601,
    "USER_CHALLENGE": 603,
    "PICKED_OFF": 605,
    "INVALID_GATEWAY": 608,
    "GATEWAY_DOWN": 609,
    "INVALID_URL": 610,
    "INVALID_PROFILE": 611,
    "NO_PICKUP": 612,
    "SRTP_READ_ERROR": 613,
}

_DISPOSITIONS: dict[str, Disposition] = {
    "ANSWERED": Disposition.ANSWERED,
    "ANSWER": Disposition.ANSWERED,
    "NO ANSWER": Disposition.NO_ANSWER,
    "NO_ANSWER": Disposition.NO_ANSWER,
    "NOANSWER": Disposition.NO_ANSWER,
    "BUSY": Disposition.BUSY,
    "FAILED": Disposition.FAILED,
    "CONGESTION": Disposition.FAILED,
    "CHANUNAVAIL": Disposition.FAILED,
    "CANCEL": Disposition.CANCELLED,
    "CANCELLED": Disposition.CANCELLED,
    "CANCELED": Disposition.CANCELLED,
}


def disposition_from_text(text: str) -> Disposition | None:
    """Asterisk-style disposition text (ANSWERED, NO ANSWER, BUSY, ...) or None if unknown."""
    return _DISPOSITIONS.get(text.strip().upper())


def q850_from_text(text: str) -> int | None:
    """A Q.850 cause from a name (NORMAL_CLEARING) or a number ("16"); None if neither."""
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    return Q850_BY_NAME.get(text.upper())


def disposition_from_q850(cause: int | None, billsec: int, answered: bool) -> Disposition:
    """Disposition derived from a hangup cause, for switches that write no disposition."""
    if answered or billsec > 0:
        return Disposition.ANSWERED
    if cause == 17:
        return Disposition.BUSY
    if cause in (18, 19, 20, 602, 607):
        return Disposition.NO_ANSWER
    if cause == 487:
        return Disposition.CANCELLED
    return Disposition.FAILED


def to_e164(
    number: str,
    country_code: str | None,
    *,
    international_prefix: str = "00",
    national_prefix: str = "0",
    min_length: int = 8,
) -> str | None:
    """Best-effort E.164 ("+" and digits) from a number in a switch's local dial format.

    `country_code` is the switch's own country calling code ("33" for France), used for
    national numbers; without it only already-international numbers are converted. Short
    extensions, service numbers and anything with letters give None.
    """
    raw = number.strip()
    if raw.startswith("sip:"):
        raw = raw[4:].split("@", 1)[0]
    digits = "".join(ch for ch in raw if ch not in " -.()")
    if digits.startswith("+"):
        rest = digits[1:]
    elif international_prefix and digits.startswith(international_prefix):
        rest = digits[len(international_prefix) :]
    elif country_code and national_prefix and digits.startswith(national_prefix):
        rest = country_code + digits[len(national_prefix) :]
    else:
        return None
    if not rest.isdigit() or not (min_length <= len(rest) <= 15) or rest[0] == "0":
        return None
    return "+" + rest


# Channel technologies whose "resource" is not a peer (trunk or endpoint) name.
_NOT_PEERS = frozenset(
    {
        "local",
        "console",
        "parked",
        "bridge",
        "message",
        "announcer",
        "recorder",
        "cbann",
        "cbrec",
        "snoop",
        "audiosocket",
        "unicastrtp",
        "multicastrtp",
        "asyncgoto",
    }
)


def channel_peer(channel: str) -> str | None:
    """The peer name inside an Asterisk channel name, or None for internal channels.

    `SIP/trunk1-00000001` -> `trunk1`, `PJSIP/provider-000000a1` -> `provider`,
    `IAX2/peer-1234` -> `peer`; `Local/100@default-0001;1`, `Console/dsp` and "" -> None.
    Masquerade decorations (`<ZOMBIE>`, `<MASQ>`, an `AsyncGoto/` prefix) are ignored.
    """
    name = channel.strip()
    for tag in ("<ZOMBIE>", "<MASQ>"):
        name = name.replace(tag, "")
    if name[:10].lower() == "asyncgoto/":
        name = name[10:]
    tech, sep, resource = name.partition("/")
    if not sep or not resource or tech.lower() in _NOT_PEERS:
        return None
    resource = resource.split(";", 1)[0]
    base, dash, suffix = resource.rpartition("-")
    if dash and base and suffix and all(c in "0123456789abcdefABCDEF" for c in suffix):
        resource = base
    return resource or None


def split_callerid(clid: str) -> tuple[str, str]:
    """(name, number) from a caller-id string such as `"John Doe" <1000>`.

    Without angle brackets the text is a number if it looks like one (digits, `+`, `*`, `#`),
    else a name.
    """
    text = clid.strip()
    if text.endswith(">") and "<" in text:
        name, _, rest = text.rpartition("<")
        number = rest[:-1].strip()
        name = name.strip()
        if len(name) >= 2 and name[0] == '"' and name[-1] == '"':
            name = name[1:-1]
        return name.strip(), number
    if text and all(c.isdigit() or c in "+*#" for c in text):
        return "", text
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    return text, ""

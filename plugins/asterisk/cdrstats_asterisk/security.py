"""Failed SIP registrations from Asterisk's AMI security events (pure, no I/O; ami.py feeds it).

Asterisk raises security events (class `security`: the manager user needs `read = security`)
through main/security_events.c. The ones that mean "someone tried and failed":

| Event | when | SIP answer |
|---|---|---|
| `InvalidAccountID` | the account (endpoint, peer) does not exist | 401/403/404 |
| `ChallengeResponseFailed` | the digest response was wrong | 401 |
| `InvalidPassword` | the password was wrong | 401 |
| `FailedACL` | the source address is refused by an ACL | 403 |

Each carries `EventTV` (ISO 8601 with milliseconds and offset, `2025-11-25T10:00:00.123+0100`;
Asterisk 11: `1764064800-123456`), `Service` (`SIP`, `PJSIP`, `AMI`...), `AccountID`, and
`RemoteAddress` written by `ast_json_ipaddr`: `IPV4/UDP/203.0.113.5/5060`,
`IPV6/TCP/2001:db8::5/5061` (transport left out when unknown: `IPV4/203.0.113.5/5060`).
Only SIP services count (`SIP`, `PJSIP`, configurable); failed AMI or IAX2 logins are not
SIP scanners.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cdrstats_agent.plugin import AuthFailure

SECURITY_EVENTS = {
    "invalidaccountid": None,  # the SIP answer depends on the channel driver's settings
    "challengeresponsefailed": 401,
    "invalidpassword": 401,
    "failedacl": 403,
}
SIP_SERVICES = frozenset({"SIP", "PJSIP"})
_TRANSPORTS = {"UDP": "udp", "TCP": "tcp", "TLS": "tls", "WS": "ws", "WSS": "wss"}


def _text(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key, "")
    if isinstance(value, list):
        value = value[-1] if value else ""
    return str(value).strip()


def parse_remote_address(text: str) -> tuple[str, int | None, str | None] | None:
    """(ip, port, transport) of a security event's address, or None when it is not one."""
    parts = text.strip().split("/")
    if len(parts) < 3 or parts[0].upper() not in ("IPV4", "IPV6"):
        return None
    transport = _TRANSPORTS.get(parts[1].upper()) if len(parts) >= 4 else None
    host, port_text = (parts[2], parts[3]) if len(parts) >= 4 else (parts[1], parts[2])
    host = host.removeprefix("[").removesuffix("]")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    port = int(port_text) if port_text.isdigit() and 0 < int(port_text) <= 65535 else None
    return str(addr), port, transport


def parse_event_tv(text: str) -> float | None:
    """EventTV in epoch seconds: ISO 8601 (`...T10:00:00.123+0100`) or `seconds-micros`."""
    text = text.strip()
    if not text:
        return None
    head, sep, tail = text.partition("-")
    if sep and head.isdigit() and tail.isdigit():
        return int(head) + int(tail) / 1_000_000
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return stamp.astimezone().timestamp()  # the switch's local time, as Asterisk wrote it
    return stamp.timestamp()


def security_event_to_failure(
    message: Mapping[str, Any], services: frozenset[str] = SIP_SERVICES
) -> AuthFailure | None:
    """The `AuthFailure` of one AMI message, or None (not a failed SIP authentication)."""
    name = _text(message, "Event").lower()
    if name not in SECURITY_EVENTS:
        return None
    service = _text(message, "Service")
    if service.upper() not in services:
        return None
    remote = parse_remote_address(_text(message, "RemoteAddress"))
    if remote is None:
        return None
    ip, port, transport = remote
    account = _text(message, "AccountID")
    # chan_sip reports the From header's whole URI for unknown peers: keep the user part.
    if account.startswith(("sip:", "sips:")):
        account = account.split(":", 1)[1].split("@", 1)[0]
    return AuthFailure(
        ip,
        at=parse_event_tv(_text(message, "EventTV")) or time.time(),
        src_port=port,
        username=account or None,
        sip_code=SECURITY_EVENTS[name],
        reason=_text(message, "Event"),
        transport=transport,
        service=service,  # the event does not say whether a REGISTER or an INVITE failed
    )

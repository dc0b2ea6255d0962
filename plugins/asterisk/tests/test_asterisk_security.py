"""Failed SIP registrations from AMI security events: the translation (security.py), and live()
against the protocol-faithful AMI peer yielding `AuthFailure`s beside the call events.

The events are written after Asterisk's main/security_events.c (required and optional
fields, in that order) and main/json.c `ast_json_ipaddr` (`IPV4/UDP/<addr>/<port>`);
EventTV is `ast_json_timeval`'s ISO 8601 with milliseconds and a `+hhmm` offset.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asterisk_ami_testkit import AmiPeer
from cdrstats_agent.plugin import AuthFailure, LiveEvent
from cdrstats_asterisk.ami import AmiLive
from cdrstats_asterisk.security import (
    parse_event_tv,
    parse_remote_address,
    security_event_to_failure,
)
from test_asterisk_ami import Events, config, peer  # noqa: F401  (peer: the fixture)

pytestmark = pytest.mark.timeout(60)


def security_event(name: str, remote: str, account: str, service: str = "PJSIP", **more: str):
    fields = [
        ("Event", name),
        ("Privilege", "security,all"),
        ("EventTV", "2025-11-25T11:00:00.250+0100"),
        ("Severity", "Error"),
        ("Service", service),
        ("EventVersion", "1"),
        ("AccountID", account),
        ("SessionID", "1a2b3c4d-5e6f"),
        ("LocalAddress", "IPV4/UDP/192.0.2.1/5060"),
        ("RemoteAddress", remote),
    ]
    fields += list(more.items())
    return fields


def test_the_four_failure_events_and_what_is_not_one() -> None:
    cases: list[tuple[list[tuple[str, str]], Any]] = [
        (
            security_event("InvalidPassword", "IPV4/UDP/203.0.113.5/5060", "1001",
                           Challenge="3c5a", ReceivedChallenge="3c5a", ReceivedHash="ab12"),
            ("203.0.113.5", 5060, "udp", "1001", 401),
        ),
        (
            security_event("ChallengeResponseFailed", "IPV4/TCP/203.0.113.5/40312", "1002",
                           Challenge="3c5a", Response="ab", ExpectedResponse=""),
            ("203.0.113.5", 40312, "tcp", "1002", 401),
        ),
        (
            security_event("InvalidAccountID", "IPV6/UDP/2001:db8::5/5062", "admin"),
            ("2001:db8::5", 5062, "udp", "admin", None),
        ),
        (
            security_event("FailedACL", "IPV4/UDP/198.51.100.7/5060", "100", ACLName="no-scan"),
            ("198.51.100.7", 5060, "udp", "100", 403),
        ),
        (   # chan_sip: the From URI for an unknown peer
            security_event("InvalidAccountID", "IPV4/UDP/203.0.113.9/5070",
                           "sip:777@192.0.2.1", service="SIP"),
            ("203.0.113.9", 5070, "udp", "777", None),
        ),
    ]  # fmt: skip
    for fields, (ip, port, transport, user, code) in cases:
        failure = security_event_to_failure(dict(fields))
        assert isinstance(failure, AuthFailure)
        got = (failure.src_ip, failure.src_port, failure.transport, failure.username)
        assert got == (ip, port, transport, user)
        assert failure.sip_code == code
        assert failure.reason == fields[0][1]
        assert failure.at == 1764064800.25
    ami_login = dict(security_event("InvalidPassword", "IPV4/TCP/203.0.113.5/4000", "admin",
                                    service="AMI"))  # fmt: skip
    ok = dict(security_event("SuccessfulAuth", "IPV4/UDP/203.0.113.5/5060", "1001"))
    challenge = dict(security_event("ChallengeSent", "IPV4/UDP/203.0.113.5/5060", "1001"))
    broken = dict(security_event("InvalidPassword", "somewhere", "1001"))
    for message in (ami_login, ok, challenge, broken, {"Event": "Hangup"}):
        assert security_event_to_failure(message) is None


def test_address_and_time_forms() -> None:
    assert parse_remote_address("IPV4/UDP/203.0.113.5/5060") == ("203.0.113.5", 5060, "udp")
    assert parse_remote_address("IPV4/203.0.113.5/5060") == ("203.0.113.5", 5060, None)
    assert parse_remote_address("IPV6/WSS/[2001:db8::1]/8089") == ("2001:db8::1", 8089, "wss")
    assert parse_remote_address("IPV6/UDP/::ffff:203.0.113.5/5060") == ("203.0.113.5", 5060, "udp")
    assert parse_remote_address("IPV4/UDP/203.0.113.5/0") == ("203.0.113.5", None, "udp")
    assert parse_remote_address("IPV4/UDP/host.example/5060") is None
    assert parse_remote_address("") is None
    assert parse_event_tv("2025-11-25T10:00:00.123+0000") == 1764064800.123
    assert parse_event_tv("1764064800-500000") == 1764064800.5
    assert parse_event_tv("yesterday") is None and parse_event_tv("") is None


async def test_live_yields_failures_beside_call_events(peer: AmiPeer) -> None:  # noqa: F811
    events = Events(AmiLive("ast1", config(peer)).events())  # type: ignore[arg-type]
    try:
        snapshot = await events.next()
        assert isinstance(snapshot, LiveEvent) and snapshot.kind == "snapshot"
        for n in range(3):
            await peer.send_event(
                security_event("ChallengeResponseFailed", f"IPV4/UDP/203.0.113.5/{5060 + n}",
                               f"10{n}", Challenge="x", Response="y", ExpectedResponse="")
            )  # fmt: skip
        await peer.send_event(security_event("InvalidPassword", "IPV4/TCP/1.2.3.4/1", "a",
                                             service="AMI"))  # fmt: skip
        got = [await events.next() for _ in range(3)]
        assert all(isinstance(f, AuthFailure) for f in got)
        assert [(f.src_port, f.username) for f in got] == [(5060, "100"), (5061, "101"),  # type: ignore[union-attr]
                                                           (5062, "102")]  # fmt: skip
        await asyncio.sleep(0.2)
        assert events.queue.empty()  # the AMI login failure is not a SIP scanner
    finally:
        await events.close()


async def test_auth_failures_can_be_turned_off(peer: AmiPeer) -> None:  # noqa: F811
    events = Events(AmiLive("ast1", config(peer, auth_failures=False)).events())  # type: ignore[arg-type]
    try:
        await events.next("snapshot")
        await peer.send_event(security_event("InvalidPassword", "IPV4/UDP/203.0.113.5/5060", "1"))
        await asyncio.sleep(0.3)
        assert events.queue.empty()
    finally:
        await events.close()

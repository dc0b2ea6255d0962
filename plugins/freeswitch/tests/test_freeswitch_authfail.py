"""Failed registrations over the Event Socket: `CUSTOM sofia::register_failure` events (as
mod_sofia's sofia_reg.c fires them when it answers 403) become `AuthFailure`s from live()."""

from __future__ import annotations

from cdrstats_agent.plugin import AuthFailure, LiveEvent
from cdrstats_freeswitch.esl import register_failure_to_auth
from freeswitch_testkit import EslPeer, wait_until
from test_freeswitch_esl import Live


def register_failure(ip: str, user: str, port: str = "5060", kind: str = "REGISTER") -> dict:
    """The headers of the event, in the order the switch writes them."""
    return {
        "Event-Name": "CUSTOM",
        "Core-UUID": "6b2a1c9e-2f6f-4d2a-9a39-0f0e4f5b3c11",
        "FreeSWITCH-Hostname": "fs1",
        "FreeSWITCH-Switchname": "fs1",
        "FreeSWITCH-IPv4": "192.0.2.1",
        "Event-Date-Local": "2025-11-25 11:00:00",
        "Event-Date-GMT": "Tue, 25 Nov 2025 10:00:00 GMT",
        "Event-Date-Timestamp": "1764064800250000",
        "Event-Calling-File": "sofia_reg.c",
        "Event-Calling-Function": "sofia_reg_handle_register_token",
        "Event-Calling-Line-Number": "2131",
        "Event-Sequence": "5120",
        "Event-Subclass": "sofia::register_failure",
        "profile-name": "internal",
        "to-user": user,
        "to-host": "192.0.2.1",
        "network-ip": ip,
        "user-agent": "friendly-scanner",
        "network-port": port,
        "registration-type": kind,
    }


def test_translation() -> None:
    failure = register_failure_to_auth(register_failure("203.0.113.5", "1001", "40123"))
    assert failure == AuthFailure(
        "203.0.113.5",
        at=1764064800.25,
        src_port=40123,
        username="1001",
        sip_code=403,
        reason="sofia::register_failure",
        method="REGISTER",
        service="internal",
    )
    invite = register_failure_to_auth(register_failure("203.0.113.5", "1001", kind="INVITE"))
    assert invite is not None and invite.method == "INVITE"
    success = {**register_failure("203.0.113.5", "1001"), "Event-Subclass": "sofia::register"}
    assert register_failure_to_auth(success) is None
    assert register_failure_to_auth({**register_failure("", "1001")}) is None


async def test_live_yields_register_failures() -> None:
    peer = EslPeer()
    live = Live(peer)
    try:
        await wait_until(lambda: peer.subscribed() >= 1, 10, "the event subscription")
        await wait_until(lambda: live.snapshots() >= 1, 10, "the first snapshot")
        for n in range(5):
            peer.send_event(register_failure("203.0.113.5", f"10{n}"))
        # A successful registration is another subclass: not subscribed, and not a failure.
        peer.send_event(
            {**register_failure("192.0.2.9", "200"), "Event-Subclass": "sofia::register"}
        )

        def failures() -> list[AuthFailure]:
            return [e for e in live.events if isinstance(e, AuthFailure)]  # type: ignore[misc]

        await wait_until(lambda: len(failures()) == 5, 10, "five failed registrations")
        assert [f.username for f in failures()] == ["100", "101", "102", "103", "104"]
        assert {f.src_ip for f in failures()} == {"203.0.113.5"}
        assert all(isinstance(e, LiveEvent) for e in live.events if e not in failures())
    finally:
        await live.close()
        peer.stop()


async def test_auth_failures_can_be_turned_off() -> None:
    peer = EslPeer()
    live = Live(peer, auth_failures=False)
    try:
        await wait_until(lambda: peer.subscribed() >= 1, 10, "the event subscription")
        assert not [c for c in peer.commands if "CUSTOM" in c]
    finally:
        await live.close()
        peer.stop()

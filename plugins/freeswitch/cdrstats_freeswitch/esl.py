"""Live calls over FreeSWITCH's Event Socket (inbound mode), with greenswitch in its own thread.

`EslLive.events()` is an async iterator of `LiveEvent`s (the live contract): `started`,
`answered`, `ended` for the A leg of each call, and a `snapshot` from `api show calls as json`
on every (re)connection and every `snapshot_s` seconds.

greenswitch 0.0.19 is gevent based. It runs here in a dedicated thread (its own gevent hub, no
monkey-patching) and hands events to asyncio with `call_soon_threadsafe`. Its gaps are covered
in this module: only `event plain` is used (its JSON event parsing is broken), every command is
wrapped in a `gevent.Timeout` (its `send()` waits forever), a lost connection is replaced by a
new `InboundESL` after a backoff (it has no reconnect), and `connect()` itself is bounded
(it waits forever for `auth/request` from a peer that accepted the TCP connection but says
nothing). A wrong password is logged as an error at every attempt and retried at the maximum
backoff: an operator fixes the config, the agent picks it up without a restart of the switch.

The translation of events and `show calls` rows into LiveEvents is pure (`event_to_live`,
`snapshot_from_calls`) and tested with recorded data.

Failed registrations: with `auth_failures` on (the default) the subscription adds
`CUSTOM sofia::register_failure`, which mod_sofia fires (sofia_reg.c) when it answers a
REGISTER, or an INVITE it authenticates, with 403 Forbidden (a wrong password, an unknown
user): headers `profile-name`, `to-user`, `to-host`, `network-ip`, `network-port`,
`user-agent`, `registration-type` (`REGISTER` or `INVITE`). `register_failure_to_auth` turns
one into an `AuthFailure` for scanner detection. (A 401 challenge is not a failure: every
client gets one first.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cdrstats_agent.logs import get_logger
from cdrstats_agent.normalize import q850_from_text
from cdrstats_agent.plugin import AuthFailure, LiveEvent

log = get_logger("cdrstats.plugins.freeswitch.esl")

EVENTS = ("CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE", "HEARTBEAT")
REGISTER_FAILURE = "sofia::register_failure"
"""The CUSTOM event subclass of a failed registration (subscribed with `auth_failures`)."""
_KINDS = {
    "CHANNEL_CREATE": "started",
    "CHANNEL_ANSWER": "answered",
    "CHANNEL_HANGUP_COMPLETE": "ended",
}
_ANSWERED_STATES = frozenset({"ACTIVE", "HELD", "ANSWERED"})
QUEUE_MAX = 10_000


class EslAuthError(Exception):
    """The switch refused the Event Socket password."""


@dataclass(frozen=True, slots=True)
class EslSettings:
    host: str = "127.0.0.1"
    port: int = 8021
    password: str = "ClueCon"
    snapshot_s: float = 30.0
    command_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    backoff_max_s: float = 30.0
    auth_failures: bool = True


# --- pure translation ---------------------------------------------------------------------


def _micro(value: str | None) -> float | None:
    if not value or not value.isdigit() or value == "0":
        return None
    return int(value) / 1_000_000


def _int(value: Any) -> int | None:
    text = str(value).strip() if value is not None else ""
    return int(text) if text.isdigit() else None


def _call_id(headers: Mapping[str, str]) -> tuple[str, bool]:
    """(A-leg uuid of the call, whether this channel is that A leg)."""
    uuid = headers.get("Unique-ID", "")
    call = headers.get("Channel-Call-UUID") or headers.get("variable_call_uuid") or uuid
    return call, call == uuid


def event_to_live(headers: Mapping[str, str]) -> LiveEvent | None:
    """The LiveEvent of one `text/event-plain` event (decoded headers), or None.

    Only A legs give events (`call_id` is the A leg's uuid, as the CDRs' key); HEARTBEAT and
    other events give None.
    """
    kind = _KINDS.get(headers.get("Event-Name", ""))
    if kind is None:
        return None
    call_id, is_a = _call_id(headers)
    if not call_id or not is_a:
        return None
    at = _micro(headers.get("Event-Date-Timestamp")) or time.time()
    data: dict[str, Any] = {}

    def put(key: str, *names: str) -> None:
        for name in names:
            value = headers.get(name)
            if value:
                data[key] = value
                return

    put("caller", "Caller-Caller-ID-Number", "Caller-ANI")
    put("caller_name", "Caller-Caller-ID-Name")
    put("callee", "Caller-Destination-Number")
    put("accountcode", "variable_accountcode")
    put("src_ip", "variable_sip_received_ip", "variable_sip_network_ip", "Caller-Network-Addr")
    put("trunk", "variable_sip_gateway_name")
    put("user_agent", "variable_sip_user_agent")
    put("read_codec", "Channel-Read-Codec-Name", "variable_read_codec")
    put("write_codec", "Channel-Write-Codec-Name", "variable_write_codec")
    direction = (headers.get("Call-Direction") or headers.get("Caller-Direction") or "").lower()
    if data.get("trunk"):
        direction = "outbound"
    if direction in ("inbound", "outbound"):
        data["direction"] = direction
    start = _micro(headers.get("Caller-Channel-Created-Time"))
    if start is not None:
        data["start"] = start
    answer = _micro(headers.get("Caller-Channel-Answered-Time"))
    if answer is not None:
        data["answer"] = answer
    if kind == "started":
        data["state"] = "ringing"
    elif kind == "answered":
        data["state"] = "answered"
    else:
        cause = _int(headers.get("variable_hangup_cause_q850"))
        if cause is None:
            cause = q850_from_text(headers.get("Hangup-Cause", ""))
        if cause is not None:
            data["hangup_cause"] = cause
        sip = _int(headers.get("variable_sip_term_status"))
        if sip is not None and 100 <= sip <= 699:
            data["sip_code"] = sip
    return LiveEvent(kind=kind, call_id=call_id, at=at, data=data)


def register_failure_to_auth(headers: Mapping[str, str]) -> AuthFailure | None:
    """The `AuthFailure` of a `CUSTOM sofia::register_failure` event, or None."""
    if headers.get("Event-Subclass") != REGISTER_FAILURE:
        return None
    ip = (headers.get("network-ip") or "").strip()
    if not ip:
        return None
    method = (headers.get("registration-type") or "REGISTER").strip().upper()
    return AuthFailure(
        ip,
        at=_micro(headers.get("Event-Date-Timestamp")) or time.time(),
        src_port=_int(headers.get("network-port")) or None,
        username=headers.get("to-user") or None,
        sip_code=403,  # mod_sofia fires it only when it answers 403 Forbidden
        reason=REGISTER_FAILURE,
        method=method if method.isalpha() else None,
        service=headers.get("profile-name") or None,
    )


def subscription(settings: EslSettings) -> str:
    """The `event plain` command: the call events, then the CUSTOM subclasses (last)."""
    command = "event plain " + " ".join(EVENTS)
    if settings.auth_failures:
        command += " CUSTOM " + REGISTER_FAILURE
    return command


def snapshot_from_calls(body: str, at: float | None = None) -> LiveEvent:
    """A `snapshot` from the body of `api show calls as json`.

    The switch answers `{"row_count":N,"rows":[...]}` (every value a string), and with no call
    `{"row_count": 0}` without `rows`. Raises ValueError for anything else (`-ERR ...`).
    """
    try:
        doc = json.loads(body)
    except ValueError:
        raise ValueError(f"`show calls as json` answered {body.strip()[:120]!r}") from None
    if not isinstance(doc, dict) or "row_count" not in doc:
        raise ValueError(f"`show calls as json` answered {body.strip()[:120]!r}")
    calls: list[dict[str, Any]] = []
    for row in doc.get("rows") or []:
        if not isinstance(row, dict) or not row.get("uuid"):
            continue
        call: dict[str, Any] = {"call_id": row.get("call_uuid") or row["uuid"]}
        for key, name in (
            ("caller", "cid_num"),
            ("caller_name", "cid_name"),
            ("callee", "dest"),
            ("accountcode", "accountcode"),
            ("src_ip", "ip_addr"),
            ("read_codec", "read_codec"),
            ("write_codec", "write_codec"),
        ):
            value = row.get(name)
            if isinstance(value, str) and value:
                call[key] = value
        direction = str(row.get("direction") or "").lower()
        if direction in ("inbound", "outbound"):
            call["direction"] = direction
        created = _int(row.get("created_epoch"))
        if created:
            call["start"] = float(created)
        state = str(row.get("callstate") or "").upper()
        call["state"] = "answered" if state in _ANSWERED_STATES else "ringing"
        calls.append(call)
    return LiveEvent(kind="snapshot", at=at if at is not None else time.time(), calls=tuple(calls))


# --- the greenswitch thread ---------------------------------------------------------------


class _Session:
    """One connection attempt and its life, run inside the ESL thread (gevent)."""

    def __init__(
        self,
        settings: EslSettings,
        emit: Callable[[LiveEvent | AuthFailure], None],
        stopping: threading.Event,
        resync: threading.Event,
    ) -> None:
        self.settings = settings
        self.emit = emit
        self.stopping = stopping
        self.resync = resync

    def run(self) -> None:
        """Connect, subscribe, snapshot, then wait; returns when the connection is lost."""
        import gevent
        import greenswitch

        s = self.settings
        conn = greenswitch.InboundESL(s.host, s.port, s.password, timeout=s.connect_timeout_s)
        lost = threading.Event()

        def on_event(event: Any) -> None:
            live = event_to_live(event.headers)
            if live is not None:
                self.emit(live)

        def on_register_failure(event: Any) -> None:
            failure = register_failure_to_auth(event.headers)
            if failure is not None:
                self.emit(failure)

        try:
            try:
                with gevent.Timeout(s.connect_timeout_s + s.command_timeout_s):
                    conn.connect()
            except ValueError as exc:  # greenswitch: 'Invalid password.'
                raise EslAuthError(str(exc)) from None
            except greenswitch.esl.NotConnectedError as exc:
                if "Server closed connection" in str(exc):  # text/rude-rejection, or EOF
                    raise ConnectionError(
                        "the switch closed the connection before asking for the password "
                        "(its apply-inbound-acl refuses this address?)"
                    ) from None
                raise
            except gevent.Timeout:
                raise ConnectionError(
                    f"no auth/request within {s.connect_timeout_s + s.command_timeout_s:g} s"
                ) from None
            for name in EVENTS[:-1]:
                conn.register_handle(name, on_event)
            # greenswitch dispatches CUSTOM events by their Event-Subclass.
            conn.register_handle(REGISTER_FAILURE, on_register_failure)
            conn.register_handle("DISCONNECT", lambda _e: lost.set())
            reply = self._send(conn, subscription(s))
            if not reply.startswith("+OK"):
                raise ConnectionError(f"event subscription refused: {reply}")
            log.info("esl_connected", host=s.host, port=s.port)
            next_snapshot = 0.0
            while not self.stopping.is_set():
                if lost.is_set() or not conn.connected:
                    raise ConnectionError("the switch closed the Event Socket")
                now = time.monotonic()
                if now >= next_snapshot or self.resync.is_set():
                    self.resync.clear()
                    body = self._send(conn, "api show calls as json", api=True)
                    self.emit(snapshot_from_calls(body))
                    next_snapshot = now + s.snapshot_s
                gevent.sleep(0.05)
        finally:
            self._close(conn)

    def _send(self, conn: Any, command: str, *, api: bool = False) -> str:
        import gevent

        timeout = self.settings.command_timeout_s
        try:
            with gevent.Timeout(timeout):
                response = conn.send(command)
        except gevent.Timeout:
            what = command.split()[0]
            raise ConnectionError(f"no reply to {what!r} within {timeout} s") from None
        if api:
            return str(getattr(response, "data", ""))
        return str(response.headers.get("Reply-Text", ""))

    @staticmethod
    def _close(conn: Any) -> None:
        import gevent

        conn._run = False
        conn.connected = False
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.close()
        greenlets = [
            g
            for g in (conn._receive_events_greenlet, conn._process_events_greenlet)
            if g is not None
        ]
        with contextlib.suppress(Exception):
            gevent.killall(greenlets, timeout=2)


class EslLive:
    """Live events of one switch; see the module doc."""

    def __init__(self, source: str, settings: EslSettings) -> None:
        self.source = source
        self.settings = settings
        self.stats = {"connects": 0, "failures": 0, "auth_failures": 0, "dropped": 0}
        self.last_error: str | None = None

    def _thread_main(
        self,
        emit: Callable[[LiveEvent | AuthFailure], None],
        stopping: threading.Event,
        resync: threading.Event,
    ) -> None:
        s = self.settings
        failures = 0
        while not stopping.is_set():
            session = _Session(s, emit, stopping, resync)
            started = time.monotonic()
            try:
                self.stats["connects"] += 1
                session.run()
                return
            except EslAuthError:
                self.stats["auth_failures"] += 1
                self.last_error = "wrong password"
                log.error(
                    "esl_auth_failed",
                    source=self.source,
                    host=s.host,
                    port=s.port,
                    error="the switch refused the Event Socket password (-ERR invalid)",
                    hint="set esl.password to event_socket.conf.xml's password",
                    retry_in_s=s.backoff_max_s,
                )
                delay = s.backoff_max_s
            except Exception as exc:
                self.stats["failures"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if time.monotonic() - started > s.backoff_max_s:
                    failures = 0
                failures += 1
                cap = min(s.backoff_max_s, 0.5 * 2 ** min(failures, 20))
                delay = random.uniform(cap / 2, cap)
                log.warning(
                    "esl_disconnected",
                    source=self.source,
                    host=s.host,
                    port=s.port,
                    error=self.last_error,
                    retry_in_s=round(delay, 2),
                )
            stopping.wait(delay)

    async def events(self) -> AsyncGenerator[LiveEvent | AuthFailure, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[LiveEvent | AuthFailure] = asyncio.Queue(QUEUE_MAX)
        stopping = threading.Event()
        resync = threading.Event()

        def put(event: LiveEvent | AuthFailure) -> None:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self.stats["dropped"] += 1
                if isinstance(event, LiveEvent):
                    resync.set()  # a snapshot will put the state right

        def emit(event: LiveEvent | AuthFailure) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed while stopping
                loop.call_soon_threadsafe(put, event)

        thread = threading.Thread(
            target=self._thread_main,
            args=(emit, stopping, resync),
            name=f"esl-{self.source}",
            daemon=True,
        )
        thread.start()
        try:
            while True:
                yield await queue.get()
        finally:
            stopping.set()
            await asyncio.to_thread(thread.join, 10)

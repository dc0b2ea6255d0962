"""Helpers for the freeswitch plugin tests: CDR lines as the switch writes them, a reader that
drives `read()`, and an Event Socket peer speaking the real wire protocol over TCP."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid as uuidlib
from collections.abc import AsyncGenerator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from cdrstats_agent.model import CDR
from cdrstats_agent.plugin import ReadResult, Rejected
from cdrstats_csv.presets import FREESWITCH_DEFAULT, FREESWITCH_EXAMPLE
from cdrstats_csv.records import Template
from cdrstats_freeswitch.plugin import FreeswitchPlugin, FreeswitchSource

REPO = Path(__file__).resolve().parents[3]
REFERENCE = (REPO / "../shared/reference/freeswitch").resolve()
PARIS = ZoneInfo("Europe/Paris")


def make_source(options: Mapping[str, Any], name: str = "fs") -> FreeswitchSource:
    table = dict(options)
    if table.get("store") in ("csv", "sqlite", "pg"):
        table.setdefault("interval", 0.005)
    return FreeswitchPlugin().create_source(name, table)


# --- CDRs as the switch writes them -------------------------------------------------------


def call_variables(
    n: int, *, answered: bool = True, zone: ZoneInfo = PARIS, base: datetime | None = None
) -> dict[str, str]:
    """The variables of call number `n` (deterministic), as mod_cdr_* would substitute them.

    Calls start at `base` (default 2026-03-01 10:00 local) plus `n` minutes."""
    first = base if base else datetime(2026, 3, 1, 10, 0, 0, tzinfo=zone)
    # Instants computed in UTC, then written as the switch's wall clock (which may jump).
    start = (first.astimezone(UTC) + timedelta(minutes=n)).astimezone(zone)
    ring = 3 + n % 5
    talk = (30 + n % 300) if answered else 0
    at = start.astimezone(UTC)
    answer = (at + timedelta(seconds=ring)).astimezone(zone) if answered else None
    end = (at + timedelta(seconds=ring + talk)).astimezone(zone)
    fmt = "%Y-%m-%d %H:%M:%S"
    return {
        "caller_id_name": f"Caller {n}",
        "caller_id_number": f"10{n % 100:02d}",
        "destination_number": f"0145{n:06d}",
        "context": "default",
        "start_stamp": start.strftime(fmt),
        "answer_stamp": answer.strftime(fmt) if answer else "",
        "end_stamp": end.strftime(fmt),
        "start_epoch": str(int(start.timestamp())),
        "answer_epoch": str(int(answer.timestamp())) if answer else "0",
        "end_epoch": str(int(end.timestamp())),
        "duration": str(ring + talk),
        "billsec": str(talk),
        "hangup_cause": "NORMAL_CLEARING" if answered else "NO_ANSWER",
        "hangup_cause_q850": "16" if answered else "19",
        "uuid": str(uuidlib.UUID(int=n + 1)),
        "bleg_uuid": str(uuidlib.UUID(int=(n + 1) << 64)) if answered else "",
        "accountcode": f"acct{n % 3}",
        "read_codec": "PCMA",
        "write_codec": "PCMA",
    }


def render(template: str, variables: Mapping[str, str]) -> str:
    """One line as mod_cdr_csv writes it: variables substituted raw, no escaping."""
    parsed = Template.parse(template)
    parts = [parsed.literals[0]]
    for name, literal in zip(parsed.names, parsed.literals[1:], strict=True):
        parts.append(variables.get(name, ""))
        parts.append(literal)
    return "".join(parts)


TEMPLATES = {"example": FREESWITCH_EXAMPLE, "default": FREESWITCH_DEFAULT}


def append_lines(path: Path, lines: list[str]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")


# --- driving read() -----------------------------------------------------------------------


class Reader:
    """A running `read()`; `take(n)` returns results until `n` CDRs (plus rejects) arrived."""

    def __init__(self, source: FreeswitchSource, checkpoint: str | None = None) -> None:
        self.source = source
        self.agen: AsyncGenerator[ReadResult, None] = source.read(checkpoint)
        self.pending: asyncio.Future[ReadResult] | None = None
        self.cdrs: list[CDR] = []
        self.rejected: list[Rejected] = []
        self.checkpoint = checkpoint

    async def _next(self, wait_s: float) -> ReadResult | None:
        if self.pending is None:
            self.pending = asyncio.ensure_future(anext(self.agen))
        done, _ = await asyncio.wait({self.pending}, timeout=wait_s)
        if not done:
            return None
        result = self.pending.result()
        self.pending = None
        self.cdrs.extend(result.cdrs)
        self.rejected.extend(result.rejected)
        self.checkpoint = result.checkpoint
        return result

    async def take(self, count: int, wait_s: float = 15.0) -> list[CDR]:
        """Results until `count` more CDRs+rejects were read; fails after `wait_s`."""
        target = len(self.cdrs) + len(self.rejected) + count
        deadline = time.monotonic() + wait_s
        while len(self.cdrs) + len(self.rejected) < target:
            left = deadline - time.monotonic()
            if left <= 0 or await self._next(left) is None:
                raise AssertionError(
                    f"read() gave {len(self.cdrs) + len(self.rejected)} records, "
                    f"waited for {target}"
                )
        return self.cdrs

    async def quiet(self, wait: float = 0.3) -> None:
        """Assert that nothing more (no CDR, no reject) comes within `wait` seconds."""
        before = len(self.cdrs) + len(self.rejected)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            if await self._next(left) is None:
                break
        extra = self.cdrs[before:] if len(self.cdrs) + len(self.rejected) > before else []
        assert len(self.cdrs) + len(self.rejected) == before, (
            f"unexpected records: {[c.key for c in extra]} {self.rejected[-3:]}"
        )

    async def close(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            with contextlib.suppress(BaseException):
                await self.pending
        await self.agen.aclose()
        await self.source.close()


# --- an Event Socket peer -----------------------------------------------------------------


def plain_event(headers: Mapping[str, str]) -> bytes:
    """A `text/event-plain` message: URL-encoded `Key: value` lines, framed by Content-Length."""
    body = "".join(f"{k}: {quote(v, safe='')}\n" for k, v in headers.items()) + "\n"
    data = body.encode()
    return f"Content-Length: {len(data)}\nContent-Type: text/event-plain\n\n".encode() + data


def parse_plain(text: str) -> dict[str, str]:
    """Headers of a recorded `event plain` body (values URL-encoded, as on the wire)."""
    from urllib.parse import unquote

    headers: dict[str, str] = {}
    for line in text.splitlines():
        if ": " in line:
            key, value = line.split(": ", 1)
            headers.setdefault(key.strip(), unquote(value.strip()))
    return headers


DISCONNECT = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"


class EslPeer:
    """A FreeSWITCH Event Socket (inbound mode) on a loopback port, driven by the test.

    It speaks the wire protocol: `auth/request` on connect, `command/reply` to `auth` and
    `event`, `api/response` with Content-Length to `api`, `text/event-plain` events, and
    `text/disconnect-notice` when it refuses a password or is stopped. `calls` is what
    `show calls as json` reports; `mute` makes it stop answering (but keep the socket).
    """

    def __init__(self, password: str = "ClueCon", port: int = 0, rude: bool = False) -> None:
        self.password = password
        self.rude = rude
        """Refuse every connection as an `apply-inbound-acl` does (`text/rude-rejection`)."""
        self.calls: list[dict[str, str]] = []
        self.mute = threading.Event()
        self.commands: list[str] = []
        self.auth_attempts = 0
        self.connections = 0
        self._clients: list[socket.socket] = []
        self._subscribed: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    # -- control from the test --

    def subscribed(self) -> int:
        with self._lock:
            return len(self._subscribed)

    def send_event(self, headers: Mapping[str, str]) -> None:
        data = plain_event(headers)
        with self._lock:
            for client in list(self._subscribed):
                with contextlib.suppress(OSError):
                    client.sendall(data)

    def drop_clients(self) -> None:
        """Close every connection (like a switch restart) after a disconnect notice."""
        with self._lock:
            clients, self._clients = self._clients, []
            self._subscribed.clear()
        for client in clients:
            with contextlib.suppress(OSError):
                client.sendall(
                    b"Content-Type: text/disconnect-notice\nContent-Length: "
                    + str(len(DISCONNECT)).encode()
                    + b"\n\n"
                    + DISCONNECT
                )
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()

    def stop(self) -> None:
        self._stop.set()
        self.drop_clients()
        self._server.close()
        self._thread.join(5)

    # -- the protocol --

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._clients.append(client)
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            self._converse(client)
        finally:
            with self._lock:
                self._subscribed.discard(client)
            with contextlib.suppress(OSError):
                client.close()

    def _converse(self, client: socket.socket) -> None:
        if self.rude:
            body = b"Access Denied, go away.\n"
            with contextlib.suppress(OSError):
                client.sendall(
                    b"Content-Type: text/rude-rejection\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\n\n"
                    + body
                )
                client.shutdown(socket.SHUT_RDWR)
            return
        with contextlib.suppress(OSError):
            client.sendall(b"Content-Type: auth/request\n\n")
            buffer = b""
            authed = False
            while not self._stop.is_set():
                chunk = client.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while b"\n\n" in buffer:
                    raw, buffer = buffer.split(b"\n\n", 1)
                    command = raw.decode().strip()
                    self.commands.append(command)
                    if self.mute.is_set():
                        continue
                    if not authed:
                        if not command.startswith("auth "):
                            client.sendall(
                                b"Content-Type: command/reply\nReply-Text: -ERR command not "
                                b"found\n\n"
                            )
                            continue
                        self.auth_attempts += 1
                        if command[5:] == self.password:
                            authed = True
                            client.sendall(
                                b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"
                            )
                        else:
                            client.sendall(
                                b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n"
                                b"Content-Type: text/disconnect-notice\nContent-Length: "
                                + str(len(DISCONNECT)).encode()
                                + b"\n\n"
                                + DISCONNECT
                            )
                            client.shutdown(socket.SHUT_RDWR)
                            return
                    elif command.startswith("event plain"):
                        client.sendall(
                            b"Content-Type: command/reply\n"
                            b"Reply-Text: +OK event listener enabled plain\n\n"
                        )
                        with self._lock:
                            self._subscribed.add(client)
                    elif command == "api show calls as json":
                        body = self._calls_json().encode()
                        client.sendall(
                            b"Content-Type: api/response\nContent-Length: "
                            + str(len(body)).encode()
                            + b"\n\n"
                            + body
                        )
                    elif command == "exit":
                        client.sendall(b"Content-Type: command/reply\nReply-Text: +OK bye\n\n")
                        return
                    else:
                        client.sendall(
                            b"Content-Type: command/reply\nReply-Text: -ERR command not found\n\n"
                        )

    def _calls_json(self) -> str:
        import json

        if not self.calls:
            return '{"row_count": 0}'
        return json.dumps({"row_count": len(self.calls), "rows": self.calls})


async def wait_until(condition: Callable[[], bool], wait_s: float, what: str) -> None:
    deadline = time.monotonic() + wait_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {wait_s} s waiting for {what}")
        await asyncio.sleep(0.01)

"""A protocol-faithful Asterisk Manager Interface peer on a real TCP socket, for tests.

It speaks what Asterisk's manager.c speaks: the banner line `Asterisk Call Manager/<v>`,
messages of `Key: Value` lines ended by `\\r\\n` with a blank line after each message,
`Action: Login` answered `Response: Success` / `Response: Error` + `Message: Authentication
failed` (then the connection is closed), `Ping` -> `Ping: Pong`, `CoreShowChannels` as an
event list (`Response: Success` + `EventList: start`, one `CoreShowChannel` per channel with
the ActionID, then `CoreShowChannelsComplete` with `EventList: Complete` and `ListItems`),
`Logoff` -> `Response: Goodbye`, and unsolicited events to logged-in sessions.

Test controls: `channels` (what CoreShowChannels lists), `mute` (read but never answer, the
socket stays open), `restart()` (drop every session, stop listening, listen again on the
same port), `send_event()`, `play()` (a recorded stream's events, see `recorded_events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

CRLF = "\r\n"


def frame(fields: Iterable[tuple[str, str]]) -> bytes:
    return ("".join(f"{k}: {v}{CRLF}" for k, v in fields) + CRLF).encode()


def parse_block(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        if ": " in line:
            key, value = line.split(": ", 1)
            out.append((key, value))
        elif line.endswith(":"):
            out.append((line[:-1], ""))
    return out


def recorded_events(path: Path) -> list[list[tuple[str, str]]]:
    """The events of a recorded AMI stream (blank-line separated messages; the actions the
    client sent and the responses to them are left out)."""
    blocks = path.read_text().replace("\r\n", "\n").split("\n\n")
    events = []
    for block in blocks:
        fields = parse_block(block)
        if fields and fields[0][0] == "Event":
            events.append(fields)
    return events


class AmiPeer:
    def __init__(self, username: str = "cdrstats", secret: str = "s3cret") -> None:
        self.username = username
        self.secret = secret
        self.version = "8.0.0"
        self.channels: list[dict[str, str]] = []
        self.mute = False
        self.port = 0
        self.logins = 0
        self.failed_logins = 0
        self.actions: list[dict[str, str]] = []
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._sessions):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self._sessions.clear()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def send_event(self, fields: Iterable[tuple[str, str]] | Mapping[str, str]) -> None:
        items = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
        data = frame(items)
        for writer in list(self._sessions):
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async def play(self, events: Iterable[Iterable[tuple[str, str]]]) -> None:
        for event in events:
            await self.send_event(event)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            writer.write(f"Asterisk Call Manager/{self.version}{CRLF}".encode())
            await writer.drain()
            logged_in = False
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                action = dict(parse_block(raw.decode()))
                self.actions.append(action)
                if self.mute:
                    continue
                name = action.get("Action", "").lower()
                aid = [("ActionID", action["ActionID"])] if "ActionID" in action else []
                if name == "login":
                    if action.get("Username") == self.username and (
                        action.get("Secret") == self.secret
                    ):
                        logged_in = True
                        self.logins += 1
                        self._sessions.add(writer)
                        writer.write(frame([("Response", "Success"), *aid,
                                            ("Message", "Authentication accepted")]))  # fmt: skip
                        writer.write(frame([("Event", "FullyBooted"),
                                            ("Privilege", "system,all"),
                                            ("Status", "Fully Booted")]))  # fmt: skip
                    else:
                        self.failed_logins += 1
                        writer.write(frame([("Response", "Error"), *aid,
                                            ("Message", "Authentication failed")]))  # fmt: skip
                        await writer.drain()
                        return
                elif not logged_in:
                    writer.write(frame([("Response", "Error"), *aid,
                                        ("Message", "Permission denied")]))  # fmt: skip
                elif name == "ping":
                    writer.write(frame([("Response", "Success"), *aid, ("Ping", "Pong"),
                                        ("Timestamp", f"{time.time():.6f}")]))  # fmt: skip
                elif name == "coreshowchannels":
                    writer.write(frame([("Response", "Success"), *aid, ("EventList", "start"),
                                        ("Message", "Channels will follow")]))  # fmt: skip
                    for channel in self.channels:
                        writer.write(frame([("Event", "CoreShowChannel"), *aid,
                                            *channel.items()]))  # fmt: skip
                    writer.write(frame([("Event", "CoreShowChannelsComplete"), *aid,
                                        ("EventList", "Complete"),
                                        ("ListItems", str(len(self.channels)))]))  # fmt: skip
                elif name == "logoff":
                    writer.write(frame([("Response", "Goodbye"), *aid,
                                        ("Message", "Thanks for all the fish.")]))  # fmt: skip
                    await writer.drain()
                    return
                else:
                    writer.write(frame([("Response", "Error"), *aid,
                                        ("Message", "Invalid/unknown command")]))  # fmt: skip
                await writer.drain()
        finally:
            self._sessions.discard(writer)
            writer.close()
            self._tasks.discard(task)


def channel(
    uniqueid: str,
    name: str,
    *,
    linkedid: str | None = None,
    state: str = "6",
    caller: str = "1000",
    exten: str = "0612345678",
    duration: str = "00:01:05",
) -> dict[str, str]:
    """A CoreShowChannel event's fields (Asterisk 13+ names)."""
    states = {"4": "Ring", "5": "Ringing", "6": "Up"}
    return {
        "Channel": name,
        "ChannelState": state,
        "ChannelStateDesc": states.get(state, "Down"),
        "CallerIDNum": caller,
        "CallerIDName": "Alice",
        "ConnectedLineNum": "",
        "ConnectedLineName": "",
        "Language": "en",
        "AccountCode": "acme",
        "Context": "from-internal",
        "Exten": exten,
        "Priority": "1",
        "Uniqueid": uniqueid,
        "Linkedid": linkedid or uniqueid,
        "Application": "Dial",
        "ApplicationData": "PJSIP/carrier",
        "Duration": duration,
        "BridgeId": "",
    }

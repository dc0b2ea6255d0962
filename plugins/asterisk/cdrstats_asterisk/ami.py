"""Live calls over the Asterisk Manager Interface, with panoramisk.

panoramisk (1.4) parses the protocol (banner, `\\r\\n\\r\\n`-framed messages, event lists
`EventList: start` ... `*Complete`) and matches responses to actions. Its connection
management does not suit an agent, so `_Manager` changes two things: a failed login is
reported (panoramisk only sets `authenticated = False`), and a lost connection is reported
to us instead of being reconnected behind our back every 2 s without backoff. `AmiLive`
owns the loop: connect, log in, `CoreShowChannels` snapshot, then events; a `Ping` every
`ping_interval` that gets no answer within `reply_timeout` drops the connection (a peer that
stops answering keeps its TCP socket open); reconnection with exponential backoff.

Security events of SIP services (`InvalidPassword`, `ChallengeResponseFailed`,
`InvalidAccountID`, `FailedACL`: security.py) become `AuthFailure`s, for scanner detection,
unless `auth_failures = false`. The manager user needs `read = security` for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from cdrstats_agent.errors import SourceError
from cdrstats_agent.logs import get_logger
from cdrstats_agent.options import Options
from cdrstats_agent.plugin import AuthFailure, LiveEvent
from panoramisk import Manager

from .livestate import LiveState
from .security import security_event_to_failure

log = get_logger("cdrstats.plugins.asterisk.ami")
_PANORAMISK_LOG = logging.getLogger("cdrstats.plugins.asterisk.panoramisk")
_PANORAMISK_LOG.setLevel(logging.WARNING)  # its info lines ("Sending awaiting actions") are noise


class AmiAuthError(SourceError):
    """The manager refused the login (wrong username or secret, or a denied address)."""


class AmiTimeout(Exception):
    """The manager did not answer an action in time."""


@dataclass(frozen=True)
class AmiConfig:
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = ""
    secret: str = ""
    snapshot_interval: float = 30.0
    ping_interval: float = 10.0
    reply_timeout: float = 10.0
    connect_timeout: float = 10.0
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    auth_failures: bool = True
    """Report failed SIP authentications (AMI security events) for scanner detection."""
    trunks: frozenset[str] = frozenset()

    @classmethod
    def from_options(cls, opts: Options, trunks: frozenset[str] = frozenset()) -> AmiConfig:
        config = cls(
            host=opts.text("host", "127.0.0.1"),
            port=opts.integer("port", 5038, minimum=1),
            username=opts.text("username"),
            secret=opts.text("secret"),
            snapshot_interval=opts.number("snapshot_interval", 30.0, minimum=0.05),
            ping_interval=opts.number("ping_interval", 10.0, minimum=0.05),
            reply_timeout=opts.number("reply_timeout", 10.0, minimum=0.05),
            connect_timeout=opts.number("connect_timeout", 10.0, minimum=0.05),
            backoff_min=opts.number("backoff_min", 1.0, minimum=0.01),
            backoff_max=opts.number("backoff_max", 60.0, minimum=0.01),
            auth_failures=opts.flag("auth_failures", True),
            trunks=trunks,
        )
        opts.finish()
        if config.port > 65535:
            raise opts.error("port", f"must be at most 65535, got {config.port}")
        if not config.username:
            raise opts.error("username", "must not be empty")
        return config

    def where(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"


class _Manager(Manager):  # type: ignore[misc]
    """panoramisk's Manager, reporting connection, login and loss instead of retrying."""

    def __init__(self, config: AmiConfig, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(
            host=config.host,
            port=config.port,
            username=config.username,
            secret=config.secret,
            events="on",
            loop=loop,
            ping_delay=10**9,  # we ping ourselves, with a timeout
            reconnect_timeout=10**9,
            log=_PANORAMISK_LOG,
        )
        self.connected: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[str] = loop.create_future()
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.register_event("*", self._queue_event)

    def _queue_event(self, _manager: Any, message: Any) -> None:
        self.events.put_nowait(message)

    abandoned = False
    """Set by `abandon()`: a connection that completes afterwards is closed at once."""

    def abandon(self) -> None:
        self.abandoned = True
        self.close()

    def connection_made(self, f: asyncio.Future[Any]) -> None:
        if f.cancelled():
            return
        exc = f.exception()
        if exc is not None:
            if not self.connected.done():
                self.connected.set_exception(exc)
            return
        if self.abandoned:  # we gave up waiting: do not log in late
            f.result()[0].close()
            return
        super().connection_made(f)
        if not self.connected.done():
            self.connected.set_result(None)

    def connection_lost(self, exc: Any) -> None:
        pinger = getattr(self, "pinger", None)
        if pinger is not None:
            pinger.cancel()
            self.pinger = None
        if not self.lost.done():
            reason = (
                "the manager sent Shutdown"
                if exc is not None and not isinstance(exc, BaseException)
                else f"connection closed ({exc or 'by the peer'})"
            )
            self.lost.set_result(reason)


class AmiLive:
    """One AMI client producing LiveEvents for a source; reconnects until cancelled."""

    def __init__(self, source: str, config: AmiConfig) -> None:
        self.source = source
        self.config = config
        self.state = LiveState(config.trunks)
        self.connected = False
        self.last_error = ""
        self.sessions = 0
        """Logins that succeeded (a reconnection counts again)."""

    async def check(self) -> None:
        """Connect and log in once; SourceError with the reason if that fails."""
        manager = await self._open()
        manager.close()

    async def _open(self) -> _Manager:
        config = self.config
        manager = _Manager(config, asyncio.get_running_loop())
        try:
            manager.connect()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
            # that arrives as the awaited future completes (the live task would never stop).
            async with asyncio.timeout(config.connect_timeout):
                await asyncio.shield(manager.connected)
            login = manager.authenticated_future
            if login is None:
                raise SourceError(f"AMI {config.where()}: no login was sent")
            reply = await self._reply(login, "Login")
        except TimeoutError:
            manager.abandon()
            raise SourceError(
                f"AMI {config.where()}: no answer within {config.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            manager.abandon()
            raise SourceError(
                f"AMI {config.where()}: cannot connect: {exc.strerror or exc}"
            ) from None
        except AmiTimeout as exc:
            manager.abandon()
            raise SourceError(f"AMI {config.where()}: {exc}") from None
        except BaseException:
            manager.abandon()
            raise
        if not reply.success:
            manager.close()
            message = str(reply.get("Message", "")) or str(reply.get("Response", "Error"))
            raise AmiAuthError(
                f"AMI {config.where()}: login refused: {message} "
                "(check username/secret/permit in manager.conf)"
            )
        return manager

    async def _reply(self, future: Any, what: str) -> Any:
        try:
            async with asyncio.timeout(self.config.reply_timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            raise AmiTimeout(
                f"no answer to {what} within {self.config.reply_timeout:g} s"
            ) from None

    async def events(self) -> AsyncIterator[LiveEvent | AuthFailure]:
        """Live events until cancelled: a snapshot after each login, then call events (and
        failed SIP authentications)."""
        config = self.config
        backoff = config.backoff_min
        while True:
            try:
                manager = await self._open()
            except AmiAuthError as exc:
                self.last_error = str(exc)
                log.error(
                    "ami_login_failed",
                    source=self.source,
                    error=str(exc),
                    retry_s=config.backoff_max,
                )
                await asyncio.sleep(config.backoff_max)
                continue
            except SourceError as exc:
                self.last_error = str(exc)
                log.warning(
                    "ami_unreachable", source=self.source, error=str(exc), retry_s=round(backoff, 3)
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, config.backoff_max)
                continue
            self.sessions += 1
            self.connected = True
            log.info(
                "ami_connected",
                source=self.source,
                manager=config.where(),
                version=getattr(manager.protocol, "version", None) or "unknown",
            )
            try:
                async for event in self._session(manager):
                    backoff = config.backoff_min
                    yield event
            except (AmiTimeout, ConnectionError, OSError) as exc:
                self.last_error = f"AMI {config.where()}: {exc}"
                log.warning(
                    "ami_disconnected",
                    source=self.source,
                    error=str(exc),
                    retry_s=round(backoff, 3),
                )
            except Exception as exc:  # a surprise from the peer must not end live calls
                self.last_error = f"AMI {config.where()}: {type(exc).__name__}: {exc}"
                log.error("ami_failed", exc_info=True, source=self.source, retry_s=backoff)
            finally:
                self.connected = False
                manager.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, config.backoff_max)

    async def _snapshot(self, manager: _Manager) -> LiveEvent:
        at = time.time()
        reply = await self._reply(
            manager.send_action({"Action": "CoreShowChannels"}), "CoreShowChannels"
        )
        listing = reply if isinstance(reply, list) else [reply]
        if listing and not listing[0].success:
            raise ConnectionError(
                f"CoreShowChannels refused: {listing[0].get('Message', '')} "
                "(the manager user needs read=system or reporting)"
            )
        return self.state.snapshot([dict(m) for m in listing[1:]], at)

    async def _session(self, manager: _Manager) -> AsyncIterator[LiveEvent | AuthFailure]:
        config = self.config
        loop = asyncio.get_running_loop()
        yield await self._snapshot(manager)
        next_snapshot = loop.time() + config.snapshot_interval
        next_ping = loop.time() + config.ping_interval
        while True:
            if manager.lost.done():
                raise ConnectionError(manager.lost.result())
            now = loop.time()
            if now >= next_snapshot:
                yield await self._snapshot(manager)
                next_snapshot = loop.time() + config.snapshot_interval
                next_ping = loop.time() + config.ping_interval
                continue
            if now >= next_ping:
                await self._reply(manager.send_action({"Action": "Ping"}), "Ping")
                next_ping = loop.time() + config.ping_interval
                continue
            getter = asyncio.ensure_future(manager.events.get())
            try:
                done, _ = await asyncio.wait(
                    {getter, manager.lost},
                    timeout=max(0.0, min(next_snapshot, next_ping) - now),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                if not getter.done():
                    getter.cancel()
            if getter not in done or getter.cancelled():
                continue
            message: Mapping[str, Any] = dict(getter.result())
            if config.auth_failures:
                failure = security_event_to_failure(message)
                if failure is not None:
                    yield failure
                    continue
            for event in self.state.apply(message):
                yield event

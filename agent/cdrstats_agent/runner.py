"""The runner: sources feeding the spool, and the uplink, in one asyncio loop.

    await run_agent(config)                               # what `cdrstats-agent run` does
    await run_agent(config, sources=[MySource()], stop=stop_event)   # tests: in-test sources

Each source runs in its own task: `read(checkpoint from the spool)`, and each `ReadResult` is
committed (CDRs + checkpoint in one transaction) before the next is asked for. A source that
raises, or whose `read` ends, is logged and started again with backoff from its last committed
checkpoint. When the spool is full the sources are not read (backpressure: the switch's own
store is the buffer). Stopping (SIGTERM/SIGINT, or `stop` set) cancels the tasks; a commit in
progress completes first, so nothing is lost and nothing is read twice.

Sources that have `live()` also stream their calls in progress (`live.py`): one more task per
such source, plus the live sender, all independent of the CDR tasks (a failing `live()` is
restarted with backoff and never stops the source's CDR reading). `[live] enabled = false`
turns this off.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from nacl.signing import SigningKey

from . import wire
from .commands import Allowlist, CommandChannel, Executor, host_addresses
from .config import Config
from .errors import IdentityError
from .firewall import make_backend
from .identity import Identity, ensure_state_dir, load_agent
from .live import LiveChannel
from .logs import get_logger
from .plugin import Source, supports_live
from .spool import SPOOL_FILE, Spool
from .uplink import Uplink

log = get_logger("cdrstats.agent.runner")
LOCK_FILE = "agent.lock"
RESTART_BASE_S = 1.0


class AgentError(Exception):
    """The agent cannot start (state directory locked, not enrolled, no collector URL)."""


class StateLock:
    """An exclusive lock on the state directory: one running agent per spool."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AgentError(
                f"{self.path.parent}: another cdrstats-agent is running with this state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Agent:
    """One agent: its spool, its sources and its uplink (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        sources: Sequence[Source] = (),
        identity: Identity | None = None,
        key: SigningKey | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.sources: list[Source] = [sc.source for sc in config.sources] + list(sources)
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise AgentError(f"two sources are named {dupes[0]!r}")
        self.identity = identity
        self.key = key
        self._transport = transport
        self.spool: Spool | None = None
        self.uplink: Uplink | None = None
        self.live: LiveChannel | None = None
        """The live channel, when a source has `live()` and `[live]` is enabled."""
        self.commands: CommandChannel | None = None
        """The command channel (remote actions), unless `[actions] enabled = false`."""
        self._stop = asyncio.Event()
        self.started = asyncio.Event()
        """Set once the spool is open and the tasks run (tests wait on it)."""

    def stop(self) -> None:
        """Ask the agent to stop (safe from a signal handler)."""
        self._stop.set()

    def _resolve(self) -> tuple[Identity, SigningKey, list[str]]:
        identity, key = self.identity, self.key
        if identity is None or key is None:
            loaded, loaded_key = load_agent(self.config.agent.state_dir)
            identity, key = identity or loaded, key or loaded_key
        urls = list(self.config.collector.urls) or [identity.url]
        return identity, key, urls

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` is set (or `Agent.stop()` is called), then shut down cleanly."""
        settings = self.config.agent
        try:
            identity, key, urls = self._resolve()
        except IdentityError as exc:
            raise AgentError(str(exc)) from None
        ensure_state_dir(settings.state_dir)
        lock = StateLock(settings.state_dir)
        lock.acquire()
        tasks: list[asyncio.Task[None]] = []
        try:
            spool = await Spool.open(
                settings.state_dir / SPOOL_FILE,
                max_bytes=settings.spool_max_bytes,
                sync=settings.spool_sync,
            )
            self.spool = spool
            c = self.config.collector
            self.uplink = Uplink(
                spool,
                urls=urls,
                agent_id=identity.agent_id,
                key=key,
                batch_max_cdrs=c.batch_max_cdrs,
                batch_max_age_s=c.batch_max_age_s,
                timeout_s=c.timeout_s,
                backoff_max_s=c.backoff_max_s,
                transport=self._transport,
            )
            live_sources = [s for s in self.sources if supports_live(s)]
            if live_sources and self.config.live.enabled:
                self.live = LiveChannel(
                    self.config.live,
                    urls=urls,
                    agent_id=identity.agent_id,
                    key=key,
                    state_dir=settings.state_dir,
                    timeout_s=c.timeout_s,
                    backoff_max_s=c.backoff_max_s,
                    transport=self._transport,
                )
            log.info(
                "agent_started",
                agent=identity.agent_id,
                sources=",".join(s.name for s in self.sources) or "-",
                live=",".join(s.name for s in live_sources) if self.live else "-",
                collector=",".join(urls),
                state_dir=str(settings.state_dir),
            )
            for source in self.sources:
                tasks.append(asyncio.create_task(self._run_source(source), name=source.name))
            tasks.append(asyncio.create_task(self._run_uplink(self.uplink), name="uplink"))
            if self.live is not None:
                live = self.live
                for source in live_sources:
                    tasks.append(
                        asyncio.create_task(live.run_source(source), name=f"live:{source.name}")
                    )
                tasks.append(asyncio.create_task(self._keep_running(live.run_sender), name="live"))
                tasks.append(
                    asyncio.create_task(self._keep_running(live.run_status), name="live-status")
                )
            if self.config.actions.enabled:
                try:
                    self.commands = self._command_channel(identity, key, urls)
                except (wire.WireError, ValueError) as exc:
                    # Never stop CDR collection for this: log it, run without commands.
                    log.error("commands_disabled", error=str(exc))
            if self.commands is not None:
                tasks.append(
                    asyncio.create_task(self._keep_running(self.commands.run), name="commands")
                )
            self.started.set()
            waits = [asyncio.create_task(self._stop.wait())]
            if stop is not None:
                waits.append(asyncio.create_task(stop.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            log.info("agent_stopping")
        finally:
            await self._shutdown(tasks)
            lock.release()
        log.info("agent_stopped")

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        # Sources first (their current commit completes), then the uplink, then the spool.
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.live is not None:
            await self.live.write_status(running=False)
        for source in self.sources:
            try:
                await source.close()
            except Exception as exc:
                log.warning("source_close_failed", source=source.name, error=repr(exc))
        if self.spool is not None:
            await self.spool.close()

    def _command_channel(
        self, identity: Identity, key: SigningKey, urls: list[str]
    ) -> CommandChannel:
        actions, c = self.config.actions, self.config.collector
        executor = Executor(
            actions,
            make_backend(self.config.firewall),
            self.sources,
            agent_id=identity.agent_id,
            collector_key=wire.verify_key_from_text(identity.collector_public_key),
            state_dir=self.config.agent.state_dir,
            allowlist=Allowlist(
                actions.allowlist, urls, own=lambda: host_addresses(self.config.firewall.netns)
            ),
        )
        return CommandChannel(
            executor,
            urls=urls,
            key=key,
            timeout_s=c.timeout_s,
            backoff_max_s=c.backoff_max_s,
            transport=self._transport,
        )

    def _restart_delay(self, failures: int) -> float:
        cap = min(self.config.collector.backoff_max_s, RESTART_BASE_S * 2 ** min(failures, 30))
        return random.uniform(cap / 2, cap)

    async def _run_source(self, source: Source) -> None:
        spool = self.spool
        assert spool is not None
        name = source.name
        failures = 0
        while True:
            await spool.wait_for_room()
            checkpoint = await spool.checkpoint(name)
            reader: Any = None
            started = time.monotonic()
            try:
                await source.check()
                log.info("source_reading", source=name, checkpoint=_short(checkpoint))
                reader = source.read(checkpoint)
                async for result in reader:
                    await spool.commit(name, result.cdrs, result.checkpoint, result.rejected)
                    if result.rejected:
                        first = result.rejected[0]
                        log.warning(
                            "rows_rejected",
                            source=name,
                            count=len(result.rejected),
                            where=first.where,
                            reason=first.reason,
                        )
                    failures = 0
                    if spool.full:
                        log.info("source_paused", source=name, reason="spool full")
                        await spool.wait_for_room()
                        log.info("source_resumed", source=name)
                log.warning("source_ended", source=name, after_s=round(time.monotonic() - started))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error(
                    "source_failed",
                    source=name,
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=not _is_operator_error(exc),
                )
            finally:
                if reader is not None and hasattr(reader, "aclose"):
                    with contextlib.suppress(Exception):
                        await reader.aclose()
            failures += 1
            delay = self._restart_delay(failures)
            log.info("source_restart", source=name, in_s=round(delay, 1))
            await asyncio.sleep(delay)

    async def _run_uplink(self, uplink: Uplink) -> None:
        failures = 0
        while True:
            try:
                await uplink.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.error("uplink_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
                await asyncio.sleep(self._restart_delay(failures))

    async def _keep_running(self, run: Callable[[], Awaitable[None]]) -> None:
        """Run a loop that should never end; log and restart it with backoff if it does."""
        failures = 0
        while True:
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error(
                    "task_failed",
                    task=getattr(run, "__name__", "?"),
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=True,
                )
            failures += 1
            await asyncio.sleep(self._restart_delay(failures))


def _is_operator_error(exc: Exception) -> bool:
    from .errors import SourceError

    return isinstance(exc, SourceError | OSError)


def _short(text: str | None, limit: int = 120) -> str:
    if text is None:
        return "-"
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def run_agent(
    config: Config,
    *,
    sources: Sequence[Source] = (),
    stop: asyncio.Event | None = None,
    identity: Identity | None = None,
    key: SigningKey | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    handle_signals: bool = False,
) -> None:
    """Run an agent until `stop` is set (or SIGTERM/SIGINT when `handle_signals`)."""
    agent = Agent(config, sources=sources, identity=identity, key=key, transport=transport)
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
    try:
        await agent.run(stop)
    finally:
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

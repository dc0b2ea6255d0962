"""Remote commands: long-poll the collector, verify, execute once, report (docs/actions.md).

    executor = Executor(settings, firewall, sources, agent_id=..., collector_key=..., ...)
    result = await executor.handle(delivery_id, envelope_bytes)     # no HTTP: tests use it
    channel = CommandChannel(executor, urls=..., key=..., ...)
    await channel.run()                                             # the runner's task

A delivered command goes through, in order (each refusal is a result, reported and audited):

1. already handled (its delivery id is among the recent results)?  -> the stored result is
   reported again, nothing runs twice;
2. `wire.open_command`: the collector's signature, this agent as the target, not expired, a
   seq above the last one run (replay);
3. the verb is `block_ip`/`unblock_ip` or one a source declares;
4. the arguments: `ip` parsed with `ipaddress`; `ttl` a whole number of seconds from 1 to
   `[actions] max_ttl_s` (every block expires);
5. for `block_ip`: the address is not allowlisted (loopback, unspecified, the collector's
   addresses, this host's own addresses, `[actions] allowlist`) and fewer than
   `[actions] max_blocks` blocks are active;
6. execution: through the plugin's native action when a source has one
   (`plugin.has_native_block`), else the `[firewall]` backend; `dry_run` logs and changes
   nothing.

The state (`state_dir/commands.json`, written atomically before the result is reported) keeps
the last seq run, the active blocks with their expiry, the recent results and the results not
yet acknowledged by the collector. A command redelivered after a crash is therefore not run
again; a crash between executing and writing the state re-runs it once, which block and
unblock tolerate (they are idempotent: a block renews, an unblock of an absent address is done).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from nacl.signing import SigningKey, VerifyKey

from . import wire
from .config import ActionSettings
from .firewall import Backend, FirewallError, IPAddress, parse_ip
from .logs import get_logger
from .plugin import BLOCK_ACTIONS, Source, has_native_block, native_actions
from .uplink import error_text

log = get_logger("cdrstats.agent.commands")

POLL_PATH = "/api/v1/agent/commands"
RESULT_PATH = "/api/v1/agent/commands/result"
STATE_FILE = "commands.json"
RECENT_RESULTS = 500
ADDRESS_REFRESH_S = 300.0
BACKOFF_BASE_S = 0.5
ALWAYS_ALLOWED = tuple(
    ipaddress.ip_network(n) for n in ("127.0.0.0/8", "0.0.0.0/32", "::1/128", "::/128")
)


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one delivered command, as reported to the collector."""

    id: str
    status: str  # done | failed | refused
    result: str
    seq: int | None = None
    verb: str = ""
    at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "result": self.result,
            "seq": self.seq,
            "verb": self.verb,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Result:
        return cls(
            id=str(doc["id"]),
            status=str(doc["status"]),
            result=str(doc["result"]),
            seq=None if doc.get("seq") is None else int(doc["seq"]),
            verb=str(doc.get("verb", "")),
            at=float(doc.get("at", 0.0)),
        )


class Refused(Exception):
    """The command is refused (not run); the text says why."""


class CommandState:
    """`state_dir/commands.json`: last seq run, active blocks, recent and unreported results."""

    def __init__(self, path: Path, agent_id: str = "") -> None:
        self.path = path
        self.agent_id = agent_id
        self.last_seq = 0
        self.blocks: dict[str, float] = {}
        """Address -> expiry (epoch seconds) of the blocks this agent made."""
        self.results: dict[str, Result] = {}
        self.unreported: list[str] = []

    @classmethod
    def load(cls, path: Path, agent_id: str = "") -> CommandState:
        state = cls(path, agent_id)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return state
        except (OSError, ValueError) as exc:
            # Refusing to start would stop CDR collection; starting from scratch could re-run
            # old commands, but wire.open_command still refuses anything expired.
            log.error("command_state_unreadable", path=str(path), error=str(exc))
            return state
        state.blocks = {str(k): float(v) for k, v in doc.get("blocks", {}).items()}
        if doc.get("agent_id", agent_id) != agent_id:
            # Enrolled again (a new agent id): the collector numbers its commands from 1.
            log.info("command_state_new_agent", was=str(doc.get("agent_id")), now=agent_id)
            return state
        state.last_seq = int(doc.get("last_seq", 0))
        state.blocks = {str(k): float(v) for k, v in doc.get("blocks", {}).items()}
        for item in doc.get("results", []):
            r = Result.from_json(item)
            state.results[r.id] = r
        state.unreported = [str(i) for i in doc.get("unreported", []) if i in state.results]
        return state

    def save(self) -> None:
        recent = list(self.results.values())[-RECENT_RESULTS:]
        keep = {r.id for r in recent}
        self.results = {r.id: r for r in recent}
        self.unreported = [i for i in self.unreported if i in keep]
        doc = {
            "agent_id": self.agent_id,
            "last_seq": self.last_seq,
            "blocks": self.blocks,
            "results": [r.to_json() for r in recent],
            "unreported": self.unreported,
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def active_blocks(self, now: float) -> dict[str, float]:
        return {ip: at for ip, at in self.blocks.items() if at > now}


def host_addresses(netns: str = "") -> set[IPAddress]:
    """This host's own addresses (from `ip -j addr`, run without a shell; in the network
    namespace `netns` when given, where the firewall works); empty if unknown."""
    import subprocess

    argv = ["ip", *(["-n", netns] if netns else []), "-j", "addr", "show"]
    try:
        out = subprocess.run(argv, capture_output=True, timeout=5, check=True).stdout
        found: set[IPAddress] = set()
        for link in json.loads(out):
            for info in link.get("addr_info", []):
                with contextlib.suppress(ValueError, KeyError):
                    found.add(parse_ip(str(info["local"]).split("%")[0]))
        return found
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("host_addresses_unknown", error=str(exc))
        return set()


def resolve_hosts(urls: Sequence[str]) -> set[IPAddress]:
    """The addresses the collector URLs' host names resolve to (left out when they do not)."""
    found: set[IPAddress] = set()
    for url in urls:
        host = urlsplit(url).hostname
        if not host:
            continue
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            log.warning("collector_address_unknown", host=host, error=str(exc))
            continue
        for info in infos:
            with contextlib.suppress(ValueError):
                found.add(parse_ip(str(info[4][0]).split("%")[0]))
    return found


class Allowlist:
    """Addresses that can never be blocked (see the module docstring)."""

    def __init__(
        self,
        configured: Sequence[str],
        collector_urls: Sequence[str],
        *,
        own: Callable[[], set[IPAddress]] = host_addresses,
        resolve: Callable[[Sequence[str]], set[IPAddress]] = resolve_hosts,
    ) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in configured]
        self.collector_urls = list(collector_urls)
        self._own = own
        self._resolve = resolve
        self._addresses: dict[IPAddress, str] = {}
        self._refreshed = -1e18

    def refresh(self) -> None:
        found: dict[IPAddress, str] = {}
        for ip in self._own():
            found[ip] = "an address of this host"
        for ip in self._resolve(self.collector_urls):
            found[ip] = "an address of the collector"
        self._addresses = found
        self._refreshed = time.monotonic()

    def why(self, ip: IPAddress) -> str | None:
        """Why `ip` may not be blocked, or None when it may be."""
        if time.monotonic() - self._refreshed > ADDRESS_REFRESH_S:
            self.refresh()
        if ip.is_loopback or ip.is_unspecified or any(ip in n for n in ALWAYS_ALLOWED):
            return "a loopback or unspecified address"
        if ip.is_multicast:
            return "a multicast address"
        if ip in self._addresses:
            return self._addresses[ip]
        for net in self.networks:
            if ip.version == net.version and ip in net:
                return f"in the allowlist ({net})"
        return None


class Executor:
    """Verifies and runs delivered commands, keeping `CommandState` (no HTTP here)."""

    def __init__(
        self,
        settings: ActionSettings,
        firewall: Backend,
        sources: Sequence[Source],
        *,
        agent_id: str,
        collector_key: VerifyKey,
        state_dir: Path,
        allowlist: Allowlist,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.firewall = firewall
        self.sources = list(sources)
        self.agent_id = agent_id
        self.collector_key = collector_key
        self.state = CommandState.load(state_dir / STATE_FILE, agent_id)
        self.allowlist = allowlist
        self.clock = clock
        self.dry_firewall = type(firewall)(replace(firewall.settings, dry_run=True))
        self._firewall_ready = False
        self._lock = asyncio.Lock()

    def native_sources(self) -> list[Source]:
        found = []
        for s in self.sources:
            try:
                if has_native_block(s):
                    found.append(s)
            except Exception as exc:
                log.warning("actions_failed", source=s.name, error=repr(exc))
        return found

    def _verbs(self) -> dict[str, list[Source]]:
        verbs: dict[str, list[Source]] = {v: [] for v in wire.COMMAND_VERBS}
        for s in self.sources:
            try:
                for verb in native_actions(s):
                    verbs.setdefault(verb, []).append(s)
            except Exception as exc:
                log.warning("actions_failed", source=s.name, error=repr(exc))
        return verbs

    async def handle(self, delivery_id: str, envelope: bytes) -> Result:
        """Verify and run one delivered command once; the state is saved before returning."""
        async with self._lock:
            known = self.state.results.get(delivery_id)
            if known is not None:
                # Delivered again: the collector does not have the result, report it again.
                log.info("command_redelivered", id=delivery_id, status=known.status)
                if delivery_id not in self.state.unreported:
                    self.state.unreported.append(delivery_id)
                    await asyncio.to_thread(self.state.save)
                return known
            result = await self._handle(delivery_id, envelope)
            self.state.results[delivery_id] = result
            self.state.unreported.append(delivery_id)
            await asyncio.to_thread(self.state.save)
        log.info(
            "command_" + result.status,
            id=delivery_id,
            seq=result.seq if result.seq is not None else "-",
            verb=result.verb or "-",
            result=result.result,
        )
        return result

    async def _handle(self, delivery_id: str, envelope: bytes) -> Result:
        now = self.clock()
        try:
            cmd = wire.open_command(
                envelope,
                self.collector_key,
                agent=self.agent_id,
                last_seq=self.state.last_seq,
                now=int(now * 1_000_000),
            )
        except wire.WireError as exc:
            return Result(delivery_id, "refused", f"refused: {exc}", at=now)
        except Exception as exc:  # a malformed payload must never stop the channel
            return Result(delivery_id, "refused", f"refused: malformed command ({exc!r:.100})")
        if cmd.id != delivery_id:
            return Result(
                delivery_id, "refused", f"refused: delivered as {delivery_id}, signed as {cmd.id}"
            )
        # Authentic, for us, in time, in order: this seq is used up whatever happens next.
        self.state.last_seq = cmd.seq
        try:
            text = await self._execute(cmd.verb, cmd.args if isinstance(cmd.args, dict) else {})
            status = "done"
        except Refused as exc:
            status, text = "refused", f"refused: {exc}"
        except FirewallError as exc:
            status, text = "failed", str(exc)
        except Exception as exc:
            status, text = "failed", f"{type(exc).__name__}: {exc}"
        return Result(delivery_id, status, text[:1000], seq=cmd.seq, verb=cmd.verb, at=now)

    async def _execute(self, verb: str, args: dict[str, Any]) -> str:
        verbs = self._verbs()
        if verb not in verbs:
            raise Refused(f"verb {verb!r} is not one this agent runs ({', '.join(sorted(verbs))})")
        if verb not in BLOCK_ACTIONS:
            return await self._native(verbs[verb], verb, args)
        ip = self._ip(args)
        dry = self.settings.dry_run or args.get("dry_run") is True
        if verb == "unblock_ip":
            text = await self._unblock(ip, dry)
            if not dry:
                self.state.blocks.pop(str(ip), None)
            return text
        ttl = args.get("ttl")
        if type(ttl) is not int or not 1 <= ttl <= self.settings.max_ttl_s:
            raise Refused(
                f"ttl must be a whole number of seconds from 1 to {self.settings.max_ttl_s},"
                f" got {ttl!r:.40}"
            )
        why = self.allowlist.why(ip)
        if why is not None:
            raise Refused(f"{ip} is allowlisted ({why})")
        now = self.clock()
        active = self.state.active_blocks(now)
        self.state.blocks = active
        if str(ip) not in active and len(active) >= self.settings.max_blocks:
            raise Refused(f"{len(active)} blocks are active, the maximum ([actions] max_blocks)")
        text = await self._block(ip, ttl, dry)
        if not dry:
            self.state.blocks[str(ip)] = now + ttl
        return text

    @staticmethod
    def _ip(args: dict[str, Any]) -> IPAddress:
        try:
            return parse_ip(args.get("ip"))
        except ValueError as exc:
            raise Refused(str(exc)) from None

    async def _block(self, ip: IPAddress, ttl: int, dry: bool) -> str:
        natives = self.native_sources()
        if natives:
            return await self._native(natives, "block_ip", {"ip": str(ip), "ttl": ttl}, dry)
        if dry:
            self._check_firewall()
            return f"dry-run: {await self.dry_firewall.block(ip, ttl)}"
        return await self._firewall_call(lambda: self.firewall.block(ip, ttl))

    async def _unblock(self, ip: IPAddress, dry: bool) -> str:
        natives = self.native_sources()
        if natives:
            return await self._native(natives, "unblock_ip", {"ip": str(ip)}, dry)
        if dry:
            self._check_firewall()
            return f"dry-run: {await self.dry_firewall.unblock(ip)}"
        return await self._firewall_call(lambda: self.firewall.unblock(ip))

    async def _firewall_call(self, call: Callable[[], Awaitable[str]]) -> str:
        await self._ensure_firewall()
        try:
            return await call()
        except FirewallError as exc:
            # Someone may have flushed the ruleset (another firewall tool, a reload): set the
            # table up again and try once more.
            log.warning("firewall_retry", error=str(exc))
            self._firewall_ready = False
            await self._ensure_firewall()
            return await call()

    async def _native(
        self, sources: list[Source], verb: str, args: dict[str, Any], dry: bool = False
    ) -> str:
        parts = []
        for s in sources:
            if dry or self.settings.dry_run:
                parts.append(f"dry-run: {s.name}.{verb}({_args_text(args)}) not called")
                continue
            handler = native_actions(s)[verb]
            parts.append(f"{s.name}: {await handler(dict(args))}")
        return "; ".join(parts)

    def _check_firewall(self) -> None:
        if self.firewall.name == "none":
            raise Refused(
                "no source blocks natively and no firewall backend is configured"
                " ([firewall] backend)"
            )

    async def _ensure_firewall(self) -> None:
        self._check_firewall()
        if not self._firewall_ready:
            await self.firewall.setup()
            self._firewall_ready = True

    async def expire(self) -> None:
        """Forget blocks past their expiry; backends without kernel timeouts remove them."""
        async with self._lock:
            now = self.clock()
            active = self.state.active_blocks(now)
            if len(active) != len(self.state.blocks):
                self.state.blocks = active
                await asyncio.to_thread(self.state.save)
            with contextlib.suppress(FirewallError):
                for ip in await self.firewall.expire():
                    log.info("block_expired", ip=ip)

    async def reported(self, ids: Sequence[str]) -> None:
        async with self._lock:
            gone = set(ids)
            self.state.unreported = [i for i in self.state.unreported if i not in gone]
            await asyncio.to_thread(self.state.save)


def _args_text(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(args.items()))


class CommandChannel:
    """Long-polls `GET /api/v1/agent/commands`, runs them, posts the results."""

    def __init__(
        self,
        executor: Executor,
        *,
        urls: Sequence[str],
        key: SigningKey,
        timeout_s: float = 30.0,
        backoff_max_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.executor = executor
        self.urls = [u.rstrip("/") for u in urls]
        self.key = key
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self._transport = transport
        self._current = 0
        self._failures = 0
        self.polls = 0

    @property
    def agent_id(self) -> str:
        return self.executor.agent_id

    def _headers(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        ts = wire.now_us()
        return {"Authorization": wire.sign_request(self.key, self.agent_id, method, path, ts, body)}

    async def run(self) -> None:
        wait = self.executor.settings.poll_wait_s
        timeout = httpx.Timeout(self.timeout_s + wait)
        async with httpx.AsyncClient(timeout=timeout, transport=self._transport) as client:
            while True:
                try:
                    await self._report(client)
                    await self.executor.expire()
                    deliveries = await self._poll(client, wait)
                    for delivery_id, envelope in deliveries:
                        await self.executor.handle(delivery_id, envelope)
                    await self._report(client)
                    if self._failures:
                        log.info("commands_channel_up", collector=self.urls[self._current])
                    self._failures = 0
                except asyncio.CancelledError:
                    raise
                except (httpx.HTTPError, _ChannelError) as exc:
                    self._failures += 1
                    if self._failures == 1:
                        log.warning("commands_channel_down", error=str(exc) or repr(exc))
                    self._current = (self._current + 1) % len(self.urls)
                    cap = min(self.backoff_max_s, BACKOFF_BASE_S * 2 ** min(self._failures, 20))
                    await asyncio.sleep(random.uniform(cap / 2, cap))

    async def _poll(self, client: httpx.AsyncClient, wait: float) -> list[tuple[str, bytes]]:
        url = self.urls[self._current]
        after = self.executor.state.last_seq
        response = await client.get(
            f"{url}{POLL_PATH}",
            params={"after": after, "wait": f"{wait:g}"},
            headers=self._headers("GET", POLL_PATH),
        )
        self.polls += 1
        if response.status_code != 200:
            raise _ChannelError(f"HTTP {response.status_code}: {error_text(response)}")
        out = []
        for item in response.json().get("commands", []):
            try:
                out.append((str(item["id"]), base64.b64decode(item["envelope"], validate=True)))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("command_delivery_malformed", error=repr(exc))
        return out

    async def _report(self, client: httpx.AsyncClient) -> None:
        state = self.executor.state
        done = []
        for delivery_id in list(state.unreported):
            result = state.results.get(delivery_id)
            if result is None:
                continue
            body = json.dumps(result.to_json()).encode()
            url = self.urls[self._current]
            response = await client.post(
                f"{url}{RESULT_PATH}",
                content=body,
                headers={
                    **self._headers("POST", RESULT_PATH, body),
                    "Content-Type": "application/json",
                },
            )
            if response.status_code == 200:
                done.append(delivery_id)
            elif response.status_code in (404, 409, 422):
                log.warning("command_result_refused", id=delivery_id, reason=error_text(response))
                done.append(delivery_id)  # the collector will never take it: do not loop
            else:
                raise _ChannelError(f"HTTP {response.status_code}: {error_text(response)}")
        if done:
            await self.executor.reported(done)


class _ChannelError(Exception):
    pass

"""Host firewall backends for `block_ip` / `unblock_ip` (sources without a native blocklist).

    fw = make_backend(settings)             # from the [firewall] table (config.py)
    await fw.setup()                        # create the table/sets/chain (idempotent)
    await fw.block(ipaddress.ip_address("192.0.2.7"), ttl_s=3600)
    await fw.unblock(ipaddress.ip_address("192.0.2.7"))
    await fw.active()                       # {ip: seconds left} (what the kernel holds)

Backends:
  nftables  (preferred) an `inet` table with one set per family (`flags timeout`): every
            element expires by itself in the kernel, and an input chain that drops packets
            from both sets. Requests are nft scripts given on stdin (`nft -f -`), one
            transaction each, built only from validated names and `ipaddress` objects.
  ipset     `hash:ip` sets with timeouts (`-exist` renews), matched by one iptables /
            ip6tables rule each in the INPUT chain.
  iptables  a `CDRSTATS` chain jumped to from INPUT, one DROP rule per address; iptables has
            no timeouts, so the agent removes expired addresses itself (`expire()`).

No shell is ever involved: every program runs with an argv list (`asyncio.create_subprocess_
exec`), and an address reaches a program only as `str(ipaddress.ip_address(...))`. `dry_run`
backends log what they would run and change nothing. `netns` runs every program inside a
network namespace (`ip netns exec NAME ...`): the tests use it so the host's ruleset is never
touched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from .logs import get_logger

log = get_logger("cdrstats.agent.firewall")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
BACKENDS = ("nftables", "ipset", "iptables", "none")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,27}$")
"""Table, set and chain names: checked at config time, safe to write into nft scripts."""
RUN_TIMEOUT_S = 10.0


class FirewallError(Exception):
    """A firewall program failed; the text names the program and its error output."""


def parse_ip(text: Any) -> IPAddress:
    """An IP address (v4 or v6, no zone, no network) or ValueError naming what is wrong."""
    if not isinstance(text, str) or not text or len(text) > 64:
        raise ValueError(f"ip must be an IPv4 or IPv6 address, got {text!r:.70}")
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"ip must be an IPv4 or IPv6 address, got {text!r:.70}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        raise ValueError(f"ip must be an IPv4 or IPv6 address without a zone, got {text!r:.70}")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:a.b.c.d is that IPv4 address
    return ip


@dataclass(frozen=True, slots=True)
class FirewallSettings:
    """The `[firewall]` table."""

    backend: str = "none"
    table: str = "cdrstats"
    """nftables table (family inet) / ipset set prefix / iptables chain (upper-cased)."""
    priority: int = -10
    """nftables input hook priority (before the usual filter chains)."""
    netns: str = ""
    """Run the programs in this network namespace (`ip netns exec`), "" for the host."""
    dry_run: bool = False


class Backend:
    """What every backend does; addresses arrive validated (`parse_ip`)."""

    name = "none"

    def __init__(self, settings: FirewallSettings) -> None:
        self.settings = settings
        self.dry_run = settings.dry_run
        self.ran: list[list[str]] = []
        """Every argv run (or, in dry-run, that would have run), for tests and logs."""

    async def setup(self) -> None:
        """Create what the backend needs (idempotent)."""

    async def block(self, ip: IPAddress, ttl_s: int) -> str:
        raise FirewallError('no firewall backend configured ([firewall] backend = "none")')

    async def unblock(self, ip: IPAddress) -> str:
        raise FirewallError('no firewall backend configured ([firewall] backend = "none")')

    async def active(self) -> dict[str, int]:
        """Blocked addresses and their seconds left."""
        return {}

    async def expire(self) -> list[str]:
        """Remove blocks past their expiry (only backends without kernel timeouts)."""
        return []

    async def _run(self, argv: list[str], stdin: str | None = None, *, write: bool = True) -> str:
        full = (["ip", "netns", "exec", self.settings.netns] if self.settings.netns else []) + argv
        self.ran.append(full + ([f"<stdin {stdin!r}>"] if stdin else []))
        if self.dry_run and write:
            log.info("firewall_dry_run", argv=" ".join(full), stdin=stdin or "")
            return ""
        try:
            proc = await asyncio.create_subprocess_exec(
                *full,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise FirewallError(f"{full[0]}: cannot run: {exc.strerror or exc}") from None
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), RUN_TIMEOUT_S
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise FirewallError(f"{argv[0]}: no answer in {RUN_TIMEOUT_S:g} s") from None
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip().splitlines()
            detail = text[0] if text else f"exit status {proc.returncode}"
            raise FirewallError(f"{argv[0]} failed: {detail}")
        return out.decode(errors="replace")


# --- nftables ----------------------------------------------------------------------------------


class NftBackend(Backend):
    name = "nftables"

    def _set(self, ip: IPAddress) -> str:
        return "blocked4" if ip.version == 4 else "blocked6"

    def setup_script(self) -> str:
        t, prio = self.settings.table, int(self.settings.priority)
        return (
            f"add table inet {t}\n"
            f"add set inet {t} blocked4 {{ type ipv4_addr; flags timeout; }}\n"
            f"add set inet {t} blocked6 {{ type ipv6_addr; flags timeout; }}\n"
            f"add chain inet {t} input {{ type filter hook input priority {prio};"
            " policy accept; }\n"
            f"flush chain inet {t} input\n"
            f"add rule inet {t} input ip saddr @blocked4 drop\n"
            f"add rule inet {t} input ip6 saddr @blocked6 drop\n"
        )

    async def setup(self) -> None:
        await self._run(["nft", "-f", "-"], self.setup_script())

    def block_script(self, ip: IPAddress, ttl_s: int) -> str:
        # add (so that it exists) + delete + add: one transaction that creates or renews the
        # element with the new timeout (a plain `add` keeps an existing element's timeout).
        where = f"inet {self.settings.table} {self._set(ip)}"
        addr = str(ip)
        return (
            f"add element {where} {{ {addr} timeout 1s }}\n"
            f"delete element {where} {{ {addr} }}\n"
            f"add element {where} {{ {addr} timeout {int(ttl_s)}s }}\n"
        )

    def unblock_script(self, ip: IPAddress) -> str:
        where = f"inet {self.settings.table} {self._set(ip)}"
        addr = str(ip)
        return f"add element {where} {{ {addr} timeout 1s }}\ndelete element {where} {{ {addr} }}\n"

    async def block(self, ip: IPAddress, ttl_s: int) -> str:
        await self._run(["nft", "-f", "-"], self.block_script(ip, ttl_s))
        return f"nftables: {ip} added to {self.settings.table}/{self._set(ip)} for {ttl_s}s"

    async def unblock(self, ip: IPAddress) -> str:
        await self._run(["nft", "-f", "-"], self.unblock_script(ip))
        return f"nftables: {ip} removed from {self.settings.table}/{self._set(ip)}"

    async def active(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in ("blocked4", "blocked6"):
            text = await self._run(
                ["nft", "-j", "list", "set", "inet", self.settings.table, name], write=False
            )
            if not text:
                continue
            for item in json.loads(text).get("nftables", []):
                for elem in item.get("set", {}).get("elem", []):
                    e = elem.get("elem", {}) if isinstance(elem, dict) else {}
                    if "val" in e:
                        out[str(e["val"])] = int(e.get("expires", e.get("timeout", 0)))
        return out


# --- ipset -------------------------------------------------------------------------------------


class IpsetBackend(Backend):
    name = "ipset"

    def _set(self, ip: IPAddress) -> str:
        return f"{self.settings.table}{ip.version}"

    async def setup(self) -> None:
        for version, family, tool in ((4, "inet", "iptables"), (6, "inet6", "ip6tables")):
            name = f"{self.settings.table}{version}"
            await self._run(
                ["ipset", "create", name, "hash:ip", "family", family, "timeout", "0", "-exist"]
            )
            rule = ["INPUT", "-m", "set", "--match-set", name, "src", "-j", "DROP"]
            try:
                await self._run([tool, "-w", "-C", *rule], write=False)
            except FirewallError:
                await self._run([tool, "-w", "-I", *rule])

    async def block(self, ip: IPAddress, ttl_s: int) -> str:
        name = self._set(ip)
        await self._run(["ipset", "add", name, str(ip), "timeout", str(int(ttl_s)), "-exist"])
        return f"ipset: {ip} added to {name} for {ttl_s}s"

    async def unblock(self, ip: IPAddress) -> str:
        name = self._set(ip)
        await self._run(["ipset", "del", name, str(ip), "-exist"])
        return f"ipset: {ip} removed from {name}"

    async def active(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for version in (4, 6):
            text = await self._run(
                ["ipset", "list", f"{self.settings.table}{version}", "-output", "plain"],
                write=False,
            )
            members = False
            for line in text.splitlines():
                if line.startswith("Members:"):
                    members = True
                    continue
                parts = line.split()
                if members and len(parts) >= 3 and parts[1] == "timeout":
                    out[parts[0]] = int(parts[2])
        return out


# --- iptables ----------------------------------------------------------------------------------


class IptablesBackend(Backend):
    """One DROP rule per address in a dedicated chain; expiry kept by the agent."""

    name = "iptables"

    def __init__(self, settings: FirewallSettings) -> None:
        super().__init__(settings)
        self.chain = settings.table.upper()
        self.expires: dict[str, float] = {}

    @staticmethod
    def _tool(ip: IPAddress) -> str:
        return "iptables" if ip.version == 4 else "ip6tables"

    async def setup(self) -> None:
        for tool in ("iptables", "ip6tables"):
            try:
                await self._run([tool, "-w", "-N", self.chain])
            except FirewallError as exc:
                if "exists" not in str(exc):
                    raise
            try:
                await self._run([tool, "-w", "-C", "INPUT", "-j", self.chain], write=False)
            except FirewallError:
                await self._run([tool, "-w", "-I", "INPUT", "-j", self.chain])

    async def block(self, ip: IPAddress, ttl_s: int) -> str:
        rule = [self.chain, "-s", str(ip), "-j", "DROP"]
        try:
            await self._run([self._tool(ip), "-w", "-C", *rule], write=False)
        except FirewallError:
            await self._run([self._tool(ip), "-w", "-A", *rule])
        self.expires[str(ip)] = time.time() + ttl_s
        return f"iptables: {ip} dropped in chain {self.chain} for {ttl_s}s (expired by the agent)"

    async def unblock(self, ip: IPAddress) -> str:
        rule = [self.chain, "-s", str(ip), "-j", "DROP"]
        while True:  # a rule added twice by hand goes too
            try:
                await self._run([self._tool(ip), "-w", "-C", *rule], write=False)
            except FirewallError:
                break
            await self._run([self._tool(ip), "-w", "-D", *rule])
            if self.dry_run:
                break
        self.expires.pop(str(ip), None)
        return f"iptables: {ip} no longer dropped in chain {self.chain}"

    async def active(self) -> dict[str, int]:
        now = time.time()
        return {ip: max(0, int(at - now)) for ip, at in self.expires.items() if at > now}

    async def expire(self) -> list[str]:
        now = time.time()
        gone = [ip for ip, at in self.expires.items() if at <= now]
        for ip in gone:
            await self.unblock(ipaddress.ip_address(ip))
        return gone


def make_backend(settings: FirewallSettings) -> Backend:
    kinds: dict[str, type[Backend]] = {
        "nftables": NftBackend,
        "ipset": IpsetBackend,
        "iptables": IptablesBackend,
        "none": Backend,
    }
    if settings.backend not in kinds:
        raise ValueError(f"unknown firewall backend {settings.backend!r}")
    if not NAME.match(settings.table):
        raise ValueError(f"firewall table name {settings.table!r} is not a plain identifier")
    return kinds[settings.backend](settings)

"""Native IP blocking in a Kamailio htable: `block_ip` / `unblock_ip` actions over JSON-RPC.

block_ip   `htable.seti <table> <ip> 1`, then `htable.setex <table> <ip> <ttl>` so the entry
           expires after `ttl` seconds (htable 5.6 also expires it after the table's
           `autoexpire` when that is shorter and the entry is not updated).
unblock_ip `htable.delete <table> <ip>`; an IP that was not blocked is not an error.

The routing script rejects the banned sources itself (see the README for the snippet). The IP
is validated with `ipaddress` and written in its canonical text form, as Kamailio prints `$si`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from .rpc import RpcClient, RpcError

MAX_TTL_S = 366 * 86400


def checked_ip(args: Mapping[str, Any]) -> str:
    value = args.get("ip")
    if not isinstance(value, str):
        raise ValueError(f"ip must be a string, got {type(value).__name__}")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"ip {value!r:.60} is not an IP address") from None


def checked_ttl(args: Mapping[str, Any]) -> int:
    ttl = args.get("ttl")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_S:
        raise ValueError(
            f"ttl must be a whole number of seconds from 1 to {MAX_TTL_S}, got {ttl!r}"
        )
    return ttl


class HtableBan:
    def __init__(self, rpc: RpcClient, table: str) -> None:
        self.rpc = rpc
        self.table = table

    async def block_ip(self, args: Mapping[str, Any]) -> str:
        ip = checked_ip(args)
        ttl = checked_ttl(args)
        await self.rpc.call("htable.seti", self.table, ip, 1)
        await self.rpc.call("htable.setex", self.table, ip, ttl)
        return f"blocked {ip} in kamailio htable {self.table} for {ttl} s"

    async def unblock_ip(self, args: Mapping[str, Any]) -> str:
        ip = checked_ip(args)
        try:
            await self.rpc.call("htable.delete", self.table, ip)
        except RpcError as exc:
            if exc.code == 404:  # "Key not found in htable."
                return f"{ip} was not blocked in kamailio htable {self.table}"
            raise
        return f"unblocked {ip} in kamailio htable {self.table}"

"""Account codes mapped to tenants (migration 0010, `accountcode_map`): the one per-process
cache that ingest (store.py) and calls in progress (live.py) both read.

    cache = AccountCodeCache()                   # one per process (the Ingestor holds it)
    maps = await cache.get(conn, version)        # version: `VERSION_SQL`'s row, if read already
    tenant = maps.tenant(switch_id, accountcode, switch_tenant)

A mapping on the switch wins over an any-switch one; an unmapped (or empty) code keeps the
switch's tenant. The table is re-read only when its version, `(count(*), max(id))`, changed:
rows are only added and removed, never updated, so every change moves it. Callers read the
version with a statement they run anyway (no extra round trip while nothing changes), so a
change applies to the next batch or live message in every collector process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from . import aggregates

VERSION_SQL = "SELECT count(*), max(id) FROM accountcode_map"
"""One row: the mappings' version (a sub-select callers embed in a statement of theirs)."""
TIMEZONE_TTL_S = 10.0
"""The timezones of mapped tenants (for ingest's daily aggregates) are re-read this often."""

_MAPS = (
    b"SELECT m.accountcode, coalesce(m.switch_id, 0), m.tenant_id, t.timezone"
    b" FROM accountcode_map m JOIN tenant t ON t.id = m.tenant_id"
)


@dataclass(slots=True)
class AccountCodes:
    """The mappings as read at one version."""

    version: tuple[Any, ...] | None = None
    expires: float = 0.0
    rows: dict[int, dict[str, int]] = field(default_factory=dict)
    """switch id (0: any switch) → accountcode → tenant id."""
    days: dict[int, aggregates.LocalDays] = field(default_factory=dict)
    """Local days of every tenant a mapping names."""
    merged: dict[int, dict[str, int]] = field(default_factory=dict)
    """switch id → what applies to it (its own mappings over the any-switch ones)."""

    def codes(self, switch_id: int) -> dict[str, int]:
        """accountcode → tenant for the calls of one switch (empty: nothing mapped)."""
        out = self.merged.get(switch_id)
        if out is None:
            out = {**self.rows.get(0, {}), **self.rows.get(switch_id, {})}
            self.merged[switch_id] = out
        return out

    def tenant(self, switch_id: int, accountcode: str | None, own: int) -> int:
        """The tenant of a call with this code on this switch (`own`: the switch's tenant)."""
        if not accountcode:
            return own
        return self.codes(switch_id).get(accountcode, own)


class AccountCodeCache:
    """The current `AccountCodes`, re-read when the table's version changes."""

    def __init__(self) -> None:
        self.current = AccountCodes()

    def forget(self) -> None:
        """Re-read the mappings at the next use."""
        self.current = AccountCodes()

    async def get(
        self, conn: psycopg.AsyncConnection[Any], version: tuple[Any, ...] | None = None
    ) -> AccountCodes:
        """The mappings at `version` (`VERSION_SQL`'s row; None: ask for it).

        Tenant timezones are re-read at least every `TIMEZONE_TTL_S` while codes are mapped.
        """
        if version is None:
            cur = await conn.execute(VERSION_SQL.encode())
            version = tuple(await cur.fetchone() or (0, None))
        codes = self.current
        now = time.monotonic()
        if version == codes.version and (version[0] == 0 or codes.expires > now):
            return codes
        fresh = AccountCodes(version, now + TIMEZONE_TTL_S)
        if version[0]:
            cur = await conn.execute(_MAPS)
            for code, switch_id, tenant, timezone in await cur.fetchall():
                fresh.rows.setdefault(int(switch_id), {})[code] = int(tenant)
                old = codes.days.get(int(tenant))
                if old is not None and old.timezone == timezone:
                    fresh.days[int(tenant)] = old
                else:
                    fresh.days[int(tenant)] = aggregates.LocalDays(timezone)
        self.current = fresh
        return fresh

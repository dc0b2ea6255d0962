"""Enrolled agents as the request handlers need them, cached per process.

The cache holds public keys and the agent's tenant/switch, which never change for an agent
id. Revocation is decided in the database (the ingest transaction re-reads `revoked_at`
under the agent row lock), so a cached entry never lets a revoked agent store anything;
`forget` drops an entry (called on revocation by the admin code that will revoke).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from nacl.signing import VerifyKey

from .store import AgentRef


@dataclass(frozen=True, slots=True)
class KnownAgent:
    ref: AgentRef
    key: VerifyKey
    tenant: str
    switch: str


@dataclass(frozen=True, slots=True)
class AgentStatus:
    agent: KnownAgent
    revoked: bool
    last_seq: int
    last_seen: datetime | None


def parse_agent_id(text: str) -> UUID | None:
    """The agent id of a request, or None when it cannot be one (an unknown agent)."""
    try:
        value = UUID(text)
    except (ValueError, TypeError):
        return None
    return value if str(value) == text.lower() else None


_SELECT = (
    b"SELECT a.public_key, a.tenant_id, a.switch_id, t.name, s.name,"
    b" a.revoked_at IS NOT NULL, a.last_seq, a.last_seen_at"
    b" FROM agent a JOIN tenant t ON t.id = a.tenant_id JOIN switch s ON s.id = a.switch_id"
    b" WHERE a.id = %s"
)


class AgentDirectory:
    def __init__(self, max_entries: int = 100_000) -> None:
        self._cache: dict[UUID, KnownAgent] = {}
        self._max = max_entries

    def cached(self, agent_id: UUID) -> KnownAgent | None:
        return self._cache.get(agent_id)

    def forget(self, agent_id: UUID) -> None:
        self._cache.pop(agent_id, None)

    async def status(
        self, conn: psycopg.AsyncConnection[Any], agent_id: UUID
    ) -> AgentStatus | None:
        """Read the agent row (and refresh the cache); None for an unknown agent."""
        cur = await conn.execute(_SELECT, (agent_id,))
        row = await cur.fetchone()
        if row is None:
            self.forget(agent_id)
            return None
        key, tenant_id, switch_id, tenant, switch, revoked, last_seq, last_seen = row
        known = KnownAgent(
            AgentRef(agent_id, int(tenant_id), int(switch_id)),
            VerifyKey(bytes(key)),
            tenant,
            switch,
        )
        if revoked:
            self.forget(agent_id)
        else:
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[agent_id] = known
        return AgentStatus(known, bool(revoked), int(last_seq), last_seen)

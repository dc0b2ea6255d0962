"""The collector's own Ed25519 key pair (it signs commands to agents).

Created once, by `cdrstats db upgrade`, and kept in the `collector_key` table so that every
collector process behind a load balancer signs with the same key (docs/decisions/0002).
"""

from __future__ import annotations

from typing import Any

import psycopg
from nacl.signing import SigningKey, VerifyKey


class NoCollectorKey(Exception):
    def __str__(self) -> str:
        return "the collector has no signing key yet: run `cdrstats db upgrade`"


def ensure_collector_key(conn: psycopg.Connection[Any]) -> VerifyKey:
    """Create the key pair if no active one exists (call under the migration lock)."""
    row = conn.execute(
        "SELECT public_key FROM collector_key WHERE retired_at IS NULL ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is not None:
        return VerifyKey(bytes(row[0]))
    key = SigningKey.generate()
    conn.execute(
        "INSERT INTO collector_key (public_key, private_key) VALUES (%s, %s)",
        (bytes(key.verify_key), bytes(key)),
    )
    return key.verify_key


_ACTIVE = (
    "SELECT public_key, private_key FROM collector_key"
    " WHERE retired_at IS NULL ORDER BY id DESC LIMIT 1"
)


async def load_signing_key(conn: psycopg.AsyncConnection[Any]) -> SigningKey:
    """The active signing key; raises `NoCollectorKey` before the first upgrade."""
    cur = await conn.execute(_ACTIVE)
    row = await cur.fetchone()
    if row is None:
        raise NoCollectorKey()
    return SigningKey(bytes(row[1]))


async def load_public_key(conn: psycopg.AsyncConnection[Any]) -> VerifyKey:
    """The active public key (what enrolled agents use to verify commands)."""
    cur = await conn.execute(_ACTIVE)
    row = await cur.fetchone()
    if row is None:
        raise NoCollectorKey()
    return VerifyKey(bytes(row[0]))

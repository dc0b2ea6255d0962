"""Tenants and their switches (administration; used by the CLI and the tests)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg import errors as pgerrors


class AdminError(Exception):
    """An administrative request that cannot be done; the text says why and what to do."""


class InvalidArgument(AdminError):
    """The request itself is wrong (a usage error: exit 2 in the CLI)."""


class UnknownTenant(InvalidArgument):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"unknown tenant {name!r}: create it first with `cdrstats tenant add {name}`"
        )
        self.name = name


def add_tenant(conn: psycopg.Connection[Any], name: str, timezone: str = "UTC") -> int:
    """Create a tenant; returns its id. Raises `AdminError` if the name is taken or bad."""
    if not name.strip():
        raise InvalidArgument("a tenant name must not be empty")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(
            f"unknown timezone {timezone!r}: use an IANA name such as Europe/Paris"
        ) from None
    try:
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO tenant (name, timezone) VALUES (%s, %s) RETURNING id",
                (name, timezone),
            ).fetchone()
    except pgerrors.UniqueViolation:
        raise AdminError(f"tenant {name!r} already exists") from None
    return int(row[0]) if row else 0


def tenant_id(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute("SELECT id FROM tenant WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise UnknownTenant(name)
    return int(row[0])


def ensure_switch(conn: psycopg.Connection[Any], tenant: int, name: str) -> int:
    """The id of the tenant's switch `name`, created if missing."""
    if not name.strip():
        raise InvalidArgument("a switch name must not be empty")
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO switch (tenant_id, name) VALUES (%s, %s)"
            " ON CONFLICT (tenant_id, name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
            (tenant, name),
        ).fetchone()
    return int(row[0]) if row else 0

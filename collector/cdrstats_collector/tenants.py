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


# --- account codes mapped to tenants (migration 0010; applied at ingest by store.py) ---------

MAX_ACCOUNTCODE_CHARS = 100


def add_accountcode(
    conn: psycopg.Connection[Any], accountcode: str, tenant: str, switch_id: int | None = None
) -> int:
    """Map `accountcode` (on `switch_id`, or on any switch) to `tenant`; returns the mapping id.

    CDRs stored from then on with that accountcode go to `tenant` instead of their switch's
    tenant (a switch's own mapping wins over an any-switch one). Raises `AdminError`.
    """
    code = accountcode.strip()
    if not code or len(code) > MAX_ACCOUNTCODE_CHARS:
        raise InvalidArgument(
            f"accountcode: give the code as the switch writes it (1 to"
            f" {MAX_ACCOUNTCODE_CHARS} characters)"
        )
    tid = tenant_id(conn, tenant)
    if switch_id is not None:
        row = conn.execute("SELECT 1 FROM switch WHERE id = %s", (switch_id,)).fetchone()
        if row is None:
            raise InvalidArgument(f"switch: no switch with id {switch_id}")
    try:
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO accountcode_map (accountcode, switch_id, tenant_id)"
                " VALUES (%s, %s, %s) RETURNING id",
                (code, switch_id, tid),
            ).fetchone()
    except pgerrors.UniqueViolation:
        where = "on any switch" if switch_id is None else f"on switch {switch_id}"
        raise AdminError(
            f"accountcode {code!r} is already mapped {where}: remove that mapping first"
        ) from None
    return int(row[0]) if row else 0


def remove_accountcode(conn: psycopg.Connection[Any], mapping_id: int) -> dict[str, Any]:
    """Delete one mapping; returns what it was. CDRs already stored keep their tenant."""
    row = conn.execute(
        "DELETE FROM accountcode_map m USING tenant t WHERE m.id = %s AND t.id = m.tenant_id"
        " RETURNING m.accountcode, m.switch_id, t.name, m.tenant_id",
        (mapping_id,),
    ).fetchone()
    if row is None:
        raise InvalidArgument(f"no account-code mapping with id {mapping_id}")
    return {"accountcode": row[0], "switch_id": row[1], "tenant": row[2], "tenant_id": row[3]}


def accountcodes(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every mapping, with the names of its tenant and switch (and the switch's tenant)."""
    rows = conn.execute(
        "SELECT m.id, m.accountcode, m.switch_id, s.name, st.name, t.name, m.created_at"
        " FROM accountcode_map m JOIN tenant t ON t.id = m.tenant_id"
        " LEFT JOIN switch s ON s.id = m.switch_id LEFT JOIN tenant st ON st.id = s.tenant_id"
        " ORDER BY m.accountcode, s.name NULLS FIRST"
    ).fetchall()
    return [
        {
            "id": r[0],
            "accountcode": r[1],
            "switch_id": r[2],
            "switch": None if r[3] is None else f"{r[4]} / {r[3]}",
            "tenant": r[5],
            "created": r[6],
        }
        for r in rows
    ]

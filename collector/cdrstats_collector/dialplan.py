"""Administration of destination classification: switch numbering plans and dial prefixes.

    cdrstats switch set NAME --tenant T [--country FR] [--international-prefix 00]
                                        [--national-prefix 0]
    cdrstats switch list --tenant T
    cdrstats prefix import FILE [--replace]
    cdrstats prefix list [--starting DIGITS]

A prefix file is CSV, one dial code a line: `prefix,name,country,kind` (country and kind may
be empty; a first line starting with `prefix` is a header). The whole file is checked
before anything is written: one bad line and nothing changes, and the error names the line.
Running collectors pick changes up within `store.CONTEXT_TTL_S` seconds; CDRs already stored
keep their classification.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from . import tenants
from .classify import DialPrefix, NumberingPlan, PlanError


@dataclass(frozen=True, slots=True)
class SwitchPlan:
    name: str
    plan: NumberingPlan


def set_switch_plan(
    conn: psycopg.Connection[Any],
    tenant: str,
    switch: str,
    *,
    country: str | None = None,
    international_prefix: str | None = None,
    national_prefix: str | None = None,
) -> NumberingPlan:
    """Change the numbering plan of an existing switch; unset arguments keep their value.

    `country=""` clears the country. Raises `tenants.InvalidArgument` naming what is wrong.
    """
    tid = tenants.tenant_id(conn, tenant)
    row = conn.execute(
        "SELECT country, international_prefix, national_prefix FROM switch"
        " WHERE tenant_id = %s AND name = %s",
        (tid, switch),
    ).fetchone()
    if row is None:
        raise tenants.InvalidArgument(
            f"tenant {tenant!r} has no switch {switch!r}"
            " (switches are created by `cdrstats agent-token create`)"
        )
    new_country = row[0] if country is None else (country.strip().upper() or None)
    try:
        plan = NumberingPlan(
            new_country,
            row[1] if international_prefix is None else international_prefix.strip(),
            row[2] if national_prefix is None else national_prefix.strip(),
        )
    except PlanError as exc:
        raise tenants.InvalidArgument(f"switch {switch!r}: {exc}") from None
    with conn.transaction():
        conn.execute(
            "UPDATE switch SET country = %s, international_prefix = %s, national_prefix = %s"
            " WHERE tenant_id = %s AND name = %s",
            (plan.country, plan.international_prefix, plan.national_prefix, tid, switch),
        )
    return plan


def list_switch_plans(conn: psycopg.Connection[Any], tenant: str) -> list[SwitchPlan]:
    tid = tenants.tenant_id(conn, tenant)
    rows = conn.execute(
        "SELECT name, country, international_prefix, national_prefix FROM switch"
        " WHERE tenant_id = %s ORDER BY name",
        (tid,),
    ).fetchall()
    out: list[SwitchPlan] = []
    for name, country, intl, national in rows:
        try:
            plan = NumberingPlan(country, intl, national)
        except PlanError:
            plan = NumberingPlan(None, intl, national)
        out.append(SwitchPlan(str(name), plan))
    return out


def read_prefix_file(path: Path) -> list[DialPrefix]:
    """Parse and check a prefix file; raises `tenants.InvalidArgument` naming file and line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise tenants.InvalidArgument(f"{path}: cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise tenants.InvalidArgument(f"{path}: is not UTF-8 text") from None
    found: dict[str, DialPrefix] = {}
    for lineno, fields in enumerate(csv.reader(text.splitlines()), start=1):
        if not fields or all(not f.strip() for f in fields) or fields[0].startswith("#"):
            continue
        if lineno == 1 and fields[0].strip().lower() == "prefix":
            continue
        if len(fields) < 2 or len(fields) > 4:
            raise tenants.InvalidArgument(
                f"{path}:{lineno}: expected prefix,name[,country[,kind]], got {len(fields)} fields"
            )
        fields += [""] * (4 - len(fields))
        prefix, name, country, kind = (f.strip() for f in fields)
        try:
            entry = DialPrefix(
                prefix.lstrip("+"), name, country.upper() or None, kind.lower() or None
            )
        except PlanError as exc:
            raise tenants.InvalidArgument(f"{path}:{lineno}: {exc}") from None
        if entry.prefix in found:
            raise tenants.InvalidArgument(
                f"{path}:{lineno}: prefix {entry.prefix} appears twice in the file"
            )
        found[entry.prefix] = entry
    return list(found.values())


def import_prefixes(
    conn: psycopg.Connection[Any], entries: list[DialPrefix], *, replace: bool = False
) -> int:
    """Insert or update the prefixes (all of them or none); `replace` deletes the others."""
    with conn.transaction():
        if replace:
            conn.execute("DELETE FROM dial_prefix")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO dial_prefix (prefix, name, country, kind) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (prefix) DO UPDATE SET name = EXCLUDED.name,"
                " country = EXCLUDED.country, kind = EXCLUDED.kind, updated_at = now()",
                [(e.prefix, e.name, e.country, e.kind) for e in entries],
            )
    return len(entries)


def list_prefixes(conn: psycopg.Connection[Any], starting: str = "") -> list[DialPrefix]:
    rows = conn.execute(
        "SELECT prefix, name, country, kind FROM dial_prefix"
        " WHERE starts_with(prefix, %s) ORDER BY prefix",
        (starting.lstrip("+"),),
    ).fetchall()
    return [DialPrefix(*r) for r in rows]


def delete_prefix(conn: psycopg.Connection[Any], prefix: str) -> None:
    with conn.transaction():
        cur = conn.execute("DELETE FROM dial_prefix WHERE prefix = %s", (prefix.lstrip("+"),))
    if cur.rowcount == 0:
        raise tenants.InvalidArgument(f"no dial prefix {prefix!r}")

"""Console users: argon2id password hashes, three roles, a tenant for everybody but superadmins."""

from __future__ import annotations

from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg import errors as pgerrors

from .tenants import AdminError, InvalidArgument, tenant_id

ROLES = ("superadmin", "tenant_admin", "tenant_viewer")
MIN_PASSWORD = 10


def hash_password(password: str) -> str:
    return PasswordHasher().hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return PasswordHasher().verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def add_user(
    conn: psycopg.Connection[Any],
    username: str,
    role: str,
    password: str,
    tenant: str | None = None,
) -> int:
    """Create a console user; returns its id. Raises `AdminError` with the reason."""
    if role not in ROLES:
        raise InvalidArgument(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if role == "superadmin" and tenant is not None:
        raise InvalidArgument("a superadmin belongs to no tenant: drop --tenant")
    if role != "superadmin" and tenant is None:
        raise InvalidArgument(f"a {role} needs --tenant")
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument(f"the password must have at least {MIN_PASSWORD} characters")
    if not username.strip():
        raise InvalidArgument("a username must not be empty")
    tid = None if tenant is None else tenant_id(conn, tenant)
    try:
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO app_user (username, password_hash, role, tenant_id)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (username, hash_password(password), role, tid),
            ).fetchone()
    except pgerrors.UniqueViolation:
        raise AdminError(f"user {username!r} already exists") from None
    return int(row[0]) if row else 0


def set_password(conn: psycopg.Connection[Any], username: str, password: str) -> None:
    """Give an existing user a new password. Raises `AdminError` with the reason."""
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument(f"the password must have at least {MIN_PASSWORD} characters")
    with conn.transaction():
        cur = conn.execute(
            "UPDATE app_user SET password_hash = %s WHERE username = %s",
            (hash_password(password), username),
        )
    if cur.rowcount != 1:
        raise AdminError(f"no user named {username!r}")

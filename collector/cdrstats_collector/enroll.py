"""Enrollment: one-time tokens, `POST /api/v1/enroll` and `GET /api/v1/agent/status`.

An operator creates a token for a (tenant, switch) with `cdrstats agent-token create`; only
its sha256 is stored. The agent sends the token with its new Ed25519 public key; the
collector creates the agent row (a uuid4 id), marks the token used (once, before it
expires) and answers with the collector's public key, which the agent keeps to verify
commands.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from cdrstats_agent import wire
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import keys, replies
from .agents import parse_agent_id
from .state import get_state

TOKEN_TTL = timedelta(hours=24)
MAX_ENROLL_BODY = 16 * 1024


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create_token(
    conn: psycopg.Connection[Any], tenant_id: int, switch_id: int, ttl: timedelta = TOKEN_TTL
) -> str:
    """A new one-time enrollment token for the switch (only its hash is stored)."""
    # A fixed prefix: recognisable in logs and secret scanners, and never starts with "-"
    # (a bare url-safe token sometimes does, and a command line takes it for an option).
    token = "cdrs_" + secrets.token_urlsafe(32)
    with conn.transaction():
        conn.execute(
            "INSERT INTO agent_token (token_hash, tenant_id, switch_id, expires_at)"
            " VALUES (%s, %s, %s, now() + %s)",
            (hash_token(token), tenant_id, switch_id, ttl),
        )
    return token


class EnrollRefused(Exception):
    """The token cannot be used; the text says why (answered with 401)."""


@dataclass(frozen=True, slots=True)
class Enrollment:
    agent_id: uuid.UUID
    tenant: str
    switch: str
    collector_public_key: str


async def enroll(
    conn: psycopg.AsyncConnection[Any],
    token: str,
    public_key: bytes,
    hostname: str = "",
    version: str = "",
) -> Enrollment:
    """Use a token: create the agent row and mark the token used, in one transaction."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT k.tenant_id, k.switch_id, k.used_at IS NOT NULL, k.expires_at <= now(),"
            " t.name, s.name"
            " FROM agent_token k JOIN tenant t ON t.id = k.tenant_id"
            " JOIN switch s ON s.id = k.switch_id"
            " WHERE k.token_hash = %s FOR UPDATE OF k",
            (hash_token(token),),
        )
        row = await cur.fetchone()
        if row is None:
            raise EnrollRefused("unknown enrollment token")
        tenant_id, switch_id, used, expired, tenant, switch = row
        if used:
            raise EnrollRefused("enrollment token already used")
        if expired:
            raise EnrollRefused("enrollment token expired")
        agent_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO agent (id, tenant_id, switch_id, public_key, hostname, version)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (agent_id, tenant_id, switch_id, public_key, hostname, version),
        )
        await conn.execute(
            "UPDATE agent_token SET used_at = now(), agent_id = %s WHERE token_hash = %s",
            (agent_id, hash_token(token)),
        )
        collector_key = await keys.load_public_key(conn)
    return Enrollment(agent_id, tenant, switch, wire.key_to_text(collector_key))


def _parse_enroll(raw: bytes) -> tuple[str, bytes, str, str]:
    """The fields of an enroll request; raises ValueError with a one-line reason."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("body must be a JSON object") from None
    if not isinstance(doc, dict):
        raise ValueError("body must be a JSON object")
    token, public_key = doc.get("token"), doc.get("public_key")
    hostname, version = doc.get("hostname", ""), doc.get("version", "")
    if not isinstance(token, str) or not token:
        raise ValueError("'token' must be a non-empty string")
    if not isinstance(public_key, str):
        raise ValueError("'public_key' must be a base64 string")
    try:
        key = bytes(wire.verify_key_from_text(public_key))
    except (wire.WireError, ValueError) as exc:
        raise ValueError(f"'public_key': {exc}") from None
    for name, value in (("hostname", hostname), ("version", version)):
        if not isinstance(value, str) or len(value) > 255:
            raise ValueError(f"'{name}' must be a string of at most 255 characters")
    return token, key, hostname, version


async def enroll_endpoint(request: Request) -> Response:
    state = get_state(request)
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_ENROLL_BODY:
            return replies.error(413, f"enroll body larger than {MAX_ENROLL_BODY} bytes")
    try:
        token, key, hostname, version = _parse_enroll(raw)
    except ValueError as exc:
        return replies.error(422, str(exc))
    try:
        async with state.pool.connection() as conn:
            done = await enroll(conn, token, key, hostname, version)
    except EnrollRefused as exc:
        return replies.error(401, str(exc))
    except keys.NoCollectorKey as exc:
        return replies.unavailable(str(exc))
    except (psycopg.OperationalError, PoolTimeout):
        return replies.unavailable("database unavailable, retry later")
    return JSONResponse(
        {
            "agent_id": str(done.agent_id),
            "tenant": done.tenant,
            "switch": done.switch,
            "collector_public_key": done.collector_public_key,
        },
        status_code=201,
    )


async def status_endpoint(request: Request) -> Response:
    state = get_state(request)
    header = request.headers.get("authorization", "")
    try:
        agent_text, _, _ = wire.parse_authorization(header)
    except wire.WireError as exc:
        return replies.error(401, str(exc))
    agent_id = parse_agent_id(agent_text)
    if agent_id is None:
        return replies.error(401, "unknown agent")
    try:
        async with state.pool.connection() as conn:
            status = await state.agents.status(conn, agent_id)
    except (psycopg.OperationalError, PoolTimeout):
        return replies.unavailable("database unavailable, retry later")
    if status is None:
        return replies.error(401, "unknown agent")
    try:
        wire.verify_request(
            status.agent.key, header, request.method, request.url.path, b"", wire.now_us()
        )
    except wire.WireError as exc:
        return replies.error(401, str(exc))
    if status.revoked:
        return replies.error(401, "agent revoked")
    return JSONResponse(
        {
            "agent_id": str(agent_id),
            "tenant": status.agent.tenant,
            "switch": status.agent.switch,
            "last_seq": status.last_seq,
            "last_seen": None if status.last_seen is None else status.last_seen.isoformat(),
        }
    )

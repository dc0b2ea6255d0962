"""The command queue: remote actions signed by the collector, delivered to agents, audited.

    cmd = await create_command(conn, tenant_id=1, switch="sw1", verb="block_ip",
                               args={"ip": "192.0.2.7", "ttl": 3600}, issued_by="alice")
    GET  /api/v1/agent/commands?after=SEQ&wait=S    agents: long-poll (signed request)
    POST /api/v1/agent/commands/result              agents: a result (signed request, JSON)
    POST /api/v1/blocks {switch, ip, ttl, dry_run}  admins: block (routes(), below)
    POST /api/v1/blocks/unblock {switch, ip}        admins: unblock
    GET  /api/v1/blocks                             admins: active blocks of their tenant
    GET  /api/v1/commands                           admins: recent commands of their tenant

Creating a command (one transaction): the switch's current agent is found, the address is
checked (`ipaddress`; never loopback, unspecified or multicast; never the collector's own
addresses; never an entry of `block_allowlist` for the tenant or for all), the number of
active blocks is checked, the agent's next seq is taken, the command is signed
(`wire.seal_command`, collector key from `keys.py`), stored, audited (`audit_log`) and
`NOTIFY cdrstats_command, '<agent id>'` wakes whichever collector holds that agent's poll.

Delivery is at least once (a pending command is returned by every poll until a result comes);
the agent runs it at most once (docs/actions.md). Each collector process listens on one
dedicated connection (`Waker`) and wakes the polls it holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

import psycopg
from cdrstats_agent import logs, wire
from cdrstats_agent.commands import host_addresses, resolve_hosts
from cdrstats_agent.firewall import IPAddress, parse_ip
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import apidoc, audit, auth, keys, replies, shutdown
from .agents import parse_agent_id
from .state import get_state

log = logs.get_logger("cdrstats.collector.commands")

NOTIFY_CHANNEL = "cdrstats_command"
COMMAND_TTL_S = 300
"""A command not delivered within this is refused by the agent (and not delivered); the
collector uses `[commands] command_ttl_s` (settings.py)."""
MAX_BLOCK_TTL_S = 30 * 86400
MAX_ACTIVE_BLOCKS = 1000
"""Active blocks per switch at most (the agent has its own `[actions] max_blocks`); the
collector uses `[commands] max_active_blocks` (settings.py)."""
MAX_POLL_WAIT_S = 60.0
MAX_DELIVERY = 50
ADMIN_ROLES = auth.ADMIN_ROLES
STATUSES = ("done", "failed", "refused")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class CommandError(Exception):
    """A command cannot be created; the text says why (API 422, CLI exit 1)."""


class NotFound(CommandError):
    """The switch (or tenant) does not exist or has no enrolled agent (API 404)."""


class Limits(TypedDict):
    command_ttl_s: int
    max_active_blocks: int


def limits(settings: Any) -> Limits:
    """`create_command` keyword arguments from the collector's `[commands]` settings:
    `create_command(conn, ..., **limits(state.settings))`."""
    return Limits(
        command_ttl_s=int(settings.command_ttl_s),
        max_active_blocks=int(settings.max_active_blocks),
    )


def parse_ttl(value: Any) -> int:
    """Seconds from an int or a text like "90", "15m", "1h", "7d"; CommandError otherwise."""
    if type(value) is int:
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = int(m[1]) * _UNITS[m[2]]
    else:
        raise CommandError(f"ttl: {value!r:.40} is not a duration (seconds, or 15m, 1h, 7d)")
    if not 1 <= seconds <= MAX_BLOCK_TTL_S:
        raise CommandError(f"ttl: must be from 1 s to {MAX_BLOCK_TTL_S // 86400} days")
    return seconds


@dataclass(frozen=True, slots=True)
class CommandRow:
    id: uuid.UUID
    tenant_id: int
    switch: str
    agent_id: uuid.UUID
    seq: int
    verb: str
    args: dict[str, Any]
    issued_by: str
    issued_at: datetime
    expires_at: datetime
    status: str
    result: str | None
    finished_at: datetime | None
    deliveries: int

    def to_json(self) -> dict[str, Any]:
        def iso(d: datetime | None) -> str | None:
            return None if d is None else d.isoformat()

        status = self.status
        if status == "pending" and self.expires_at <= datetime.now(self.expires_at.tzinfo):
            status = "expired"  # never delivered in time: the agent would refuse it
        return {
            "id": str(self.id),
            "tenant_id": self.tenant_id,
            "switch": self.switch,
            "agent_id": str(self.agent_id),
            "seq": self.seq,
            "verb": self.verb,
            "args": self.args,
            "issued_by": self.issued_by,
            "issued_at": iso(self.issued_at),
            "expires_at": iso(self.expires_at),
            "status": status,
            "result": self.result,
            "finished_at": iso(self.finished_at),
            "deliveries": self.deliveries,
        }


_ROW = (
    "SELECT c.id, c.tenant_id, s.name, c.agent_id, c.seq, c.verb, c.args, c.issued_by,"
    " c.issued_at, c.expires_at, c.status, c.result, c.finished_at, c.deliveries"
    " FROM command c JOIN switch s ON s.tenant_id = c.tenant_id AND s.id = c.switch_id"
)


def collector_addresses(urls: Sequence[str]) -> set[IPAddress]:
    """The collector host's own addresses and what its public URL resolves to."""
    return set(host_addresses()) | set(resolve_hosts(urls))


async def _allowlisted(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, ip: IPAddress, own: set[IPAddress]
) -> str | None:
    if ip.is_loopback or ip.is_unspecified:
        return "a loopback or unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip in own:
        return "an address of the collector"
    cur = await conn.execute(
        "SELECT network::text, note FROM block_allowlist"
        " WHERE (tenant_id IS NULL OR tenant_id = %s) AND network >>= %s::inet LIMIT 1",
        (tenant_id, str(ip)),
    )
    row = await cur.fetchone()
    if row is not None:
        return f"in the allowlist ({row[0]}{', ' + row[1] if row[1] else ''})"
    return None


async def create_command(
    conn: psycopg.AsyncConnection[Any],
    *,
    tenant_id: int,
    switch: str,
    verb: str,
    args: dict[str, Any],
    issued_by: str,
    user_id: int | None = None,
    own_addresses: Callable[[], set[IPAddress]] = set,
    command_ttl_s: int = COMMAND_TTL_S,
    max_active_blocks: int = MAX_ACTIVE_BLOCKS,
) -> CommandRow:
    """Check, sign, queue and audit one command (see the module docstring)."""
    if verb not in wire.COMMAND_VERBS:
        raise CommandError(f"verb: {verb!r} is not one of {', '.join(wire.COMMAND_VERBS)}")
    try:
        ip = parse_ip(args.get("ip"))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    clean: dict[str, Any] = {"ip": str(ip)}
    if verb == "block_ip":
        clean["ttl"] = parse_ttl(args.get("ttl"))
    if args.get("dry_run"):
        clean["dry_run"] = True
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT s.id, a.id FROM switch s LEFT JOIN LATERAL ("
            "  SELECT id FROM agent WHERE tenant_id = s.tenant_id AND switch_id = s.id"
            "  AND revoked_at IS NULL ORDER BY enrolled_at DESC LIMIT 1) a ON true"
            " WHERE s.tenant_id = %s AND s.name = %s",
            (tenant_id, switch),
        )
        found = await cur.fetchone()
        if found is None:
            raise NotFound(f"no switch {switch!r} in tenant {tenant_id}")
        switch_id, agent_id = int(found[0]), found[1]
        if agent_id is None:
            raise NotFound(f"switch {switch!r} has no enrolled agent")
        if verb == "block_ip":
            why = await _allowlisted(conn, tenant_id, ip, own_addresses())
            if why is not None:
                raise CommandError(f"{ip} cannot be blocked: {why}")
            cur = await conn.execute(
                "SELECT (SELECT count(*) FROM ip_block WHERE tenant_id = %(t)s"
                "   AND switch_id = %(s)s AND expires_at > now() AND ip <> %(ip)s::inet)"
                " + (SELECT count(*) FROM command WHERE agent_id = %(a)s AND status = 'pending'"
                "   AND verb = 'block_ip' AND expires_at > now() AND args->>'ip' <> %(ip_text)s)",
                {"t": tenant_id, "s": switch_id, "a": agent_id, "ip": str(ip), "ip_text": str(ip)},
            )
            counted = await cur.fetchone()
            if counted is not None and int(counted[0]) >= max_active_blocks:
                raise CommandError(
                    f"switch {switch!r} has {counted[0]} active or pending blocks,"
                    f" the maximum ({max_active_blocks})"
                )
        cur = await conn.execute(
            "INSERT INTO command_seq (agent_id, last_seq) VALUES (%s, 1)"
            " ON CONFLICT (agent_id) DO UPDATE SET last_seq = command_seq.last_seq + 1"
            " RETURNING last_seq",
            (agent_id,),
        )
        seq_row = await cur.fetchone()
        assert seq_row is not None
        seq = int(seq_row[0])
        key = await keys.load_signing_key(conn)
        cmd_id = uuid.uuid4()
        issued = wire.now_us()
        command = wire.Command(
            id=str(cmd_id),
            seq=seq,
            agent=str(agent_id),
            verb=verb,
            args=clean,
            issued_at=issued,
            expires_at=issued + command_ttl_s * 1_000_000,
        )
        envelope = wire.seal_command(command, key)
        await conn.execute(
            "INSERT INTO command (id, tenant_id, switch_id, agent_id, seq, verb, args, envelope,"
            " user_id, issued_by, issued_at, expires_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " to_timestamp(%s / 1e6), to_timestamp(%s / 1e6))",
            (
                cmd_id,
                tenant_id,
                switch_id,
                agent_id,
                seq,
                verb,
                Jsonb(clean),
                envelope,
                user_id,
                issued_by,
                issued,
                command.expires_at,
            ),
        )
        await audit.record(
            conn,
            tenant_id,
            user_id,
            issued_by,
            f"command.{verb}",
            str(ip),
            {"command_id": str(cmd_id), "switch": switch, "seq": seq, **clean},
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(agent_id)))
    row = await get_command(conn, cmd_id)
    assert row is not None
    log.info("command_created", id=str(cmd_id), verb=verb, ip=str(ip), switch=switch, by=issued_by)
    return row


async def get_command(conn: psycopg.AsyncConnection[Any], cmd_id: uuid.UUID) -> CommandRow | None:
    cur = await conn.execute(_ROW + " WHERE c.id = %s", (cmd_id,))
    row = await cur.fetchone()
    return None if row is None else CommandRow(*row)


async def list_commands(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, limit: int = 100
) -> list[CommandRow]:
    cur = await conn.execute(
        _ROW + " WHERE c.tenant_id = %s ORDER BY c.issued_at DESC, c.seq DESC LIMIT %s",
        (tenant_id, limit),
    )
    return [CommandRow(*r) for r in await cur.fetchall()]


async def active_blocks(conn: psycopg.AsyncConnection[Any], tenant_id: int) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT s.name, host(b.ip), b.blocked_at, b.expires_at, b.command_id, c.issued_by"
        " FROM ip_block b JOIN switch s ON s.tenant_id = b.tenant_id AND s.id = b.switch_id"
        " JOIN command c ON c.id = b.command_id"
        " WHERE b.tenant_id = %s AND b.expires_at > now() ORDER BY b.expires_at",
        (tenant_id,),
    )
    return [
        {
            "switch": r[0],
            "ip": r[1],
            "blocked_at": r[2].isoformat(),
            "expires_at": r[3].isoformat(),
            "command_id": str(r[4]),
            "issued_by": r[5],
        }
        for r in await cur.fetchall()
    ]


async def record_result(
    conn: psycopg.AsyncConnection[Any], agent_id: uuid.UUID, doc: dict[str, Any]
) -> str:
    """Store an agent's result; returns "stored", "already" or "unknown" (all audited)."""
    cid = doc.get("id")
    status = doc.get("status")
    text = doc.get("result")
    if not isinstance(cid, str) or status not in STATUSES or not isinstance(text, str):
        raise CommandError("a result needs id (str), status (done|failed|refused), result (str)")
    text = text[:1000]
    try:
        cmd_uuid = uuid.UUID(cid)
    except ValueError:
        cmd_uuid = None
    async with conn.transaction():
        row = None
        if cmd_uuid is not None:
            cur = await conn.execute(
                "UPDATE command SET status = %s, result = %s, finished_at = now()"
                " WHERE id = %s AND agent_id = %s AND status = 'pending'"
                " RETURNING tenant_id, switch_id, verb, args, user_id, issued_by,"
                " (SELECT name FROM switch WHERE id = command.switch_id)",
                (status, text, cmd_uuid, agent_id),
            )
            row = await cur.fetchone()
        if row is None:
            cur = await conn.execute(
                "SELECT a.tenant_id, s.name, c.status FROM agent a"
                " JOIN switch s ON s.tenant_id = a.tenant_id AND s.id = a.switch_id"
                " LEFT JOIN command c ON c.id = %s AND c.agent_id = a.id WHERE a.id = %s",
                (cmd_uuid, agent_id),
            )
            found = await cur.fetchone()
            if found is not None and found[2] is not None:
                return "already"
            await audit.record(
                conn,
                None if found is None else int(found[0]),
                None,
                f"agent:{agent_id}",
                "command.result_unknown",
                cid[:100],
                {"status": status, "result": text, "switch": None if found is None else found[1]},
            )
            return "unknown"
        tenant_id, switch_id, verb, args, user_id, issued_by, switch_name = row
        ip = str(args.get("ip", ""))
        if status == "done" and not args.get("dry_run"):
            if verb == "block_ip" and type(args.get("ttl")) is int:
                await conn.execute(
                    "INSERT INTO ip_block (tenant_id, switch_id, ip, expires_at, command_id)"
                    " VALUES (%s, %s, %s, now() + make_interval(secs => %s), %s)"
                    " ON CONFLICT (tenant_id, switch_id, ip) DO UPDATE SET"
                    " blocked_at = now(), expires_at = EXCLUDED.expires_at,"
                    " command_id = EXCLUDED.command_id",
                    (tenant_id, switch_id, ip, int(args["ttl"]), cmd_uuid),
                )
            elif verb == "unblock_ip":
                await conn.execute(
                    "DELETE FROM ip_block WHERE tenant_id = %s AND switch_id = %s AND ip = %s",
                    (tenant_id, switch_id, ip),
                )
        await audit.record(
            conn,
            int(tenant_id),
            user_id,
            issued_by,
            f"command.{status}",
            ip,
            {
                "command_id": cid,
                "switch": switch_name,
                "verb": verb,
                "seq": doc.get("seq"),
                "result": text,
            },
        )
    return "stored"


# --- the collector's allowlist (operator entries) ---------------------------------------------


def allowlist_add(
    conn: psycopg.Connection[Any], network: str, tenant_id: int | None, note: str = ""
) -> str:
    """Add a network that can never be blocked (for one tenant, or every tenant); idempotent."""
    import ipaddress

    try:
        net = ipaddress.ip_network(network.strip(), strict=False)
    except ValueError:
        raise CommandError(f"{network!r} is not an IP address or network") from None
    with conn.transaction():
        conn.execute(
            "INSERT INTO block_allowlist (tenant_id, network, note) VALUES (%s, %s, %s)"
            " ON CONFLICT (coalesce(tenant_id, 0), network) DO UPDATE SET note = EXCLUDED.note",
            (tenant_id, str(net), note),
        )
    return str(net)


def allowlist_delete(conn: psycopg.Connection[Any], network: str, tenant_id: int | None) -> bool:
    import ipaddress

    try:
        network = str(ipaddress.ip_network(network.strip(), strict=False))
    except ValueError:
        raise CommandError(f"{network!r} is not an IP address or network") from None
    with conn.transaction():
        cur = conn.execute(
            "DELETE FROM block_allowlist WHERE coalesce(tenant_id, 0) = coalesce(%s, 0)"
            " AND network = %s::cidr",
            (tenant_id, network),
        )
    return cur.rowcount > 0


def allowlist_list(conn: psycopg.Connection[Any]) -> list[tuple[str | None, str, str]]:
    """(tenant name or None for every tenant, network, note)."""
    rows = conn.execute(
        "SELECT t.name, b.network::text, b.note FROM block_allowlist b"
        " LEFT JOIN tenant t ON t.id = b.tenant_id ORDER BY t.name NULLS FIRST, b.network"
    ).fetchall()
    return [(r[0], str(r[1]), str(r[2])) for r in rows]


# --- waking long polls (one LISTEN connection per collector process) --------------------------


class Waker:
    """Listens on `cdrstats_command` and wakes the polls waiting for the named agent."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = False
        self.closing = False
        """The server is stopping: polls answer at once (see `end_polls`)."""

    def subscribe(self, agent_id: str) -> asyncio.Event:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="cdrstats-command-waker")
        event = asyncio.Event()
        self._waiting.setdefault(agent_id, set()).add(event)
        return event

    def unsubscribe(self, agent_id: str, event: asyncio.Event) -> None:
        events = self._waiting.get(agent_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._waiting[agent_id]

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening = True
                    self._wake_all()  # anything created while we were not listening
                    async for note in conn.notifies():
                        for event in self._waiting.get(note.payload, ()):
                            event.set()
            except psycopg.Error as exc:
                log.warning("command_listener_down", error=str(exc).strip()[:200])
            finally:
                self.listening = False
            await asyncio.sleep(2.0)

    def end_polls(self) -> None:
        """Server shutdown: every waiting poll answers now (its agent polls another collector
        or this one again once it is back), instead of holding the stop for its wait."""
        self.closing = True
        self._wake_all()

    def _wake_all(self) -> None:
        for events in self._waiting.values():
            for event in events:
                event.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _waker(request: Request) -> Waker:
    found: Waker | None = getattr(request.app.state, "cdrstats_command_waker", None)
    if found is None:
        found = Waker(get_state(request).settings.database_url)
        request.app.state.cdrstats_command_waker = found
    return found


async def close(app: Any) -> None:
    """Stop this process's listener (called by the app's lifespan)."""
    found: Waker | None = getattr(app.state, "cdrstats_command_waker", None)
    if found is not None:
        await found.close()


# --- agent routes ------------------------------------------------------------------------------


async def _agent(request: Request, body: bytes) -> uuid.UUID | Response:
    """The signed request's enrolled agent, or the 401/503 answer."""
    state = get_state(request)
    header = request.headers.get("authorization", "")
    try:
        agent_text, _, _ = wire.parse_authorization(header)
    except wire.WireError as exc:
        return replies.error(401, str(exc))
    agent_id = parse_agent_id(agent_text)
    if agent_id is None:
        return replies.error(401, "unknown agent")
    async with state.pool.connection() as conn:
        status = await state.agents.status(conn, agent_id)
    if status is None:
        return replies.error(401, "unknown agent")
    try:
        wire.verify_request(
            status.agent.key, header, request.method, request.url.path, body, wire.now_us()
        )
    except wire.WireError as exc:
        return replies.error(401, str(exc))
    if status.revoked:
        return replies.error(401, "agent revoked")
    return agent_id


_PENDING = (
    "UPDATE command SET deliveries = deliveries + 1, delivered_at = now()"
    " WHERE id IN (SELECT id FROM command WHERE agent_id = %s AND status = 'pending'"
    " AND seq > %s AND expires_at > now() ORDER BY seq LIMIT %s)"
    " RETURNING id, seq, envelope"
)


async def _wait(request: Request, event: asyncio.Event, left: float, waker: Waker) -> bool:
    """Until `event` is set or `left` seconds pass; returns early when the agent hangs up (so
    a stopped agent does not hold a request open) or, without a working listener, after 2 s
    (the caller then looks in the table again). True when the agent hung up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (left if waker.listening else min(left, 2.0))
    while not event.is_set():
        step = min(deadline - loop.time(), 1.0)
        if step <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), step)
        if not event.is_set() and await request.is_disconnected():
            return True
    return False


async def poll_endpoint(request: Request) -> Response:
    """`GET /api/v1/agent/commands?after=SEQ&wait=S`: pending commands, waiting up to S s."""
    state = get_state(request)
    try:
        after = int(request.query_params.get("after", "0"))
        wait = min(MAX_POLL_WAIT_S, max(0.0, float(request.query_params.get("wait", "0"))))
    except ValueError:
        return replies.error(422, "after must be an integer and wait a number of seconds")
    try:
        who = await _agent(request, b"")
        if isinstance(who, Response):
            return who
        waker = _waker(request)
        shutdown.on_exit_signal(waker.end_polls)
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            event = waker.subscribe(str(who))
            try:
                async with state.pool.connection() as conn:
                    cur = await conn.execute(_PENDING, (who, after, MAX_DELIVERY))
                    rows = sorted(await cur.fetchall(), key=lambda r: int(r[1]))
                left = deadline - asyncio.get_running_loop().time()
                if rows or left <= 0 or waker.closing:
                    break
                if await _wait(request, event, left, waker):
                    break  # nobody to answer
            finally:
                waker.unsubscribe(str(who), event)
    except (psycopg.OperationalError, PoolTimeout):
        return replies.unavailable("database unavailable, retry later")
    return JSONResponse(
        {
            "commands": [
                {"id": str(r[0]), "seq": int(r[1]), "envelope": base64.b64encode(r[2]).decode()}
                for r in rows
            ]
        }
    )


async def result_endpoint(request: Request) -> Response:
    """`POST /api/v1/agent/commands/result`: one result, JSON, in a signed request."""
    body = await request.body()
    if len(body) > 64 * 1024:
        return replies.error(413, "result larger than 64 KiB")
    try:
        who = await _agent(request, body)
        if isinstance(who, Response):
            return who
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return replies.error(422, f"result is not a JSON object: {exc}")
        async with get_state(request).pool.connection() as conn:
            outcome = await record_result(conn, who, doc)
    except CommandError as exc:
        return replies.error(422, str(exc))
    except (psycopg.OperationalError, PoolTimeout):
        return replies.unavailable("database unavailable, retry later")
    log.info(
        "command_result",
        agent=str(who),
        id=str(doc.get("id"))[:64],
        outcome=outcome,
        status=str(doc.get("status")),
    )
    if outcome == "unknown":
        return replies.error(404, "no such command for this agent (recorded in the audit log)")
    return JSONResponse({"id": doc["id"], "outcome": outcome})


# --- user routes -------------------------------------------------------------------------------


OWN_ADDRESSES_TTL_S = 300.0


async def own_addresses(request: Request) -> set[IPAddress]:
    """The collector's addresses, looked up at most every 5 minutes per process."""
    cached: tuple[float, set[IPAddress]] | None = getattr(
        request.app.state, "cdrstats_own_addresses", None
    )
    now = asyncio.get_running_loop().time()
    if cached is None or now - cached[0] > OWN_ADDRESSES_TTL_S:
        url = get_state(request).settings.url
        found = await asyncio.to_thread(collector_addresses, [url])
        cached = (now, found)
        request.app.state.cdrstats_own_addresses = cached
    return cached[1]


async def _user_command(request: Request, verb: str) -> Response:
    state = get_state(request)
    try:
        who = await auth.require(request, roles=ADMIN_ROLES)
        doc = await replies.json_object(request, "the command", bad_status=422)
        tenant = doc.get("tenant", request.query_params.get("tenant"))
        if tenant is not None and type(tenant) not in (int, str):
            raise HTTPException(422, "tenant: must be a tenant id")
        tenant_id = auth.tenant_scope(who, tenant)
        switch = doc.get("switch")
        if not isinstance(switch, str) or not switch:
            raise HTTPException(422, "switch: the switch's name is required")
        args: dict[str, Any] = {"ip": doc.get("ip"), "dry_run": bool(doc.get("dry_run"))}
        if verb == "block_ip":
            args["ttl"] = doc.get("ttl", state.settings.default_block_ttl_s)
        own = await own_addresses(request)
        async with state.pool.connection() as conn:
            row = await create_command(
                conn,
                tenant_id=tenant_id,
                switch=switch,
                verb=verb,
                args=args,
                issued_by=who.username,
                user_id=who.user_id,
                own_addresses=lambda: own,
                **limits(state.settings),
            )
    except HTTPException as exc:
        return replies.error(
            exc.status_code, str(exc.detail), headers=dict(exc.headers) if exc.headers else None
        )
    except NotFound as exc:
        return replies.error(404, str(exc))
    except CommandError as exc:
        return replies.error(422, str(exc))
    except keys.NoCollectorKey as exc:
        return replies.unavailable(str(exc))
    except (psycopg.OperationalError, PoolTimeout):
        return replies.unavailable("database unavailable, retry later")
    return JSONResponse(row.to_json(), status_code=201)


async def block_endpoint(request: Request) -> Response:
    return await _user_command(request, "block_ip")


async def unblock_endpoint(request: Request) -> Response:
    return await _user_command(request, "unblock_ip")


async def _user_read(request: Request, what: str) -> Response:
    state = get_state(request)
    try:
        who = await auth.require(request, roles=ADMIN_ROLES)
        tenant_id = auth.tenant_scope(who, request.query_params.get("tenant"))
        async with auth.tenant_connection(state.pool, tenant_id) as conn:
            if what == "blocks":
                doc: dict[str, Any] = {"blocks": await active_blocks(conn, tenant_id)}
            else:
                rows = await list_commands(conn, tenant_id)
                doc = {"commands": [r.to_json() for r in rows]}
    except HTTPException as exc:
        return replies.error(
            exc.status_code, str(exc.detail), headers=dict(exc.headers) if exc.headers else None
        )
    except (psycopg.OperationalError, PoolTimeout):
        return replies.unavailable("database unavailable, retry later")
    return JSONResponse({"tenant_id": tenant_id, **doc})


async def blocks_endpoint(request: Request) -> Response:
    return await _user_read(request, "blocks")


async def commands_endpoint(request: Request) -> Response:
    return await _user_read(request, "commands")


def routes() -> list[BaseRoute]:
    """The command routes, to mount in the collector app (before the console)."""
    return [
        Route("/api/v1/agent/commands", poll_endpoint, methods=["GET"]),
        Route("/api/v1/agent/commands/result", result_endpoint, methods=["POST"]),
        Route("/api/v1/blocks", block_endpoint, methods=["POST"]),
        Route("/api/v1/blocks", blocks_endpoint, methods=["GET"]),
        Route("/api/v1/blocks/unblock", unblock_endpoint, methods=["POST"]),
        Route("/api/v1/commands", commands_endpoint, methods=["GET"]),
    ]


def openapi_paths() -> dict[str, Any]:
    """The users' command routes in the OpenAPI document (`openapi.py` adds them)."""
    errors = apidoc.errors

    command = {"type": "object", "description": "a command (docs/actions.md, GET /api/v1/commands)"}
    tenant = {"type": ["integer", "string"], "description": "superadmins: the tenant id"}
    common = dict(
        _401="no or invalid credentials",
        _403="not an admin (superadmin, tenant_admin)",
        _503="PostgreSQL is unavailable",
    )

    def post(summary: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
        return {
            "summary": summary,
            "tags": ["actions"],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "required": required, "properties": props}
                    }
                },
            },
            "responses": {
                "201": {
                    "description": "queued",
                    "content": {"application/json": {"schema": command}},
                },
                **errors(
                    _404="unknown switch, switch without agent, or another tenant",
                    _415="the body is not application/json",
                    _422="bad address, allowlisted address, bad ttl, too many blocks",
                    **common,
                ),
            },
            "security": [{"bearer": []}, {"session": []}],
        }

    def get(summary: str, key: str) -> dict[str, Any]:
        return {
            "summary": summary,
            "tags": ["actions"],
            "parameters": [
                {
                    "name": "tenant",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer"},
                    "description": "superadmins: the tenant id",
                }
            ],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "tenant_id": {"type": "integer"},
                                    key: {"type": "array", "items": {"type": "object"}},
                                },
                            }
                        }
                    },
                },
                **errors(_404="another tenant", _422="bad tenant", **common),
            },
            "security": [{"bearer": []}, {"session": []}],
        }

    ip = {"type": "string", "description": "an IPv4 or IPv6 address"}
    switch = {"type": "string", "description": "the switch's name"}
    dry = {"type": "boolean", "description": "check everything on the agent, change nothing"}
    ttl = {
        "type": ["integer", "string"],
        "description": "seconds, or 15m, 1h, 7d (default [commands] default_block_ttl_s, 1h)",
    }
    return {
        "/api/v1/blocks": {
            "post": {
                **post(
                    "Block an IP address on a switch",
                    {"switch": switch, "ip": ip, "ttl": ttl, "dry_run": dry, "tenant": tenant},
                    ["switch", "ip"],
                ),
                "operationId": "block_ip",
            },
            "get": {**get("Active blocks of the tenant", "blocks"), "operationId": "list_blocks"},
        },
        "/api/v1/blocks/unblock": {
            "post": {
                **post(
                    "Unblock an IP address on a switch",
                    {"switch": switch, "ip": ip, "dry_run": dry, "tenant": tenant},
                    ["switch", "ip"],
                ),
                "operationId": "unblock_ip",
            }
        },
        "/api/v1/commands": {
            "get": {**get("Recent commands of the tenant", "commands"), "operationId": "commands"}
        },
    }

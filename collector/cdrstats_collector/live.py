"""Calls in progress: `POST /api/v1/live` from agents, the live state in PostgreSQL, queries.

    POST /api/v1/live               a signed `live` message (docs/protocol.md, "Live calls")
    GET  /api/v1/live/calls         calls in progress of the caller's tenant (docs/http-api.md)
    await live_calls(conn, tenant_id, switch_id=None)   # for the API and the console
    await live_counts(conn, tenant_id)                   # {switch_id: calls in progress}

Checks of a message, in order (the same rules as ingest; nothing a client sends is a 500):
size (413), envelope (422), agent, signature and clock window (401), content (422, naming
the source, event and key), then in ONE transaction: the agent row and its live stream are
locked, a message that is not newer than the last one applied is refused (409: replay or
stale), the events are applied per source — a snapshot replaces the source's calls,
started/answered upsert a call, ended deletes it — the failed registrations the message
carries are added (authfail.py; each entry checked on its own: a bad one is counted in the
answer and logged, not fatal), the per-minute peak of the switch's calls
is recorded, and `NOTIFY cdrstats_live, '{"tenant_id", "switch_id", "count"}'` is sent once
(delivered at commit). PostgreSQL unreachable: 503, nothing applied.

A source's calls are valid until `live_source.expires_at` (last news from the source + the
collector's `[live] stale_s`); the queries here ignore expired sources and `prune` (run by
maintenance) deletes them with their calls.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from cdrstats_agent import logs, wire
from nacl.exceptions import BadSignatureError
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import accountcodes, auth, authfail, replies
from .agents import KnownAgent, parse_agent_id
from .ingest import _TooLarge, read_bounded
from .state import CollectorState, get_state

log = logs.get_logger("cdrstats.collector.live")

NOTIFY_CHANNEL = "cdrstats_live"
"""Equal to `realtime.LIVE_CHANNEL` (the broker listens on it)."""


# --- applying a message (pure part) --------------------------------------------------------------

_ROW_KEYS = (
    "state",
    "direction",
    "caller",
    "callee",
    "caller_name",
    "accountcode",
    "started_at",
    "answered_at",
    "src_ip",
    "trunk",
    "user_agent",
    "read_codec",
    "write_codec",
    "event_at",
)
_TEXT_COPY = ("caller", "callee", "caller_name", "accountcode", "src_ip", "trunk")
_TEXT_COPY2 = ("user_agent", "read_codec", "write_codec", "direction")


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    """Row values present in a checked data map (absent keys stay absent)."""
    out = {k: data[k] for k in (*_TEXT_COPY, *_TEXT_COPY2) if k in data}
    if not out.get("accountcode", True):
        del out["accountcode"]  # an empty code is no code: the call keeps its tenant
    if "state" in data:
        out["state"] = data["state"]
    if "start" in data:
        out["started_at"] = wire.from_us(data["start"])
    if "answer" in data:
        out["answered_at"] = wire.from_us(data["answer"])
    return out


@dataclass(slots=True)
class Net:
    """What a source's events amount to: applied with a few set-based statements."""

    replace: bool
    """A snapshot was among the events: the source's calls become exactly `rows`."""
    rows: dict[str, dict[str, Any]]
    """call_id -> row values to insert or merge (absent values keep the stored ones)."""
    ended: set[str]
    """Calls to delete (only when not `replace`)."""


def reduce_events(events: list[dict[str, Any]]) -> Net:
    """The net effect of checked wire events of one source, applied in order."""
    net = Net(False, {}, set())
    for event in events:
        kind = event["kind"]
        at = wire.from_us(event["at"])
        if kind == "snapshot":
            net.replace, net.rows, net.ended = True, {}, set()
            for call in event["calls"]:
                row = _fields(call)
                row.setdefault("state", "answered" if "answered_at" in row else "ringing")
                row["event_at"] = at
                net.rows[call["call_id"]] = row
            continue
        call_id = event["call_id"]
        if kind == "ended":
            net.rows.pop(call_id, None)
            if not net.replace:
                net.ended.add(call_id)
            continue
        row = _fields(event.get("data", {}))
        if kind == "started":
            row.setdefault("state", "ringing")
            row.setdefault("started_at", at)
        else:  # answered
            row.setdefault("state", "answered")
            row.setdefault("answered_at", at)
        row["event_at"] = at
        net.ended.discard(call_id)
        merged = net.rows.setdefault(call_id, {})
        merged.update(row)
    return net


# --- the transaction -----------------------------------------------------------------------------

_LOCK = (
    b"SELECT a.revoked_at IS NOT NULL, l.stream, l.seq, l.sent_at, v.n, v.top"
    b" FROM agent a JOIN live_agent l ON l.agent_id = a.id"
    b" CROSS JOIN (" + accountcodes.VERSION_SQL.encode() + b") AS v(n, top)"
    b" WHERE a.id = %(agent)s FOR UPDATE OF l"
)
_ENSURE_AGENT = (
    b"INSERT INTO live_agent (agent_id, stream, seq, sent_at)"
    b" SELECT id, '', 0, 0 FROM agent WHERE id = %(agent)s ON CONFLICT DO NOTHING"
)
_ADVANCE = (
    b"UPDATE live_agent SET stream = %(stream)s, seq = %(seq)s, sent_at = %(sent_at)s,"
    b" received_at = now() WHERE agent_id = %(agent)s"
)
# One statement per source: lock the source's rows (one per tenant with calls on it) and
# remember whether they had expired, upsert the rows of the tenants the message's calls go
# to, refresh the others, and delete the calls a snapshot leaves out, or all of them when the
# source had expired (a source that expired is not brought back by events alone: its stored
# calls are stale).
_SOURCE = (
    b"WITH old AS ("
    b"  SELECT coalesce(bool_or(x.expired), false) AS expired FROM ("
    b"   SELECT expires_at <= now() AS expired FROM live_source"
    b"   WHERE switch_id = %(switch)s AND source = %(source)s FOR UPDATE) AS x),"
    b" up AS ("
    b"  INSERT INTO live_source AS s"
    b"  (tenant_id, switch_id, source, agent_id, seen_at, expires_at, snapshot_at)"
    b"  SELECT t, %(switch)s, %(source)s, %(agent)s, now(),"
    b"   now() + make_interval(secs => %(stale)s), CASE WHEN %(snapshot)s::boolean THEN now() END"
    b"  FROM unnest(%(tenants)s::int8[]) AS t"
    b"  ON CONFLICT (tenant_id, switch_id, source) DO UPDATE SET"
    b"   agent_id = EXCLUDED.agent_id, seen_at = now(), expires_at = EXCLUDED.expires_at,"
    b"   snapshot_at = coalesce(EXCLUDED.snapshot_at, s.snapshot_at)),"
    b" others AS ("
    b"  UPDATE live_source SET agent_id = %(agent)s, seen_at = now(),"
    b"   expires_at = now() + make_interval(secs => %(stale)s),"
    b"   snapshot_at = CASE WHEN %(snapshot)s::boolean THEN now() ELSE snapshot_at END"
    b"  WHERE switch_id = %(switch)s AND source = %(source)s"
    b"   AND tenant_id <> ALL(%(tenants)s::int8[]))"
    b" DELETE FROM live_call WHERE switch_id = %(switch)s AND source = %(source)s"
    b"  AND ((SELECT expired FROM old)"
    b"       OR (%(snapshot)s::boolean AND call_id <> ALL(%(keep)s::text[])))"
)
_DELETE = (
    b"DELETE FROM live_call WHERE switch_id = %(switch)s AND source = %(source)s"
    b" AND call_id = ANY(%(ids)s::text[])"
)


def _upsert(replace: bool) -> bytes:
    """Insert or update calls. Events merge (a value left out keeps the stored one); a
    snapshot replaces (its view of the call is the whole row). In both, a call whose code is
    left out keeps its tenant and its code; with a code, it goes to the code's tenant."""

    def value(col: str) -> str:
        return f"EXCLUDED.{col}" if replace else f"coalesce(EXCLUDED.{col}, c.{col})"

    direction = (
        "EXCLUDED.direction"
        if replace
        else "CASE WHEN EXCLUDED.direction = 'unknown' THEN c.direction ELSE EXCLUDED.direction END"
    )
    kept = ("caller", "callee", "caller_name", "started_at", "answered_at", "src_ip", "trunk")
    kept2 = ("user_agent", "read_codec", "write_codec")
    return (
        "INSERT INTO live_call AS c (tenant_id, switch_id, source, agent_id, call_id, state,"
        " direction, caller, callee, caller_name, accountcode, started_at, answered_at, src_ip,"
        " trunk, user_agent, read_codec, write_codec, event_at, updated_at)"
        " SELECT u.tenant_id, %(switch)s, %(source)s, %(agent)s, u.call_id, u.state,"
        "  coalesce(u.direction, 'unknown'), u.caller, u.callee, u.caller_name, u.accountcode,"
        "  u.started_at, u.answered_at, u.src_ip, u.trunk, u.user_agent, u.read_codec,"
        "  u.write_codec, u.event_at, now()"
        " FROM unnest(%(tenant_id)s::int8[], %(call_id)s::text[], %(state)s::text[],"
        "  %(direction)s::text[], %(caller)s::text[], %(callee)s::text[],"
        "  %(caller_name)s::text[], %(accountcode)s::text[], %(started_at)s::timestamptz[],"
        "  %(answered_at)s::timestamptz[], %(src_ip)s::inet[], %(trunk)s::text[],"
        "  %(user_agent)s::text[], %(read_codec)s::text[], %(write_codec)s::text[],"
        "  %(event_at)s::timestamptz[])"
        " AS u(tenant_id, call_id, state, direction, caller, callee, caller_name, accountcode,"
        "  started_at, answered_at, src_ip, trunk, user_agent, read_codec, write_codec, event_at)"
        " ON CONFLICT (switch_id, source, call_id) DO UPDATE SET"
        "  tenant_id = CASE WHEN EXCLUDED.accountcode IS NULL THEN c.tenant_id"
        "                   ELSE EXCLUDED.tenant_id END,"
        "  accountcode = coalesce(EXCLUDED.accountcode, c.accountcode),"
        "  agent_id = EXCLUDED.agent_id, state = EXCLUDED.state,"
        f" direction = {direction},"
        + "".join(f" {col} = {value(col)}," for col in (*kept, *kept2))
        + " event_at = EXCLUDED.event_at, updated_at = now()"
    ).encode()


_MERGE = _upsert(replace=False)
_REPLACE = _upsert(replace=True)

# Calls in progress on the switch per tenant (the switch's tenant always), each tenant's
# per-minute peak and notification, and the live_source rows of mapped tenants left without
# a call removed.
_FINISH = (
    b"WITH n AS ("
    b"  SELECT s.tenant_id, count(c.call_id) AS calls FROM live_source s"
    b"  LEFT JOIN live_call c USING (tenant_id, switch_id, source)"
    b"  WHERE s.switch_id = %(switch)s AND s.expires_at > now() GROUP BY s.tenant_id"
    b"  UNION ALL SELECT %(tenant)s, 0 WHERE NOT EXISTS (SELECT FROM live_source"
    b"   WHERE tenant_id = %(tenant)s AND switch_id = %(switch)s AND expires_at > now())),"
    b" peak AS ("
    b"  INSERT INTO live_count_minute AS m (tenant_id, switch_id, minute, calls_max)"
    b"  SELECT tenant_id, %(switch)s, date_trunc('minute', now()), calls FROM n"
    b"  ON CONFLICT (tenant_id, switch_id, minute)"
    b"  DO UPDATE SET calls_max = greatest(m.calls_max, EXCLUDED.calls_max)),"
    b" gone AS ("
    b"  DELETE FROM live_source s WHERE s.switch_id = %(switch)s AND s.tenant_id <> %(tenant)s"
    b"  AND NOT EXISTS (SELECT FROM live_call c WHERE c.tenant_id = s.tenant_id"
    b"   AND c.switch_id = s.switch_id AND c.source = s.source))"
    b" SELECT tenant_id, calls, pg_notify('" + NOTIFY_CHANNEL.encode() + b"', jsonb_build_object("
    b"  'tenant_id', tenant_id, 'switch_id', %(switch)s::bigint, 'count', calls)::text)"
    b" FROM n ORDER BY tenant_id"
)


@dataclass(frozen=True, slots=True)
class Applied:
    count: int
    """Calls in progress on the agent's switch after the message (all tenants')."""


@dataclass(frozen=True, slots=True)
class Stale:
    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


Outcome = Applied | Stale | Refused


async def apply_message(
    conn: psycopg.AsyncConnection[Any],
    agent: KnownAgent,
    message: wire.LiveMessage,
    *,
    stale_s: float,
    codes: accountcodes.AccountCodeCache,
    auth_failures: list[dict[str, Any]] | None = None,
) -> Outcome:
    """Apply a checked live message of `agent` in one transaction (see the module docstring).

    `codes`: the process's account-code mappings (the ingestor's). `auth_failures` (default:
    the message's) are the failed registrations to store (authfail.py), in the same
    transaction."""
    ref = agent.ref
    base = {"agent": ref.id, "tenant": ref.tenant_id, "switch": ref.switch_id}
    # Statements are pipelined: three round trips to the server whatever the message holds.
    async with conn.transaction(), conn.pipeline():
        # Live state is disposable (the next snapshot rebuilds it): no need to wait for the
        # WAL flush at commit. A crash of PostgreSQL may lose the last few live messages.
        await conn.execute(b"SET LOCAL synchronous_commit = off")
        await conn.execute(_ENSURE_AGENT, base)
        cur = await conn.execute(_LOCK, base)
        row = await cur.fetchone()
        if row is None:
            return Refused("unknown agent")
        revoked, stream, seq, sent_at, *version = row
        if revoked:
            return Refused("agent revoked")
        if stream == message.stream and message.seq <= seq:
            return Stale(f"live message {message.seq} of this stream is not after {seq}")
        if stream != message.stream and message.sent_at <= sent_at:
            return Stale("live message sent before the last one applied (a replay)")
        await conn.execute(
            _ADVANCE,
            {**base, "stream": message.stream, "seq": message.seq, "sent_at": message.sent_at},
        )
        maps = await codes.get(conn, tuple(version))  # a round trip only when they changed
        for part in message.sources:
            await _apply_source(conn, base, part, stale_s, maps)
        failures = message.auth_failures if auth_failures is None else auth_failures
        await authfail.store(conn, ref.tenant_id, ref.switch_id, failures)
        cur = await conn.execute(_FINISH, base)
        count = sum(int(n) for _, n, _ in await cur.fetchall())
    return Applied(count)


async def _apply_source(
    conn: psycopg.AsyncConnection[Any],
    base: dict[str, Any],
    part: wire.LiveStream,
    stale_s: float,
    maps: accountcodes.AccountCodes,
) -> None:
    net = reduce_events(part.events)
    own = base["tenant"]
    params = {**base, "source": part.source}
    codes = maps.codes(base["switch"])
    rows = net.rows.values()
    # the tenant of each call (a call whose event leaves out its code keeps its stored one)
    tenant_of = (
        [codes.get(r.get("accountcode") or "", own) for r in rows] if codes else [own] * len(rows)
    )
    await conn.execute(
        _SOURCE,
        {
            **params,
            "stale": stale_s,
            "snapshot": net.replace,
            "tenants": sorted({own, *tenant_of}),
            "keep": list(net.rows) if net.replace else [],
        },
    )
    if not net.replace and net.ended:
        await conn.execute(_DELETE, {**params, "ids": sorted(net.ended)})
    if net.rows:
        columns: dict[str, list[Any]] = {"tenant_id": tenant_of, "call_id": list(net.rows)}
        for key in _ROW_KEYS:
            columns[key] = [r.get(key) for r in rows]
        await conn.execute(_REPLACE if net.replace else _MERGE, {**params, **columns})


async def prune(conn: psycopg.AsyncConnection[Any]) -> int:
    """Delete expired live sources and their calls; returns how many sources."""
    async with conn.transaction():
        cur = await conn.execute("DELETE FROM live_source WHERE expires_at <= now()")
        return max(cur.rowcount, 0)


# --- queries (API and console) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveCall:
    tenant_id: int
    switch_id: int
    switch: str
    source: str
    call_id: str
    state: str
    direction: str
    caller: str | None
    callee: str | None
    caller_name: str | None
    accountcode: str | None
    started_at: datetime | None
    answered_at: datetime | None
    src_ip: str | None
    trunk: str | None
    user_agent: str | None
    read_codec: str | None
    write_codec: str | None
    event_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return out


# Switch names as the tenant may read them (its own switches, and under `auth.tenant_connection`
# those that carry its mapped calls: `cdrstats_visible_switches()`, migrations 0010 and 0012).
_CALLS = (
    "SELECT c.tenant_id, c.switch_id, coalesce(w.name, 'switch ' || c.switch_id), c.source,"
    " c.call_id, c.state, c.direction,"
    " c.caller, c.callee, c.caller_name, c.accountcode, c.started_at, c.answered_at,"
    " host(c.src_ip), c.trunk, c.user_agent, c.read_codec, c.write_codec, c.event_at,"
    " c.updated_at"
    " FROM live_call c"
    " JOIN live_source s USING (tenant_id, switch_id, source)"
    " LEFT JOIN (SELECT id, name FROM switch WHERE tenant_id = %(tenant)s"
    "  UNION SELECT id, name FROM cdrstats_visible_switches()) AS w ON w.id = c.switch_id"
    " WHERE c.tenant_id = %(tenant)s AND s.expires_at > now()"
)


async def live_calls(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, switch_id: int | None = None
) -> list[LiveCall]:
    """Calls in progress of a tenant (of one switch), oldest first; expired sources left out."""
    query = _CALLS
    params: dict[str, Any] = {"tenant": tenant_id}
    if switch_id is not None:
        query += " AND c.switch_id = %(switch)s"
        params["switch"] = switch_id
    query += " ORDER BY c.started_at NULLS LAST, c.switch_id, c.source, c.call_id"
    cur = await conn.execute(query.encode(), params)
    return [LiveCall(*row) for row in await cur.fetchall()]


async def live_counts(conn: psycopg.AsyncConnection[Any], tenant_id: int) -> dict[int, int]:
    """Calls in progress per switch of a tenant ({switch_id: count}).

    Switches whose live sources report no call have 0; switches without a live source (or
    whose sources expired) are absent.
    """
    cur = await conn.execute(
        b"SELECT s.switch_id, count(c.call_id) FROM live_source s"
        b" LEFT JOIN live_call c USING (tenant_id, switch_id, source)"
        b" WHERE s.tenant_id = %(tenant)s AND s.expires_at > now() GROUP BY s.switch_id",
        {"tenant": tenant_id},
    )
    return {int(sid): int(n) for sid, n in await cur.fetchall()}


# --- HTTP ----------------------------------------------------------------------------------------


async def live_endpoint(request: Request) -> Response:
    """`POST /api/v1/live`."""
    state = get_state(request)
    result, response = await _live(request, state)
    state.metrics.live_messages.labels(result).inc()
    return response


async def _live(request: Request, state: CollectorState) -> tuple[str, Response]:
    limit = state.settings.max_body_bytes
    try:
        data = await read_bounded(request, limit)
    except _TooLarge:
        return "too_large", replies.error(413, f"live message larger than {limit} bytes")
    try:
        envelope = wire.unseal(data, "live")
    except wire.WireError as exc:
        return "invalid", _invalid(str(exc), None)
    agent_id = parse_agent_id(envelope.signer)
    if agent_id is None:
        return "unauthorized", _unauthorized("unknown agent", envelope.signer)
    try:
        agent = await _agent(state, agent_id)
    except (psycopg.OperationalError, PoolTimeout):
        return "unavailable", _unavailable()
    if isinstance(agent, str):
        return "unauthorized", _unauthorized(agent, envelope.signer)
    try:
        agent.key.verify(envelope.payload, envelope.sig)
    except BadSignatureError:
        return "unauthorized", _unauthorized("bad signature", envelope.signer)
    try:
        payload = wire.live_payload(envelope)
        sent_at = payload.get("sent_at")
        if type(sent_at) is int:
            skew_s = (sent_at - wire.now_us()) / 1e6
            if abs(skew_s) > state.settings.clock_window_s:
                return "unauthorized", _unauthorized(
                    f"sent_at is {skew_s:+.0f} s from the collector's clock (window"
                    f" {state.settings.clock_window_s} s): check the agent's clock",
                    envelope.signer,
                )
        message = wire.check_live_payload(payload, envelope.signer)
    except wire.WireError as exc:
        return "invalid", _invalid(str(exc), envelope.signer)
    except RecursionError:
        return "invalid", _invalid("live message is nested too deeply", envelope.signer)
    failures, refused = authfail.split_by_clock(message.auth_failures, wire.now_us())
    rejected = message.auth_rejected + refused
    try:
        async with state.pool.connection() as conn:
            outcome = await apply_message(
                conn,
                agent,
                message,
                stale_s=state.settings.live_stale_s,
                codes=state.ingestor.account_codes,
                auth_failures=failures,
            )
    except (psycopg.OperationalError, PoolTimeout):
        return "unavailable", _unavailable()
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        # The payload checks should make this impossible; never a 500 for client input.
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.error("live_not_stored", agent=envelope.signer, reason=text)
        return "invalid", _invalid(f"live message cannot be stored: {text}", envelope.signer)
    if isinstance(outcome, Stale):
        log.warning("live_stale", agent=envelope.signer, seq=message.seq, reason=outcome.reason)
        return "stale", replies.error(409, outcome.reason)
    if isinstance(outcome, Refused):
        state.agents.forget(agent_id)
        return "unauthorized", _unauthorized(outcome.reason, envelope.signer)
    state.metrics.live_events.inc(message.event_count)
    state.metrics.auth_failures.labels("stored").inc(len(failures))
    state.metrics.auth_failures.labels("rejected").inc(len(rejected))
    if rejected:
        # A plugin (or agent) bug, or a switch with a wrong clock: the rest was applied.
        log.warning(
            "live_auth_failures_rejected",
            agent=envelope.signer,
            seq=message.seq,
            rejected=len(rejected),
            first=rejected[0][:300],
        )
    log.debug(
        "live_applied",
        agent=envelope.signer,
        seq=message.seq,
        events=message.event_count,
        calls=outcome.count,
    )
    body = {"seq": message.seq, "events": message.event_count, "calls": outcome.count}
    if message.auth_failures or rejected:
        body["auth_failures"] = len(failures)
        body["auth_failures_rejected"] = len(rejected)
    return "applied", JSONResponse(body)


async def _agent(state: CollectorState, agent_id: UUID) -> KnownAgent | str:
    """The enrolled agent, or the reason it is refused."""
    agent = state.agents.cached(agent_id)
    if agent is not None:
        return agent
    async with state.pool.connection() as conn:
        status = await state.agents.status(conn, agent_id)
    if status is None:
        return "unknown agent"
    if status.revoked:
        return "agent revoked"
    return status.agent


def _invalid(message: str, agent: str | None) -> JSONResponse:
    log.warning("live_invalid", agent=(agent or "-")[:64], reason=message)
    return replies.error(422, message)


def _unauthorized(reason: str, agent: str) -> JSONResponse:
    log.warning("live_unauthorized", agent=agent[:64], reason=reason)
    return replies.error(401, reason)


def _unavailable() -> JSONResponse:
    return replies.unavailable("database unavailable, retry later")


async def live_calls_endpoint(request: Request) -> Response:
    """`GET /api/v1/live/calls[?tenant=ID][&switch=ID]`: the calls in progress of one tenant."""
    state = get_state(request)
    try:
        who = await auth.require(request)
        tenant_id = auth.tenant_scope(who, request.query_params.get("tenant"))
        switch_id: int | None = None
        text = request.query_params.get("switch")
        if text:
            try:
                switch_id = int(text)
            except ValueError:
                raise auth.ParamError("switch", f"not a switch id: {text!r:.40}") from None
            if not 0 < switch_id < 2**63:
                raise auth.ParamError("switch", f"not a switch id: {text!r:.40}")
        async with auth.tenant_connection(state.pool, tenant_id) as conn:
            cur = await conn.execute(b"SELECT 1 FROM tenant WHERE id = %s", (tenant_id,))
            if await cur.fetchone() is None:  # (under row-level security: only its own)
                raise HTTPException(404, f"no tenant {tenant_id}")
            calls = await live_calls(conn, tenant_id, switch_id)
            counts = await live_counts(conn, tenant_id)
    except HTTPException as exc:
        headers = dict(exc.headers) if exc.headers else None
        return replies.error(exc.status_code, str(exc.detail), headers=headers)
    except (psycopg.OperationalError, PoolTimeout):
        return _unavailable()
    return JSONResponse(
        {
            "tenant_id": tenant_id,
            "calls": [c.to_json() for c in calls],
            "counts": {str(k): v for k, v in sorted(counts.items())},
        }
    )

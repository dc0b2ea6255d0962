"""POST /api/v1/live and GET /api/v1/live/calls against a real collector process and PostgreSQL;
the live store's queries, expiry and pruning."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import psycopg
import psycopg_pool
import pytest
from cdrstats_agent import wire
from cdrstats_agent.plugin import LiveEvent
from cdrstats_collector import auth, live, maintenance, tenants, users
from nacl.signing import SigningKey

from tests.fix_db import CollectorServer, EnrolledAgent
from tests.fix_proxy import PgProxy

T = 1764064800.0


def started(call: str, at: float = T, **data: Any) -> LiveEvent:
    return LiveEvent("started", call, at, {"caller": "1001", "callee": "33142278000", **data})


def answered(call: str, at: float = T + 4, **data: Any) -> LiveEvent:
    return LiveEvent("answered", call, at, data)


def ended(call: str, at: float = T + 30) -> LiveEvent:
    return LiveEvent("ended", call, at, {"hangup_cause": 16, "sip_code": 200})


def snapshot(*calls: str, at: float = T + 10) -> LiveEvent:
    return LiveEvent(
        "snapshot",
        at=at,
        calls=tuple({"call_id": c, "caller": f"snap-{c}", "state": "answered"} for c in calls),
    )


def message(
    agent: EnrolledAgent,
    seq: int,
    sources: dict[str, list[LiveEvent]],
    *,
    stream: str = "stream-1",
    sent_at: int | None = None,
) -> bytes:
    streams = [
        wire.LiveStream(name, [wire.live_event_to_wire(e)[0] for e in events])
        for name, events in sources.items()
    ]
    return wire.seal_live(agent.agent_id, stream, seq, streams, agent.key, sent_at=sent_at)


def post(url: str, data: bytes, client: httpx.Client | None = None) -> httpx.Response:
    headers = {"content-type": "application/msgpack"}
    if client is not None:
        return client.post(url + "/api/v1/live", content=data, headers=headers)
    return httpx.post(url + "/api/v1/live", content=data, headers=headers, timeout=30)


def calls(database_url: str) -> dict[str, tuple[Any, ...]]:
    """call_id -> (source, state, direction, caller, callee, started_at?, answered_at?, src_ip)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT call_id, source, state, direction, caller, callee,"
            " started_at IS NOT NULL, answered_at IS NOT NULL, src_ip FROM live_call"
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def live_state(database_url: str) -> tuple[Any, ...]:
    """Everything a live message may change."""
    with psycopg.connect(database_url) as conn:
        return (
            conn.execute("SELECT * FROM live_call ORDER BY source, call_id").fetchall(),
            conn.execute("SELECT * FROM live_source ORDER BY source").fetchall(),
            conn.execute("SELECT * FROM live_agent ORDER BY agent_id").fetchall(),
            conn.execute("SELECT * FROM live_count_minute ORDER BY minute").fetchall(),
        )


@pytest.fixture
def agent(collector_server: CollectorServer) -> EnrolledAgent:
    return collector_server.enroll()


@pytest.fixture
def listener(collector_server: CollectorServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(collector_server.database_url, autocommit=True) as conn:
        conn.execute("LISTEN cdrstats_live")
        yield conn


def notifications(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The live notifications delivered so far (waits briefly for stragglers)."""
    return [json.loads(n.payload) for n in conn.notifies(timeout=0.5)]


def test_started_answered_ended(
    collector_server: CollectorServer,
    agent: EnrolledAgent,
    listener: psycopg.Connection[Any],
) -> None:
    url, db = collector_server.url, collector_server.database_url
    first = {
        "fs1": [
            started("a", direction="outbound", src_ip="192.0.2.7", trunk="gw1"),
            started("b"),
            answered("b"),
        ]
    }
    r = post(url, message(agent, 1, first))
    assert r.status_code == 200, r.text
    assert r.json() == {"seq": 1, "events": 3, "calls": 2}
    stored = calls(db)
    assert stored == {
        "a": ("fs1", "ringing", "outbound", "1001", "33142278000", True, False, ip("192.0.2.7")),
        "b": ("fs1", "answered", "unknown", "1001", "33142278000", True, True, None),
    }
    # An answered event carrying only some fields keeps the others.
    r = post(url, message(agent, 2, {"fs1": [answered("a", caller_name="Zoë"), ended("b")]}))
    assert r.status_code == 200, r.text
    assert r.json()["calls"] == 1
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT state, direction, caller, caller_name, trunk, host(src_ip), started_at,"
            " answered_at FROM live_call"
        ).fetchone()
    assert row is not None
    assert row[:6] == ("answered", "outbound", "1001", "Zoë", "gw1", "192.0.2.7")
    assert row[6] == wire.from_us(wire.epoch_to_us(T))
    assert row[7] == wire.from_us(wire.epoch_to_us(T + 4))
    assert set(calls(db)) == {"a"}
    # One notification per committed message, never per event.
    with psycopg.connect(db) as conn:
        ids = conn.execute("SELECT tenant_id, switch_id FROM agent").fetchone()
    assert ids is not None
    assert notifications(listener) == [
        {"tenant_id": ids[0], "switch_id": ids[1], "count": 2},
        {"tenant_id": ids[0], "switch_id": ids[1], "count": 1},
    ]


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


def test_snapshot_replaces_only_its_source(
    collector_server: CollectorServer, agent: EnrolledAgent
) -> None:
    url, db = collector_server.url, collector_server.database_url
    r = post(url, message(agent, 1, {"fs1": [started("a"), started("b")], "fs2": [started("z")]}))
    assert r.status_code == 200, r.text
    r = post(url, message(agent, 2, {"fs1": [snapshot("b", "c"), started("d"), ended("c")]}))
    assert r.status_code == 200, r.text
    assert r.json()["calls"] == 3
    stored = calls(db)
    assert {k: v[:2] for k, v in stored.items()} == {
        "b": ("fs1", "answered"),  # replaced by the snapshot's view of it
        "d": ("fs1", "ringing"),
        "z": ("fs2", "ringing"),
    }
    assert stored["b"][3] == "snap-b"
    # An empty snapshot: the source has no call in progress.
    r = post(url, message(agent, 3, {"fs2": [snapshot()]}))
    assert r.status_code == 200 and r.json()["calls"] == 2
    assert set(calls(db)) == {"b", "d"}
    with psycopg.connect(db) as conn:
        peaks = conn.execute("SELECT calls_max FROM live_count_minute").fetchall()
    assert max(p[0] for p in peaks) == 3  # the per-minute peak keeps the highest count


def test_replayed_or_stale_messages_are_409_and_change_nothing(
    collector_server: CollectorServer, agent: EnrolledAgent
) -> None:
    url, db = collector_server.url, collector_server.database_url
    now = wire.now_us()
    first = message(agent, 1, {"fs1": [started("a")]}, sent_at=now - 2_000_000)
    second = message(agent, 2, {"fs1": [ended("a")]}, sent_at=now - 1_000_000)
    assert post(url, first).status_code == 200
    assert post(url, second).status_code == 200
    before = live_state(db)
    for data in (
        first,  # the same bytes again: would bring back an ended call
        second,
        message(agent, 2, {"fs1": [started("x")]}),  # a seq already used
        # another stream (a restart) must be newer than the last message applied
        message(agent, 9, {"fs1": [started("y")]}, stream="other", sent_at=now - 1_500_000),
    ):
        r = post(url, data)
        assert r.status_code == 409, r.text
        assert live_state(db) == before
    r = post(url, message(agent, 1, {"fs1": [started("new")]}, stream="restarted"))
    assert r.status_code == 200, r.text
    assert set(calls(db)) == {"new"}


def test_bad_requests_are_refused_and_change_nothing(
    collector_server: CollectorServer, agent: EnrolledAgent
) -> None:
    url, db = collector_server.url, collector_server.database_url
    assert post(url, message(agent, 1, {"fs1": [started("a")]})).status_code == 200
    before = live_state(db)
    good = message(agent, 2, {"fs1": [ended("a")]})
    forged = EnrolledAgent(agent.agent_id, SigningKey.generate(), "", "acme", "sw1")
    stranger = EnrolledAgent(str(uuid.uuid4()), SigningKey.generate(), "", "acme", "sw1")

    def raw_payload(payload: dict[str, Any]) -> bytes:
        return wire.seal("live", agent.agent_id, payload, agent.key)

    base = {"agent": agent.agent_id, "stream": "s", "seq": 5, "sent_at": wire.now_us()}
    bad_event = {"kind": "started", "at": 1, "call_id": "q", "data": {"caller": 7}}
    cases: list[tuple[bytes, int, str]] = [
        (good[:-10], 422, "envelope is not valid msgpack"),
        (b"\x93\x01\x02\x03", 422, "envelope must be a msgpack map"),
        (wire.seal_batch(agent.agent_id, 2, b"x", agent.key), 422, "envelope type must be 'live'"),
        (message(forged, 2, {"fs1": [ended("a")]}), 401, "bad signature"),
        (message(stranger, 1, {"fs1": [ended("a")]}), 401, "unknown agent"),
        (
            message(agent, 2, {"fs1": [ended("a")]}, sent_at=wire.now_us() - 3_600_000_000),
            401,
            "from the collector's clock",
        ),
        (
            raw_payload({**base, "sources": [{"source": "fs1", "events": [bad_event]}]}),
            422,
            "sources[0].events[0].data.caller: caller must be a string",
        ),
        (raw_payload({**base, "sources": "all"}), 422, "sources must be an array"),
        (raw_payload({**base, "seq": 0, "sources": []}), 422, "seq must be a positive integer"),
        (
            wire.seal("live", agent.agent_id, [1, 2], agent.key),  # type: ignore[arg-type]
            422,
            "payload must be a map",
        ),
    ]
    for data, status, text in cases:
        r = post(url, data)
        assert r.status_code == status, (text, r.text)
        assert text in r.json()["error"], r.text
        assert live_state(db) == before
    # Nested too deeply for the decoder: still a clear 422, not a 500.
    parts = [msgpack.packb(k) + msgpack.packb(v) for k, v in base.items()]
    payload = b"\x85" + b"".join(parts) + msgpack.packb("sources") + b"\x91" * 5000 + b"\x90"
    envelope = {
        "v": 1,
        "type": "live",
        "agent": agent.agent_id,
        "payload": payload,
        "sig": agent.key.sign(payload).signature,
    }
    r = post(url, msgpack.packb(envelope, use_bin_type=True))
    assert r.status_code == 422 and live_state(db) == before
    assert post(url, good).status_code == 200  # the agent's stream goes on
    metrics = httpx.get(url + "/metrics", timeout=10).text
    counted = {
        result: float(value)
        for result, value in re.findall(
            r'^cdrstats_live_messages_total\{result="(\w+)"\} (\S+)$', metrics, re.M
        )
    }
    assert counted == {
        "applied": 2,
        "invalid": 8,
        "unauthorized": 3,
        "stale": 0,
        "too_large": 0,
        "unavailable": 0,
    }
    assert re.search(r"^cdrstats_live_events_total 2\.0$", metrics, re.M)


def test_oversized_message_is_413(database_url: str, tmp_path: Path) -> None:
    server = CollectorServer(database_url, tmp_path, max_body_bytes=4096)
    server.start()
    try:
        enrolled = server.enroll()
        many = [started(f"call-{n:05d}") for n in range(200)]
        r = post(server.url, message(enrolled, 1, {"fs1": many}))
        assert r.status_code == 413 and "larger than 4096 bytes" in r.json()["error"]
        assert calls(database_url) == {}
        assert post(server.url, message(enrolled, 1, {"fs1": many[:2]})).status_code == 200
    finally:
        server.stop()


def test_revoked_agent_is_401_even_when_cached(
    collector_server: CollectorServer, agent: EnrolledAgent
) -> None:
    url, db = collector_server.url, collector_server.database_url
    assert post(url, message(agent, 1, {"fs1": [started("a")]})).status_code == 200
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE agent SET revoked_at = now()")
    before = live_state(db)
    r = post(url, message(agent, 2, {"fs1": [started("b")]}))
    assert r.status_code == 401 and r.json()["error"] == "agent revoked"
    assert live_state(db) == before


def test_postgresql_cut_is_503_and_changes_nothing(
    pg_proxy: PgProxy, database_url: str, tmp_path: Path
) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    server = CollectorServer(pg_proxy.url(str(dbname)), tmp_path, pool_timeout=1)
    server.start()
    try:
        enrolled = server.enroll()
        assert post(server.url, message(enrolled, 1, {"fs1": [started("a")]})).status_code == 200
        before = live_state(database_url)
        pg_proxy.cut()
        r = post(server.url, message(enrolled, 2, {"fs1": [ended("a")]}))
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"].isdigit()
        assert live_state(database_url) == before
        pg_proxy.restore()
        for seq in range(3, 63):
            r = post(server.url, message(enrolled, seq, {"fs1": [snapshot("b")]}))
            if r.status_code != 503:
                break
        assert r.status_code == 200, r.text
        assert set(calls(database_url)) == {"b"}
    finally:
        server.stop()


def test_expired_sources_are_ignored_then_pruned(
    collector_server: CollectorServer, agent: EnrolledAgent
) -> None:
    url, db = collector_server.url, collector_server.database_url
    r = post(url, message(agent, 1, {"fs1": [started("a"), started("b")], "fs2": [started("c")]}))
    assert r.status_code == 200

    async def queries() -> tuple[set[str], dict[int, int]]:
        async with await psycopg.AsyncConnection.connect(db) as conn:
            found = await live.live_calls(conn, tid)
            return {c.call_id for c in found}, await live.live_counts(conn, tid)

    with psycopg.connect(db, autocommit=True) as conn:
        tid, sid = conn.execute("SELECT tenant_id, switch_id FROM agent").fetchone() or (0, 0)
    assert asyncio.run(queries()) == ({"a", "b", "c"}, {sid: 3})
    # fs1 stops reporting: once its time is up its calls no longer count.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE live_source SET expires_at = now() - interval '1 second' WHERE source = 'fs1'"
        )
    assert asyncio.run(queries()) == ({"c"}, {sid: 1})
    # Events alone do not revive an expired source's old calls: it starts from nothing.
    r = post(url, message(agent, 2, {"fs1": [started("d")]}))
    assert r.status_code == 200 and r.json()["calls"] == 2
    assert set(calls(db)) == {"c", "d"}
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE live_source SET expires_at = now() - interval '1 second'")

    async def maintain() -> maintenance.Report:
        async with await psycopg.AsyncConnection.connect(db) as conn:
            return await maintenance.run(conn)

    report = asyncio.run(maintain())
    assert report.live_sources_pruned == 2
    assert calls(db) == {}
    assert asyncio.run(queries()) == (set(), {})


def test_live_calls_api_is_tenant_scoped(collector_server: CollectorServer) -> None:
    url, db = collector_server.url, collector_server.database_url
    a = collector_server.enroll("acme", "pbx-a")
    b = collector_server.enroll("bravo", "pbx-b")
    assert post(url, message(a, 1, {"fs1": [started("a1", src_ip="192.0.2.1")]})).status_code == 200
    assert post(url, message(b, 1, {"ast": [started("b1"), started("b2")]})).status_code == 200
    with psycopg.connect(db, autocommit=True) as conn:
        ta, tb = tenants.tenant_id(conn, "acme"), tenants.tenant_id(conn, "bravo")
        users.add_user(conn, "root", "superadmin", "correct horse battery")
        users.add_user(conn, "av", "tenant_viewer", "correct horse battery", "acme")
        tokens = {"root": auth.create_token(conn, "root"), "av": auth.create_token(conn, "av")}
        sid_a = conn.execute("SELECT switch_id FROM agent WHERE tenant_id = %s", (ta,)).fetchone()
    assert sid_a is not None

    def get(token: str | None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(url + "/api/v1/live/calls", params=params, headers=headers, timeout=10)

    r = get(tokens["av"])
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["tenant_id"] == ta and doc["counts"] == {str(sid_a[0]): 1}
    [call] = doc["calls"]
    assert (call["call_id"], call["switch"], call["source"]) == ("a1", "pbx-a", "fs1")
    assert (call["state"], call["src_ip"], call["caller"]) == ("ringing", "192.0.2.1", "1001")
    assert get(tokens["av"], tenant=tb).status_code == 404  # another tenant: not found
    assert len(get(tokens["av"], switch=sid_a[0]).json()["calls"]) == 1
    with psycopg.connect(db) as conn:
        sid_b = conn.execute("SELECT switch_id FROM agent WHERE tenant_id = %s", (tb,)).fetchone()
    assert sid_b is not None
    assert get(tokens["av"], switch=sid_b[0]).json()["calls"] == []  # not another tenant's
    assert get(tokens["av"], switch="x").status_code == 422
    assert get(None).status_code == 401
    assert get(tokens["root"]).status_code == 422  # a superadmin names the tenant
    assert get(tokens["root"], tenant=tb + 100).status_code == 404
    r = get(tokens["root"], tenant=tb)
    assert r.status_code == 200
    assert sorted(c["call_id"] for c in r.json()["calls"]) == ["b1", "b2"]

    # In the database too: a query that forgets the tenant sees one tenant's rows only.
    async def unscoped(tenant_id: int) -> tuple[Any, ...]:
        pool = psycopg_pool.AsyncConnectionPool(db, min_size=1, max_size=1, open=False)
        await pool.open()
        try:
            async with auth.tenant_connection(pool, tenant_id) as conn:
                out = []
                for table in ("live_call", "live_source", "live_count_minute"):
                    cur = await conn.execute(f"SELECT DISTINCT tenant_id FROM {table}".encode())
                    out.append(sorted(r[0] for r in await cur.fetchall()))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                async with auth.tenant_connection(pool, tenant_id) as conn:
                    await conn.execute(b"SELECT count(*) FROM live_agent")  # not tenant data
            return tuple(out)
        finally:
            await pool.close()

    assert asyncio.run(unscoped(ta)) == ([ta], [ta], [ta])


FUZZ_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**31,
    2**63 - 1,
    -(2**63),
    1.5,
    float("nan"),
    "",
    "x" * 3000,
    "nul\x00",
    "fe80::1%eth0",
    "192.0.2.1",
    "answered",
    "snapshot",
    b"\xff\xfe",
    [],
    [1, [2, [3]]],
    {},
    {"call_id": "z"},
    {"k": [None, {"deep": 1.5}]},
]


def _mutate(doc: Any, rng: Any) -> Any:
    """`doc` with one value somewhere replaced by an odd one (or a key added/removed)."""
    if isinstance(doc, dict) and doc and rng.random() < 0.7:
        key = rng.choice(list(doc))
        roll = rng.random()
        if roll < 0.15:
            return {k: v for k, v in doc.items() if k != key}
        if roll < 0.25:
            return {
                **doc,
                rng.choice(["zz", "calls", "data", "call_id", 7]): rng.choice(FUZZ_VALUES),
            }
        return {**doc, key: _mutate(doc[key], rng)}
    if isinstance(doc, list) and doc and rng.random() < 0.7:
        i = rng.randrange(len(doc))
        return [*doc[:i], _mutate(doc[i], rng), *doc[i + 1 :]]
    return rng.choice(FUZZ_VALUES)


def test_fuzzed_live_messages_never_get_a_500(
    collector_server: CollectorServer, agent: EnrolledAgent
) -> None:
    import random

    rng = random.Random(20261126)
    url, db = collector_server.url, collector_server.database_url
    events = {
        "fs1": [
            snapshot("a", "b"),
            started("c", src_ip="192.0.2.9", direction="inbound", start=T),
            answered("c", answer=T + 2),
            ended("a"),
        ],
        "fs2": [started("x")],
    }
    good = wire.live_payload(wire.unseal(message(agent, 1, events), "live"))
    statuses: dict[int, int] = {}
    client = httpx.Client(timeout=30)
    for n in range(200):
        payload = _mutate(good, rng)
        if isinstance(payload, dict):
            payload = {**payload, "seq": n + 1, "sent_at": wire.now_us()}
        try:
            packed = msgpack.packb(payload, use_bin_type=True)
        except (TypeError, ValueError):
            continue
        envelope = {
            "v": 1,
            "type": "live",
            "agent": agent.agent_id,
            "payload": packed,
            "sig": agent.key.sign(packed).signature,
        }
        r = post(url, msgpack.packb(envelope, use_bin_type=True), client)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code in (200, 409, 422), (n, payload, r.text)
    client.close()
    assert statuses.get(422, 0) > 50 and statuses.get(200, 0) > 0, statuses
    # The state is still usable: a good snapshot puts it right.
    final = message(agent, 10_000, {"fs1": [snapshot("ok")], "fs2": [snapshot()]})
    assert post(url, final).status_code == 200
    assert set(calls(db)) == {"ok"} | {
        k for k, v in calls(db).items() if v[0] not in ("fs1", "fs2")
    }


def test_the_broker_listens_on_the_live_channel() -> None:
    from cdrstats_collector import realtime

    assert realtime.LIVE_CHANNEL == live.NOTIFY_CHANNEL

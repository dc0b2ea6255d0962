"""POST /api/v1/ingest against a real collector process and a real PostgreSQL."""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import msgpack
import psycopg
import pytest
from cdrstats_agent import wire
from collector_testkit import (
    NOW,
    bare_cdr,
    batch,
    body_of,
    expected_row,
    full_cdr,
    post,
    snapshot,
    stored_rows,
)
from nacl.signing import SigningKey

from tests.fix_db import CollectorServer, EnrolledAgent
from tests.fix_proxy import PgProxy


@pytest.fixture
def agent(collector_server: CollectorServer) -> EnrolledAgent:
    return collector_server.enroll()


def test_happy_path_stores_every_field(
    collector_server: CollectorServer, agent: EnrolledAgent
) -> None:
    cdrs = [full_cdr(i) for i in range(6)] + [bare_cdr(i) for i in range(3)]
    r = post(collector_server.url, batch(agent.agent_id, agent.key, 1, body_of(cdrs)))
    assert r.status_code == 200, r.text
    assert r.json() == {"seq": 1, "accepted": 9, "duplicates": 0, "redelivery": False}

    stored = stored_rows(collector_server.database_url)
    assert set(stored) == {c.key for c in cdrs}
    for cdr in cdrs:
        assert stored[cdr.key] == expected_row(cdr), cdr.key
    with psycopg.connect(collector_server.database_url) as conn:
        owners = conn.execute(
            "SELECT DISTINCT c.tenant_id, c.switch_id, c.agent_id, t.name, s.name"
            " FROM cdr c JOIN tenant t ON t.id = c.tenant_id JOIN switch s ON s.id = c.switch_id"
        ).fetchall()
        assert owners == [(owners[0][0], owners[0][1], uuid.UUID(agent.agent_id), "acme", "sw1")]
        last_seq, seen = conn.execute(
            "SELECT last_seq, last_seen_at FROM agent WHERE id = %s", (agent.agent_id,)
        ).fetchone() or (None, None)
        assert last_seq == 1 and seen is not None


def test_redelivery_returns_the_same_ack_and_stores_nothing(
    collector_server: CollectorServer, agent: EnrolledAgent
) -> None:
    body = body_of([full_cdr(i) for i in range(3)])
    first = post(collector_server.url, batch(agent.agent_id, agent.key, 1, body))
    assert first.status_code == 200
    before = snapshot(collector_server.database_url)
    # the agent re-signs the same body with a fresh sent_at on every send
    again = post(collector_server.url, batch(agent.agent_id, agent.key, 1, body))
    assert again.status_code == 200
    assert again.json() == {**first.json(), "redelivery": True}
    assert snapshot(collector_server.database_url) == before


def test_renumbered_batch_counts_duplicates(
    collector_server: CollectorServer, agent: EnrolledAgent
) -> None:
    cdrs = [full_cdr(i) for i in range(4)]
    assert (
        post(collector_server.url, batch(agent.agent_id, agent.key, 1, body_of(cdrs[:2]))).json()[
            "accepted"
        ]
        == 2
    )
    # a renumbered batch overlapping the first: only new CDRs are stored
    r = post(collector_server.url, batch(agent.agent_id, agent.key, 5, body_of(cdrs)))
    assert r.json() == {"seq": 5, "accepted": 2, "duplicates": 2, "redelivery": False}
    assert len(stored_rows(collector_server.database_url)) == 4


def _assert_refused(
    server: CollectorServer, data: bytes, status: int, words: str, **headers: str
) -> httpx.Response:
    before = snapshot(server.database_url)
    r = post(server.url, data, **headers)
    assert r.status_code == status, r.text
    assert words in r.json()["error"], r.json()
    assert snapshot(server.database_url) == before
    return r


def test_forged_signature_is_401(collector_server: CollectorServer, agent: EnrolledAgent) -> None:
    forged = batch(agent.agent_id, SigningKey.generate(), 1, body_of([full_cdr(0)]))
    _assert_refused(collector_server, forged, 401, "bad signature")


def test_unknown_agent_is_401(collector_server: CollectorServer, agent: EnrolledAgent) -> None:
    data = batch(str(uuid.uuid4()), agent.key, 1, body_of([full_cdr(0)]))
    _assert_refused(collector_server, data, 401, "unknown agent")
    data = batch("not-a-uuid", agent.key, 1, body_of([full_cdr(0)]))
    _assert_refused(collector_server, data, 401, "unknown agent")


def test_revoked_agent_is_401_even_when_cached(
    collector_server: CollectorServer, agent: EnrolledAgent
) -> None:
    ok = post(collector_server.url, batch(agent.agent_id, agent.key, 1, body_of([full_cdr(0)])))
    assert ok.status_code == 200  # the collector now has the agent in its cache
    with psycopg.connect(collector_server.database_url) as conn:
        conn.execute("UPDATE agent SET revoked_at = now() WHERE id = %s", (agent.agent_id,))
    data = batch(agent.agent_id, agent.key, 2, body_of([full_cdr(1)]))
    _assert_refused(collector_server, data, 401, "revoked")
    _assert_refused(collector_server, data, 401, "revoked")  # and after the cache was dropped


def test_clock_skew_is_401(collector_server: CollectorServer, agent: EnrolledAgent) -> None:
    body = body_of([full_cdr(0)])
    for skew in (-301, 400):
        data = batch(agent.agent_id, agent.key, 1, body, sent_at=wire.now_us() + skew * 10**6)
        _assert_refused(collector_server, data, 401, "clock")


def test_replayed_older_seq_is_409(collector_server: CollectorServer, agent: EnrolledAgent) -> None:
    for seq in (1, 3):
        body = body_of([full_cdr(seq)])
        assert post(collector_server.url, batch(agent.agent_id, agent.key, seq, body)).is_success
    r = _assert_refused(
        collector_server,
        batch(agent.agent_id, agent.key, 2, body_of([full_cdr(7)])),
        409,
        "replay",
    )
    assert r.json()["last_seq"] == 3


def test_same_seq_other_body_is_409(
    collector_server: CollectorServer, agent: EnrolledAgent
) -> None:
    assert post(
        collector_server.url, batch(agent.agent_id, agent.key, 1, body_of([full_cdr(0)]))
    ).is_success
    r = _assert_refused(
        collector_server,
        batch(agent.agent_id, agent.key, 1, body_of([full_cdr(1)])),
        409,
        "another body",
    )
    assert r.json()["last_seq"] == 1


def test_replay_is_409_even_with_a_malformed_body(
    collector_server: CollectorServer, agent: EnrolledAgent
) -> None:
    assert post(
        collector_server.url, batch(agent.agent_id, agent.key, 2, body_of([full_cdr(0)]))
    ).is_success
    _assert_refused(
        collector_server, batch(agent.agent_id, agent.key, 1, b"\xc1garbage"), 409, "replay"
    )


def test_truncated_msgpack_is_422(collector_server: CollectorServer, agent: EnrolledAgent) -> None:
    data = batch(agent.agent_id, agent.key, 1, body_of([full_cdr(0)]))
    _assert_refused(collector_server, data[:-10], 422, "msgpack")
    _assert_refused(collector_server, b"", 422, "msgpack")
    wrong_version = msgpack.packb({**msgpack.unpackb(data), "v": 9})
    _assert_refused(collector_server, wrong_version, 422, "version")


def test_malformed_body_is_422(collector_server: CollectorServer, agent: EnrolledAgent) -> None:
    data = batch(agent.agent_id, agent.key, 1, body_of([full_cdr(0)])[:-5])
    _assert_refused(collector_server, data, 422, "batch body")
    data = batch(agent.agent_id, agent.key, 1, msgpack.packb({"fields": ["key"], "cdrs": [1]}))
    _assert_refused(collector_server, data, 422, "required CDR fields missing")


def _body_with(index: int, field: str, value: object) -> bytes:
    rows = [wire.cdr_to_row(full_cdr(i)) for i in range(3)]
    from cdrstats_agent.model import CDR_FIELDS

    rows[index][CDR_FIELDS.index(field)] = value
    return wire.build_body([msgpack.packb(r, use_bin_type=True) for r in rows])


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("duration", "abc", "cdrs[1]: duration"),
        ("src_ip", "10.0.0.300", "cdrs[1]: src_ip"),
        ("src_ip", "192.0.2.1:5060", "cdrs[1]: src_ip"),
        ("disposition", "HUNG", "cdrs[1]: disposition"),
        ("start", "2026-01-01", "cdrs[1]: start"),
        ("start", 0, "cdrs[1]: start"),
        ("start", wire.now_us() + 10 * 86_400_000_000, "cdrs[1]: start"),
        ("caller", "10\x0001", "cdrs[1]: caller"),
        ("extra", {"k": "nul \x00 inside"}, "cdrs[1]: extra"),
        ("extra", {"k": float("nan")}, "cdrs[1]: extra"),
        ("key", secrets.token_hex(8000), "cdrs[1]: key"),
    ],
)
def test_wrong_cdr_value_is_422_naming_index_and_field(
    collector_server: CollectorServer,
    agent: EnrolledAgent,
    field: str,
    value: object,
    words: str,
) -> None:
    data = batch(agent.agent_id, agent.key, 1, _body_with(1, field, value))
    _assert_refused(collector_server, data, 422, words)
    # nothing of the batch was stored, and the agent can send a good batch with the same seq
    good = post(collector_server.url, batch(agent.agent_id, agent.key, 1, body_of([full_cdr(0)])))
    assert good.status_code == 200


def test_oversized_body_is_413(database_url: str, tmp_path: Path) -> None:
    server = CollectorServer(database_url, tmp_path, max_body_bytes=64 * 1024)
    server.start()
    try:
        enrolled = server.enroll()
        big = body_of([full_cdr(i) for i in range(400)])
        data = batch(enrolled.agent_id, enrolled.key, 1, big)
        assert len(data) > 64 * 1024
        _assert_refused(server, data, 413, "larger than")

        def chunks() -> object:  # no Content-Length: the limit applies while reading
            for i in range(0, len(data), 8192):
                yield data[i : i + 8192]

        before = snapshot(database_url)
        r = httpx.post(server.url + "/api/v1/ingest", content=chunks(), timeout=30)  # type: ignore[arg-type]
        assert r.status_code == 413
        assert snapshot(database_url) == before
        small = batch(enrolled.agent_id, enrolled.key, 1, body_of([full_cdr(0)]))
        assert post(server.url, small).status_code == 200
    finally:
        server.stop()


def test_postgresql_unreachable_is_503(database_url: str, tmp_path: Path) -> None:
    from tests.fix_db import free_port

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    server = CollectorServer(dead, tmp_path, pool_timeout=0.5)
    server.start(wait_healthy=False)
    try:
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 503
        key = SigningKey.generate()
        r = post(server.url, batch(str(uuid.uuid4()), key, 1, body_of([full_cdr(0)])))
        assert r.status_code == 503
        assert r.headers["retry-after"].isdigit()
        assert "unavailable" in r.json()["error"]
    finally:
        server.stop()


def test_postgresql_cut_then_back(
    pg_proxy: PgProxy, database_url: str, pg_admin_url: str, tmp_path: Path
) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    server = CollectorServer(pg_proxy.url(str(dbname)), tmp_path, pool_timeout=1)
    server.start()
    try:
        enrolled = server.enroll()
        first = batch(enrolled.agent_id, enrolled.key, 1, body_of([full_cdr(0)]))
        assert post(server.url, first).status_code == 200
        pg_proxy.cut()
        before = snapshot(database_url)
        second = batch(enrolled.agent_id, enrolled.key, 2, body_of([full_cdr(1)]))
        r = post(server.url, second)
        assert r.status_code == 503, r.text
        assert "retry-after" in r.headers
        assert snapshot(database_url) == before
        pg_proxy.restore()
        for _ in range(60):
            second = batch(enrolled.agent_id, enrolled.key, 2, body_of([full_cdr(1)]))
            r = post(server.url, second)
            if r.status_code != 503:
                break
        assert r.status_code == 200, r.text
        assert len(stored_rows(database_url)) == 2
    finally:
        server.stop()


def test_batches_at_month_boundaries_create_partitions(
    collector_server: CollectorServer, agent: EnrolledAgent
) -> None:
    starts = [NOW - timedelta(days=400), NOW - timedelta(days=800), NOW]
    cdrs = [full_cdr(i, start=s) for i, s in enumerate(starts)]
    r = post(collector_server.url, batch(agent.agent_id, agent.key, 1, body_of(cdrs)))
    assert r.status_code == 200, r.text
    with psycopg.connect(collector_server.database_url) as conn:
        names = {r[0] for r in conn.execute("SELECT tableoid::regclass::text FROM cdr").fetchall()}
    assert names == {f"cdr_y{s.year:04d}m{s.month:02d}" for s in starts}


def test_metrics_count_batches(collector_server: CollectorServer, agent: EnrolledAgent) -> None:
    post(collector_server.url, batch(agent.agent_id, agent.key, 1, body_of([full_cdr(0)])))
    post(collector_server.url, b"junk")
    text = httpx.get(collector_server.url + "/metrics").text
    assert 'cdrstats_ingest_batches_total{result="stored"} 1.0' in text
    assert 'cdrstats_ingest_batches_total{result="invalid"} 1.0' in text
    assert 'cdrstats_ingest_cdrs_total{result="accepted"} 1.0' in text
    assert f'cdrstats_agent_last_seen_timestamp_seconds{{agent="{agent.agent_id}"}}' in text
    assert f'cdrstats_agent_lag_seconds{{agent="{agent.agent_id}"}}' in text

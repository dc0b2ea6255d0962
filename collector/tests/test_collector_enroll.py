"""Enrollment tokens and the agent status route, through the real collector."""

from __future__ import annotations

from datetime import timedelta

import httpx
import psycopg
import pytest
from cdrstats_agent import wire
from nacl.signing import SigningKey

from tests.fix_db import CollectorServer


def _enroll(server: CollectorServer, token: str, key: SigningKey | None = None) -> httpx.Response:
    key = key or SigningKey.generate()
    return httpx.post(
        server.url + "/api/v1/enroll",
        json={"token": token, "public_key": wire.key_to_text(key.verify_key), "hostname": "pbx1"},
    )


def test_enroll_creates_the_agent_and_uses_the_token_once(
    collector_server: CollectorServer,
) -> None:
    token = collector_server.create_token("acme", "pbx-paris")
    r = _enroll(collector_server, token)
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["tenant"] == "acme" and doc["switch"] == "pbx-paris"
    wire.verify_key_from_text(doc["collector_public_key"])
    with psycopg.connect(collector_server.database_url) as conn:
        row = conn.execute(
            "SELECT a.hostname, k.used_at IS NOT NULL, k.agent_id = a.id,"
            " c.public_key = decode(%s, 'base64')"
            " FROM agent a JOIN agent_token k ON k.agent_id = a.id, collector_key c"
            " WHERE a.id = %s",
            (doc["collector_public_key"], doc["agent_id"]),
        ).fetchone()
    assert row == ("pbx1", True, True, True)

    again = _enroll(collector_server, token)
    assert again.status_code == 401
    assert "already used" in again.json()["error"]


def test_expired_and_unknown_tokens_are_401(collector_server: CollectorServer) -> None:
    expired = collector_server.create_token(ttl=timedelta(seconds=-1))
    r = _enroll(collector_server, expired)
    assert r.status_code == 401 and "expired" in r.json()["error"]
    r = _enroll(collector_server, "no-such-token")
    assert r.status_code == 401 and "unknown" in r.json()["error"]
    with psycopg.connect(collector_server.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM agent").fetchone() == (0,)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"public_key": "AAAA"}',
        b'{"token": "x", "public_key": "not base64!"}',
        b'{"token": "x", "public_key": "AAAA"}',
        b'{"token": "x", "public_key": "' + b"A" * 43 + b'=", "hostname": 7}',
    ],
)
def test_malformed_enroll_is_422(collector_server: CollectorServer, body: bytes) -> None:
    r = httpx.post(collector_server.url + "/api/v1/enroll", content=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]


def test_agent_status_is_signed(collector_server: CollectorServer) -> None:
    agent = collector_server.enroll()
    path = "/api/v1/agent/status"

    def get(key: SigningKey, ts: int | None = None) -> httpx.Response:
        header = wire.sign_request(key, agent.agent_id, "GET", path, ts or wire.now_us())
        return httpx.get(collector_server.url + path, headers={"authorization": header})

    r = get(agent.key)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "agent_id": agent.agent_id,
        "tenant": "acme",
        "switch": "sw1",
        "last_seq": 0,
        "last_seen": None,
    }
    assert get(SigningKey.generate()).status_code == 401
    assert get(agent.key, wire.now_us() - 3600 * 10**6).status_code == 401
    assert httpx.get(collector_server.url + path).status_code == 401
    with psycopg.connect(collector_server.database_url) as conn:
        conn.execute("UPDATE agent SET revoked_at = now() WHERE id = %s", (agent.agent_id,))
    r = get(agent.key)
    assert r.status_code == 401 and "revoked" in r.json()["error"]


def test_healthz(collector_server: CollectorServer) -> None:
    r = httpx.get(collector_server.url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}

"""The console over HTTP against a real collector process: login, CSRF, roles, tenants, SSE."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from cdrstats_collector import users
from web_testkit import (
    PASSWORD,
    Ingest,
    Seeded,
    SSEReader,
    cdr,
    csrf_of,
    fresh_tenant,
    login,
    seed,
    shared_server,
)

from tests.fix_db import CollectorServer

# One collector process for the module (starting one costs seconds); tests that count things
# use a tenant of their own (`fresh_tenant`) or look only at what they added.


@pytest.fixture(scope="module")
def collector_server(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorServer]:
    with shared_server(pg_admin_url, migrated_template, tmp_path_factory.mktemp("web")) as s:
        yield s


@pytest.fixture(scope="module")
def seeded(collector_server: CollectorServer) -> Seeded:
    return seed(collector_server.database_url)


@pytest.fixture
def base(collector_server: CollectorServer, seeded: Seeded) -> str:
    return collector_server.url


def _audit_mark(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM audit_log").fetchone()
    return int(row[0]) if row else 0


def test_pages_need_a_login(base: str, seeded: Seeded) -> None:
    acme = seeded.tenant_ids["acme"]
    with httpx.Client(base_url=base, timeout=10) as c:
        for path in (
            f"/t/{acme}/",
            f"/t/{acme}/live",
            f"/t/{acme}/cdrs",
            f"/t/{acme}/reports",
            "/admin",
        ):
            r = c.get(path)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/login?next="), path
        assert c.get(f"/t/{acme}/events").status_code == 401


def test_login_sets_a_signed_session_and_logout_ends_it(base: str, seeded: Seeded) -> None:
    c = login(base, "victor")
    acme = seeded.tenant_ids["acme"]
    r = c.get("/")
    assert r.headers["location"] == f"/t/{acme}/"
    page = c.get(f"/t/{acme}/")
    assert page.status_code == 200 and "Dashboard" in page.text
    cookie = c.cookies["cdrstats_session"]
    # A tampered cookie is not a session.
    with httpx.Client(base_url=base, timeout=10) as other:
        other.cookies.set(
            "cdrstats_session", cookie[:-3] + ("AAA" if cookie[-3:] != "AAA" else "BBB")
        )
        assert other.get(f"/t/{acme}/").status_code == 303
    r = c.post("/logout", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.get(f"/t/{acme}/").status_code == 303


def test_wrong_password_and_unknown_user_get_the_same_answer(base: str) -> None:
    with httpx.Client(base_url=base, timeout=10) as c:
        for user in ("victor", "nobody"):
            token = csrf_of(c.get("/login").text)
            r = c.post(
                "/login", data={"username": user, "password": "wrong-password", "csrf_token": token}
            )
            assert r.status_code == 401
            assert "Wrong username or password." in r.text
            assert "cdrstats_session" not in r.cookies or "user_id" not in r.text


def test_login_is_rate_limited_per_user(base: str, collector_server: CollectorServer) -> None:
    with psycopg.connect(collector_server.database_url, autocommit=True) as conn:
        users.add_user(conn, "rita", "tenant_viewer", PASSWORD, "acme")
    with httpx.Client(base_url=base, timeout=10) as c:
        token = csrf_of(c.get("/login").text)
        codes = []
        for _ in range(6):
            r = c.post(
                "/login",
                data={"username": "rita", "password": "nope-nope-nope", "csrf_token": token},
            )
            codes.append(r.status_code)
        assert codes == [401] * 5 + [429]
        assert int(r.headers["retry-after"]) > 0
        # Even the right password is refused while blocked: no oracle for a guesser.
        r = c.post("/login", data={"username": "rita", "password": PASSWORD, "csrf_token": token})
        assert r.status_code == 429
        # Another user from the same address is not blocked yet.
        r = c.post("/login", data={"username": "victor", "password": PASSWORD, "csrf_token": token})
        assert r.status_code == 303


def test_every_form_refuses_a_missing_or_wrong_csrf_token(base: str, seeded: Seeded) -> None:
    acme = seeded.tenant_ids["acme"]
    posts = {
        "/login": {"username": "alice", "password": PASSWORD},
        "/logout": {},
        f"/t/{acme}/switches/token": {"switch": "sw-x", "ttl_hours": "24"},
        f"/t/{acme}/switches/revoke": {"agent_id": "00000000-0000-4000-8000-000000000000"},
        "/admin/tenants": {"name": "evil", "timezone": "UTC"},
        "/admin/users": {"username": "evil", "role": "superadmin", "password": "x" * 12},
        "/admin/accountcodes": {"accountcode": "EVIL", "tenant": "acme"},
        "/admin/accountcodes/remove": {"mapping_id": "1"},
        "/account/tokens": {"label": "evil"},
        "/account/tokens/revoke": {"token_id": "0" * 64},
        f"/t/{acme}/blocks": {"switch": "sw-x", "ip": "203.0.113.9", "ttl": "1h"},
        f"/t/{acme}/blocks/unblock": {"switch": "sw-x", "ip": "203.0.113.9"},
        f"/t/{acme}/alerts/1/acknowledge": {},
        f"/t/{acme}/alerts/1/snooze": {"seconds": "3600"},
        f"/t/{acme}/alerts/1/resolve": {},
        f"/t/{acme}/rules": {"name": "evil", "kind": "calls", "window_s": "300"},
        f"/t/{acme}/rules/1": {"name": "evil", "kind": "calls", "window_s": "300"},
        f"/t/{acme}/rules/1/enabled": {"enabled": "0"},
        f"/t/{acme}/rules/1/delete": {},
        f"/t/{acme}/notifications": {"kind": "email", "target": "evil@example.net"},
        f"/t/{acme}/notifications/1/enabled": {"enabled": "0"},
        f"/t/{acme}/notifications/1/severity": {"min_severity": "info"},
        f"/t/{acme}/notifications/1/test": {},
        f"/t/{acme}/notifications/1/delete": {},
    }
    c = login(base, "root")
    from cdrstats_collector.settings import Settings
    from cdrstats_web.console import Console  # every POST route of the console is listed above

    mounted = Console(Settings(database_url="postgresql:///x")).mount()
    post_paths = {
        getattr(r, "path", "")
        .replace("{tenant:int}", str(acme))
        .replace("{alert:int}", "1")
        .replace("{rule:int}", "1")
        .replace("{channel:int}", "1")
        for r in mounted.routes
        if "POST" in (getattr(r, "methods", None) or ())
    }
    assert post_paths == set(posts)
    for path, form in posts.items():
        for token in (None, "forged-token-forged-token"):
            data = dict(form) if token is None else {**form, "csrf_token": token}
            r = c.post(path, data=data)
            assert r.status_code == 403, (path, token, r.status_code)
            assert "CSRF" in r.text
    # Nothing was done: still logged in, no tenant or user created.
    admin = c.get("/admin")
    assert admin.status_code == 200 and "evil" not in admin.text


def test_a_tenant_user_cannot_reach_another_tenant(base: str, seeded: Seeded) -> None:
    acme, globex = seeded.tenant_ids["acme"], seeded.tenant_ids["globex"]
    c = login(base, "gina")  # viewer of globex
    assert c.get(f"/t/{globex}/").status_code == 200
    for path in ("/", "/live", "/cdrs", "/reports", "/switches"):
        r = c.get(f"/t/{acme}{path}")
        assert r.status_code == 404, path
        assert "acme" not in r.text
    assert c.get(f"/t/{acme}/events").status_code == 404
    assert c.get("/t/999999/").status_code == 404
    assert c.get("/admin").status_code == 403
    # A superadmin sees both.
    root = login(base, "root")
    assert root.get(f"/t/{acme}/").status_code == 200
    assert root.get(f"/t/{globex}/live").status_code == 200


def test_viewer_cannot_create_tokens_admin_can(
    base: str, seeded: Seeded, collector_server: CollectorServer
) -> None:
    acme = seeded.tenant_ids["acme"]
    viewer = login(base, "victor")
    page = viewer.get(f"/t/{acme}/switches")
    assert "Create token" not in page.text
    r = viewer.post(
        f"/t/{acme}/switches/token", data={"switch": "sw9", "csrf_token": csrf_of(page.text)}
    )
    assert r.status_code == 403
    admin = login(base, "alice")
    page = admin.get(f"/t/{acme}/switches")
    r = admin.post(
        f"/t/{acme}/switches/token",
        data={"switch": "pbx-1", "ttl_hours": "2", "csrf_token": csrf_of(page.text)},
    )
    assert r.status_code == 201
    match = re.search(r"cdrstats-agent enroll (\S+) (cdrs_[A-Za-z0-9_\-]+)", r.text)
    assert match and match[1] == collector_server.url
    # The token shown really enrolls an agent, which then appears (and can be revoked).
    from cdrstats_agent import wire
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    e = httpx.post(
        collector_server.url + "/api/v1/enroll",
        json={
            "token": match[2],
            "public_key": wire.key_to_text(key.verify_key),
            "hostname": "pbx-host",
            "version": "9.9",
        },
        timeout=10,
    )
    assert e.status_code == 201, e.text
    agent_id = e.json()["agent_id"]
    page = admin.get(f"/t/{acme}/switches")
    assert "pbx-host" in page.text and agent_id in page.text
    bad = admin.post(
        f"/t/{acme}/switches/token", data={"switch": "", "csrf_token": csrf_of(page.text)}
    )
    assert bad.status_code == 422 and "switch:" in bad.text
    r = admin.post(
        f"/t/{acme}/switches/revoke", data={"agent_id": agent_id, "csrf_token": csrf_of(page.text)}
    )
    assert r.status_code == 200 and "revoked" in r.text
    with psycopg.connect(collector_server.database_url) as conn:
        row = conn.execute("SELECT revoked_at FROM agent WHERE id = %s", (agent_id,)).fetchone()
    assert row is not None and row[0] is not None


def test_revoke_refuses_another_tenants_agent(
    base: str, seeded: Seeded, collector_server: CollectorServer
) -> None:
    other = collector_server.enroll("globex", "gx-1")
    acme = seeded.tenant_ids["acme"]
    admin = login(base, "alice")
    page = admin.get(f"/t/{acme}/switches")
    r = admin.post(
        f"/t/{acme}/switches/revoke",
        data={"agent_id": other.agent_id, "csrf_token": csrf_of(page.text)},
    )
    assert r.status_code == 404
    ingest = Ingest(collector_server, other)
    assert ingest.send([cdr(1)])["accepted"] == 1  # still enrolled


def test_the_session_authenticates_the_json_api_for_its_tenant_only(
    base: str, seeded: Seeded, collector_server: CollectorServer
) -> None:
    mine = fresh_tenant(collector_server.database_url)
    globex = seeded.tenant_ids["globex"]
    Ingest(collector_server, collector_server.enroll(mine.name, "sw1")).send(
        [cdr(i, answered=i % 4 != 0) for i in range(8)]
    )
    c = login(base, mine.viewer)  # the API accepts the console's cookie
    d = c.get("/api/v1/reports/dashboard", params={"tenant": mine.id})
    assert d.status_code == 200, d.text
    assert d.json()["current"]["calls"] == 8 and d.json()["current"]["answered"] == 6
    for path in (
        "/api/v1/reports/dashboard",
        "/api/v1/cdrs",
        "/api/v1/cdrs/export.csv",
        "/api/v1/live/calls",
    ):
        r = c.get(path, params={"tenant": globex})
        assert r.status_code == 404, (path, r.status_code)
    c.post("/logout", data={"csrf_token": csrf_of(c.get(f"/t/{mine.id}/").text)})
    assert c.get("/api/v1/reports/dashboard", params={"tenant": mine.id}).status_code == 401


def test_sse_delivers_own_tenant_batches_and_resumes(
    base: str, seeded: Seeded, collector_server: CollectorServer
) -> None:
    acme = seeded.tenant_ids["acme"]
    mine = Ingest(collector_server, collector_server.enroll("acme", "sw1"))
    theirs = Ingest(collector_server, collector_server.enroll("globex", "gx"))
    c = login(base, "victor")
    with SSEReader(c, f"/t/{acme}/events") as stream:  # subscribed once this returns
        theirs.send([cdr(100)])
        mine.send([cdr(1), cdr(2)])
        first = stream.next_event()
        theirs.send([cdr(101)])
        mine.send([cdr(3)])
        second = stream.next_event()
    for _id, name, data in (first, second):
        assert name == "cdr"
        assert data["tenant_id"] == acme  # never globex's
    assert first[2]["accepted"] == 2 and second[2]["accepted"] == 1
    # Resume: a reconnect with Last-Event-ID gets what it missed, from the broker's ring.
    mine.send([cdr(4), cdr(5), cdr(6)])
    with SSEReader(c, f"/t/{acme}/events", {"Last-Event-ID": first[0]}) as stream:
        assert stream.next_event()[0] == second[0]
        missed = stream.next_event()
        assert missed[1] == "cdr" and missed[2]["accepted"] == 3
    # An unknown resume point (another process, or a restart) gets a resync event.
    with SSEReader(c, f"/t/{acme}/events", {"Last-Event-ID": "deadbeef-5"}) as stream:
        assert stream.next_event()[1] == "resync"


def _audit(database_url: str, after: int) -> list[tuple[object, ...]]:
    """Audit entries written after the entry `after` (see `_audit_mark`)."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT t.name, a.username, a.action, a.target FROM audit_log a"
            " LEFT JOIN tenant t ON t.id = a.tenant_id WHERE a.id > %s ORDER BY a.id",
            (after,),
        ).fetchall()


def test_admin_actions_are_audited_and_scoped(
    base: str, seeded: Seeded, collector_server: CollectorServer
) -> None:
    mark = _audit_mark(collector_server.database_url)
    root = login(base, "root")
    token = csrf_of(root.get("/admin").text)
    r = root.post(
        "/admin/tenants", data={"name": "initech", "timezone": "Asia/Tokyo", "csrf_token": token}
    )
    assert r.status_code == 201 and "initech" in r.text
    dup = root.post("/admin/tenants", data={"name": "initech", "csrf_token": token})
    assert dup.status_code == 422 and "already exists" in dup.text
    bad = root.post(
        "/admin/tenants", data={"name": "x", "timezone": "Mars/Base", "csrf_token": token}
    )
    assert bad.status_code == 422 and "timezone" in bad.text
    r = root.post(
        "/admin/users",
        data={
            "username": "ivan",
            "role": "tenant_viewer",
            "tenant": "initech",
            "password": "p" * 12,
            "csrf_token": token,
        },
    )
    assert r.status_code == 201
    short = root.post(
        "/admin/users",
        data={
            "username": "ivan2",
            "role": "tenant_viewer",
            "tenant": "initech",
            "password": "short",
            "csrf_token": token,
        },
    )
    assert short.status_code == 422 and "at least 10" in short.text
    alice = login(base, "alice")  # tenant admin of acme
    page = alice.get("/admin")
    assert page.status_code == 200 and "initech" not in page.text and "gina" not in page.text
    t2 = csrf_of(page.text)
    assert alice.post("/admin/tenants", data={"name": "evil", "csrf_token": t2}).status_code == 403
    r = alice.post(
        "/admin/users",
        data={"username": "root2", "role": "superadmin", "password": "p" * 12, "csrf_token": t2},
    )
    assert r.status_code == 403
    # A tenant admin's new user lands in its own tenant whatever the form says.
    r = alice.post(
        "/admin/users",
        data={
            "username": "vera",
            "role": "tenant_viewer",
            "tenant": "globex",
            "password": "p" * 12,
            "csrf_token": t2,
        },
    )
    assert r.status_code == 201
    acme = seeded.tenant_ids["acme"]
    alice.post(f"/t/{acme}/switches/token", data={"switch": "pbx-9", "csrf_token": t2})
    assert _audit(collector_server.database_url, mark) == [
        ("initech", "root", "tenant.create", "initech"),
        ("initech", "root", "user.create", "ivan"),
        ("acme", "alice", "user.create", "vera"),
        ("acme", "alice", "agent_token.create", "pbx-9"),
    ]
    vera = login(base, "vera", "p" * 12)
    assert vera.get("/").headers["location"] == f"/t/{acme}/"
    # Tenant admins see their tenant's entries only; the superadmin sees all.
    audit_alice = alice.get("/admin").text
    assert "agent_token.create" in audit_alice and "tenant.create" not in audit_alice
    assert "tenant.create" in root.get("/admin").text


def test_api_tokens_are_made_used_and_revoked_by_their_owner(
    base: str, seeded: Seeded, collector_server: CollectorServer
) -> None:
    acme, globex = seeded.tenant_ids["acme"], seeded.tenant_ids["globex"]
    mark = _audit_mark(collector_server.database_url)
    victor = login(base, "victor")
    page = victor.get("/account")
    assert page.status_code == 200 and "No API token yet." in page.text
    r = victor.post(
        "/account/tokens",
        data={"label": "nightly export", "ttl_days": "30", "csrf_token": csrf_of(page.text)},
    )
    assert r.status_code == 201
    match = re.search(r'<code id="new-token">(cdrs_api_[A-Za-z0-9_\-]+)</code>', r.text)
    assert match
    token = match[1]
    bad = victor.post("/account/tokens", data={"ttl_days": "0", "csrf_token": csrf_of(r.text)})
    assert bad.status_code == 422 and "ttl_days" in bad.text
    bearer = {"Authorization": f"Bearer {token}"}
    api = collector_server.url + "/api/v1/reports/dashboard"
    assert httpx.get(api, params={"tenant": acme}, headers=bearer, timeout=10).status_code == 200
    assert httpx.get(api, params={"tenant": globex}, headers=bearer, timeout=10).status_code == 404
    token_id = re.search(r'name="token_id" value="([0-9a-f]{64})"', r.text)
    assert token_id
    # Somebody else cannot revoke it.
    gina = login(base, "gina")
    other = gina.post(
        "/account/tokens/revoke",
        data={"token_id": token_id[1], "csrf_token": csrf_of(gina.get("/account").text)},
    )
    assert other.status_code == 404
    assert httpx.get(api, params={"tenant": acme}, headers=bearer, timeout=10).status_code == 200
    r = victor.post(
        "/account/tokens/revoke", data={"token_id": token_id[1], "csrf_token": csrf_of(r.text)}
    )
    assert r.status_code == 200 and "revoked" in r.text
    # The collector caches lookups for a few seconds (auth.CACHE_TTL_S); the revoking process
    # forgot its cache, and this collector is that process.
    assert httpx.get(api, params={"tenant": acme}, headers=bearer, timeout=10).status_code == 401
    actions = [row[2] for row in _audit(collector_server.database_url, mark)]
    assert actions == ["api_token.create", "api_token.revoke"]


def test_oversized_forms_are_refused_before_reading(base: str) -> None:
    with httpx.Client(base_url=base, timeout=10) as c:
        token = csrf_of(c.get("/login").text)
        r = c.post("/login", data={"username": "x" * 70_000, "password": "y", "csrf_token": token})
        assert r.status_code == 413


def test_database_unreachable_pages_say_so(tmp_path: Path) -> None:
    from tests.fix_db import free_port

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    server = CollectorServer(dead, tmp_path, pool_timeout=0.5)
    server.start(wait_healthy=False)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            page = c.get("/login")
            assert page.status_code == 200  # the form is shown, nothing needs the database
            r = c.post(
                "/login",
                data={"username": "a", "password": PASSWORD, "csrf_token": csrf_of(page.text)},
            )
            assert r.status_code == 503 and "database is unreachable" in r.text
            assert c.get("/t/1/").headers["location"].startswith("/login")
            assert c.get("/t/1/events").status_code == 401
            assert c.get("/healthz").status_code == 503
    finally:
        server.stop()


def test_open_streams_end_when_the_collector_stops(database_url: str, tmp_path: Path) -> None:
    """SIGTERM ends the event streams cleanly, so the collector stops without waiting them
    out (uvicorn would otherwise wait for its graceful-shutdown timeout, then cut them)."""
    import signal
    import threading

    seed(database_url)
    server = CollectorServer(database_url, tmp_path)
    server.start()
    try:
        c = login(server.url, "victor")
        outcome: list[str] = []
        reader = SSEReader(c, "/t/1/events").__enter__()

        def drain() -> None:
            try:
                reader.next_event()
                outcome.append("event")
            except AssertionError as exc:  # SSEReader: the response ended normally
                outcome.append(str(exc))
            except httpx.HTTPError as exc:  # the connection was cut
                outcome.append(type(exc).__name__)

        thread = threading.Thread(target=drain, daemon=True)
        thread.start()
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)  # uvicorn re-raises SIGTERM once stopped: exit status -15
        thread.join(30)
        reader.__exit__(None, None, None)
        assert outcome == ["the stream ended"]
    finally:
        server.stop()


def test_two_collectors_share_sessions_and_live_updates(database_url: str, tmp_path: Path) -> None:
    """Behind a load balancer: a login on one process is valid on the other (the secret comes
    from the shared database), and a batch ingested by one reaches streams on the other."""
    seeded = seed(database_url)
    acme = seeded.tenant_ids["acme"]
    one = CollectorServer(database_url, tmp_path / "one")
    two = CollectorServer(database_url, tmp_path / "two")
    one.start()
    two.start()
    try:
        c = login(one.url, "victor")
        cookie = c.cookies["cdrstats_session"]
        other = httpx.Client(base_url=two.url, timeout=10)
        other.cookies.set("cdrstats_session", cookie)
        assert other.get(f"/t/{acme}/").status_code == 200  # logged in on `two` as well
        feed = Ingest(one, one.enroll("acme", "sw-lb"))
        with (
            SSEReader(other, f"/t/{acme}/events") as on_two,
            SSEReader(c, f"/t/{acme}/events") as on_one,
        ):
            feed.send([cdr(1), cdr(2), cdr(3)])  # stored by process `one`
            for stream in (on_two, on_one):
                _id, name, data = stream.next_event()
                assert (name, data["accepted"], data["tenant_id"]) == ("cdr", 3, acme)
        other.close()
    finally:
        one.stop()
        two.stop()


def test_login_returns_to_the_page_asked_for_and_never_elsewhere(base: str, seeded: Seeded) -> None:
    acme = seeded.tenant_ids["acme"]
    with httpx.Client(base_url=base, timeout=10) as c:
        asked = c.get(f"/t/{acme}/live?x=1")
        assert asked.headers["location"] == f"/login?next=/t/{acme}/live%3Fx%3D1"
        page = c.get(asked.headers["location"])
        assert f'value="/t/{acme}/live?x=1"' in page.text
        for target, expected in (
            (f"/t/{acme}/live?x=1", f"/t/{acme}/live?x=1"),
            ("//evil.example/", f"/t/{acme}/"),
            ("https://evil.example/", f"/t/{acme}/"),
            ("/\\\\evil.example/", f"/t/{acme}/"),
        ):
            c.cookies.clear()
            token = csrf_of(c.get("/login").text)
            r = c.post(
                "/login",
                data={
                    "username": "victor",
                    "password": PASSWORD,
                    "next": target,
                    "csrf_token": token,
                },
            )
            assert r.status_code == 303 and r.headers["location"] == expected, target

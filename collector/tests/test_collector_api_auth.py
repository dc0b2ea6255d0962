"""API authentication (tokens, sessions), tenant scoping, and row-level security in SQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from cdrstats_collector import auth, cli, tenants, users
from collector_api_testkit import seed_two_tenants
from psycopg import errors as pgerrors
from starlette.exceptions import HTTPException


def test_token_is_stored_hashed_and_shown_once(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        tid = tenants.add_tenant(conn, "acme")
        users.add_user(conn, "alice", "tenant_viewer", "correct horse 1", "acme")
        token = auth.create_token(conn, "alice", "laptop")
        assert token.startswith(auth.TOKEN_PREFIX)
        rows = conn.execute("SELECT token_hash, label FROM api_token").fetchall()
    assert rows == [(auth.hash_token(token), "laptop")]
    assert token.encode() not in rows[0][0]
    assert tid > 0


def test_token_for_unknown_user_and_bad_ttl(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        with pytest.raises(tenants.AdminError, match="no user named 'ghost'"):
            auth.create_token(conn, "ghost")
        tenants.add_tenant(conn, "acme")
        users.add_user(conn, "alice", "tenant_viewer", "correct horse 1", "acme")
        with pytest.raises(tenants.InvalidArgument, match="lifetime must be positive"):
            auth.create_token(conn, "alice", ttl=timedelta(0))
        assert conn.execute("SELECT count(*) FROM api_token").fetchone() == (0,)


def test_cli_api_token_create(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CDRSTATS_DATABASE_URL", raising=False)
    with psycopg.connect(database_url, autocommit=True) as conn:
        tenants.add_tenant(conn, "acme")
        users.add_user(conn, "alice", "tenant_admin", "correct horse 1", "acme")
    code = cli.main(["api-token", "create", "--user", "alice", "--database-url", database_url])
    out, _ = capsys.readouterr()
    assert code == 0
    token = out.strip().splitlines()[-1]
    assert token.startswith("cdrs_api_")
    with psycopg.connect(database_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM api_token WHERE token_hash = %s", (auth.hash_token(token),)
        ).fetchone() == (1,)
    code = cli.main(["api-token", "create", "--user", "nobody", "--database-url", database_url])
    _, err = capsys.readouterr()
    assert code == 1 and "no user named 'nobody'" in err
    code = cli.main(
        [
            "api-token",
            "create",
            "--user",
            "alice",
            "--ttl-days",
            "-1",
            "--database-url",
            database_url,
        ]
    )
    _, err = capsys.readouterr()
    assert code == 2 and "--ttl-days" in err
    code = cli.main(["api-token", "revoke", "--user", "alice", "--database-url", database_url])
    out, _ = capsys.readouterr()
    assert code == 0 and out.startswith("1 API token(s) of user 'alice' revoked")
    with psycopg.connect(database_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM api_token WHERE revoked_at IS NULL"
        ).fetchone() == (0,)
    code = cli.main(["api-token", "revoke", "--user", "nobody", "--database-url", database_url])
    _, err = capsys.readouterr()
    assert code == 1 and "no user named 'nobody'" in err


def _p(role: str, tenant: int | None) -> auth.Principal:
    return auth.Principal(1, "u", role, tenant)


def test_tenant_scope_rules() -> None:
    admin = _p("superadmin", None)
    assert auth.tenant_scope(admin, "7") == 7
    assert auth.tenant_scope(admin, 3) == 3
    with pytest.raises(auth.ParamError) as missing:
        auth.tenant_scope(admin, None)
    assert missing.value.status_code == 422 and missing.value.param == "tenant"
    for bad in ("x", "-1", "0", "1.5"):
        with pytest.raises(auth.ParamError):
            auth.tenant_scope(admin, bad)
    viewer = _p("tenant_viewer", 5)
    assert auth.tenant_scope(viewer, None) == 5
    assert auth.tenant_scope(viewer, "5") == 5
    with pytest.raises(HTTPException) as other:
        auth.tenant_scope(viewer, "6")
    assert other.value.status_code == 404
    with pytest.raises(auth.ParamError):
        auth.tenant_scope(viewer, "abc")


def _visible(conn: psycopg.Connection[Any], table: str, tenant: int | None) -> list[Any]:
    with conn.transaction():
        conn.execute("SET LOCAL ROLE cdrstats_reader")
        if tenant is not None:
            conn.execute("SELECT set_config('cdrstats.tenant_id', %s, true)", (str(tenant),))
        return conn.execute(f"SELECT DISTINCT tenant_id FROM {table} ORDER BY 1").fetchall()


def test_rls_hides_other_tenants_rows_in_sql(database_url: str) -> None:
    seed = seed_two_tenants(database_url)
    a, b = seed.tenant_a, seed.tenant_b
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(DISTINCT tenant_id) FROM cdr").fetchone() == (2,)
        assert _visible(conn, "cdr", a) == [(a,)]
        assert _visible(conn, "cdr", b) == [(b,)]
        assert _visible(conn, "cdr", None) == []  # no tenant set: nothing at all
        assert _visible(conn, "switch", a) == [(a,)]
        with conn.transaction():
            conn.execute("SET LOCAL ROLE cdrstats_reader")
            conn.execute("SELECT set_config('cdrstats.tenant_id', %s, true)", (str(a),))
            # a query that "forgets" its tenant condition still sees one tenant
            rows = conn.execute("SELECT count(*) FROM cdr WHERE tenant_id = %s", (b,)).fetchone()
            assert rows == (0,)
            assert conn.execute("SELECT id FROM tenant").fetchall() == [(a,)]
        # partitions are not readable directly (they would not apply the parent's policies)
        part = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'cdr'::regclass LIMIT 1"
        ).fetchone()
        assert part is not None
        for secret_table in (part[0], "api_token", "app_user", "agent"):
            with pytest.raises(pgerrors.InsufficientPrivilege), conn.transaction():
                conn.execute("SET LOCAL ROLE cdrstats_reader")
                conn.execute(f"SELECT * FROM {secret_table}")
        # the reader cannot write
        with pytest.raises(pgerrors.InsufficientPrivilege), conn.transaction():
            conn.execute("SET LOCAL ROLE cdrstats_reader")
            conn.execute("SELECT set_config('cdrstats.tenant_id', %s, true)", (str(a),))
            conn.execute("DELETE FROM cdr")
        assert conn.execute("SELECT count(DISTINCT tenant_id) FROM cdr").fetchone() == (2,)


def test_every_tenant_table_the_reader_can_read_is_under_rls(database_url: str) -> None:
    """A table with a tenant_id is either readable by cdrstats_reader under a forced policy on
    cdrstats.tenant_id, or not readable by it at all (owner-only tables such as agent)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT c.relname, c.relrowsecurity AND c.relforcerowsecurity FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            " AND (c.relname = 'tenant' OR EXISTS (SELECT 1 FROM pg_attribute a"
            "      WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))"
        ).fetchall()
        policies = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_policies WHERE 'cdrstats_reader' = ANY(roles)"
                " AND cmd = 'SELECT' AND qual LIKE '%cdrstats_current_tenant()%'"
            ).fetchall()
        }
        readable = {
            str(r[0])
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')"
                " AND has_table_privilege('cdrstats_reader', c.oid, 'SELECT')"
            ).fetchall()
        }
    tenant_tables = {str(r[0]): bool(r[1]) for r in rows}
    assert {"cdr", "tenant", "switch", "agg_kpi_day"} <= readable
    for name in readable & set(tenant_tables):
        assert tenant_tables[name], f"{name}: readable by cdrstats_reader without forced RLS"
        assert name in policies, f"{name}: readable by cdrstats_reader without a tenant policy"
    # nothing else is readable but the shared, tenant-less prefix table
    assert readable - set(tenant_tables) == {"dial_prefix"}
    for secret in ("app_user", "api_token", "agent", "agent_token"):
        assert secret not in readable


# --- principal() over HTTP: bearer tokens and console sessions ----------------------------------


def _app(pool: Any) -> Any:
    from types import SimpleNamespace

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def login(request: Request) -> JSONResponse:
        request.session["user_id"] = int(request.query_params["id"])
        return JSONResponse({})

    async def whoami(request: Request) -> JSONResponse:
        who = await auth.principal(request)
        return JSONResponse(None if who is None else [who.username, who.role, who.tenant_id])

    async def admin_only(request: Request) -> JSONResponse:
        who = await auth.require(request, roles=("superadmin", "tenant_admin"))
        return JSONResponse(who.username)

    app = Starlette(
        routes=[Route("/login", login), Route("/whoami", whoami), Route("/admin", admin_only)],
        middleware=[Middleware(SessionMiddleware, secret_key="test-secret")],
    )
    app.state.collector = SimpleNamespace(pool=pool)
    return app


async def test_principal_from_token_or_session(database_url: str) -> None:
    import httpx
    from psycopg_pool import AsyncConnectionPool

    with psycopg.connect(database_url, autocommit=True) as conn:
        tenants.add_tenant(conn, "acme")
        uid = users.add_user(conn, "alice", "tenant_viewer", "correct horse 1", "acme")
        root = users.add_user(conn, "root", "superadmin", "correct horse 1")
        token = auth.create_token(conn, "alice")
        expired = auth.create_token(conn, "root", ttl=timedelta(microseconds=1))
        revoked = auth.create_token(conn, "root")
        assert auth.revoke_tokens(conn, "root") == 2
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
        app = _app(pool)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
            assert r.json() == ["alice", "tenant_viewer", 1]
            for bad in (expired, revoked, token + "x", "cdrs_api_", "other_prefix"):
                r = await client.get("/whoami", headers={"Authorization": f"Bearer {bad}"})
                assert r.json() is None, bad
            assert (await client.get("/whoami")).json() is None
            r = await client.get("/admin")
            assert r.status_code == 401 and "WWW-Authenticate" in r.headers
            r = await client.get("/admin", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 403
            await client.get("/login", params={"id": uid})
            assert (await client.get("/whoami")).json() == ["alice", "tenant_viewer", 1]
            # a wrong bearer token is not rescued by the session
            r = await client.get("/whoami", headers={"Authorization": "Bearer cdrs_api_nope"})
            assert r.json() is None
            await client.get("/login", params={"id": root})
            assert (await client.get("/admin")).json() == "root"
            await client.get("/login", params={"id": 999_999})
            assert (await client.get("/whoami")).json() is None


def test_read_api_is_503_while_postgresql_is_unreachable(tmp_path: Any) -> None:
    import httpx

    from tests.fix_db import CollectorServer, free_port

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    server = CollectorServer(dead, tmp_path / "collector", pool_timeout=0.5, log_level="info")
    server.start(wait_healthy=False)
    try:
        r = httpx.get(
            server.url + "/api/v1/reports/dashboard",
            headers={"Authorization": "Bearer cdrs_api_whatever"},
            timeout=30,
        )
        assert r.status_code == 503 and "Retry-After" in r.headers, r.text
        assert "PostgreSQL" in r.json()["error"]
        # the schema is served without the database
        assert httpx.get(server.url + "/api/v1/openapi.json", timeout=30).status_code == 200
    finally:
        server.stop()

"""CSV imports over HTTP against a real collector: upload, job, duplicates, rejects, errors,
roles, CSRF and tenant isolation (collector/cdrstats_collector/import_api.py)."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from cdrstats_collector import auth
from web_testkit import Fresh, SSEReader, csrf_of, fresh_tenant, login, shared_server

from tests.fix_db import CollectorServer

MAPPING = {
    "delimiter": ";",
    "header": True,
    "decimal_comma": True,
    "time_format": "%d/%m/%Y %H:%M:%S",
    "fields": {"start": "Date", "caller": "Appelant", "callee": "Appelé", "duration": "Durée"},
    "key": "Id",
}


def carrier_csv(rows: int, bad: tuple[int, ...] = ()) -> bytes:
    """A carrier-like file: `;`, day-first dates, decimal commas, Latin-1 header and names."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    out = ["Id;Date;Appelant;Appelé;Durée;Nom"]
    for i in range(rows):
        when = (start + timedelta(seconds=7 * i)).strftime("%d/%m/%Y %H:%M:%S")
        if i in bad:
            when = "31/02/2025 10:00:00"  # not a date
        out.append(f"c{i};{when};0142{i:06d};0033612{i:06d};{i % 90},5;Hélène {i}")
    return ("\r\n".join(out) + "\r\n").encode("latin-1")


@pytest.fixture(scope="module")
def server(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorServer]:
    with shared_server(pg_admin_url, migrated_template, tmp_path_factory.mktemp("imp")) as s:
        yield s


@pytest.fixture(scope="module")
def tenant(server: CollectorServer) -> Fresh:
    return fresh_tenant(server.database_url)


@contextlib.contextmanager
def admin_client(server: CollectorServer, username: str) -> Iterator[httpx.Client]:
    """A logged-in client sending the session's CSRF token (as the console's scripts do)."""
    client = login(server.url, username)
    try:
        client.headers["X-CSRF-Token"] = csrf_of(client.get("/account").text)
        client.timeout = httpx.Timeout(60)
        yield client
    finally:
        client.close()


def upload(
    client: httpx.Client, data: bytes, name: str = "calls.csv", **fields: str
) -> httpx.Response:
    return client.post("/api/v1/imports", files={"file": (name, data, "text/csv")}, data=fields)


def wait_done(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/imports/{job_id}").json()
        if job["status"] != "running":
            return dict(job)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running: {job}")


def test_upload_imports_then_reimport_is_all_duplicates(
    server: CollectorServer, tenant: Fresh
) -> None:
    data = carrier_csv(300, bad=(10, 250))
    with admin_client(server, tenant.admin) as c:
        r = upload(c, data, "march.csv", mapping=json.dumps(MAPPING), switch="carrier-a")
        assert r.status_code == 202, r.text
        first = r.json()
        assert first["file_name"] == "march.csv" and first["switch"] == "carrier-a"
        assert first["bytes_read"] == 0 and first["file_size"] == len(data)
        job = wait_done(c, first["id"])
        assert job["bytes_read"] == len(data)
        assert job["status"] == "done", job
        assert (job["rows_read"], job["imported"], job["duplicates"], job["rejected"]) == (
            300,
            298,
            0,
            2,
        )
        assert job["profile"] == "(custom mapping)" and job["options"]["encoding"] == "cp1252"
        # The rejected rows, with their physical line numbers (the header is line 1).
        r = c.get(f"/api/v1/imports/{job['id']}/rejects.csv")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert 'filename="march-rejected.csv"' in r.headers["content-disposition"]
        lines = r.text.splitlines()
        assert lines[0] == "line,reason,raw"
        assert [ln.split(",")[0] for ln in lines[1:]] == ["12", "252"]
        assert "31/02/2025" in lines[1] and "format" in lines[1] and "Hélène 10" in lines[1]
        # Saved as a profile, the same mapping imports the same file again (raw body this
        # time): nothing new, every valid row counted as a duplicate.
        r = c.post("/api/v1/import-profiles", json={"name": "carrier", "options": MAPPING})
        assert r.status_code == 201, r.text
        r = c.post(
            "/api/v1/imports",
            params={"profile": "carrier", "switch": "carrier-a", "file_name": "march.csv"},
            content=data,
            headers={"content-type": "text/csv"},
        )
        assert r.status_code == 202, r.text
        again = wait_done(c, r.json()["id"])
        assert (again["imported"], again["duplicates"], again["rejected"]) == (0, 298, 2)
        assert again["profile"] == "carrier"
        listed = c.get("/api/v1/imports").json()["imports"]
        assert [j["id"] for j in listed[:2]] == [again["id"], job["id"]]
        profiles = {p["name"]: p for p in c.get("/api/v1/import-profiles").json()["profiles"]}
        assert profiles["carrier"]["options"] == MAPPING and not profiles["carrier"]["builtin"]
        assert profiles["asterisk"]["builtin"] and "freeswitch-example" in profiles
        # The CDRs are there, once, in the search API.
        found = c.get("/api/v1/cdrs", params={"limit": 500}).json()
        assert len(found["items"]) == 298


def test_preview_detects_and_guesses(server: CollectorServer, tenant: Fresh) -> None:
    data = carrier_csv(30)
    with admin_client(server, tenant.viewer) as c:  # a viewer may preview (reads only)
        r = c.post(
            "/api/v1/imports/preview",
            files={"file": ("x.csv", data, "text/csv")},
            data={"complete": "true"},
        )
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["detected"]["delimiter"] == ";" and doc["detected"]["header"] is True
        assert doc["detected"]["encoding"] == "cp1252" and doc["detected"]["decimal_comma"]
        assert doc["header"][:3] == ["Id", "Date", "Appelant"]
        assert doc["guesses"]["callee"] == "Appelé" and doc["guesses"]["key"] == "Id"
        assert doc["rows"][0]["values"][5] == "Hélène 0"
        # With the explicit mapping the rows map (day-first dates need the format).
        r = c.post(
            "/api/v1/imports/preview",
            files={"file": ("x.csv", data, "text/csv")},
            data={"complete": "true", "mapping": json.dumps(MAPPING)},
        )
        rows = r.json()["rows"]
        assert rows[1]["reason"] is None and rows[1]["cdr"]["caller"] == "0142000001"
        assert rows[1]["cdr"]["duration"] in (1, 2)  # "1,5" s, rounded by the mapping


@pytest.mark.parametrize(
    ("data", "fields", "param", "text"),
    [
        (b"", {"profile": "asterisk"}, "file", "empty (0 bytes)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", {"profile": "asterisk"}, "file", "NUL"),
        (b"a,b\n1,2\n", {"profile": "nope"}, "profile", "unknown import profile 'nope'"),
        (b"a,b\n1,2\n", {}, "profile", "give a profile name or a mapping"),
        (b"a,b\n1,2\n", {"mapping": "{"}, "mapping", "is not JSON"),
        (b"a,b\n1,2\n", {"mapping": '{"fields": {"caller": "a"}}'}, "mapping", "fields.start"),
        (
            b"a,b\n1,2\n",
            {"mapping": '{"fields": {"start": "a", "colour": "b"}}'},
            "mapping",
            "fields.colour",
        ),
        (b"a,b\n1,2\n", {"profile": "asterisk", "timezone": "Mars/Base"}, "timezone", "Mars"),
    ],
)
def test_bad_uploads_say_which_field(
    server: CollectorServer,
    tenant: Fresh,
    data: bytes,
    fields: dict[str, str],
    param: str,
    text: str,
) -> None:
    with admin_client(server, tenant.admin) as c:
        before = len(c.get("/api/v1/imports").json()["imports"])
        r = upload(c, data, "photo.csv", switch="s1", **fields)
        assert r.status_code == 400, r.text
        assert r.json()["param"] == param and text in r.json()["error"], r.json()
        assert len(c.get("/api/v1/imports").json()["imports"]) == before  # no job
        r = upload(c, b"a,b\n1,2\n", profile="asterisk")
        assert r.status_code == 400 and r.json()["param"] == "switch"
        r = c.post("/api/v1/import-profiles", json={"name": "x", "options": {"fields": {}}})
        assert r.status_code == 400 and "fields.start" in r.json()["error"]
        r = c.post("/api/v1/import-profiles", json={"name": "asterisk", "options": MAPPING})
        assert r.status_code == 400 and "built-in" in r.json()["error"]


def test_roles_csrf_and_tenant_isolation(server: CollectorServer, tenant: Fresh) -> None:
    other = fresh_tenant(server.database_url)
    data = carrier_csv(5, bad=(1,))
    with admin_client(server, tenant.admin) as c:
        job = wait_done(c, upload(c, data, mapping=json.dumps(MAPPING), switch="s2").json()["id"])
        assert job["rejected"] == 1
        # Without the CSRF header a session-authenticated POST changes nothing.
        del c.headers["X-CSRF-Token"]
        r = upload(c, data, mapping=json.dumps(MAPPING), switch="s2")
        assert r.status_code == 403 and "CSRF" in r.json()["error"]
        r = c.post("/api/v1/import-profiles", json={"name": "p", "options": MAPPING})
        assert r.status_code == 403
    with admin_client(server, tenant.viewer) as v:
        r = upload(v, data, mapping=json.dumps(MAPPING), switch="s2")
        assert r.status_code == 403 and "tenant_viewer" in r.json()["error"]
        assert v.get(f"/api/v1/imports/{job['id']}").json()["imported"] == 4  # viewers read
        r = v.post("/api/v1/import-profiles", json={"name": "p", "options": MAPPING})
        assert r.status_code == 403
        # The pages: a viewer follows imports but gets no upload form.
        page = v.get(f"/t/{tenant.id}/import")
        assert page.status_code == 200 and "needs a tenant admin" in page.text
        assert 'id="import-file"' not in page.text
        assert v.get(f"/t/{tenant.id}/import/{job['id']}").status_code == 200
    with admin_client(server, other.admin) as o:
        assert o.get(f"/api/v1/imports/{job['id']}").status_code == 404
        assert o.get(f"/api/v1/imports/{job['id']}/rejects.csv").status_code == 404
        assert (
            o.get(f"/api/v1/imports/{job['id']}", params={"tenant": tenant.id}).status_code == 404
        )
        assert o.get("/api/v1/imports").json()["imports"] == []
        assert o.get(f"/t/{tenant.id}/import").status_code == 404
        assert o.get(f"/t/{tenant.id}/import/{job['id']}").status_code == 404
        assert 'id="import-file"' in o.get(f"/t/{other.id}/import").text
        names = [p["name"] for p in o.get("/api/v1/import-profiles").json()["profiles"]]
        assert "carrier" not in names
    with httpx.Client(base_url=server.url) as anon:
        assert anon.get("/api/v1/imports").status_code == 401
    # The API document lists the routes.
    paths = httpx.get(server.url + "/api/v1/openapi.json").json()["paths"]
    assert {"/api/v1/imports", "/api/v1/imports/{job}/rejects.csv"} <= set(paths)


def test_profiles_are_deleted_by_admins_only_and_audited(
    server: CollectorServer, tenant: Fresh
) -> None:
    other = fresh_tenant(server.database_url)
    with admin_client(server, tenant.admin) as c:
        r = c.post("/api/v1/import-profiles", json={"name": "old carrier", "options": MAPPING})
        assert r.status_code == 201, r.text
        with admin_client(server, tenant.viewer) as v:
            assert v.delete("/api/v1/import-profiles/old carrier").status_code == 403
        with admin_client(server, other.admin) as o:  # another tenant's: not found
            assert o.delete("/api/v1/import-profiles/old carrier").status_code == 404
        r = c.delete("/api/v1/import-profiles/asterisk")
        assert r.status_code == 400 and "built-in" in r.json()["error"]
        csrf = c.headers.pop("X-CSRF-Token")
        assert c.delete("/api/v1/import-profiles/old carrier").status_code == 403
        c.headers["X-CSRF-Token"] = csrf
        r = c.delete("/api/v1/import-profiles/old carrier")
        assert (r.status_code, r.json()["deleted"]) == (200, True)
        assert c.delete("/api/v1/import-profiles/old carrier").status_code == 404
        names = [p["name"] for p in c.get("/api/v1/import-profiles").json()["profiles"]]
        assert "old carrier" not in names and "asterisk" in names
    with psycopg.connect(server.database_url) as conn:
        actions = conn.execute(
            "SELECT action FROM audit_log WHERE tenant_id = %s AND target = 'old carrier'"
            " ORDER BY id",
            (tenant.id,),
        ).fetchall()
    assert actions == [("import_profile.save",), ("import_profile.delete",)]


def test_a_job_left_running_is_marked_failed(server: CollectorServer, tenant: Fresh) -> None:
    """A job whose collector stopped (row not touched for STALE_S) is failed when read."""
    job_id = uuid.uuid4()
    with psycopg.connect(server.database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO switch (tenant_id, name) VALUES (%s, 'gone') ON CONFLICT (tenant_id, name)"
            " DO UPDATE SET name = EXCLUDED.name RETURNING id",
            (tenant.id,),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO import_job (tenant_id, id, switch_id, agent_id, profile, options,"
            " file_name, file_size, rows_read, imported, updated_at) VALUES (%s, %s, %s, %s,"
            " 'asterisk', '{}', 'old.csv', 10, 5000, 5000, now() - interval '1 hour')",
            (tenant.id, job_id, row[0], uuid.uuid4()),
        )
    with admin_client(server, tenant.viewer) as v:
        job = v.get(f"/api/v1/imports/{job_id}").json()
    assert job["status"] == "failed" and job["imported"] == 5000
    assert "stopped" in job["error"] and "import the file again" in job["error"]


def test_api_token_uploads_without_csrf(server: CollectorServer, tenant: Fresh) -> None:
    """Scripts use an API token: no session, no CSRF header; the raw body is the file."""
    with psycopg.connect(server.database_url, autocommit=True) as conn:
        token = auth.create_token(conn, tenant.admin, "import script")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/csv"}
    data = carrier_csv(40)
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
        r = c.post(
            "/api/v1/imports",
            params={"mapping": json.dumps(MAPPING), "switch": "scripted"},
            content=data,
        )
        assert r.status_code == 202, r.text
        assert r.json()["file_name"] == "upload.csv"
        job = wait_done(c, r.json()["id"])
    assert (job["imported"], job["rejected"], job["switch"]) == (40, 0, "scripted")


def test_progress_events_reach_only_the_tenants_streams(server: CollectorServer) -> None:
    """SSE `import` events: the job's tenant sees them, in order; another tenant does not."""
    a, b = fresh_tenant(server.database_url), fresh_tenant(server.database_url)
    data = carrier_csv(12_000)  # three batches of 5,000 rows
    with (
        admin_client(server, a.admin) as ca,
        admin_client(server, b.admin) as cb,
        SSEReader(ca, f"/t/{a.id}/events") as sa,
        SSEReader(cb, f"/t/{b.id}/events") as sb,
    ):
        job_a = upload(ca, data, mapping=json.dumps(MAPPING), switch="s").json()["id"]
        seen: list[tuple[str, int]] = []
        while not seen or seen[-1][0] == "running":
            _id, name, doc = sa.next_event()
            if name == "import" and doc["job_id"] == job_a:
                seen.append((doc["status"], doc["rows_read"]))
        assert seen[0] == ("running", 0) and seen[-1] == ("done", 12_000), seen
        assert [r for _s, r in seen] == sorted(r for _s, r in seen)
        assert len({r for _s, r in seen}) >= 4  # created, 5,000, 10,000, 12,000
        # Tenant b's stream: its own job's first event comes before anything of a's.
        job_b = upload(cb, carrier_csv(3), mapping=json.dumps(MAPPING), switch="s").json()["id"]
        while True:
            _id, name, doc = sb.next_event()
            if name == "import":
                assert doc["job_id"] == job_b, doc
                break

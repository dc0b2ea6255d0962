"""Helpers for the console tests: users, logins, signed CDR batches, a browser.

`seed(database_url)` creates two tenants (acme, globex) and one user per role, all with the
password `PASSWORD`. `Ingest` posts signed batches for an enrolled agent through the real
HTTP ingest API (`next_batch` numbers them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cdrstats_agent import wire
from cdrstats_agent.model import CDR, Direction, Disposition
from cdrstats_agent.plugin import LiveEvent
from cdrstats_collector import tenants, users

from tests.fix_db import (
    CollectorServer,
    EnrolledAgent,
    create_database,
    drop_database,
    with_dbname,
)

PASSWORD = "correct-horse-battery"
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
CHROMIUM = os.environ.get("CDRSTATS_CHROMIUM", "/usr/bin/chromium")

USERS = {
    "root": ("superadmin", None),
    "alice": ("tenant_admin", "acme"),
    "victor": ("tenant_viewer", "acme"),
    "gina": ("tenant_viewer", "globex"),
}


@dataclass(frozen=True)
class Seeded:
    tenant_ids: dict[str, int]


def seed(database_url: str) -> Seeded:
    with psycopg.connect(database_url, autocommit=True) as conn:
        ids = {
            "acme": tenants.add_tenant(conn, "acme", "Europe/Paris"),
            "globex": tenants.add_tenant(conn, "globex", "UTC"),
        }
        for name, (role, tenant) in USERS.items():
            users.add_user(conn, name, role, PASSWORD, tenant)
    return Seeded(ids)


@dataclass(frozen=True)
class Fresh:
    """A tenant of its own for one test, with an admin and a viewer (password PASSWORD)."""

    id: int
    name: str
    admin: str
    viewer: str


def fresh_tenant(database_url: str, timezone: str = "Europe/Paris") -> Fresh:
    name = "t-" + secrets.token_hex(3)
    with psycopg.connect(database_url, autocommit=True) as conn:
        tid = tenants.add_tenant(conn, name, timezone)
        users.add_user(conn, f"{name}-admin", "tenant_admin", PASSWORD, name)
        users.add_user(conn, f"{name}-viewer", "tenant_viewer", PASSWORD, name)
    return Fresh(tid, name, f"{name}-admin", f"{name}-viewer")


@contextlib.contextmanager
def shared_server(pg_admin_url: str, template: str, workdir: Path) -> Iterator[CollectorServer]:
    """A collector process on a database of its own, for every test of a module."""
    name = create_database(pg_admin_url, template)
    server = CollectorServer(with_dbname(pg_admin_url, name), workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        drop_database(pg_admin_url, name)


_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF token in the page"
    return match[1]


def login(base_url: str, username: str, password: str = PASSWORD) -> httpx.Client:
    """An httpx client logged in to the console (cookies kept)."""
    client = httpx.Client(base_url=base_url, timeout=10)
    token = csrf_of(client.get("/login").text)
    r = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}
    )
    assert r.status_code == 303, r.text
    return client


def cdr(i: int, *, answered: bool = True, start: datetime | None = None) -> CDR:
    start = start or datetime.now(UTC) - timedelta(minutes=2)
    return CDR(
        key=f"web-{i}-{start.timestamp()}",
        start=start,
        answer=start + timedelta(seconds=3) if answered else None,
        end=start + timedelta(seconds=63 if answered else 20),
        duration=63 if answered else 20,
        billsec=60 if answered else 0,
        disposition=Disposition.ANSWERED if answered else Disposition.NO_ANSWER,
        direction=Direction.OUTBOUND,
        caller="1001",
        callee=f"0033123456{i % 100:02d}",
        accountcode="",
        hangup_cause=16 if answered else 19,
    )


@dataclass
class Ingest:
    """Signed batches for one enrolled agent, posted to the collector's ingest API."""

    server: CollectorServer
    agent: EnrolledAgent
    seq: int = 0
    sent: list[CDR] = field(default_factory=list)

    def send(self, cdrs: list[CDR]) -> dict[str, Any]:
        self.seq += 1
        body = wire.build_body([wire.pack_cdr(c) for c in cdrs])
        data = wire.seal_batch(self.agent.agent_id, self.seq, body, self.agent.key)
        r = httpx.post(
            self.server.url + "/api/v1/ingest",
            content=data,
            headers={"content-type": "application/msgpack"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        self.sent.extend(cdrs)
        return dict(r.json())


@dataclass
class LiveFeed:
    """Signed live messages (calls started / answered / ended) for one enrolled agent."""

    server: CollectorServer
    agent: EnrolledAgent
    seq: int = 0

    def send(self, *events: LiveEvent, source: str = "web-test") -> None:
        self.seq += 1
        stream = wire.LiveStream(source, [wire.live_event_to_wire(e)[0] for e in events])
        data = wire.seal_live(self.agent.agent_id, "web-stream", self.seq, [stream], self.agent.key)
        r = httpx.post(
            self.server.url + "/api/v1/live",
            content=data,
            headers={"content-type": "application/msgpack"},
            timeout=30,
        )
        assert r.status_code == 200, r.text

    def started(self, call: str, caller: str, callee: str) -> None:
        now = datetime.now(UTC).timestamp()
        self.send(LiveEvent("started", call, now, {"caller": caller, "callee": callee}))

    def ended(self, call: str) -> None:
        now = datetime.now(UTC).timestamp()
        self.send(LiveEvent("ended", call, now, {"hangup_cause": 16}))


def chromium_or_skip() -> str:
    """The Chromium binary; skips when absent outside CI, fails under CI=true."""
    found = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        message = (
            f"Chromium ({CHROMIUM}) or the playwright package is missing: apt-get install chromium"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


class SSEReader:
    """A server-sent-event stream read line by line (`with SSEReader(client, url) as s:`).

    Entering waits for the stream's opening comment, so the subscription exists when it
    returns; `next_event()` returns (id, event, data) and skips heartbeats.
    """

    def __init__(
        self, client: httpx.Client, url: str, headers: dict[str, str] | None = None
    ) -> None:
        self._stack = contextlib.ExitStack()
        self.response = self._stack.enter_context(
            client.stream("GET", url, headers=headers or {}, timeout=httpx.Timeout(10, read=10))
        )
        self._lines = self.response.iter_lines()

    def __enter__(self) -> SSEReader:
        assert self.response.status_code == 200, self.response.status_code
        assert self.response.headers["content-type"].startswith("text/event-stream")
        for line in self._lines:
            if line == ": connected":
                return self
        raise AssertionError("the stream ended before it opened")

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def next_event(self) -> tuple[str, str, dict[str, Any]]:
        fields: dict[str, str] = {}
        for line in self._lines:
            if line == "":
                if "event" in fields:
                    return fields.get("id", ""), fields["event"], json.loads(fields["data"])
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        raise AssertionError("the stream ended")

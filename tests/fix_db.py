"""PostgreSQL and collector fixtures for every test suite (loaded by the root conftest.py).

Fixtures
--------
pg_admin_url        session  URL of a server where tests may create databases:
                             $CDRSTATS_TEST_DATABASE_URL, else an embedded PostgreSQL 16
                             kept under var/test-pg (started on first use).
migrated_template   session  name of a database migrated once per session (a template).
database_url        function URL of a fresh database created from the template, dropped after.
empty_database_url  function URL of a fresh empty database (no schema), dropped after.
collector_server    function a running `cdrstats serve` subprocess on a free loopback port,
                             against `database_url`: `.url`, `.database_url`, `.stop()`,
                             `.start()`, `.kill()`, `.create_token(tenant, switch)`,
                             `.enroll(tenant, switch)` -> EnrolledAgent.

Databases are named cdrstats_{tpl,test}_<pid>_<n>; leftovers of dead test processes are
dropped at the next session start.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from nacl.signing import SigningKey
from psycopg import conninfo, sql

ROOT = Path(__file__).resolve().parents[1]
_counter = itertools.count(1)
_NAME = re.compile(r"^cdrstats_(?:tpl|test)_(\d+)_\w+$")


def with_dbname(url: str, name: str) -> str:
    """The same server URL pointing at database `name` (URL or key=value form)."""
    if "://" in url:
        return urlunsplit(urlsplit(url)._replace(path="/" + name))
    return conninfo.make_conninfo(url, dbname=name)


def _admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop_stale(url: str) -> None:
    with _admin(url) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()]
        for name in names:
            m = _NAME.match(name)
            if m and int(m[1]) != os.getpid() and not _pid_alive(int(m[1])):
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def create_database(admin_url: str, template: str | None = None) -> str:
    """Create a uniquely named database (optionally from `template`); returns its name."""
    name = f"cdrstats_test_{os.getpid()}_{next(_counter)}_{secrets.token_hex(3)}"
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
    with _admin(admin_url) as conn:
        conn.execute(query)
    return name


def drop_database(admin_url: str, name: str) -> None:
    with _admin(admin_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url = os.environ.get("CDRSTATS_TEST_DATABASE_URL")
    if not url:
        from cdrstats_collector import embedded

        url = embedded.start(ROOT / "var" / "test-pg")
    _drop_stale(url)
    return url


@pytest.fixture(scope="session")
def migrated_template(pg_admin_url: str) -> Iterator[str]:
    from cdrstats_collector import migrate

    name = f"cdrstats_tpl_{os.getpid()}_{secrets.token_hex(3)}"
    with _admin(pg_admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        migrate.upgrade(with_dbname(pg_admin_url, name))
        yield name
    finally:
        drop_database(pg_admin_url, name)


@pytest.fixture
def database_url(pg_admin_url: str, migrated_template: str) -> Iterator[str]:
    name = create_database(pg_admin_url, migrated_template)
    try:
        yield with_dbname(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    name = create_database(pg_admin_url)
    try:
        yield with_dbname(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)


# --- the collector as a real process -----------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class EnrolledAgent:
    agent_id: str
    key: SigningKey
    collector_public_key: str
    tenant: str
    switch: str


class CollectorServer:
    """`cdrstats serve` in a subprocess; its log goes to `log_path`."""

    def __init__(
        self,
        database_url: str,
        workdir: Path,
        *,
        port: int | None = None,
        pool_timeout: float = 2.0,
        max_body_bytes: int | None = None,
        log_level: str = "debug",
        extra_config: str = "",
    ) -> None:
        self.database_url = database_url
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "collector.log"
        self.config_path = workdir / "collector.toml"
        lines = ["[database]", f"pool_timeout = {pool_timeout}", "[server]"]
        if max_body_bytes is not None:
            lines.append(f"max_body_bytes = {max_body_bytes}")
        self.config_path.write_text("\n".join(lines) + "\n" + extra_config)
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0, wait_healthy: bool = True) -> None:
        """Start the server and wait until it answers (/healthz 200 if `wait_healthy`)."""
        if self.running:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDRSTATS_")}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cdrstats_collector.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--database-url",
                    self.database_url,
                    "--config",
                    str(self.config_path),
                    "--log-level",
                    self.log_level,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"collector exited at start:\n{self.log_tail()}")
            try:
                r = httpx.get(self.url + "/healthz", timeout=2)
                if r.status_code == 200 or not wait_healthy:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"collector did not become ready in {timeout} s:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM), SIGKILL if it does not exit in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- helpers for tests ------------------------------------------------------------------

    def create_token(
        self, tenant: str = "acme", switch: str = "sw1", ttl: timedelta = timedelta(hours=24)
    ) -> str:
        """An enrollment token for `switch` of `tenant` (both created when missing)."""
        from cdrstats_collector import enroll, tenants

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            try:
                tid = tenants.tenant_id(conn, tenant)
            except tenants.UnknownTenant:
                tid = tenants.add_tenant(conn, tenant)
            sid = tenants.ensure_switch(conn, tid, switch)
            token: str = enroll.create_token(conn, tid, sid, ttl)
            return token

    def enroll(
        self, tenant: str = "acme", switch: str = "sw1", key: SigningKey | None = None
    ) -> EnrolledAgent:
        """Enroll a new agent through the HTTP API; returns its id and signing key."""
        from cdrstats_agent import wire

        key = key or SigningKey.generate()
        r = httpx.post(
            self.url + "/api/v1/enroll",
            json={
                "token": self.create_token(tenant, switch),
                "public_key": wire.key_to_text(key.verify_key),
                "hostname": "test-host",
                "version": "test",
            },
            timeout=10,
        )
        r.raise_for_status()
        doc = r.json()
        return EnrolledAgent(doc["agent_id"], key, doc["collector_public_key"], tenant, switch)


@pytest.fixture
def collector_server(database_url: str, tmp_path: Path) -> Iterator[CollectorServer]:
    server = CollectorServer(database_url, tmp_path / "collector")
    server.start()
    try:
        yield server
    finally:
        server.stop()

"""Issue #10 end to end: an admin blocks an address from the web console (logged-in session,
CSRF token, the form's POST, as a browser sends it), the agent bans it in Kamailio's htable,
and sipp calling from that address gets 403; unblocked from the console, its calls pass.

The caller needs an address that is neither loopback nor one of the host's addresses (the
collector and the agent both refuse to block those): the test routes one /32 of 198.18.0.0/15
(the benchmarking range) locally (`ip route add local ... dev lo`, AnyIP: bindable without
being an interface address), and removes the route at the end. Needs root, like the firewall
tests; skips without it, fails under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
from cdrstats_collector import tenants, users
from kamailio_testkit import Rig, UacRun, kamailio_source_toml, make_agent, run_uac

from tests.fix_agent import wait_for
from tests.fix_db import CollectorServer
from tests.fix_netns import require

PASSWORD = "correct-horse-battery"
CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


@contextlib.contextmanager
def local_address() -> Iterator[str]:
    """An address of 198.18.0.0/15 routed to this host for the test (not an interface's)."""
    n = os.getpid() % 60000
    ip = f"198.18.{n // 250}.{n % 250 + 2}"
    subprocess.run(["ip", "route", "add", "local", f"{ip}/32", "dev", "lo"], check=True)
    try:
        yield ip
    finally:
        subprocess.run(["ip", "route", "del", "local", f"{ip}/32", "dev", "lo"], check=False)


def console_login(url: str, username: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=10)
    token = CSRF.search(client.get("/login").text)
    assert token
    r = client.post("/login", data={"username": username, "password": PASSWORD,
                                    "csrf_token": token[1]})  # fmt: skip
    assert r.status_code == 303, r.text
    return client


def console_command(client: httpx.Client, path: str, **form: str) -> str:
    """POST a console form; waits for the agent's result and returns it (from the page)."""
    page = client.get("/account").text
    token = CSRF.search(page)
    assert token
    r = client.post(path, data={"csrf_token": token[1], **form})
    assert r.status_code == 303, r.text
    notice: list[str] = []

    def done() -> bool:
        text = client.get(r.headers["location"]).text
        found = re.search(r'id="queued-notice">(.*?)</div>', text, re.S)
        notice[:] = [" ".join(found[1].split())] if found else []
        return bool(notice) and "waiting for the switch" not in notice[0]

    wait_for(done, timeout=30, what="the agent's result", diagnostics=lambda: str(notice))
    return re.sub(r"<[^>]+>", "", notice[0])


def call(rig: Rig, kind: str, callee: str, ip: str) -> UacRun:
    run = run_uac(rig.workdir, rig.kamailio, kind, callee, ip=ip, hold_ms=100)
    assert isinstance(run, UacRun)
    assert run.returncode == 0, f"sipp {kind} from {ip} failed:\n{run.errors}\n{run.output}"
    return run


def test_block_from_the_console_makes_kamailio_answer_403(
    kamailio_rig: Rig, collector_server: CollectorServer, tmp_path: Path
) -> None:
    require("ip")
    rig, k = kamailio_rig, kamailio_rig.kamailio
    callee = f"answer{os.getpid()}"
    toml = kamailio_source_toml(rig.db.url, rpc_url=k.rpc_url, ban_table="ipban")
    agent = make_agent(tmp_path / "agent", collector_server.url, toml)
    agent.enroll(collector_server.url, collector_server.create_token("acme", "kam-console"))
    with psycopg.connect(collector_server.database_url, autocommit=True) as conn:
        tid = tenants.tenant_id(conn, "acme")
        users.add_user(conn, "kam-admin", "tenant_admin", PASSWORD, "acme")
    with local_address() as ip:
        agent.start()
        try:
            call(rig, "hangup", callee, ip)  # calls from there pass before the block
            client = console_login(collector_server.url, "kam-admin")
            result = console_command(
                client, f"/t/{tid}/blocks", switch="kam-console", ip=ip, ttl="1h"
            )
            assert f"done — kamailio: blocked {ip} in kamailio htable ipban for 3600 s" in result
            call(rig, "reject:403", callee, ip)
            call(rig, "hangup", callee, "127.0.0.1")  # other callers still pass
            result = console_command(
                client, f"/t/{tid}/blocks/unblock", switch="kam-console", ip=ip
            )
            assert f"done — kamailio: unblocked {ip} in kamailio htable ipban" in result
            call(rig, "hangup", callee, ip)
        finally:
            agent.stop()
            with contextlib.suppress(Exception):
                k.rpc("htable.delete", "ipban", ip)

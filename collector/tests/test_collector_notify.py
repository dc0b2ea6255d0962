"""Alert notifications: a real SMTP server and a real HTTP server on loopback receive what the
delivery loop sends; failures are retried up to the cap and recorded; several notifiers never
send one alert twice; the channel API (roles, tenants, bad input) and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cdrstats_agent.errors import ConfigError
from cdrstats_collector import auth, cli, notify, settings, tenants, users
from psycopg_pool import AsyncConnectionPool

from collector.tests.notify_testkit import (
    HookServer,
    SmtpServer,
    add_alert,
    alert_state,
    deliveries,
)
from tests.fix_db import CollectorServer, create_database, drop_database, free_port, with_dbname

PASSWORD = "correct horse battery"


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    server = HookServer()
    try:
        yield server
    finally:
        server.close()


def _settings(url: str, smtp_port: int, **kw: Any) -> settings.Settings:
    base: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_port,
        "smtp_from": "cdrstats@noc.example.net",
        "webhook_timeout_s": 0.5,
        "smtp_timeout_s": 2.0,
        "notify_retry_s": 0.05,
        "notify_max_attempts": 3,
    }
    return settings.Settings(database_url=url, **{**base, **kw})


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url, min_size=1, max_size=4, open=False
    )
    await p.open()
    try:
        yield p
    finally:
        await p.close()


async def _channel(pool: AsyncConnectionPool[Any], tenant_id: int, **doc: Any) -> notify.Channel:
    async with pool.connection() as conn:
        return await notify.add_channel(conn, tenant_id, doc, by="test")


async def _until_final(
    notifier: notify.Notifier, conn: psycopg.Connection[Any], alert_id: int
) -> None:
    """Run the loop's step until the alert is no longer pending (bounded)."""
    for _ in range(400):
        await notifier.deliver_due()
        if alert_state(conn, alert_id)[0] not in ("pending", "sending"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"alert {alert_id} still {alert_state(conn, alert_id)}")


async def test_alert_reaches_email_and_signed_webhook(
    database_url: str,
    pool: AsyncConnectionPool[Any],
    smtp_server: SmtpServer,
    hook_server: HookServer,
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        acme = tenants.add_tenant(conn, "acme")
        bravo = tenants.add_tenant(conn, "bravo")
        quiet = tenants.add_tenant(conn, "quiet")
    mail = await _channel(pool, acme, kind="email", target="noc@example.net, ops@example.net")
    hook = await _channel(
        pool, acme, kind="webhook", target=hook_server.url("/ok/acme"), min_severity="info"
    )
    await _channel(pool, acme, kind="webhook", target=hook_server.url("/ok/off"), enabled=False)
    await _channel(pool, bravo, kind="webhook", target=hook_server.url("/ok/bravo"))
    notifier = notify.Notifier(_settings(database_url, smtp_server.port), pool)
    with psycopg.connect(database_url, autocommit=True) as conn:
        warn = add_alert(conn, acme, "warning", detail={"asr": 12.5, "trunk": "carrier-a"})
        info = add_alert(conn, acme, "info", title="New destination country LV")
        lonely = add_alert(conn, quiet, "critical")
        assert await notifier.deliver_due() == 3
        assert alert_state(conn, warn) == ("sent", 1, None)
        assert alert_state(conn, info) == ("sent", 1, None)
        assert alert_state(conn, lonely) == ("none", 1, None)  # no channel: nothing to send
        assert [d[:4] for d in deliveries(conn, warn)] == [
            (mail.id, "email", 1, True),
            (hook.id, "webhook", 1, True),
        ]
        assert [d[:4] for d in deliveries(conn, info)] == [(hook.id, "webhook", 1, True)]
        assert await notifier.deliver_due() == 0  # nothing is sent twice
    # the email: one message (the info alert is below the channel's min_severity)
    assert len(smtp_server.inbox.mails) == 1
    got = smtp_server.inbox.mails[0]
    assert got.mail_from == "cdrstats@noc.example.net"
    assert got.rcpt_tos == ["noc@example.net", "ops@example.net"]
    assert got.message["Subject"] == "[CDR-Stats] warning: ASR below 30 % on trunk carrier-a"
    assert "ASR below 30 % on trunk carrier-a" in got.body
    assert '"asr": 12.5' in got.body and '"trunk": "carrier-a"' in got.body
    assert "Tenant:   acme" in got.body
    # the webhooks: both alerts of acme, signed with the channel's secret; none for others
    hooks = hook_server.at("/ok/acme")
    assert sorted(h.doc["alert"]["id"] for h in hooks) == sorted([warn, info])
    for h in hooks:
        ts, sig = h.headers["x-cdrstats-timestamp"], h.headers["x-cdrstats-signature"]
        assert notify.verify(hook.secret, ts, h.body, sig)
        assert not notify.verify("another secret of some length", ts, h.body, sig)
        assert not notify.verify(hook.secret, ts, h.body + b" ", sig)
        assert h.headers["content-type"] == "application/json"
        assert h.doc["event"] == "alert" and h.doc["alert"]["tenant_id"] == acme
    first = next(h for h in hooks if h.doc["alert"]["id"] == warn)
    assert first.doc["alert"]["detail"] == {"asr": 12.5, "trunk": "carrier-a"}
    assert first.doc["alert"]["title"] == "ASR below 30 % on trunk carrier-a"
    assert hook_server.at("/ok/bravo") == [] and hook_server.at("/ok/off") == []


async def test_failures_are_retried_up_to_the_cap_then_failed(
    database_url: str, pool: AsyncConnectionPool[Any], hook_server: HookServer
) -> None:
    down = free_port()  # nothing listens there: SMTP is down
    with psycopg.connect(database_url, autocommit=True) as conn:
        tid = tenants.add_tenant(conn, "acme")
    mail = await _channel(pool, tid, kind="email", target="noc@example.net")
    fail = await _channel(pool, tid, kind="webhook", target=hook_server.url("/fail/x"))
    slow = await _channel(pool, tid, kind="webhook", target=hook_server.url("/slow/x"))
    notifier = notify.Notifier(_settings(database_url, down), pool)
    with psycopg.connect(database_url, autocommit=True) as conn:
        alert = add_alert(conn, tid, "critical")
        await _until_final(notifier, conn, alert)
        state, attempts, error = alert_state(conn, alert)
        assert (state, attempts) == ("failed", 3)
        assert error is not None
        assert f"email {mail.id}: SMTP 127.0.0.1:{down}:" in error
        assert f"webhook {fail.id}: webhook: HTTP 500 Internal Server Error" in error
        assert f"webhook {slow.id}: webhook: timed out after 0.5 s" in error
        rows = deliveries(conn, alert)
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (ch, attempt, False) for attempt in (1, 2, 3) for ch in (mail.id, fail.id, slow.id)
    ]
    assert all(r[4] for r in rows)  # each attempt has its reason
    assert len(hook_server.at("/fail/x")) == 3
    assert notifier.backoff_s(1) == 0.05 and notifier.backoff_s(3) == 0.2
    assert notify.Notifier(settings.Settings("x"), pool).backoff_s(20) == notify.MAX_RETRY_S


async def test_a_retry_goes_only_to_the_channels_that_failed(
    database_url: str, pool: AsyncConnectionPool[Any], hook_server: HookServer
) -> None:
    port = free_port()
    with psycopg.connect(database_url, autocommit=True) as conn:
        tid = tenants.add_tenant(conn, "acme")
    mail = await _channel(pool, tid, kind="email", target="noc@example.net")
    hook = await _channel(pool, tid, kind="webhook", target=hook_server.url("/ok/once"))
    notifier = notify.Notifier(_settings(database_url, port, notify_max_attempts=5), pool)
    with psycopg.connect(database_url, autocommit=True) as conn:
        alert = add_alert(conn, tid)
        await notifier.deliver_due()  # SMTP is down: the webhook gets it, the email waits
        state, attempts, error = alert_state(conn, alert)
        assert (state, attempts) == ("pending", 1) and error and f"email {mail.id}" in error
        smtp = SmtpServer(port).start()  # the relay comes back
        try:
            await _until_final(notifier, conn, alert)
        finally:
            smtp.stop()
        assert alert_state(conn, alert) == ("sent", 2, None)
        assert [d[:4] for d in deliveries(conn, alert)] == [
            (mail.id, "email", 1, False),
            (hook.id, "webhook", 1, True),
            (mail.id, "email", 2, True),
        ]
    assert len(smtp.inbox.mails) == 1
    assert len(hook_server.at("/ok/once")) == 1


async def test_an_alert_pending_again_is_a_new_round(
    database_url: str, pool: AsyncConnectionPool[Any], hook_server: HookServer
) -> None:
    """The rules engine sets an alert 'pending' again when its snooze ends: every channel
    gets it again, attempts counted from 1."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        tid = tenants.add_tenant(conn, "acme")
        a = await _channel(pool, tid, kind="webhook", target=hook_server.url("/ok/r1"))
        b = await _channel(pool, tid, kind="webhook", target=hook_server.url("/ok/r2"))
        alert = add_alert(conn, tid)
        notifier = notify.Notifier(_settings(database_url, free_port()), pool)
        assert await notifier.deliver_due() == 1
        assert alert_state(conn, alert) == ("sent", 1, None)
        conn.execute(  # what alerts.py does when a snooze ends
            "UPDATE alert SET state = 'open', notify_state = 'pending', notify_error = NULL"
            " WHERE id = %s",
            (alert,),
        )
        assert await notifier.deliver_due() == 1
        assert alert_state(conn, alert) == ("sent", 1, None)
        assert [d[:4] for d in deliveries(conn, alert)] == [
            (a.id, "webhook", 1, True),
            (a.id, "webhook", 1, True),
            (b.id, "webhook", 1, True),
            (b.id, "webhook", 1, True),
        ]
    assert len(hook_server.at("/ok/r1")) == 2 and len(hook_server.at("/ok/r2")) == 2


async def test_two_notifiers_never_send_one_alert_twice(
    database_url: str, pool: AsyncConnectionPool[Any], hook_server: HookServer
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        tid = tenants.add_tenant(conn, "acme")
        await _channel(pool, tid, kind="webhook", target=hook_server.url("/ok/many"))
        ids = [add_alert(conn, tid) for _ in range(30)]
    s = _settings(database_url, free_port())
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as other:
        a, b = notify.Notifier(s, pool), notify.Notifier(s, other)
        for _ in range(10):
            done = await asyncio.gather(a.deliver_due(), b.deliver_due())
            if sum(done) == 0:
                break
    got = sorted(h.doc["alert"]["id"] for h in hook_server.at("/ok/many"))
    assert got == sorted(ids)
    with psycopg.connect(database_url) as conn:
        states = conn.execute("SELECT DISTINCT notify_state FROM alert").fetchall()
    assert states == [("sent",)]


async def test_a_dead_collectors_lease_runs_out(
    database_url: str, pool: AsyncConnectionPool[Any], hook_server: HookServer
) -> None:
    """An alert left 'sending' by a collector that died is claimed again after its lease."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        tid = tenants.add_tenant(conn, "acme")
        await _channel(pool, tid, kind="webhook", target=hook_server.url("/ok/lease"))
        alert = add_alert(conn, tid)
        conn.execute(
            "UPDATE alert SET notify_state = 'sending', notify_attempts = 1,"
            " notify_next_at = now() + interval '1 hour' WHERE id = %s",
            (alert,),
        )
        notifier = notify.Notifier(_settings(database_url, free_port()), pool)
        assert await notifier.deliver_due() == 0  # still leased by the other collector
        conn.execute(
            "UPDATE alert SET notify_next_at = now() - interval '1 second' WHERE id = %s",
            (alert,),
        )
        assert await notifier.deliver_due() == 1
        assert alert_state(conn, alert) == ("sent", 2, None)


async def test_the_loop_is_woken_by_notify(
    database_url: str,
    pool: AsyncConnectionPool[Any],
    hook_server: HookServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """run_forever sends an alert as soon as NOTIFY cdrstats_alert arrives, long before its
    next look at the table (an hour here)."""
    monkeypatch.setattr(notify, "POLL_S", 3600.0)
    with psycopg.connect(database_url, autocommit=True) as conn:
        tid = tenants.add_tenant(conn, "acme")
    await _channel(pool, tid, kind="webhook", target=hook_server.url("/ok/woken"))
    notifier = notify.Notifier(_settings(database_url, free_port(), notify_retry_s=3600), pool)
    task = asyncio.create_task(notifier.run_forever())
    try:
        await asyncio.wait_for(notifier.listening.wait(), 10)
        await asyncio.sleep(0.2)  # the first pass (woken by the listener's start) is over
        with psycopg.connect(database_url, autocommit=True) as conn:
            alert = add_alert(conn, tid)
        for _ in range(200):  # bounded: 20 s, far below the hour without the wake-up
            if hook_server.at("/ok/woken"):
                break
            await asyncio.sleep(0.1)
        assert [h.doc["alert"]["id"] for h in hook_server.at("/ok/woken")] == [alert]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_channel_input_is_checked() -> None:
    ok = notify.check_channel({"kind": "email", "target": ["a@example.net", " b@example.org "]})
    assert ok["target"] == "a@example.net, b@example.org" and ok["secret"] == ""
    hook = notify.check_channel({"kind": "webhook", "target": "https://hooks.example.net/x"})
    assert len(hook["secret"]) >= 32 and hook["min_severity"] == "warning"
    bad = [
        ({"kind": "sms", "target": "x"}, "kind"),
        ({"kind": "email", "target": "not-an-address"}, "target"),
        ({"kind": "email", "target": "a@example.net, b@"}, "target"),
        ({"kind": "email", "target": ""}, "target"),
        ({"kind": "email", "target": 42}, "target"),
        ({"kind": "webhook", "target": "ftp://example.net/x"}, "target"),
        ({"kind": "webhook", "target": "javascript:alert(1)"}, "target"),
        ({"kind": "webhook", "target": "http:///nohost"}, "target"),
        ({"kind": "webhook", "target": "http://example.net:99999/"}, "target"),
        ({"kind": "webhook", "target": "http://x", "min_severity": "fatal"}, "min_severity"),
        ({"kind": "webhook", "target": "http://x", "secret": "short"}, "secret"),
        ({"kind": "email", "target": "a@example.net", "secret": "0123456789abcdef"}, "secret"),
        ({"kind": "email", "target": "a@example.net", "enabled": "yes"}, "enabled"),
        ({"kind": "email", "target": "a@example.net", "colour": "red"}, "colour"),
    ]
    for doc, field in bad:
        with pytest.raises(notify.ChannelError) as info:
            notify.check_channel(doc)
        assert info.value.field == field, doc


def test_email_subject_cannot_carry_headers() -> None:
    alert = notify.Alert(
        id=7, tenant_id=1, tenant="acme", rule_id=None, severity="critical", state="open",
        title="Calls to +882\r\nBcc: victim@example.net", detail={"x": 1}, opened_at=None,
        attempt=1,
    )  # fmt: skip
    channel = notify.Channel(
        1, 1, "", "email", "noc@example.net", "info", True, datetime.now(UTC), "t"
    )
    msg = notify.email_message(settings.Settings("x"), channel, alert)
    assert msg["Subject"] == "[CDR-Stats] critical: Calls to +882 Bcc: victim@example.net"
    assert msg["Bcc"] is None and msg["To"] == "noc@example.net"


def test_notify_settings_name_the_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[database]\nurl = "u"\n[notify]\nsmtp_host = "mx.example.net"\nsmtp_port = 587\n'
        'smtp_starttls = true\nsmtp_username = "u"\nsmtp_password = "p"\nmax_attempts = 2\n'
        "[commands]\nmax_active_blocks = 5\ndefault_block_ttl_s = 600\n"
        "[maintenance]\ncommands_keep_days = 7\nalerts_keep_days = 30\n"
    )
    s = settings.load(None, config, {})
    assert (s.smtp_host, s.smtp_port, s.smtp_starttls, s.notify_max_attempts) == (
        "mx.example.net", 587, True, 2,
    )  # fmt: skip
    assert (s.max_active_blocks, s.default_block_ttl_s, s.command_ttl_s) == (5, 600, 300)
    assert (s.commands_keep_days, s.alerts_keep_days, s.imports_keep_days) == (7, 30, 90)
    for text, key in (
        ("[notify]\nsmtp_port = 70000", "notify.smtp_port"),
        ('[notify]\nsmtp_port = "25"', "notify.smtp_port"),
        ('[notify]\nsmtp_from = "nobody"', "notify.smtp_from"),
        ('[notify]\nsmtp_username = "u"', "notify.smtp_password"),
        ("[notify]\nwebhook_timeout_s = 0", "notify.webhook_timeout_s"),
        ('[notify]\nsmtp_hots = "x"', "notify.smtp_hots"),
        ("[commands]\nmax_active_blocks = 0", "commands.max_active_blocks"),
        ("[commands]\ndefault_block_ttl_s = 99999999", "commands.default_block_ttl_s"),
        ("[maintenance]\nalerts_keep_days = 0", "maintenance.alerts_keep_days"),
    ):
        config.write_text('[database]\nurl = "u"\n' + text + "\n")
        with pytest.raises(ConfigError) as info:
            settings.load(None, config, {})
        assert key in str(info.value) and str(config) in str(info.value), text


# --- the HTTP API and the loop inside `cdrstats serve` -----------------------------------------


@dataclass
class Served:
    server: CollectorServer
    tokens: dict[str, str]
    tenants: dict[str, int]
    smtp: SmtpServer
    hooks: HookServer

    def api(self, method: str, path: str, user: str = "a_admin", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[user]}", **kw.pop("headers", {})}
        return httpx.request(method, self.server.url + path, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def served(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    name = create_database(pg_admin_url, migrated_template)
    url = with_dbname(pg_admin_url, name)
    smtp = SmtpServer().start()
    hooks = HookServer()
    config = (
        f'[notify]\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp.port}\n'
        'smtp_from = "alerts@cdr.example.net"\nwebhook_timeout_s = 1\nretry_s = 0.1\n'
        "[commands]\nmax_active_blocks = 2\ndefault_block_ttl_s = 120\ncommand_ttl_s = 60\n"
    )
    server = CollectorServer(url, tmp_path_factory.mktemp("notify"), extra_config=config)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            ids = {t: tenants.add_tenant(conn, t) for t in ("acme", "bravo")}
            users.add_user(conn, "root", "superadmin", PASSWORD)
            users.add_user(conn, "a_admin", "tenant_admin", PASSWORD, "acme")
            users.add_user(conn, "a_viewer", "tenant_viewer", PASSWORD, "acme")
            users.add_user(conn, "b_admin", "tenant_admin", PASSWORD, "bravo")
            tokens = {
                u: auth.create_token(conn, u) for u in ("root", "a_admin", "a_viewer", "b_admin")
            }
        server.start()
        yield Served(server, tokens, ids, smtp, hooks)
    finally:
        server.stop()
        smtp.stop()
        hooks.close()
        drop_database(pg_admin_url, name)


CHANNELS = "/api/v1/notify/channels"


def test_channel_api_roles_tenants_and_bad_input(served: Served) -> None:
    r = served.api("POST", CHANNELS, json={"kind": "email", "target": ["noc@acme.example"]})
    assert r.status_code == 201, r.text
    mail = r.json()
    assert mail["tenant_id"] == served.tenants["acme"] and "secret" not in mail
    r = served.api(
        "POST", CHANNELS, json={"kind": "webhook", "target": served.hooks.url("/fail/api")}
    )
    assert r.status_code == 201
    hook = r.json()
    assert len(hook["secret"]) >= 32  # shown once
    # readers list (never the secret); another tenant sees none of it
    listed = served.api("GET", CHANNELS, "a_viewer").json()["channels"]
    assert [c["id"] for c in listed] == [mail["id"], hook["id"]]
    assert all("secret" not in c for c in listed)
    assert served.api("GET", CHANNELS, "b_admin").json()["channels"] == []
    assert (
        served.api("GET", CHANNELS + f"?tenant={served.tenants['acme']}", "b_admin").status_code
        == 404
    )
    root = served.api("GET", CHANNELS + f"?tenant={served.tenants['acme']}", "root").json()
    assert len(root["channels"]) == 2
    # writes: admins only, own tenant only
    r = served.api("POST", CHANNELS, "a_viewer", json={"kind": "email", "target": "x@example.net"})
    assert r.status_code == 403
    assert served.api("DELETE", f"{CHANNELS}/{mail['id']}", "b_admin").status_code == 404
    assert served.api("POST", f"{CHANNELS}/{mail['id']}/test", "b_admin").status_code == 404
    assert served.api("DELETE", f"{CHANNELS}/{mail['id']}", "a_viewer").status_code == 403
    assert served.api("DELETE", f"{CHANNELS}/nope", "a_admin").status_code == 404
    # bad input: 400 naming the field, nothing stored
    for doc, field in (
        ({"kind": "email", "target": "noc at example"}, "target"),
        ({"kind": "webhook", "target": "file:///etc/passwd"}, "target"),
        ({"kind": "pager", "target": "x"}, "kind"),
        ({"kind": "email", "target": "a@example.net", "min_severity": "loud"}, "min_severity"),
    ):
        r = served.api("POST", CHANNELS, json=doc)
        assert r.status_code == 400, (doc, r.text)
        assert r.json()["field"] == field and r.json()["error"].startswith(field + ":")
    r = served.api("POST", CHANNELS, content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = served.api("POST", CHANNELS, content=b"kind=email")
    assert r.status_code == 415
    assert len(served.api("GET", CHANNELS).json()["channels"]) == 2
    # test sends: the email arrives; the failing webhook is a 502 with the reason
    r = served.api("POST", f"{CHANNELS}/{mail['id']}/test")
    assert r.status_code == 200 and r.json()["ok"] is True
    assert served.smtp.inbox.mails[-1].rcpt_tos == ["noc@acme.example"]
    assert "test notification" in served.smtp.inbox.mails[-1].message["Subject"]
    r = served.api("POST", f"{CHANNELS}/{hook['id']}/test")
    assert r.status_code == 502 and "HTTP 500" in r.json()["error"]
    # change: enable/disable, min_severity, name; nothing else
    path = f"{CHANNELS}/{mail['id']}"
    r = served.api("PATCH", path, json={"enabled": False, "min_severity": "critical"})
    assert r.status_code == 200 and (r.json()["enabled"], r.json()["min_severity"]) == (
        False, "critical",
    )  # fmt: skip
    assert served.api("PATCH", path, "a_viewer", json={"enabled": True}).status_code == 403
    assert served.api("PATCH", path, "b_admin", json={"enabled": True}).status_code == 404
    for doc, field in (
        ({"min_severity": "loud"}, "min_severity"),
        ({"target": "x@example.net"}, "target"),
        ({"enabled": "no"}, "enabled"),
        ({}, "enabled"),
    ):
        r = served.api("PATCH", path, json=doc)
        assert (r.status_code, r.json()["field"]) == (400, field), doc
    r = served.api("PATCH", path, json={"enabled": True, "name": " NOC "})
    assert (r.json()["enabled"], r.json()["name"], r.json()["target"]) == (
        True, "NOC", "noc@acme.example",
    )  # fmt: skip
    # delete, audited
    assert served.api("DELETE", f"{CHANNELS}/{hook['id']}").status_code == 200
    assert served.api("DELETE", f"{CHANNELS}/{hook['id']}").status_code == 404
    with psycopg.connect(served.server.database_url) as conn:
        actions = conn.execute(
            "SELECT action, username FROM audit_log WHERE action LIKE 'notify.%%' ORDER BY id"
        ).fetchall()
        assert actions == [
            ("notify.channel_add", "a_admin"),
            ("notify.channel_add", "a_admin"),
            ("notify.channel_test", "a_admin"),
            ("notify.channel_test", "a_admin"),
            ("notify.channel_update", "a_admin"),
            ("notify.channel_update", "a_admin"),
            ("notify.channel_delete", "a_admin"),
        ]
        # the reader role cannot read a webhook's secret, even for its own tenant
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("SET LOCAL ROLE cdrstats_reader")
            conn.execute("SELECT secret FROM notify_channel")
    doc = served.api("GET", "/api/v1/openapi.json").json()
    assert {"get", "post"} <= set(doc["paths"][CHANNELS])
    assert "post" in doc["paths"][CHANNELS + "/{id}/test"]
    assert {"patch", "delete"} == set(doc["paths"][CHANNELS + "/{id}"])


def test_serve_delivers_a_new_alert_through_its_loop(served: Served) -> None:
    tid = served.tenants["bravo"]
    r = served.api(
        "POST",
        CHANNELS,
        "b_admin",
        json={"kind": "webhook", "target": served.hooks.url("/ok/serve")},
    )
    assert r.status_code == 201
    secret = r.json()["secret"]
    with psycopg.connect(served.server.database_url, autocommit=True) as conn:
        alert = add_alert(conn, tid, "critical", title="Calls to premium range +88213")
        deadline = time.monotonic() + 30
        while not served.hooks.at("/ok/serve") and time.monotonic() < deadline:
            time.sleep(0.05)
        got = served.hooks.at("/ok/serve")
        assert len(got) == 1, served.server.log_tail()
        h = got[0]
        assert notify.verify(
            secret, h.headers["x-cdrstats-timestamp"], h.body, h.headers["x-cdrstats-signature"]
        )
        assert h.doc["alert"]["id"] == alert and h.doc["alert"]["tenant"] == "bravo"
        while alert_state(conn, alert)[0] != "sent" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alert_state(conn, alert) == ("sent", 1, None)


def test_cli_notify(
    served: Served,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[notify]\nsmtp_host = "127.0.0.1"\nsmtp_port = {served.smtp.port}\n')
    monkeypatch.delenv("CDRSTATS_DATABASE_URL", raising=False)
    db = ["--database-url", served.server.database_url, "--config", str(config)]
    assert cli.main(["notify", "add-email", "--tenant", "bravo", "--to", "nope", *db]) == 2
    assert "target: 'nope' is not an email address" in capsys.readouterr().err
    assert cli.main(["notify", "add-webhook", "--tenant", "bravo", "--url", "gopher://x", *db]) == 2
    assert "target:" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "notify",
                "add-email",
                "--tenant",
                "bravo",
                "--to",
                "cli@bravo.example",
                "--min-severity",
                "critical",
                *db,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    channel = int(out.split()[1].rstrip(":"))
    assert (
        cli.main(
            [
                "notify",
                "add-webhook",
                "--tenant",
                "bravo",
                "--url",
                served.hooks.url("/ok/cli"),
                *db,
            ]
        )
        == 0
    )
    assert "secret (signs every request, shown only once):" in capsys.readouterr().out
    assert cli.main(["notify", "list", "--tenant", "bravo", *db]) == 0
    listed = capsys.readouterr().out
    assert f"{channel}\temail\tcli@bravo.example\tcritical\tenabled" in listed
    assert served.hooks.url("/ok/cli") in listed
    before = len(served.smtp.inbox.mails)
    assert cli.main(["notify", "test", str(channel), "--tenant", "bravo", *db]) == 0
    assert served.smtp.inbox.mails[before].rcpt_tos == ["cli@bravo.example"]
    assert cli.main(["notify", "test", str(channel), "--tenant", "acme", *db]) == 1  # not acme's
    assert cli.main(["notify", "disable", str(channel), "--tenant", "bravo", *db]) == 0
    assert cli.main(["notify", "list", "--tenant", "bravo", *db]) == 0
    assert f"{channel}\temail\tcli@bravo.example\tcritical\tdisabled" in capsys.readouterr().out
    assert cli.main(["notify", "enable", str(channel), "--tenant", "acme", *db]) == 1
    assert cli.main(["notify", "delete", str(channel), "--tenant", "bravo", *db]) == 0
    with psycopg.connect(served.server.database_url) as conn:
        rows = conn.execute(
            "SELECT action FROM audit_log WHERE username LIKE 'cli:%%' AND action LIKE 'notify.%%'"
            " ORDER BY id"
        ).fetchall()
    assert [r[0] for r in rows] == [
        "notify.channel_add",
        "notify.channel_add",
        "notify.channel_test",
        "notify.channel_update",
        "notify.channel_delete",
    ]


def test_commands_limits_come_from_settings(
    served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """[commands] max_active_blocks, default_block_ttl_s and command_ttl_s reach the API and
    the CLI (this collector: 2 blocks, 120 s, 60 s)."""
    served.server.enroll("acme", "swlim")

    def block(ip: str) -> httpx.Response:
        return served.api("POST", "/api/v1/blocks", json={"switch": "swlim", "ip": ip})

    first = block("192.0.2.10").json()
    assert first["args"]["ttl"] == 120
    issued = datetime.fromisoformat(first["issued_at"])
    assert (datetime.fromisoformat(first["expires_at"]) - issued).total_seconds() == 60
    assert block("192.0.2.11").status_code == 201
    r = block("192.0.2.12")
    assert r.status_code == 422 and "the maximum (2)" in r.json()["error"]
    config = tmp_path / "c.toml"
    config.write_text("[commands]\nmax_active_blocks = 2\ndefault_block_ttl_s = 90\n")
    argv = ["block", "192.0.2.13", "--switch", "swlim", "--tenant", "acme"]
    db = ["--database-url", served.server.database_url, "--config", str(config)]
    assert cli.main(argv + db) == 1
    assert "the maximum (2)" in capsys.readouterr().err
    config.write_text("[commands]\nmax_active_blocks = 3\ndefault_block_ttl_s = 90\n")
    assert cli.main(argv + db) == 0
    assert "for 90 s queued" in capsys.readouterr().out


async def test_a_rule_firing_on_cdrs_is_emailed_and_posted(
    database_url: str,
    pool: AsyncConnectionPool[Any],
    smtp_server: SmtpServer,
    hook_server: HookServer,
) -> None:
    """The loop closed: CDRs stored by the real ingest, the rules evaluator opens an alert,
    the notifier emails it and posts it, with the rule's title and figures."""
    from cdrstats_agent.model import Disposition
    from rules_testkit import NOW, Switch, add_rule, connect, run, spread

    sw = Switch(database_url, "acme", "sw1")
    mail = await _channel(pool, sw.tenant_id, kind="email", target="noc@acme.example")
    hook = await _channel(pool, sw.tenant_id, kind="webhook", target=hook_server.url("/ok/rule"))
    t0 = NOW - timedelta(minutes=10)
    calls = spread(t0, 20)
    for c in calls[5:]:  # 5 answered of 20: ASR 25 %
        c.disposition, c.billsec, c.answer = Disposition.NO_ANSWER, 0, None
        c.duration, c.hangup_cause, c.sip_code = 5, 19, 480
    await sw.store(calls)
    async with await connect(database_url) as conn:
        await add_rule(
            conn,
            sw.tenant_id,
            name="low ASR",
            kind="asr",
            params={"op": "below", "threshold": 40, "clear": 50, "min_calls": 10, "per": "switch"},
        )
        assert await run(conn, t0 + timedelta(minutes=5)) == [("low ASR", "switch=sw1", "opened")]
    notifier = notify.Notifier(_settings(database_url, smtp_server.port), pool)
    assert await notifier.deliver_due() == 1
    [got] = smtp_server.inbox.mails
    assert (
        got.message["Subject"] == "[CDR-Stats] warning: low ASR: ASR 25 % below 40 % (switch=sw1)"
    )
    assert '"calls": 20' in got.body and '"value": 25.0' in got.body
    [posted] = hook_server.at("/ok/rule")
    assert posted.doc["alert"]["title"] == "low ASR: ASR 25 % below 40 % (switch=sw1)"
    assert posted.doc["alert"]["detail"]["value"] == 25.0
    assert notify.verify(
        hook.secret,
        posted.headers["x-cdrstats-timestamp"],
        posted.body,
        posted.headers["x-cdrstats-signature"],
    )
    with psycopg.connect(database_url) as conn:
        [(state, sent_to)] = conn.execute(
            "SELECT a.notify_state, array_agg(d.channel_id ORDER BY d.channel_id)"
            " FROM alert a JOIN notify_delivery d ON d.alert_id = a.id AND d.ok"
            " GROUP BY a.notify_state"
        ).fetchall()
    assert (state, sent_to) == ("sent", [mail.id, hook.id])

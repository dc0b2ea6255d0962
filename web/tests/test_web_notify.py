"""The Notifications page over HTTP against a real collector process, with a real SMTP server
(aiosmtpd) and a real webhook receiver on loopback: add, test, enable/disable, severity,
delete; bad input named; roles, CSRF and tenants; the notifier's last delivery per channel
and each alert's notification state on the Alerts page."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from cdrstats_collector import notify
from web_testkit import Fresh, Seeded, csrf_of, fresh_tenant, login, seed

from collector.tests.notify_testkit import HookServer, SmtpServer, add_alert, alert_state
from tests.fix_db import CollectorServer, create_database, drop_database, with_dbname


@dataclass
class Rig:
    server: CollectorServer
    seeded: Seeded
    smtp: SmtpServer
    hooks: HookServer


@pytest.fixture(scope="module")
def rig(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    name = create_database(pg_admin_url, migrated_template)
    url = with_dbname(pg_admin_url, name)
    smtp = SmtpServer().start()
    hooks = HookServer()
    config = (
        f'[notify]\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp.port}\n'
        'smtp_from = "alerts@cdr.example.net"\nwebhook_timeout_s = 1\nretry_s = 0.1\n'
        "max_attempts = 2\n"
    )
    server = CollectorServer(url, tmp_path_factory.mktemp("web-notify"), extra_config=config)
    try:
        server.start()
        yield Rig(server, seed(url), smtp, hooks)
    finally:
        server.stop()
        smtp.stop()
        hooks.close()
        drop_database(pg_admin_url, name)


def post(c: httpx.Client, path: str, **form: Any) -> httpx.Response:
    token = csrf_of(c.get("/account").text)
    return c.post(path, data={"csrf_token": token, **form})


def channels(database_url: str, tenant_id: int) -> list[tuple[int, str, str, str, bool]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id, kind, target, min_severity, enabled FROM notify_channel"
            " WHERE tenant_id = %s ORDER BY id",
            (tenant_id,),
        ).fetchall()
    return [(int(a), str(b), str(c), str(d), bool(e)) for a, b, c, d, e in rows]


def audited(database_url: str, tenant_id: int) -> list[tuple[str, str, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT action, target, username FROM audit_log"
            " WHERE tenant_id = %s AND action LIKE 'notify.%%' ORDER BY id",
            (tenant_id,),
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def row_of(html: str, channel_id: int) -> str:
    m = re.search(rf'<tr data-channel-id="{channel_id}".*?</tr>', html, re.S)
    assert m, f"no row for channel {channel_id}"
    return m[0]


def test_channels_added_tested_changed_and_deleted(rig: Rig) -> None:
    fresh = fresh_tenant(rig.server.database_url)
    t, db = fresh.id, rig.server.database_url
    c = login(rig.server.url, fresh.admin)
    first = c.get(f"/t/{t}/notifications")
    assert first.status_code == 200
    assert "No channel yet" in first.text and 'id="webhook-form"' in first.text
    assert f'href="/t/{t}/notifications">Notifications<' in first.text  # the menu

    # Bad input: the field is named, what was typed is kept, nothing is stored.
    r = post(c, f"/t/{t}/notifications", kind="email", target="noc at acme", name="NOC")
    assert r.status_code == 422
    assert "target: &#39;noc at acme&#39; is not an email address" in r.text
    assert 'id="e-target" name="target" class="form-control form-control-sm is-invalid"' in r.text
    assert 'value="noc at acme"' in r.text
    r = post(c, f"/t/{t}/notifications", kind="webhook", target="ftp://hooks.example.net/x")
    assert r.status_code == 422 and "is not an http:// or https:// URL" in r.text
    r = post(c, f"/t/{t}/notifications", kind="sms", target="+33612345678")
    assert r.status_code == 422 and "kind: must be one of email, webhook" in r.text
    r = post(c, f"/t/{t}/notifications", kind="email", target="a@b.example", min_severity="loud")
    assert r.status_code == 422 and "min_severity: must be one of" in r.text
    assert channels(db, t) == []

    # An email channel, then a webhook whose secret is shown once.
    r = post(c, f"/t/{t}/notifications", kind="email", target="noc@acme.example; ops@acme.example")
    assert r.status_code == 303
    done = c.get(r.headers["location"]).text
    assert "email channel" in done and "added" in done
    [(mail_id, _, target, severity, enabled)] = channels(db, t)
    assert (target, severity, enabled) == ("noc@acme.example, ops@acme.example", "warning", True)
    r = post(
        c,
        f"/t/{t}/notifications",
        kind="webhook",
        target=rig.hooks.url("/ok/console"),
        min_severity="info",
        name="chatops",
    )
    assert r.status_code == 201
    secret = re.search(r'<code id="webhook-secret">([^<]+)</code>', r.text)
    assert secret and len(secret[1]) >= 40
    hook_id = channels(db, t)[1][0]
    with psycopg.connect(db) as conn:
        stored = conn.execute("SELECT secret FROM notify_channel WHERE id = %s", (hook_id,))
        assert stored.fetchone() == (secret[1],)
    page = c.get(f"/t/{t}/notifications").text
    assert secret[1] not in page and "webhook-secret" not in page  # never again
    assert "chatops" in row_of(page, hook_id) and "never" in row_of(page, hook_id)

    # Send a test through each: the webhook is signed with that secret, the mail arrives.
    r = post(c, f"/t/{t}/notifications/{hook_id}/test")
    assert r.status_code == 200
    assert f"Test notification through channel {hook_id} accepted." in r.text
    [hook] = rig.hooks.at("/ok/console")
    ts, sig = hook.headers["x-cdrstats-timestamp"], hook.headers["x-cdrstats-signature"]
    assert notify.verify(secret[1], ts, hook.body, sig)
    assert hook.doc["alert"]["title"] == "CDR-Stats test notification"
    before = len(rig.smtp.inbox.mails)
    assert post(c, f"/t/{t}/notifications/{mail_id}/test").status_code == 200
    mail = rig.smtp.inbox.mails[before]
    assert mail.rcpt_tos == ["noc@acme.example", "ops@acme.example"]
    assert "test notification" in mail.message["Subject"]
    page = c.get(f"/t/{t}/notifications").text
    assert ">ok<" in row_of(page, hook_id) and fresh.admin in row_of(page, hook_id)

    # A receiver that fails: the reason is shown (502), and kept as the channel's last test.
    r = post(c, f"/t/{t}/notifications", kind="webhook", target=rig.hooks.url("/fail/console"))
    failing = channels(db, t)[2][0]
    r = post(c, f"/t/{t}/notifications/{failing}/test")
    assert r.status_code == 502
    assert f"channel {failing} failed: webhook: HTTP 500 Internal Server Error" in r.text
    assert "HTTP 500" in row_of(r.text, failing) and ">failed<" in row_of(r.text, failing)

    # Disable, change the minimum severity (a bad one is named), delete.
    r = post(c, f"/t/{t}/notifications/{hook_id}/enabled", enabled="0")
    assert r.status_code == 303
    assert ">disabled<" in row_of(c.get(r.headers["location"]).text, hook_id)
    r = post(c, f"/t/{t}/notifications/{mail_id}/severity", min_severity="critical")
    assert r.status_code == 303
    r = post(c, f"/t/{t}/notifications/{mail_id}/severity", min_severity="urgent")
    assert r.status_code == 422 and "min_severity: must be one of info, warning, critical" in r.text
    r = post(c, f"/t/{t}/notifications/{failing}/delete")
    assert r.status_code == 303
    assert f"channel {failing} deleted" in c.get(r.headers["location"]).text
    assert post(c, f"/t/{t}/notifications/{failing}/delete").status_code == 404
    assert post(c, f"/t/{t}/notifications/{failing}/test").status_code == 404
    assert [(ch[0], ch[3], ch[4]) for ch in channels(db, t)] == [
        (mail_id, "critical", True),
        (hook_id, "info", False),
    ]
    assert audited(db, t) == [
        ("notify.channel_add", f"email:{mail_id}", fresh.admin),
        ("notify.channel_add", f"webhook:{hook_id}", fresh.admin),
        ("notify.channel_test", f"webhook:{hook_id}", fresh.admin),
        ("notify.channel_test", f"email:{mail_id}", fresh.admin),
        ("notify.channel_add", f"webhook:{failing}", fresh.admin),
        ("notify.channel_test", f"webhook:{failing}", fresh.admin),
        ("notify.channel_update", f"webhook:{hook_id}", fresh.admin),
        ("notify.channel_update", f"email:{mail_id}", fresh.admin),
        ("notify.channel_delete", f"webhook:{failing}", fresh.admin),
    ]


def test_roles_csrf_and_tenants(rig: Rig) -> None:
    fresh: Fresh = fresh_tenant(rig.server.database_url)
    t, db = fresh.id, rig.server.database_url
    admin = login(rig.server.url, fresh.admin)
    assert (
        post(admin, f"/t/{t}/notifications", kind="email", target="a@b.example").status_code == 303
    )
    [(cid, *_)] = channels(db, t)
    paths = [
        (f"/t/{t}/notifications", {"kind": "email", "target": "x@y.example"}),
        (f"/t/{t}/notifications/{cid}/enabled", {"enabled": "0"}),
        (f"/t/{t}/notifications/{cid}/severity", {"min_severity": "info"}),
        (f"/t/{t}/notifications/{cid}/test", {}),
        (f"/t/{t}/notifications/{cid}/delete", {}),
    ]
    # No CSRF token, or a wrong one: 403 before anything is read.
    for path, form in paths:
        for extra in ({}, {"csrf_token": "x" * 43}):
            r = admin.post(path, data={**form, **extra})
            assert r.status_code == 403 and "CSRF" in r.text, path
    # A viewer reads (no forms, no buttons) and may not act.
    viewer = login(rig.server.url, fresh.viewer)
    page = viewer.get(f"/t/{t}/notifications").text
    assert "a@b.example" in page
    assert "email-form" not in page and "Send test" not in page and "/delete" not in page
    for path, form in paths:
        r = post(viewer, path, **form)
        assert r.status_code == 403 and "only a tenant admin" in r.text, path
    # Another tenant's users: 404 for this tenant's page; this channel's id from their own
    # tenant is 404 too (as for a channel that does not exist).
    acme = rig.seeded.tenant_ids["acme"]
    alice = login(rig.server.url, "alice")  # admin of acme
    assert alice.get(f"/t/{t}/notifications").status_code == 404
    assert login(rig.server.url, "gina").get(f"/t/{t}/notifications").status_code == 404
    for path, form in paths:
        assert post(alice, path, **form).status_code == 404, path
        own = path.replace(f"/t/{t}/", f"/t/{acme}/")
        if own != f"/t/{acme}/notifications":
            assert post(alice, own, **form).status_code == 404, own
    assert "a@b.example" not in alice.get(f"/t/{acme}/notifications").text
    assert channels(db, t) == [(cid, "email", "a@b.example", "warning", True)]
    assert [a[0] for a in audited(db, t)] == ["notify.channel_add"]
    # A superadmin acts on any tenant, in its own name.
    root = login(rig.server.url, "root")
    assert post(root, f"/t/{t}/notifications/{cid}/enabled", enabled="0").status_code == 303
    assert audited(db, t)[-1] == ("notify.channel_update", f"email:{cid}", "root")
    # Not logged in: to the login page.
    with httpx.Client(base_url=rig.server.url, timeout=10) as anon:
        assert anon.get(f"/t/{t}/notifications").status_code == 303


def test_last_delivery_and_the_alerts_notification_state(rig: Rig) -> None:
    fresh = fresh_tenant(rig.server.database_url)
    t, db = fresh.id, rig.server.database_url
    c = login(rig.server.url, fresh.admin)
    for path in ("/ok/delivery", "/fail/delivery"):
        r = post(c, f"/t/{t}/notifications", kind="webhook", target=rig.hooks.url(path))
        assert r.status_code == 201
    ok_id, fail_id = (ch[0] for ch in channels(db, t))
    with psycopg.connect(db, autocommit=True) as conn:
        alert = add_alert(conn, t, "critical", title="Scanner 203.0.113.9")
        for _ in range(300):  # the collector's notifier: 2 attempts, 0.1 s apart
            if alert_state(conn, alert)[0] not in ("pending", "sending"):
                break
            time.sleep(0.05)
        state, attempts, error = alert_state(conn, alert)
    assert (state, attempts) == ("failed", 2)
    assert error == f"webhook {fail_id}: webhook: HTTP 500 Internal Server Error"
    page = c.get(f"/t/{t}/notifications").text
    ok_row, fail_row = row_of(page, ok_id), row_of(page, fail_id)
    assert ">sent<" in ok_row and f"alert {alert}, attempt 1" in ok_row
    assert ">failed<" in fail_row and f"alert {alert}, attempt 2" in fail_row
    assert 'title="webhook: HTTP 500 Internal Server Error"' in fail_row
    alerts_page = c.get(f"/t/{t}/alerts").text
    m = re.search(rf'<tr data-alert-id="{alert}".*?</tr>', alerts_page, re.S)
    assert m and 'data-notify-state="failed"' in m[0]
    assert f'title="{error}"' in m[0] and "failed (2)" in m[0]

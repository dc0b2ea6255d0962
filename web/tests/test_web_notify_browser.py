"""The Notifications page in a real Chromium: add a webhook (its secret shown once), send a
test that reaches a real receiver signed with that secret, an alert delivered to it (its
notification state turning to sent on the Alerts page without a reload), disable it; the
alerts' notification states; desktop and phone screenshots, no horizontal scroll, the accessibility
audit in both themes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from browser_testkit import PHONE, login, new_page, no_horizontal_scroll, shot
from cdrstats_collector import notify
from test_web_a11y_browser import AUDIT
from web_testkit import fresh_tenant, shared_server

from collector.tests.notify_testkit import HookServer, add_alert
from tests.fix_db import CollectorServer


@pytest.fixture(scope="module")
def server(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorServer]:
    with shared_server(pg_admin_url, migrated_template, tmp_path_factory.mktemp("notify-b")) as s:
        yield s


class GatedHooks(HookServer):
    """A webhook receiver that holds every request until `gate` is set (at most 10 s)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        handler = self.server.RequestHandlerClass
        gate = self.gate

        class Gated(handler):  # type: ignore[misc,valid-type]
            def do_POST(self) -> None:
                gate.wait(10)
                super().do_POST()

        self.server.RequestHandlerClass = Gated


@pytest.fixture
def hooks() -> Iterator[GatedHooks]:
    receiver = GatedHooks()
    try:
        yield receiver
    finally:
        receiver.gate.set()
        receiver.close()


def test_add_a_webhook_and_send_a_test(
    browser: Any, server: CollectorServer, hooks: GatedHooks
) -> None:
    mine = fresh_tenant(server.database_url)
    page = new_page(browser, server.url)
    try:
        login(page, mine.admin)
        page.get_by_role("button", name="Alerts & actions").click()  # the menu holding it
        page.get_by_role("link", name="Notifications").click()
        page.wait_for_url(f"**/t/{mine.id}/notifications")
        assert "No channel yet" in page.inner_text("#channels")
        form = page.locator("#webhook-form")
        form.get_by_label("URL").fill("hooks.example.net/no-scheme")
        form.get_by_role("button", name="Add webhook").click()
        error = page.inner_text("#notify-error")
        assert error.startswith("target:") and "is not an http:// or https:// URL" in error
        assert page.locator("#w-target.is-invalid").count() == 1
        form.get_by_label("URL").fill(hooks.url("/ok/browser"))
        form.get_by_label("Name").fill("chatops")
        form.get_by_label("Min. severity").select_option("critical")
        form.get_by_role("button", name="Add webhook").click()
        secret = page.inner_text("#webhook-secret").strip()
        assert len(secret) >= 40 and "not shown again" in page.inner_text("#new-webhook")
        row = page.locator("#channels tbody tr[data-kind='webhook']")
        assert "chatops" in row.inner_text() and "critical" in row.inner_text()
        shot(page, "notifications-desktop")
        no_horizontal_scroll(page)

        channel_id = row.get_attribute("data-channel-id")
        page.get_by_role("button", name=f"Send a test through channel {channel_id}").click()
        page.locator("#notify-tested").wait_for()
        assert "accepted" in page.inner_text("#notify-tested")
        assert page.locator("#webhook-secret").count() == 0  # shown once only
        [hook] = hooks.at("/ok/browser")
        ts, sig = hook.headers["x-cdrstats-timestamp"], hook.headers["x-cdrstats-signature"]
        assert notify.verify(secret, ts, hook.body, sig)
        assert "ok" in page.inner_text(f"tr[data-channel-id='{channel_id}'] [data-test]")

        # An alert: the Alerts page shows it pending, then sent, without a reload (the
        # notifier's NOTIFY after the delivery).
        page.goto(f"/t/{mine.id}/alerts")
        page.evaluate("window.__sameDocument = 'yes'")
        hooks.gate.clear()  # the receiver holds the delivery until the page shows it pending
        with psycopg.connect(server.database_url, autocommit=True) as conn:
            alert = add_alert(conn, mine.id, "critical", title="Scanner 198.51.100.4")
        row = f"tr[data-alert-id='{alert}']"
        page.locator(
            f"{row} [data-notify-state='pending'], {row} [data-notify-state='sending']"
        ).wait_for()
        hooks.gate.set()
        page.locator(f"{row} [data-notify-state='sent']").wait_for()
        assert page.evaluate("window.__sameDocument") == "yes"
        assert [h.doc["alert"]["id"] for h in hooks.at("/ok/browser")][1:] == [alert]
        page.goto(f"/t/{mine.id}/notifications")
        delivered = page.inner_text(f"tr[data-channel-id='{channel_id}'] [data-delivery]")
        assert "sent" in delivered and f"alert {alert}, attempt 1" in delivered

        page.get_by_role("button", name=f"Disable channel {channel_id}").click()
        page.locator("#notify-saved").wait_for()
        assert "disabled" in page.inner_text(f"tr[data-channel-id='{channel_id}']")
        # The Alerts page shows each alert's notification state, the reason on hover.
        with psycopg.connect(server.database_url, autocommit=True) as conn:
            for state, error in (("failed", "webhook 9: HTTP 500"), ("sent", None), ("none", None)):
                conn.execute(
                    "INSERT INTO alert (tenant_id, episode_key, severity, title, detail,"
                    " notify_state, notify_attempts, notify_error)"
                    " VALUES (%s, %s, 'warning', %s, '{}', %s, 3, %s)",
                    (mine.id, state, f"ASR low ({state})", state, error),
                )
        page.goto(f"/t/{mine.id}/alerts")
        badge = page.locator("[data-notify-state='failed'] .badge")
        assert badge.inner_text() == "failed (3)"
        assert badge.get_attribute("title") == "webhook 9: HTTP 500"
        assert page.locator("[data-notify-state='none']").inner_text() == "notify: no channel"
        # Labels, names, captions and contrast in both themes (web/tests/a11y_audit.js).
        for theme in ("light", "dark"):
            page.evaluate(f"localStorage.setItem('cdrstats-theme', '{theme}')")
            for url in (f"/t/{mine.id}/notifications", f"/t/{mine.id}/alerts"):
                page.goto(url)
                assert page.get_attribute("html", "data-bs-theme") == theme
                assert page.evaluate(AUDIT) == [], (theme, url)
    finally:
        page.context.close()
    phone = new_page(browser, server.url, PHONE)
    try:
        login(phone, mine.admin)
        phone.goto(f"/t/{mine.id}/notifications")
        shot(phone, "notifications-phone")
        no_horizontal_scroll(phone)
    finally:
        phone.context.close()

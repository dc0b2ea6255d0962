"""The console in a real Chromium (Debian's, driven by Playwright; no browser download).

Skips when Chromium or Playwright is missing, except under CI=true where it fails.
Screenshots of the main pages at desktop and phone sizes go to var/screenshots/.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browser_testkit import PHONE, login, new_page, shot
from web_testkit import (
    Ingest,
    LiveFeed,
    Seeded,
    cdr,
    fresh_tenant,
    seed,
    shared_server,
)

from tests.fix_db import CollectorServer


@pytest.fixture(scope="module")
def console(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[CollectorServer, Seeded]]:
    """One collector for the module; tests that count things use a `fresh_tenant`."""
    workdir = tmp_path_factory.mktemp("web-browser")
    with shared_server(pg_admin_url, migrated_template, workdir) as server:
        yield server, seed(server.database_url)


def test_dashboard_updates_live_without_reload(
    browser: Any, console: tuple[CollectorServer, Seeded]
) -> None:
    server, _seeded = console
    mine = fresh_tenant(server.database_url)
    acme = mine.id
    feed = Ingest(server, server.enroll(mine.name, "pbx-paris"))
    feed.send([cdr(i, answered=i % 3 != 0) for i in range(6)])
    page = new_page(browser, server.url)
    try:
        login(page, mine.viewer)
        assert page.url.endswith(f"/t/{acme}/")
        page.wait_for_function("document.getElementById('kpi-calls').textContent === '6'")
        page.wait_for_function("document.getElementById('live-status').textContent === 'live'")
        page.evaluate("window.__sameDocument = 'yes'")
        feed.send([cdr(100 + i) for i in range(4)])
        page.wait_for_function("document.getElementById('kpi-calls').textContent === '10'")
        assert page.evaluate("window.__sameDocument") == "yes"  # no reload happened
        page.wait_for_function("document.getElementById('kpi-asr').textContent === '80.0 %'")
        assert page.inner_text("#kpi-minutes") == "8"
        causes = page.inner_text("#causes tbody")
        assert "NORMAL_CLEARING" in causes and "NO_ANSWER" in causes
        dispositions = page.inner_text("#dispositions tbody")
        assert "ANSWERED\t8" in dispositions and "NO_ANSWER\t2" in dispositions
        assert "France" in page.inner_text("#countries tbody")
        # The world map has its one country (FR) shaded.
        page.wait_for_function(
            "document.getElementById('world-map').getAttribute('data-countries') === '1'"
        )
        shot(page, "dashboard-desktop")
        # The live page shows arriving CDRs as they come.
        page.goto(f"/t/{acme}/live")
        page.wait_for_function("document.getElementById('live-status').textContent === 'live'")
        page.wait_for_function("document.querySelectorAll('#tail tbody tr').length === 10")
        feed.send([cdr(200)])
        page.wait_for_function("document.querySelectorAll('#tail tbody tr').length === 11")
        shot(page, "live-desktop")
        page.goto(f"/t/{acme}/reports")
        page.wait_for_function("document.querySelectorAll('#report-table tbody tr').length === 30")
        page.get_by_label("Report", exact=True).select_option("cause")
        page.wait_for_function(
            "document.getElementById('report-table').innerText.includes('NORMAL_CLEARING')"
        )
        shot(page, "reports-desktop")
        page.get_by_label("Report", exact=True).select_option("compare")
        page.wait_for_function(
            "document.getElementById('report-caption').textContent.includes('same weekday')"
        )
        assert page.locator("#report-table tbody tr").count() == 5  # the day and 4 weeks back
        page.goto(f"/t/{acme}/switches")
        shot(page, "switches-desktop")
    finally:
        page.context.close()


def test_live_page_shows_a_call_appear_and_end(
    browser: Any, console: tuple[CollectorServer, Seeded]
) -> None:
    server, _seeded = console
    mine = fresh_tenant(server.database_url)
    acme = mine.id
    agent = server.enroll(mine.name, "pbx-paris")
    live = LiveFeed(server, agent)
    live.started("call-a", "1001", "+33142278000")
    page = new_page(browser, server.url)
    try:
        login(page, mine.viewer)
        page.goto(f"/t/{acme}/live")
        page.wait_for_function("document.getElementById('live-total').textContent === '1'")
        page.wait_for_function("document.getElementById('live-status').textContent === 'live'")
        live.started("call-b", "1002", "+442079460000")
        page.wait_for_function("document.getElementById('live-total').textContent === '2'")
        table = page.inner_text("#live-calls tbody")
        assert "+442079460000" in table and "pbx-paris" in table
        shot(page, "live-calls-desktop")
        live.ended("call-a")
        page.wait_for_function("document.getElementById('live-total').textContent === '1'")
        assert page.locator("#live-calls tbody tr[data-call-id='call-a']").count() == 0
        assert page.locator("#live-calls tbody tr[data-call-id='call-b']").count() == 1
        page.goto(f"/t/{acme}/switches")
        row = page.locator("#agents tbody tr", has_text="pbx-paris")
        assert row.locator("td[data-live-calls]").inner_text() == "1"  # calls in progress
    finally:
        page.context.close()


def test_cdr_search_with_filters_detail_and_export(
    browser: Any, console: tuple[CollectorServer, Seeded], tmp_path: Any
) -> None:
    server, _seeded = console
    mine = fresh_tenant(server.database_url)
    acme = mine.id
    feed = Ingest(server, server.enroll(mine.name, "pbx-paris"))
    feed.send([cdr(i, answered=i % 2 == 0) for i in range(6)])
    page = new_page(browser, server.url)
    try:
        login(page, mine.viewer)
        page.goto(f"/t/{acme}/cdrs")
        page.wait_for_function("document.querySelectorAll('#cdr-table tbody tr').length === 6")
        page.get_by_label("Disposition").select_option("NO_ANSWER")
        page.get_by_role("button", name="Search").click()
        page.wait_for_url("**disposition=NO_ANSWER**")
        page.wait_for_function("document.querySelectorAll('#cdr-table tbody tr').length === 3")
        assert "ANSWERED" not in page.inner_text("#cdr-table tbody").replace("NO_ANSWER", "")
        shot(page, "cdrs-desktop")
        # Sorting by callee (asked of the API, kept in the URL; again: reversed), then the
        # detail view with the raw fields.
        callee = page.locator("#cdr-table th", has=page.locator("[data-sort=callee]"))
        for order in ("ascending", "descending"):
            page.get_by_role("button", name="Callee").click()
            page.wait_for_function(
                "document.getElementById('cdr-caption').textContent.includes('by callee, "
                + order
                + "')"
            )
            assert callee.get_attribute("aria-sort") == order
            callees = page.eval_on_selector_all(
                "#cdr-table tbody tr", "rows => rows.map(r => r.children[4].textContent)"
            )
            assert len(callees) == 3
            assert callees == sorted(callees, reverse=order == "descending")
        assert "sort=callee&order=desc" in page.url and "disposition=NO_ANSWER" in page.url
        page.locator("#cdr-table tbody tr").first.click()
        page.locator("#cdr-detail.show").wait_for()
        assert "NO_ANSWER" in page.inner_text("#cdr-fields")
        shot(page, "cdr-detail-desktop")
        page.get_by_role("button", name="Close").click()
        page.locator("#cdr-detail").wait_for(state="hidden")
        # Export of the same search: only the three unanswered calls.
        with page.expect_download() as info:
            page.get_by_role("link", name="Export CSV").click()
        path = tmp_path / "export.csv"
        info.value.save_as(path)
        lines = path.read_text(encoding="utf-8-sig").strip().splitlines()
        assert len(lines) == 1 + 3
        assert all("NO_ANSWER" in line for line in lines[1:])
    finally:
        page.context.close()


def test_admin_pages_and_enrollment_command(
    browser: Any, console: tuple[CollectorServer, Seeded]
) -> None:
    server, seeded = console
    acme = seeded.tenant_ids["acme"]
    page = new_page(browser, server.url)
    try:
        login(page, "alice")
        page.goto(f"/t/{acme}/switches")
        page.get_by_label("Switch name").fill("pbx-lyon")
        page.get_by_role("button", name="Create token").click()
        command = page.inner_text("#enroll-command")
        assert command.startswith(f"cdrstats-agent enroll {server.url} cdrs_")
        shot(page, "switches-token-desktop")
        page.goto("/admin")
        shot(page, "admin-desktop")
        page.goto("/logout")  # GET is not a logout
        page.goto(f"/t/{acme}/")
        assert page.url.endswith(f"/t/{acme}/")
        # The dark theme is kept across pages (and reloads).
        page.get_by_role("button", name="Switch between light and dark theme").click()
        page.reload()
        assert page.get_attribute("html", "data-bs-theme") == "dark"
        shot(page, "dashboard-dark-desktop")
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url("**/login")
        shot(page, "login-desktop")
    finally:
        page.context.close()


def test_superadmin_switches_tenant_on_the_same_page(
    browser: Any, console: tuple[CollectorServer, Seeded]
) -> None:
    server, seeded = console
    acme, globex = seeded.tenant_ids["acme"], seeded.tenant_ids["globex"]
    page = new_page(browser, server.url)
    try:
        login(page, "root")
        page.goto(f"/t/{acme}/cdrs")
        page.get_by_label("Tenant").select_option(str(globex))
        page.wait_for_url(f"**/t/{globex}/cdrs")
        assert "globex" in page.inner_text("h1")
    finally:
        page.context.close()


def test_tenant_viewer_cannot_reach_another_tenant(
    browser: Any, console: tuple[CollectorServer, Seeded]
) -> None:
    server, seeded = console
    acme, globex = seeded.tenant_ids["acme"], seeded.tenant_ids["globex"]
    page = new_page(browser, server.url)
    try:
        login(page, "gina")  # viewer of globex
        assert page.url.endswith(f"/t/{globex}/")
        for path in ("", "live", "cdrs", "reports", "switches"):
            response = page.goto(f"/t/{acme}/{path}")
            assert response is not None and response.status == 404, path
            assert "Not found" in page.inner_text("h1")
        statuses = page.evaluate(
            """async (t) => {
                const out = [];
                const urls = [`/t/${t}/events`, `/api/v1/reports/dashboard?tenant=${t}`,
                    `/api/v1/cdrs?tenant=${t}`, `/api/v1/cdrs/export.csv?tenant=${t}`,
                    `/api/v1/live/calls?tenant=${t}`];
                for (const u of urls) out.push((await fetch(u)).status);
                return out;
            }""",
            acme,
        )
        assert statuses == [404, 404, 404, 404, 404]
        response = page.goto("/admin")
        assert response is not None and response.status == 403
    finally:
        page.context.close()


def test_forms_without_the_csrf_token_are_refused(
    browser: Any, console: tuple[CollectorServer, Seeded]
) -> None:
    server, seeded = console
    acme = seeded.tenant_ids["acme"]
    page = new_page(browser, server.url)
    try:
        login(page, "alice")
        page.goto(f"/t/{acme}/switches")
        page.evaluate(
            "document.querySelectorAll('#token-form input[name=csrf_token]')"
            ".forEach(e => e.remove())"
        )
        page.get_by_label("Switch name").fill("pbx-evil")
        with page.expect_response(lambda r: r.url.endswith("/switches/token")) as info:
            page.get_by_role("button", name="Create token").click()
        assert info.value.status == 403
        assert "CSRF" in page.inner_text("#error-detail")
        page.goto(f"/t/{acme}/switches")
        assert "pbx-evil" not in page.content()
    finally:
        page.context.close()


def test_phone_viewport_has_no_horizontal_scroll(
    browser: Any, console: tuple[CollectorServer, Seeded]
) -> None:
    server, _seeded = console
    mine = fresh_tenant(server.database_url)
    acme = mine.id
    Ingest(server, server.enroll(mine.name, "sbc-newyork-with-a-long-name")).send(
        [cdr(i) for i in range(5)]
    )
    page = new_page(browser, server.url, PHONE)
    try:
        page.goto("/login")
        shot(page, "login-phone")
        login(page, "root")
        for path, name in (
            (f"/t/{acme}/", "dashboard"),
            (f"/t/{acme}/live", "live"),
            (f"/t/{acme}/cdrs", "cdrs"),
            (f"/t/{acme}/reports", "reports"),
            (f"/t/{acme}/switches", "switches"),
            ("/admin", "admin"),
            ("/account", "account"),
        ):
            page.goto(path)
            if name == "dashboard":
                page.wait_for_function("document.getElementById('kpi-calls').textContent === '5'")
            unlabelled = page.evaluate(
                """() => [...document.querySelectorAll(
                        'input:not([type=hidden]), select, textarea, button')]
                    .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                                 && !e.textContent.trim())
                    .map(e => e.outerHTML.slice(0, 80))"""
            )
            assert unlabelled == [], (path, unlabelled)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            shot(page, f"{name}-phone")
            wide = page.evaluate(
                """() => [...document.querySelectorAll('body *')]
                    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
                    .filter(e => !e.closest('.table-responsive'))
                    .slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className)"""
            )
            assert overflow <= 0, (path, overflow, wide)
        # The menu collapses behind a toggler that works with the keyboard.
        page.goto(f"/t/{acme}/")
        assert not page.get_by_role("link", name="Live").is_visible()
        toggler = page.get_by_role("button", name="Toggle navigation")
        toggler.focus()
        page.keyboard.press("Enter")
        page.get_by_role("link", name="Live").wait_for(state="visible")
    finally:
        page.context.close()

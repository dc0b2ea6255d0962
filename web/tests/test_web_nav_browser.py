"""The console's top menu in a real Chromium: one row at 1366 px wide (the most crowded bar,
a superadmin's), Alerts, Rules, Blocks and Notifications under one "Alerts & actions" menu
that works with the keyboard and shows the open-alert badge; on a phone, behind the toggler.
Screenshots: var/screenshots/nav-1366.png (menu open), nav-phone.png."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browser_testkit import PHONE, login, new_page, no_horizontal_scroll, shot
from test_web_loop import open_alert
from web_testkit import fresh_tenant, seed, shared_server

from tests.fix_db import CollectorServer

WIDE = {"width": 1366, "height": 768}


@pytest.fixture(scope="module")
def server(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorServer]:
    with shared_server(pg_admin_url, migrated_template, tmp_path_factory.mktemp("nav-b")) as s:
        seed(s.database_url)  # root: a superadmin (tenant picker and Admin in the bar)
        yield s


def test_the_menu_fits_one_row_and_groups_alerts_and_actions(
    browser: Any, server: CollectorServer
) -> None:
    mine = fresh_tenant(server.database_url)
    open_alert(server.database_url, mine.id, "scanner: 25 failed calls", {"failed": 25})
    page = new_page(browser, server.url, WIDE)
    try:
        login(page, "root")
        page.goto(f"/t/{mine.id}/")
        toggle = page.get_by_role("button", name="Alerts & actions")
        # the open-alert badge is on the menu's toggle, visible while the menu is closed
        page.wait_for_function("document.getElementById('alert-badge').textContent === '1'")
        assert page.locator("#nav-actions #alert-badge").is_visible()
        assert not page.get_by_role("link", name="Rules").is_visible()
        # one row: every menu entry and the Log out button side by side, none wrapped
        boxes = page.evaluate(
            """() => [...document.querySelectorAll('#nav .nav-link, #nav button[type=submit]')]
                .map(e => { const r = e.getBoundingClientRect();
                            return [e.textContent.trim().slice(0, 20), r.top, r.height]; })"""
        )
        assert len(boxes) == 9, boxes  # 6 pages, the menu, Admin, Log out
        tops = [round(top + height / 2) for _name, top, height in boxes]
        assert max(tops) - min(tops) <= 4, boxes
        assert all(height < 48 for _name, _top, height in boxes), boxes

        # keyboard: Enter opens it, the arrow keys move through it, Escape closes it
        toggle.focus()
        page.keyboard.press("Enter")
        page.locator("#nav .dropdown-menu.show").wait_for()
        assert toggle.get_attribute("aria-expanded") == "true"
        page.keyboard.press("ArrowDown")
        assert page.evaluate("document.activeElement.textContent") == "Alerts"
        shot(page, "nav-1366")
        page.keyboard.press("Escape")
        page.locator("#nav .dropdown-menu.show").wait_for(state="detached")
        assert page.evaluate("document.activeElement.id") == "nav-actions"
        page.keyboard.press("Enter")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        assert page.evaluate("document.activeElement.textContent") == "Rules"
        page.keyboard.press("Enter")
        page.wait_for_url(f"**/t/{mine.id}/rules")
        # on a page of the menu, its toggle is marked and the entry is the current page
        assert "active" in (toggle.get_attribute("class") or "")
        toggle.click()
        current = page.locator("#nav .dropdown-item[aria-current=page]")
        assert current.inner_text() == "Rules"
    finally:
        page.context.close()

    phone = new_page(browser, server.url, PHONE)
    try:
        login(phone, "root")
        phone.goto(f"/t/{mine.id}/")
        phone.get_by_role("button", name="Toggle navigation").click()
        phone.get_by_role("button", name="Alerts & actions").click()
        phone.get_by_role("link", name="Notifications").click()
        phone.wait_for_url(f"**/t/{mine.id}/notifications")
        phone.get_by_role("button", name="Toggle navigation").click()
        phone.locator("#nav.collapse.show").wait_for()  # opened, not still sliding
        phone.get_by_role("button", name="Alerts & actions").click()
        phone.get_by_role("link", name="Blocks").wait_for(state="visible")
        shot(phone, "nav-phone")
        no_horizontal_scroll(phone)
    finally:
        phone.context.close()

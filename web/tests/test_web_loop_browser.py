"""Closing the loop in a real Chromium: block from a CDR's detail and from the live call table,
the blocks page updating by itself when the agent's result arrives; screenshots."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from browser_testkit import PHONE, login, new_page, no_horizontal_scroll, shot
from cdrstats_agent.plugin import LiveEvent
from test_web_loop import open_alert, report
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
    workdir = tmp_path_factory.mktemp("web-loop-browser")
    with shared_server(pg_admin_url, migrated_template, workdir) as server:
        yield server, seed(server.database_url)


def test_block_from_cdr_detail_and_live_calls(
    browser: Any, console: tuple[CollectorServer, Seeded]
) -> None:
    server, _seeded = console
    mine = fresh_tenant(server.database_url)
    agent = server.enroll(mine.name, "pbx-paris")
    Ingest(server, agent).send([dataclasses.replace(cdr(1), src_ip="203.0.113.77")])
    page = new_page(browser, server.url)
    try:
        login(page, mine.admin)
        page.goto(f"/t/{mine.id}/cdrs")
        page.locator("#cdr-table tbody tr").first.click()
        page.locator("#cdr-detail.show").wait_for()
        page.get_by_role("button", name="Block 203.0.113.77 on pbx-paris").click()
        dialog = page.locator("#block-dialog.show")
        dialog.wait_for()
        assert page.locator("#cdr-detail.show").count() == 0  # one modal at a time
        assert page.input_value("#bd-ip") == "203.0.113.77"
        assert page.input_value("#bd-switch") == "pbx-paris"
        page.select_option("#bd-ttl", "24h")
        shot(page, "block-dialog-desktop")
        dialog.get_by_role("button", name="Block", exact=True).click()
        page.wait_for_url(f"**/t/{mine.id}/blocks?queued=*")
        notice = page.inner_text("#queued-notice")
        assert "203.0.113.77" in notice and "waiting for the switch's agent" in notice
        row = page.locator("#active-blocks tbody tr[data-ip='203.0.113.77']")
        assert "pending" in row.inner_text() and mine.admin in row.inner_text()
        # The agent's result arrives: the page shows it without a reload.
        page.evaluate("window.__sameDocument = 'yes'")
        cid = page.url.rsplit("=", 1)[1]
        report(server, agent, cid, "done", "blocked 203.0.113.77 in nftables for 86400 s")
        page.wait_for_function(
            "document.getElementById('queued-notice').textContent.includes('done')"
        )
        assert page.evaluate("window.__sameDocument") == "yes"
        assert "active" in row.inner_text() and "23 h 59 min" in row.inner_text()
        assert "blocked 203.0.113.77 in nftables" in page.inner_text("#block-history")
        shot(page, "blocks-desktop")

        # The live call table: a block button beside the call's source IP.
        feed = LiveFeed(server, agent)
        now = datetime.now(UTC).timestamp()
        info = {"caller": "1001", "callee": "+33142278000", "src_ip": "198.51.100.23"}
        feed.send(LiveEvent("started", "call-1", now, info))
        page.goto(f"/t/{mine.id}/live")
        page.get_by_role("button", name="Block 198.51.100.23 on pbx-paris").click()
        page.locator("#block-dialog.show").wait_for()
        assert page.input_value("#bd-ip") == "198.51.100.23"
        page.get_by_role("button", name="Cancel").click()
        page.locator("#block-dialog").wait_for(state="hidden")
    finally:
        page.context.close()

    # A viewer sees the blocks but has no button to act; phone size without horizontal scroll.
    page = new_page(browser, server.url, PHONE)
    try:
        login(page, mine.viewer)
        page.goto(f"/t/{mine.id}/blocks")
        assert "203.0.113.77" in page.inner_text("#active-blocks")
        assert page.get_by_role("button", name="Unblock 203.0.113.77 on pbx-paris").count() == 0
        no_horizontal_scroll(page)
        page.goto(f"/t/{mine.id}/cdrs")
        page.locator("#cdr-table tbody tr").first.click()
        page.locator("#cdr-detail.show").wait_for()
        assert "203.0.113.77" in page.inner_text("#cdr-fields")
        assert page.locator("#cdr-fields [data-block-ip]").count() == 0
    finally:
        page.context.close()
    page = new_page(browser, server.url, PHONE)
    try:
        login(page, mine.admin)
        page.goto(f"/t/{mine.id}/blocks")
        no_horizontal_scroll(page)
        shot(page, "blocks-phone")
        page.once("dialog", lambda d: d.accept())
        page.get_by_role("button", name="Unblock 203.0.113.77 on pbx-paris").click()
        page.wait_for_url(f"**/t/{mine.id}/blocks?queued=*")
        assert "Unblock of 203.0.113.77" in page.inner_text("#queued-notice")
    finally:
        page.context.close()


def test_alerts_arrive_live_and_are_acknowledged_rules_editor(
    browser: Any, console: tuple[CollectorServer, Seeded]
) -> None:
    server, _seeded = console
    mine = fresh_tenant(server.database_url)
    server.enroll(mine.name, "pbx-paris")
    page = new_page(browser, server.url)
    try:
        login(page, mine.admin)
        page.goto(f"/t/{mine.id}/alerts")
        page.wait_for_function("document.getElementById('live-status').textContent === 'live'")
        assert "No alert in this state." in page.inner_text("#alerts")
        assert page.locator("#alert-badge").is_hidden()
        page.evaluate("window.__sameDocument = 'yes'")
        _rule, aid = open_alert(
            server.database_url,
            mine.id,
            "scanner: 31 failed calls from 203.0.113.66",
            {"source_ip": "203.0.113.66", "switch": "pbx-paris", "failed": 31},
        )
        row = page.locator(f"#alerts tbody tr[data-alert-id='{aid}']")
        row.wait_for()
        assert page.evaluate("window.__sameDocument") == "yes"  # no reload
        assert "New alert: scanner" in page.inner_text("#alert-announce")
        page.wait_for_function("document.getElementById('alert-badge').textContent === '1'")
        shot(page, "alerts-desktop")
        row.get_by_role("button", name=f"Acknowledge alert {aid}").click()
        page.wait_for_url("**/alerts?state=active&done=*")
        assert "acknowledged" in page.inner_text("#alert-done")
        assert page.get_attribute(f"tr[data-alert-id='{aid}']", "data-state") == "acknowledged"
        page.wait_for_function("document.getElementById('alert-badge').hidden")
        # The alert's block button opens the block dialog with its source IP and switch.
        page.get_by_role("button", name="Block 203.0.113.66 on pbx-paris").click()
        page.locator("#block-dialog.show").wait_for()
        assert page.input_value("#bd-ip") == "203.0.113.66"
        page.get_by_role("button", name="Cancel").click()

        # Rules: a new rule of an event kind shows only its own parameters.
        page.goto(f"/t/{mine.id}/rules")
        page.get_by_label("Name", exact=True).fill("short calls burst")
        page.get_by_label("Kind", exact=True).select_option("short_calls")
        assert page.get_by_label("Threshold", exact=True).is_hidden()
        page.get_by_label("Count", exact=True).fill("15")
        page.get_by_role("button", name="Create rule").click()
        page.wait_for_url("**/rules?saved=*")
        assert "count 15" in page.inner_text("#rules")
        page.get_by_label("Kind", exact=True).select_option("asr")
        page.get_by_label("Name", exact=True).fill("low ASR")
        page.get_by_role("button", name="Create rule").click()
        assert "params.threshold: required" in page.inner_text("#rule-error")
        shot(page, "rules-desktop")
    finally:
        page.context.close()
    page = new_page(browser, server.url, PHONE)
    try:
        login(page, mine.admin)
        for path, name in (("alerts?state=all", "alerts"), ("rules", "rules")):
            page.goto(f"/t/{mine.id}/{path}")
            no_horizontal_scroll(page)
            shot(page, f"{name}-phone")
    finally:
        page.context.close()

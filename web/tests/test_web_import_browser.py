"""The CSV import page in a real Chromium: choose a file, see it parsed with guessed fields,
import it with the progress bar moved by SSE `import` events, then find the calls in search.

Skips when Chromium or Playwright is missing, except under CI=true where it fails.
Screenshots at desktop and phone sizes go to var/screenshots/.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from browser_testkit import DESKTOP, PHONE, login, new_page, no_horizontal_scroll, shot
from web_testkit import fresh_tenant, shared_server

from tests.fix_db import CollectorServer

ROWS = 40_000
BAD = (7, 20_000)


@pytest.fixture(scope="module")
def server(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorServer]:
    with shared_server(pg_admin_url, migrated_template, tmp_path_factory.mktemp("imp-b")) as s:
        yield s


def pbx_csv(path: Path) -> Path:
    """An export of an unknown PBX: Asterisk-like column names, 40,000 calls, 2 bad rows."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("uniqueid,calldate,src,dst,duration,billsec,disposition\n")
        for i in range(ROWS):
            when = (start + timedelta(seconds=5 * i)).strftime("%Y-%m-%d %H:%M:%S")
            if i in BAD:
                when = "yesterday"
            answered = i % 4 != 0
            out.write(
                f"pbx-{i},{when},1{i % 1000:03d},0033142{i:06d},{30 + i % 300},"
                f"{(20 + i % 300) if answered else 0},{'ANSWERED' if answered else 'NO ANSWER'}\n"
            )
    return path


def test_upload_map_import_with_progress_then_search(
    browser: Any, server: CollectorServer, tmp_path: Path
) -> None:
    mine = fresh_tenant(server.database_url)
    csv_file = pbx_csv(tmp_path / "pbx-export.csv")
    page = new_page(browser, server.url, DESKTOP)
    try:
        login(page, mine.admin)
        page.get_by_role("link", name="Import").click()
        page.wait_for_url(f"**/t/{mine.id}/import")
        page.wait_for_function("document.getElementById('live-status').textContent === 'live'")
        page.get_by_label("CSV file from a switch or a carrier").set_input_files(str(csv_file))
        # The preview: detection, the guessed mapping, rows parsed and mapped (9 of the first
        # 10: the file's line 9 has no time).
        page.wait_for_function(
            "document.getElementById('preview-table').getAttribute('data-ok') === '9'"
        )
        detected = page.inner_text("#detected")
        assert "utf-8" in detected and "comma-separated" in detected and "7 columns" in detected
        assert page.get_by_label("Start time").input_value() == "n:calldate"
        assert page.get_by_label("Callee (B number)").input_value() == "n:dst"
        assert page.get_by_label("Unique id (dedup key)").input_value() == "n:uniqueid"
        # A mapping change shows at once in the preview (row 8 of the file is a bad one).
        assert "yesterday" in page.inner_text("#preview-table tbody")
        page.get_by_label("Duration", exact=True).select_option("")
        page.get_by_label("Duration", exact=True).select_option("n:duration")
        page.get_by_label("Save this mapping as a profile").fill("pbx-export")
        page.get_by_role("button", name="Save profile").click()
        page.wait_for_function(
            "document.getElementById('profile-status').textContent.includes('Saved')"
        )
        assert page.locator("#saved-profiles option", has_text="pbx-export").count() == 1
        shot(page, "import-mapping-desktop")
        page.get_by_label("Switch or source these calls come from").fill("old-pbx")
        page.get_by_role("button", name="Import", exact=True).click()
        page.wait_for_function(
            "document.getElementById('job-status').textContent === 'done'", timeout=120_000
        )
        seen = page.evaluate("window.cdrstatsImport.seen")
        # The bar moved through several values (one per stored batch of 5,000 rows) to 100.
        assert seen[-1] == 100 and len([v for v in seen if 0 < v < 100]) >= 3, seen
        assert seen == sorted(seen)
        assert page.inner_text("#job-imported") == f"{ROWS - len(BAD):,}"
        assert page.inner_text("#job-rejected") == "2"
        assert page.inner_text("#job-duplicates") == "0"
        assert page.get_by_role("link", name="Download rejected rows (CSV)").is_visible()
        with page.expect_download() as got:
            page.get_by_role("link", name="Download rejected rows (CSV)").click()
        report = Path(got.value.path()).read_text(encoding="utf-8").splitlines()
        assert report[0] == "line,reason,raw" and report[1].startswith("9,")
        # The saved profile can be deleted again (after a confirmation).
        delete = page.get_by_role("button", name="Delete this saved profile")
        assert not delete.is_visible()
        page.get_by_label("Profile", exact=True).select_option("pbx-export")
        page.once("dialog", lambda dialog: dialog.accept())
        delete.click()
        page.wait_for_function(
            "document.getElementById('profile-status').textContent.includes('deleted')"
        )
        assert page.locator("#saved-profiles option").count() == 0
        assert page.get_by_label("Profile", exact=True).input_value() == ""
        assert not delete.is_visible()
        page.wait_for_timeout(700)  # the bar's width transition (a screenshot, not a check)
        shot(page, "import-done-desktop")
        job_url = page.get_attribute("#job-link", "href")
        # The job page, as another tab would see it.
        other = page.context.new_page()
        other.goto(job_url)
        other.wait_for_function("document.getElementById('job-status').textContent === 'done'")
        assert other.inner_text("#job-imported") == f"{ROWS - len(BAD):,}"
        assert other.get_attribute("#job-progress", "aria-valuenow") == "100"
        other.close()
        # The calls are in the search.
        page.get_by_role("link", name="See the CDRs").click()
        page.wait_for_url(f"**/t/{mine.id}/cdrs")
        page.goto(f"/t/{mine.id}/cdrs?callee=0033142012345&callee_match=exact")
        page.wait_for_function(
            "document.getElementById('cdr-caption').textContent.startsWith('1 calls')"
        )
        assert "old-pbx" in page.inner_text("#cdr-table tbody")
    finally:
        page.context.close()
    # Phone size: the page fits, the recent imports list the job.
    phone = new_page(browser, server.url, PHONE)
    try:
        login(phone, mine.admin)
        phone.goto(f"/t/{mine.id}/import")
        phone.wait_for_function("document.querySelectorAll('#jobs tbody a').length === 1")
        # Dropped on the box this time (the first lines of the same export).
        head = "".join(csv_file.open(encoding="utf-8").readlines()[:50])
        phone.evaluate(
            """(text) => {
                const dt = new DataTransfer();
                dt.items.add(new File([text], "dropped.csv", { type: "text/csv" }));
                const zone = document.getElementById("drop-zone");
                zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true }));
                zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true }));
            }""",
            head,
        )
        phone.wait_for_function(
            "document.getElementById('preview-table').getAttribute('data-ok') === '9'"
        )
        no_horizontal_scroll(phone)
        shot(phone, "import-phone")
    finally:
        phone.context.close()

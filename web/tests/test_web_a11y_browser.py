"""Accessibility of the console's pages in a real Chromium, in the light and the dark theme:
every form control has a label, every button and link a name, every table a caption or a
label, text contrast at least WCAG AA (4.5:1, 3:1 for large text), and the keyboard reaches
the skip link first.

Skips when Chromium or Playwright is missing, except under CI=true where it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_testkit import PASSWORD, Ingest, cdr, seed, shared_server

from tests.fix_db import CollectorServer

# What the audit looks at, as the browser computes it (colours with transparency are blended
# over the first opaque background behind the element).
AUDIT = "\n".join(
    line
    for line in (Path(__file__).parent / "a11y_audit.js").read_text(encoding="utf-8").splitlines()
    if not line.startswith("//")
)
"""An arrow function returning the problems it finds (web/tests/a11y_audit.js)."""


@pytest.fixture(scope="module")
def server(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorServer]:
    with shared_server(pg_admin_url, migrated_template, tmp_path_factory.mktemp("a11y")) as s:
        seed(s.database_url)
        Ingest(s, s.enroll("acme", "pbx-a11y")).send(
            [cdr(i, answered=i % 3 != 0) for i in range(12)]
        )
        yield s


def test_pages_have_labels_names_captions_and_contrast_in_both_themes(
    browser: Any, server: CollectorServer
) -> None:
    context = browser.new_context(base_url=server.url, viewport={"width": 1366, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        problems: dict[str, list[str]] = {}
        page.goto("/login")
        found = page.evaluate(AUDIT)
        assert isinstance(found, list)
        if found:
            problems["login"] = found
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/t/*/")
        home = page.url.rstrip("/")
        # the keyboard's first stop is the skip link, which leads to the content
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent.trim()") == "Skip to content"
        for theme in ("light", "dark"):
            page.evaluate(f"localStorage.setItem('cdrstats-theme', '{theme}')")
            tenant_pages = ("/", "/live", "/cdrs", "/reports", "/switches", "/blocks", "/import")
            for url in (*(home + p for p in tenant_pages), "/admin", "/account"):
                page.goto(url)
                page.wait_for_load_state("networkidle")
                assert page.get_attribute("html", "data-bs-theme") == theme
                found = page.evaluate(AUDIT)
                assert isinstance(found, list)
                if found:
                    problems[f"{theme} {url}"] = found
        assert problems == {}
    finally:
        context.close()

"""What every Chromium test of the console shares (the `browser` fixture is in conftest.py).

page = new_page(browser, server.url)          # desktop size; PHONE for a phone
login(page, "alice")
no_horizontal_scroll(page)                    # and every control labelled
shot(page, "blocks-desktop")                  # var/screenshots/blocks-desktop.png
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from web_testkit import PASSWORD, SCREENSHOTS, chromium_or_skip

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 20_000


def launch() -> Iterator[Any]:
    """Debian's Chromium through Playwright (skips when absent, fails under CI=true)."""
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield b
        finally:
            b.close()


def new_page(browser: Any, base: str, viewport: dict[str, int] = DESKTOP) -> Any:
    """A page in a context of its own (its own cookies); page errors, console messages and
    HTTP errors are printed, so that a failing test shows what the page saw."""
    context = browser.new_context(base_url=base, viewport=viewport)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.on("pageerror", lambda exc: print("page error:", exc))
    page.on("console", lambda msg: print("console:", msg.text))
    page.on("response", lambda r: r.status >= 400 and print("http:", r.status, r.url))
    return page


def login(page: Any, username: str) -> None:
    page.goto("/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/t/*/")


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def no_horizontal_scroll(page: Any) -> None:
    """No horizontal scroll, and every control has a label (checked on each page shown)."""
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll(
                'input:not([type=hidden]), select, textarea, button')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                         && !e.textContent.trim())
            .map(e => e.outerHTML.slice(0, 80))"""
    )
    assert unlabelled == [], (page.url, unlabelled)
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, (page.url, overflow)

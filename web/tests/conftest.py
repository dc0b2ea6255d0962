"""Fixtures of the console's tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browser_testkit import launch


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module (browser_testkit.launch)."""
    yield from launch()

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agent_testkit import CollectorPeer


@pytest.fixture
async def peer() -> AsyncIterator[CollectorPeer]:
    p = CollectorPeer()
    await p.start()
    yield p
    await p.stop()

"""pytest plugin of the contract kit (entry point `pytest11`, loaded wherever cdrstats-agent is).

Fixtures:
  source_reader   read_results() run synchronously:
                  `source_reader(source, checkpoint, until=lambda rs: ..., timeout=10)`
                  returns the ReadResults and closes the reader (not the source).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from ..plugin import ReadResult, Source
from .contract import read_results

Reader = Callable[..., list[ReadResult]]


@pytest.fixture
def source_reader() -> Reader:
    def read(
        source: Source,
        checkpoint: str | None = None,
        until: Callable[[list[ReadResult]], bool] = bool,
        timeout: float = 10.0,
    ) -> list[ReadResult]:
        coro: Any = read_results(source, checkpoint, until, wait_s=timeout)
        result: list[ReadResult] = asyncio.run(coro)
        return result

    return read

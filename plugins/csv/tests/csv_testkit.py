"""Helpers for the csv plugin tests: build sources, drive `read()` until it has nothing new."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from cdrstats_agent.model import CDR, CDR_FIELDS
from cdrstats_agent.plugin import ReadResult
from cdrstats_csv.plugin import CsvPlugin, CsvSource

REPO = Path(__file__).resolve().parents[3]
REFERENCE = (REPO / "../shared/reference").resolve()
CASES = Path(__file__).resolve().parent / "cases"


def make_source(options: Mapping[str, Any], name: str = "test") -> CsvSource:
    table = {"interval": 0.002, **options}
    return CsvPlugin().create_source(name, table)


class LiveReader:
    """One running `read()`: `until_idle()` returns what it yielded until a poll found nothing.

    The pending `anext()` survives between calls, so the test can change files while the
    source is between two polls, exactly as a switch would.
    """

    def __init__(self, source: CsvSource, checkpoint: str | None = None) -> None:
        self.source = source
        self.agen = source.read(checkpoint)
        self.task: asyncio.Future[ReadResult] | None = None
        self.results: list[ReadResult] = []

    async def until_idle(
        self, *, stop_after: int | None = None, deadline: float = 10.0
    ) -> list[ReadResult]:
        got: list[ReadResult] = []
        limit = time.monotonic() + deadline
        while stop_after is None or len(got) < stop_after:
            idle = self.source.idle_polls
            if self.task is None:
                self.task = asyncio.ensure_future(anext(self.agen))
            while not self.task.done() and self.source.idle_polls == idle:
                if time.monotonic() > limit:
                    raise AssertionError("read() kept producing for too long")
                await asyncio.sleep(0.001)
            if not self.task.done():
                break
            got.append(self.task.result())
            self.task = None
        self.results.extend(got)
        return got

    @property
    def checkpoint(self) -> str | None:
        return self.results[-1].checkpoint if self.results else None

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await self.task
        await self.agen.aclose()


async def drain(
    source: CsvSource,
    checkpoint: str | None = None,
    *,
    stop_after: int | None = None,
) -> list[ReadResult]:
    """Results of a fresh `source.read(checkpoint)` until a poll finds nothing new."""
    reader = LiveReader(source, checkpoint)
    try:
        return await reader.until_idle(stop_after=stop_after)
    finally:
        await reader.close()


def cdrs_of(results: list[ReadResult]) -> list[CDR]:
    return [cdr for result in results for cdr in result.cdrs]


def keys_of(results: list[ReadResult]) -> list[str]:
    return [cdr.key for result in results for cdr in result.cdrs]


def rejected_of(results: list[ReadResult]) -> list[tuple[str, str]]:
    return [(r.where, r.reason) for result in results for r in result.rejected]


def as_json(cdr: CDR) -> dict[str, Any]:
    """A CDR as a JSON-able dict: datetimes ISO 8601 UTC with Z, enums as their value."""
    out: dict[str, Any] = {}
    for name in CDR_FIELDS:
        value = getattr(cdr, name)
        if isinstance(value, datetime):
            value = value.isoformat().replace("+00:00", "Z")
        elif isinstance(value, Enum):
            value = value.value
        out[name] = value
    return out


def append(path: Path, data: bytes | str) -> None:
    with open(path, "ab") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)

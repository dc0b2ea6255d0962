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


async def drain(
    source: CsvSource,
    checkpoint: str | None = None,
    *,
    stop_after: int | None = None,
    deadline: float = 10.0,
) -> list[ReadResult]:
    """Results of `source.read(checkpoint)` until a poll finds nothing new (or `stop_after`)."""
    agen = source.read(checkpoint)
    results: list[ReadResult] = []
    limit = time.monotonic() + deadline
    try:
        while stop_after is None or len(results) < stop_after:
            idle = source.idle_polls
            task = asyncio.ensure_future(anext(agen))
            while not task.done() and source.idle_polls == idle:
                if time.monotonic() > limit:
                    raise AssertionError("read() kept producing for too long")
                await asyncio.sleep(0.001)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await task
                break
            results.append(task.result())
    finally:
        await agen.aclose()
    return results


def cdrs_of(results: list[ReadResult]) -> list[CDR]:
    return [cdr for result in results for cdr in result.cdrs]


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

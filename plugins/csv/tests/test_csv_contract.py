"""The csv plugin passes the plugin contract kit (cdrstats_agent.testing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdrstats_agent.testing import SourceContract
from cdrstats_csv.plugin import CsvPlugin


class CsvFeed:
    """A CSV file with a header, appended to as a switch would (one line per call)."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "cdr.csv"
        self.path.write_text("id,started,seconds,from,to\n")
        self.n = 0

    def options(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "header": True,
            "key": "id",
            "timezone": "UTC",
            "fields": {"start": "started", "duration": "seconds", "caller": "from",
                       "callee": "to"},
            "interval": 0.01,
            "chunk_cdrs": 4,
        }  # fmt: skip

    def append(self, n: int) -> list[str]:
        keys = [f"call-{self.n + i}" for i in range(n)]
        with self.path.open("a") as f:
            for i, key in enumerate(keys):
                f.write(f"{key},2026-11-20 07:{(self.n + i) % 60:02d}:00,{i},1001,2002\n")
        self.n += n
        return keys

    def append_bad(self) -> None:
        with self.path.open("a") as f:
            f.write("bad-1,not a time,x,1001,2002\n")


class TestCsvContract(SourceContract):
    plugin = CsvPlugin()

    def feed(self, workdir: Path) -> CsvFeed:
        return CsvFeed(workdir)

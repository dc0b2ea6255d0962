"""The agent's plugin contract kit (cdrstats_agent.testing) run on the freeswitch plugin.

mod_cdr_csv with the vanilla `example` template: Master.csv appended to as the switch writes
it. (The live-event part of the kit is skipped: ESL live calls are covered against the ESL peer
in test_freeswitch_esl.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdrstats_agent.testing import SourceContract
from cdrstats_freeswitch.plugin import FreeswitchPlugin
from freeswitch_testkit import TEMPLATES, append_lines, call_variables, render


class MasterCsvFeed:
    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "Master.csv"
        self.path.write_text("")
        self.n = 0

    def options(self) -> dict[str, Any]:
        return {"store": "csv", "path": str(self.path), "template": "example",
                "timezone": "Europe/Paris", "interval": 0.01, "chunk_cdrs": 4}  # fmt: skip

    def append(self, n: int) -> list[str]:
        calls = [call_variables(self.n + i, answered=(self.n + i) % 4 != 0) for i in range(n)]
        append_lines(self.path, [render(TEMPLATES["example"], v) for v in calls])
        self.n += n
        return [v["uuid"] for v in calls]

    def append_bad(self) -> None:
        bad = call_variables(10_000)
        for stamp in ("start_stamp", "answer_stamp", "end_stamp"):
            bad[stamp] = "yesterday at noon"
        for epoch in ("start_epoch", "answer_epoch", "end_epoch"):
            bad[epoch] = "soon"
        append_lines(self.path, [render(TEMPLATES["example"], bad)])


class TestMasterCsvContract(SourceContract):
    plugin = FreeswitchPlugin()

    def feed(self, workdir: Path) -> MasterCsvFeed:
        return MasterCsvFeed(workdir)

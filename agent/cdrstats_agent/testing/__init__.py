"""The plugin contract test kit: what every source must do, as tests a plugin inherits.

    from cdrstats_agent.testing import RecordFeed, SourceContract

    class LinesFeed:                                 # writes the switch's store, as it would
        def __init__(self, workdir): ...
        def options(self) -> dict: ...               # the [[source]] options reading that store
        def append(self, n: int) -> list[str]: ...   # n good records; returns their keys
        def append_bad(self) -> None: ...            # one record the plugin must reject
        def live_options(self) -> dict: ...          # optional: a source with live calls

    class TestLinesContract(SourceContract):
        plugin = LinesPlugin()
        def feed(self, workdir): return LinesFeed(workdir)

pytest collects the inherited `test_contract_*` methods. They are plain (synchronous) tests
that run their own event loop, so they need no asyncio plugin. They check:

- options are validated without I/O, an unknown option is refused, the sample config parses;
- `check()` passes on a readable store;
- every record written is read once (no duplicates), with the keys the feed wrote;
- checkpoint resume after a restart at every result boundary (a new source object each time,
  as after `systemctl restart`): nothing lost, nothing read twice, records written while
  stopped included;
- a bad record is reported in `ReadResult.rejected` (where + reason), does not stop reading,
  and is not reported again after a resume;
- live events (when the source has `live()`): a snapshot first, then the documented shape
  (`live_event_problems`);
- action declarations (`actions()`): verb names, async handlers, block_ip with unblock_ip.

The pytest plugin `cdrstats_agent.testing.pytest_plugin` (registered with pytest, so loaded
automatically wherever cdrstats-agent is installed) adds the `source_reader` fixture.
"""

from __future__ import annotations

from .contract import (
    ACTION_NAME,
    RecordFeed,
    SourceContract,
    action_problems,
    live_event_problems,
    read_results,
)

__all__ = [
    "ACTION_NAME",
    "RecordFeed",
    "SourceContract",
    "action_problems",
    "live_event_problems",
    "read_results",
]

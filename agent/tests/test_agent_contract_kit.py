"""The contract kit (cdrstats_agent.testing) passes a correct plugin and catches broken ones."""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cdrstats_agent import scaffold
from cdrstats_agent.plugin import AuthFailure, LiveEvent, ReadResult
from cdrstats_agent.testing import SourceContract, action_problems, live_event_problems


def lines_module() -> types.ModuleType:
    """The tutorial's plugin (docs/plugins.md), as `plugin new lines` writes it."""
    module = types.ModuleType("cdrstats_lines_kit")
    exec(compile(scaffold.files("lines")["cdrstats_lines/plugin.py"], "lines", "exec"),
         module.__dict__)  # fmt: skip
    return module


LINES = lines_module()


class LinesFeed:
    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "cdr.txt"
        self.path.write_text("")
        self.n = 0

    def options(self) -> dict[str, Any]:
        return {"path": str(self.path), "poll_s": 0.01}

    def append(self, n: int) -> list[str]:
        keys = [f"c{self.n + i}" for i in range(n)]
        with self.path.open("a") as f:
            f.writelines(f"{k},{1764064800 + self.n + i},1001,2002,5\n" for i, k in enumerate(keys))
        self.n += n
        return keys

    def append_bad(self) -> None:
        with self.path.open("a") as f:
            f.write("garbage\n")


class TestLinesContract(SourceContract):
    """The tutorial plugin passes the whole contract."""

    plugin = LINES.LinesPlugin()

    def feed(self, workdir: Path) -> LinesFeed:
        return LinesFeed(workdir)


# --- broken plugins: each contract test must fail on its defect --------------------------------


class ForgetfulSource(LINES.LinesSource):  # type: ignore[name-defined,misc]
    """Ignores the checkpoint: reads the file from the start after every restart."""

    def read(self, checkpoint: str | None) -> AsyncIterator[ReadResult]:
        return super().read(None)  # type: ignore[no-any-return]


class SilentSource(LINES.LinesSource):  # type: ignore[name-defined,misc]
    """Drops the rows it cannot read without reporting them."""

    async def read(self, checkpoint: str | None) -> AsyncIterator[ReadResult]:
        async for result in super().read(checkpoint):
            yield ReadResult(result.cdrs, result.checkpoint, [])


class QuittingSource(LINES.LinesSource):  # type: ignore[name-defined,misc]
    """Stops at the end of the data instead of waiting for more."""

    async def read(self, checkpoint: str | None) -> AsyncIterator[ReadResult]:
        offset = json.loads(checkpoint)["offset"] if checkpoint else 0
        if self._read_from(offset):
            async for result in super().read(checkpoint):
                yield result
                return


def broken(source_class: type) -> Any:
    class Plugin(LINES.LinesPlugin):  # type: ignore[name-defined,misc]
        def create_source(self, name: str, options: Mapping[str, Any]) -> Any:
            good = super().create_source(name, options)
            return source_class(good.name, good.path, good.poll_s)

    return Plugin()


class Lenient(LINES.LinesPlugin):  # type: ignore[name-defined,misc]
    """Accepts unknown options silently."""

    def create_source(self, name: str, options: Mapping[str, Any]) -> Any:
        known = {k: v for k, v in options.items() if k in ("path", "poll_s")}
        return super().create_source(name, known)


def contract(plugin: Any) -> SourceContract:
    class Kit(SourceContract):
        timeout = 2.0

        def feed(self, workdir: Path) -> LinesFeed:
            return LinesFeed(workdir)

    Kit.plugin = plugin
    return Kit()


def test_kit_catches_a_source_that_ignores_its_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="read again after a restart"):
        contract(broken(ForgetfulSource)).test_contract_resumes_after_restart(tmp_path)


def test_kit_catches_rows_dropped_silently(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="waited for more"):
        contract(broken(SilentSource)).test_contract_bad_record_reported(tmp_path)


def test_kit_catches_a_reader_that_ends(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="read\\(\\) ended"):
        contract(broken(QuittingSource)).test_contract_reads_every_record_once(tmp_path)


def test_kit_catches_unknown_options_accepted(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        contract(Lenient()).test_contract_options_validated_without_io(tmp_path)


def test_live_event_shape() -> None:
    good = [
        LiveEvent("snapshot", at=1764064830.0, calls=({"call_id": "a1", "state": "answered"},)),
        LiveEvent(
            "started",
            "a1",
            1764064800.25,
            {"caller": "1001", "direction": "outbound", "state": "ringing"},
        ),
        LiveEvent("ended", "a1", 1764064834.0, {"hangup_cause": 16, "sip_code": 200}),
    ]
    for event in good:
        assert live_event_problems(event) == []
    problems = live_event_problems(LiveEvent("hungup", "", 0.0, {"sip_code": "200"}))
    assert any("kind 'hungup'" in p for p in problems)
    assert any("at must be epoch seconds" in p for p in problems)
    assert any("needs a non-empty str call_id" in p for p in problems)
    assert any("['sip_code'] must be an int" in p for p in problems)
    assert live_event_problems({"kind": "started"}) == [
        "live() yielded dict, not a LiveEvent or AuthFailure"
    ]
    # Failed registrations (scanner detection) are checked as the agent converts them.
    assert live_event_problems(AuthFailure("203.0.113.5", at=1764064800.0, sip_code=403)) == []
    bad = live_event_problems(AuthFailure("203.0.113.5", at=1764064800.0, src_port=0))
    assert bad and "src_port" in bad[0]
    assert "the agent drops it" in live_event_problems(AuthFailure("nowhere", at=1.0))[0]
    snapshot = LiveEvent("snapshot", at=1.0, calls=({"state": "talking"},))
    assert any("needs a non-empty str 'call_id'" in p for p in live_event_problems(snapshot))
    assert any("['state'] must be one of" in p for p in live_event_problems(snapshot))


def test_action_declarations() -> None:
    async def block(args: Mapping[str, Any]) -> str:
        return "blocked"

    def sync(args: Mapping[str, Any]) -> str:
        return "done"

    class Good:
        def actions(self) -> dict[str, Any]:
            return {"block_ip": block, "unblock_ip": block}

    class Bad:
        def actions(self) -> dict[str, Any]:
            return {"block_ip": block, "Reload-All": sync}

    assert action_problems(Good()) == [] and action_problems(object()) == []
    problems = action_problems(Bad())
    assert any("'Reload-All' is not lower_snake_case" in p for p in problems)
    assert any("'Reload-All': its handler must be an async function" in p for p in problems)
    assert any("declares block_ip without unblock_ip" in p for p in problems)


class LiveLinesSource(LINES.LinesSource):  # type: ignore[name-defined,misc]
    """The lines source with calls in progress: a snapshot, then events (or not, if `rude`)."""

    rude = False

    async def live(self) -> AsyncIterator[LiveEvent]:
        if not self.rude:
            yield LiveEvent("snapshot", at=1764064800.0, calls=({"call_id": "a1"},))
        yield LiveEvent("started", "a2", 1764064801.0, {"caller": "1001", "state": "ringing"})
        yield LiveEvent("ended", "a1", 1764064802.0, {"hangup_cause": 16})


class RudeLiveSource(LiveLinesSource):
    rude = True


def test_kit_checks_live_events(tmp_path: Path) -> None:
    contract(broken(LiveLinesSource)).test_contract_live_events(tmp_path)
    with pytest.raises(AssertionError, match="the first live event is a snapshot"):
        (tmp_path / "x").mkdir()
        contract(broken(RudeLiveSource)).test_contract_live_events(tmp_path / "x")


class NoLiveSource(LINES.LinesSource):  # type: ignore[name-defined,misc]
    """Has live() but no live calls as configured: it ends at once (docs/plugins.md)."""

    async def live(self) -> AsyncIterator[LiveEvent]:
        return
        yield  # an async generator that yields nothing


class SilentLiveSource(LINES.LinesSource):  # type: ignore[name-defined,misc]
    """Has live() that never sends anything: not even the first snapshot."""

    async def live(self) -> AsyncIterator[LiveEvent]:
        await asyncio.sleep(3600)
        yield LiveEvent("snapshot", at=1.0)


def test_kit_live_without_live_calls_configured_is_skipped(tmp_path: Path) -> None:
    with pytest.raises(pytest.skip.Exception, match="ended at once without events"):
        contract(broken(NoLiveSource)).test_contract_live_events(tmp_path)


def test_kit_live_that_says_nothing_fails(tmp_path: Path) -> None:
    kit = contract(broken(SilentLiveSource))
    kit.live_timeout = 0.5  # type: ignore[misc]
    with pytest.raises(AssertionError, match="live\\(\\) yielded nothing"):
        kit.test_contract_live_events(tmp_path)

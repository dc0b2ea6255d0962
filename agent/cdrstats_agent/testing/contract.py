"""The contract tests behind `cdrstats_agent.testing` (see its docstring)."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytest

from .. import plugin as api
from ..config import parse_config
from ..errors import ConfigError
from ..plugin import AuthFailure, LiveEvent, Plugin, ReadResult, Source

LIVE_KINDS: tuple[str, ...] = getattr(
    api, "LIVE_KINDS", ("started", "answered", "ended", "snapshot")
)
LIVE_TEXT_KEYS: tuple[str, ...] = getattr(api, "LIVE_TEXT_KEYS", ())
LIVE_TIME_KEYS: tuple[str, ...] = getattr(api, "LIVE_TIME_KEYS", ("start", "answer"))
LIVE_INT_KEYS: tuple[str, ...] = getattr(api, "LIVE_INT_KEYS", ("hangup_cause", "sip_code"))
LIVE_DIRECTIONS: tuple[str, ...] = getattr(
    api, "LIVE_DIRECTIONS", ("inbound", "outbound", "internal", "unknown")
)
LIVE_STATES: tuple[str, ...] = getattr(api, "LIVE_STATES", ("ringing", "answered"))
BLOCK_ACTIONS: tuple[str, ...] = getattr(api, "BLOCK_ACTIONS", ("block_ip", "unblock_ip"))
ACTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""What a verb name looks like (`block_ip`, `reload_dialplan`)."""


class RecordFeed(Protocol):
    """Writes the switch's store the way the switch would (the plugin author provides it)."""

    def options(self) -> dict[str, Any]:
        """The `[[source]]` options (without name and plugin) that read this store."""
        ...

    def append(self, n: int) -> list[str]:
        """Append `n` good records; return their natural keys (`CDR.key`), in order."""
        ...

    def append_bad(self) -> None:
        """Append one record the plugin must reject (reported in `ReadResult.rejected`)."""
        ...


async def read_results(
    source: Source,
    checkpoint: str | None,
    until: Callable[[list[ReadResult]], bool],
    *,
    wait_s: float = 10.0,
) -> list[ReadResult]:
    """Iterate `source.read(checkpoint)` until `until(results)` holds; close the reader.

    Fails (AssertionError) with what was read when `wait_s` seconds pass first, or when the
    reader ends (`read` must run until cancelled).
    """
    results: list[ReadResult] = []
    reader = source.read(checkpoint)

    async def consume() -> None:
        async for result in reader:
            if not isinstance(result, ReadResult):
                raise AssertionError(f"read() yielded {type(result).__name__}, not a ReadResult")
            results.append(result)
            if until(results):
                return
        raise AssertionError(
            f"read() ended after {len(results)} results: it must wait for more data until"
            " cancelled (docs/plugins.md, rule 4)"
        )

    try:
        await asyncio.wait_for(consume(), wait_s)
    except TimeoutError:
        cdrs = sum(len(r.cdrs) for r in results)
        rejected = sum(len(r.rejected) for r in results)
        raise AssertionError(
            f"read() gave {len(results)} results ({cdrs} CDRs, {rejected} rejected) in"
            f" {wait_s:g} s, and the test waited for more"
        ) from None
    finally:
        aclose = getattr(reader, "aclose", None)
        if aclose is not None:
            await aclose()
    return results


def _keys(results: list[ReadResult]) -> list[str]:
    return [cdr.key for r in results for cdr in r.cdrs]


def _value_problems(where: str, data: Any) -> list[str]:
    if not isinstance(data, Mapping):
        return [f"{where} is {type(data).__name__}, not a mapping"]
    problems = []
    known = (*LIVE_TEXT_KEYS, "direction", "state", *LIVE_TIME_KEYS, *LIVE_INT_KEYS)
    for key, value in data.items():
        if key == "call_id":
            continue
        if LIVE_TEXT_KEYS and key not in known:
            problems.append(f"{where} has {key!r}, not a live key ({', '.join(known)})")
        elif key in LIVE_TEXT_KEYS and not isinstance(value, str):
            problems.append(f"{where}[{key!r}] must be a str, got {value!r}")
        elif key in LIVE_TIME_KEYS and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            problems.append(f"{where}[{key!r}] must be epoch seconds, got {value!r}")
        elif key in LIVE_INT_KEYS and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{where}[{key!r}] must be an int, got {value!r}")
        elif key == "direction" and value not in LIVE_DIRECTIONS:
            problems.append(f"{where}['direction'] must be one of {LIVE_DIRECTIONS}, got {value!r}")
        elif key == "state" and value not in LIVE_STATES:
            problems.append(f"{where}['state'] must be one of {LIVE_STATES}, got {value!r}")
    return problems


def auth_failure_problems(item: AuthFailure) -> list[str]:
    """What is wrong with a failed registration (empty when the agent forwards it whole)."""
    from .. import wire

    try:
        return wire.auth_failure_to_wire("contract", item)[1]
    except wire.WireError as exc:
        return [f"{exc} (the agent drops it)"]


def live_event_problems(event: Any) -> list[str]:
    """What is wrong with a live event or failed registration (empty when it has the
    documented shape)."""
    if isinstance(event, AuthFailure):
        return auth_failure_problems(event)
    if not isinstance(event, LiveEvent):
        return [f"live() yielded {type(event).__name__}, not a LiveEvent or AuthFailure"]
    problems = []
    if event.kind not in LIVE_KINDS:
        problems.append(f"kind {event.kind!r} is not one of {LIVE_KINDS}")
    if isinstance(event.at, bool) or not isinstance(event.at, int | float) or event.at <= 0:
        problems.append(f"at must be epoch seconds (> 0), got {event.at!r}")
    if event.kind == "snapshot":
        if not isinstance(event.calls, tuple):
            problems.append(f"snapshot calls must be a tuple, got {type(event.calls).__name__}")
        else:
            for i, call in enumerate(event.calls):
                where = f"snapshot calls[{i}]"
                if (
                    not isinstance(call, Mapping)
                    or not isinstance(call.get("call_id"), str)
                    or (not call.get("call_id"))
                ):
                    problems.append(f"{where} needs a non-empty str 'call_id'")
                problems += _value_problems(where, call)
    else:
        if not isinstance(event.call_id, str) or not event.call_id:
            problems.append(f"a {event.kind!r} event needs a non-empty str call_id")
        problems += _value_problems(f"{event.kind} data", event.data)
        if event.calls:
            problems.append(f"a {event.kind!r} event carries calls (only snapshots do)")
    return problems


def action_problems(source: object) -> list[str]:
    """What is wrong with the actions a source declares (empty when none or all fine)."""
    method = getattr(source, "actions", None)
    if method is None:
        return []
    if not callable(method):
        return ["actions is not a method"]
    declared = method()
    if not isinstance(declared, Mapping):
        return [f"actions() returned {type(declared).__name__}, not a mapping verb -> handler"]
    problems = []
    for verb, handler in declared.items():
        if not isinstance(verb, str) or not ACTION_NAME.match(verb):
            problems.append(f"action name {verb!r} is not lower_snake_case (at most 64)")
        if not inspect.iscoroutinefunction(handler) and not inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 (a callable object's method)
        ):
            problems.append(f"action {verb!r}: its handler must be an async function")
    present = [v for v in BLOCK_ACTIONS if v in declared]
    if present and len(present) != len(BLOCK_ACTIONS):
        missing = [v for v in BLOCK_ACTIONS if v not in declared]
        problems.append(f"declares {', '.join(present)} without {', '.join(missing)}")
    return problems


class SourceContract:
    """Inherit, set `plugin`, implement `feed(workdir)`: pytest runs the contract tests."""

    plugin: ClassVar[Plugin]
    source_name: ClassVar[str] = "contract"
    timeout: ClassVar[float] = 10.0
    """Seconds a test waits for records it wrote."""
    live_timeout: ClassVar[float] = 5.0
    batch: ClassVar[int] = 30
    """Records written by the read and resume tests."""

    def feed(self, workdir: Path) -> RecordFeed:
        raise NotImplementedError("a SourceContract subclass implements feed(workdir)")

    # --- helpers ---------------------------------------------------------------------------

    def _source(self, feed: RecordFeed) -> Source:
        return self.plugin.create_source(self.source_name, feed.options())

    def _run(self, coro: Any) -> Any:
        return asyncio.run(coro)

    async def _read(
        self, source: Source, checkpoint: str | None, until: Callable[[list[ReadResult]], bool]
    ) -> list[ReadResult]:
        try:
            return await read_results(source, checkpoint, until, wait_s=self.timeout)
        finally:
            await source.close()

    # --- the contract ----------------------------------------------------------------------

    def test_contract_options_validated_without_io(self, tmp_path: Path) -> None:
        options = self.feed(tmp_path).options()
        source = self.plugin.create_source(self.source_name, options)
        assert source.name == self.source_name, "the source must keep the name it was given"
        with pytest.raises(ConfigError) as info:
            self.plugin.create_source(self.source_name, {**options, "no_such_option_x": 1})
        assert "no_such_option_x" in str(info.value), "the error must name the unknown option"
        name = self.plugin.name
        config = parse_config(self.plugin.sample_config, plugins={name: self.plugin})
        assert config.sources, "sample_config must hold a [[source]] table"
        assert all(sc.plugin == name for sc in config.sources)

    def test_contract_check_passes(self, tmp_path: Path) -> None:
        feed = self.feed(tmp_path)
        feed.append(1)
        source = self._source(feed)

        async def go() -> None:
            try:
                await source.check()
            finally:
                await source.close()

        self._run(go())

    def test_contract_reads_every_record_once(self, tmp_path: Path) -> None:
        """Records written before and while reading are all read, once each."""
        feed = self.feed(tmp_path)
        written = feed.append(self.batch // 2)
        first = len(written)

        def until(results: list[ReadResult]) -> bool:
            if len(written) == first and len(_keys(results)) >= first:
                written.extend(feed.append(self.batch - first))  # the switch goes on writing
                return False
            return len(_keys(results)) >= len(written) > first

        results = self._run(self._read(self._source(feed), None, until))
        keys = _keys(results)
        assert sorted(keys) == sorted(written), "the CDRs read are not the records written"
        assert len(set(keys)) == len(keys), "a record was read twice"
        for result in results:
            assert isinstance(result.checkpoint, str) and result.checkpoint, (
                "every result carries the checkpoint after it (a non-empty str)"
            )
            for cdr in result.cdrs:
                assert cdr.start.utcoffset() is not None

    def test_contract_resumes_after_restart(self, tmp_path: Path) -> None:
        """A new source after every result, from the last committed checkpoint, with records
        written while stopped: every record exactly once."""
        feed = self.feed(tmp_path)
        expected: list[str] = []
        seen: list[str] = []
        checkpoint: str | None = None
        restarts = 0
        for _ in range(4):
            expected += feed.append(max(1, self.batch // 4))  # written while stopped
            while len(seen) < len(expected):
                restarts += 1
                assert restarts <= self.batch + 50, f"no progress: {len(seen)} of {len(expected)}"
                results = self._run(
                    self._read(self._source(feed), checkpoint, lambda rs: bool(_keys(rs)))
                )
                for result in results:  # all committed: the agent commits each result
                    seen += _keys([result])
                    checkpoint = result.checkpoint
                assert len(set(seen)) == len(seen), "a record was read again after a restart"
        assert sorted(seen) == sorted(expected), "records lost or invented across restarts"
        more = feed.append(3)
        results = self._run(
            self._read(self._source(feed), checkpoint, lambda rs: len(_keys(rs)) >= 3)
        )
        assert _keys(results) == more, "after the last checkpoint come exactly the new records"

    def test_contract_bad_record_reported(self, tmp_path: Path) -> None:
        feed = self.feed(tmp_path)
        good = feed.append(2)
        feed.append_bad()
        good += feed.append(2)

        def done(rs: list[ReadResult]) -> bool:
            return len(_keys(rs)) >= len(good) and any(r.rejected for r in rs)

        results = self._run(self._read(self._source(feed), None, done))
        assert sorted(_keys(results)) == sorted(good), "a bad record must not stop the others"
        rejected = [item for r in results for item in r.rejected]
        assert len(rejected) == 1, f"one bad record, {len(rejected)} reported: {rejected}"
        item = rejected[0]
        assert isinstance(item, api.Rejected)
        assert item.where.strip() and item.reason.strip(), "where and reason must be filled"
        after = feed.append(1)
        resumed = self._run(
            self._read(self._source(feed), results[-1].checkpoint, lambda rs: bool(_keys(rs)))
        )
        assert _keys(resumed) == after
        assert not [i for r in resumed for i in r.rejected], "the bad record was reported again"

    def test_contract_live_events(self, tmp_path: Path) -> None:
        """With a feed that has `live_options()` (the options of a source whose switch reports
        calls, e.g. with a protocol peer started by the feed), else `options()`."""
        feed = self.feed(tmp_path)
        make_options = getattr(feed, "live_options", feed.options)
        source = self.plugin.create_source(self.source_name, make_options())
        has_live = getattr(api, "supports_live", lambda s: callable(getattr(s, "live", None)))
        if not has_live(source):
            pytest.skip(f"plugin {self.plugin.name!r}: its sources have no live()")
        events: list[Any] = []
        ended = False

        async def go() -> None:
            nonlocal ended
            live = source.live()  # type: ignore[attr-defined]
            try:
                async with asyncio.timeout(self.live_timeout):
                    async for event in live:
                        events.append(event)
                        if len(events) >= 3:
                            break
                    else:
                        ended = True
            except TimeoutError:
                pass
            finally:
                if hasattr(live, "aclose"):
                    await live.aclose()
                await source.close()

        self._run(go())
        if ended and not events:
            pytest.skip(
                f"plugin {self.plugin.name!r}: live() ended at once without events, i.e. no live"
                " calls as configured; give the feed a live_options() to test them"
            )
        assert events, f"live() yielded nothing in {self.live_timeout:g} s (a snapshot comes first)"
        calls = [e for e in events if not isinstance(e, AuthFailure)]  # these need no snapshot
        assert not calls or getattr(calls[0], "kind", None) == "snapshot", (
            "the first live event is a snapshot"
        )
        for event in events:
            assert not live_event_problems(event), live_event_problems(event)

    def test_contract_action_declarations(self, tmp_path: Path) -> None:
        source = self._source(self.feed(tmp_path))
        problems = action_problems(source)
        assert not problems, "; ".join(problems)

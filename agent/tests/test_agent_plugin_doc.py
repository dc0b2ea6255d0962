"""The minimal plugin of docs/plugins.md works: validation, check, read, resume, and the runner."""

from __future__ import annotations

import asyncio
import re
import types
from pathlib import Path
from typing import Any

import pytest
from agent_testkit import CollectorPeer, agent_config, identity_for, wait_until
from cdrstats_agent.config import parse_config
from cdrstats_agent.errors import ConfigError, SourceError
from cdrstats_agent.runner import Agent

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def load_example() -> types.ModuleType:
    match = re.search(r"<!-- plugin-example -->\n```python\n(.*?)\n```", DOC.read_text(), re.S)
    assert match, "docs/plugins.md lost its plugin example"
    code = match.group(1)
    assert len(code.splitlines()) < 100
    module = types.ModuleType("cdrstats_lines")
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return module


async def collect(source: Any, checkpoint: str | None, results: int) -> list[Any]:
    out = []
    reader = source.read(checkpoint)
    try:
        async for result in reader:
            out.append(result)
            if len(out) == results:
                break
    finally:
        await reader.aclose()
    return out


async def test_minimal_plugin_reads_and_resumes(tmp_path: Path) -> None:
    plugin = load_example().LinesPlugin()
    path = tmp_path / "cdr.txt"
    path.write_text("a,1764064800,1001,2002,30\nbroken line\nb,1764064900,1001,2003,5\nc,17")
    source = plugin.create_source("pbx1", {"path": str(path), "poll_s": 0.01})
    await source.check()
    (first,) = await collect(source, None, 1)
    assert [c.key for c in first.cdrs] == ["a", "b"]
    assert len(first.rejected) == 1 and first.rejected[0].where == f"{path}:26"
    with path.open("a") as f:
        f.write("64065000,1001,2004,7\n")
    (second,) = await collect(source, first.checkpoint, 1)
    assert [c.key for c in second.cdrs] == ["c"]
    assert second.cdrs[0].duration == 7


async def test_minimal_plugin_errors(tmp_path: Path) -> None:
    plugin = load_example().LinesPlugin()
    with pytest.raises(ConfigError, match="path: is required"):
        plugin.create_source("x", {})
    with pytest.raises(ConfigError, match="colour: is not a known option"):
        plugin.create_source("x", {"path": "/p", "colour": 1})
    with pytest.raises(SourceError, match="No such file"):
        await plugin.create_source("x", {"path": str(tmp_path / "none")}).check()
    config = parse_config(plugin.sample_config, plugins={"lines": plugin})
    assert config.sources[0].name == "pbx1"


async def test_minimal_plugin_through_the_agent(tmp_path: Path, peer: CollectorPeer) -> None:
    plugin = load_example().LinesPlugin()
    path = tmp_path / "cdr.txt"
    path.write_text("".join(f"k{i},{1764064800 + i},1001,2002,{i}\n" for i in range(300)))
    source = plugin.create_source("pbx1", {"path": str(path), "poll_s": 0.01})
    identity, key = identity_for(peer)
    agent = Agent(agent_config(tmp_path / "state", [peer.url]), sources=[source],
                  identity=identity, key=key)  # fmt: skip
    task = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: len(peer.state.cdrs) == 300, what="300 CDRs")
        with path.open("a") as f:
            f.write("late,1764070000,1001,2002,9\n")
        await wait_until(lambda: "late" in peer.state.cdrs, what="the appended line")
    finally:
        agent.stop()
        await task
    assert set(peer.state.cdrs.values()) == {1}

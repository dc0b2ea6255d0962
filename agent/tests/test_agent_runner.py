"""The runner: in-test sources through spool and uplink to the collector peer; restarts from
the last checkpoint, backpressure, clean stop, one agent per state directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_testkit import (
    CollectorPeer,
    ListSource,
    agent_config,
    dead_url,
    identity_for,
    wait_until,
)
from cdrstats_agent.runner import Agent, AgentError, run_agent
from cdrstats_agent.spool import SPOOL_FILE, SpoolStore


@contextlib.asynccontextmanager
async def running_agent(agent: Agent) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.started.wait(), 10)
        yield task
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)


async def test_sources_reach_the_collector_exactly_once(
    tmp_path: Path, peer: CollectorPeer
) -> None:
    identity, key = identity_for(peer)
    a = ListSource("pbx-a", 2500, chunk=120, key_prefix="a")
    b = ListSource("pbx-b", 1300, chunk=70, key_prefix="b", rejects=frozenset({5, 6}))
    agent = Agent(agent_config(tmp_path, [peer.url]), sources=[a, b], identity=identity, key=key)
    async with running_agent(agent):
        await wait_until(lambda: len(peer.state.cdrs) == 2500 + 1298, what="all CDRs")
        await wait_until(lambda: agent.spool is not None and agent.spool.batches == 0)
    assert set(peer.state.cdrs.values()) == {1}
    assert a.closed and b.closed
    store = SpoolStore(tmp_path / SPOOL_FILE)
    states = {s.name: s for s in store.sources()}
    assert (states["pbx-a"].checkpoint, states["pbx-a"].read) == ("2500", 2500)
    assert (states["pbx-b"].read, states["pbx-b"].rejected) == (1298, 2)
    assert states["pbx-b"].last_rejected[0][1:] == ("list:6", "bad row")


async def test_failing_source_restarts_from_its_checkpoint(
    tmp_path: Path, peer: CollectorPeer
) -> None:
    identity, key = identity_for(peer)
    source = ListSource("pbx", 1000, chunk=100, fail_after=4)
    config = agent_config(tmp_path, [peer.url], backoff_max_s=0.05)
    agent = Agent(config, sources=[source], identity=identity, key=key)
    async with running_agent(agent):
        await wait_until(lambda: len(peer.state.cdrs) == 1000, what="all CDRs")
    assert source.starts == [None, "400"]
    assert set(peer.state.cdrs.values()) == {1}


async def test_restart_of_the_agent_resumes_without_loss_or_double(
    tmp_path: Path, peer: CollectorPeer
) -> None:
    identity, key = identity_for(peer)
    config = agent_config(tmp_path, [peer.url])
    first = ListSource("pbx", 3000, chunk=50, pause=0.002)
    agent = Agent(config, sources=[first], identity=identity, key=key)
    async with running_agent(agent):
        await wait_until(lambda: first.reads >= 20, what="some reading")
    second = ListSource("pbx", 3000, chunk=50)
    agent = Agent(config, sources=[second], identity=identity, key=key)
    async with running_agent(agent):
        await wait_until(lambda: len(peer.state.cdrs) == 3000, what="all CDRs")
    assert second.starts[0] not in (None, "0", "3000")
    assert set(peer.state.cdrs.values()) == {1}


async def test_backpressure_pauses_sources_when_the_spool_is_full(tmp_path: Path) -> None:
    peer = CollectorPeer()  # down at first
    identity, key = identity_for(peer)
    config = agent_config(tmp_path, [peer.url], spool_max_mb=1, batch_max_cdrs=2000)
    source = ListSource("pbx", 60_000, chunk=500)
    agent = Agent(config, sources=[source], identity=identity, key=key)
    async with running_agent(agent):
        spool = agent.spool
        assert spool is not None
        await wait_until(lambda: spool.full, what="a full spool")
        await asyncio.sleep(0.3)
        reads = source.reads
        await asyncio.sleep(0.3)
        assert source.reads == reads  # paused: the switch's own store is the buffer
        assert spool.bytes_used < 1.1 * 1024 * 1024
        assert source.reads * 500 < 60_000
        await peer.start()
        try:
            await wait_until(lambda: len(peer.state.cdrs) == 60_000, 30, "all CDRs")
        finally:
            await peer.stop()
    assert set(peer.state.cdrs.values()) == {1}


async def test_one_agent_per_state_dir(tmp_path: Path, peer: CollectorPeer) -> None:
    identity, key = identity_for(peer)
    config = agent_config(tmp_path, [peer.url])
    agent = Agent(config, identity=identity, key=key)
    async with running_agent(agent):
        with pytest.raises(AgentError, match="another cdrstats-agent is running"):
            await Agent(config, identity=identity, key=key).run()


async def test_not_enrolled_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="not enrolled"):
        await run_agent(agent_config(tmp_path, [dead_url()]))


def test_duplicate_source_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="two sources are named 'x'"):
        Agent(agent_config(tmp_path, []), sources=[ListSource("x", 1), ListSource("x", 1)])


RUNNER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from agent_testkit import ListSource, agent_config
    from cdrstats_agent.identity import load_agent
    from cdrstats_agent.logs import setup
    from cdrstats_agent.runner import run_agent

    setup("info")
    state = Path({state!r})
    identity, key = load_agent(state)
    source = ListSource("pbx", 10**9, chunk=200)
    config = agent_config(state, [{url!r}])
    asyncio.run(run_agent(config, sources=[source], handle_signals=True))
    print("stopped cleanly", flush=True)
    """
)


async def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    from cdrstats_agent.identity import save_identity, write_key

    peer = CollectorPeer()
    identity, key = identity_for(peer, url=dead_url())
    save_identity(tmp_path, identity)
    write_key(tmp_path, key)
    script = RUNNER.format(tests=str(Path(__file__).parent), state=str(tmp_path), url=dead_url())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while b"source_reading" not in await asyncio.wait_for(proc.stderr.readline(), 10):
        pass
    await asyncio.sleep(0.5)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err
    assert out.strip() == b"stopped cleanly"
    assert b"agent_stopped" in err
    store = SpoolStore(tmp_path / SPOOL_FILE)
    checkpoint = int(store.checkpoint("pbx") or 0)
    assert checkpoint > 0 and store.stats().pending_cdrs == checkpoint

"""Live calls end to end: a real agent process whose plugin (registered through an entry point,
as any third-party plugin) emits live events → real collector process → live_call rows in
PostgreSQL that appear, change and disappear.

The test plugin `livetest` follows a file of JSON lines written by the test: each line is a
live event (or `{"crash": true}`, which makes `live()` raise).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cdrstats_collector import live, maintenance

from tests.fix_agent import wait_for
from tests.fix_db import CollectorServer

BIN = Path(sys.executable).parent
T = 1764064800.0

PLUGIN = '''
"""A test-only plugin: live events read from a file of JSON lines (no CDRs)."""

import asyncio
import json
from pathlib import Path

from cdrstats_agent.options import Options
from cdrstats_agent.plugin import LiveEvent


class LiveTestSource:
    def __init__(self, name, path):
        self.name, self.path, self.offset = name, path, 0

    async def check(self):
        return None

    async def read(self, checkpoint):
        await asyncio.Event().wait()
        yield  # never reached: this source has no CDRs

    async def live(self):
        while True:
            data = self.path.read_bytes() if self.path.exists() else b""
            end = data.rfind(b"\\n") + 1
            for line in data[self.offset:end].splitlines():
                self.offset += len(line) + 1
                doc = json.loads(line)
                if doc.get("crash"):
                    raise RuntimeError("livetest: crash requested by the test")
                yield LiveEvent(
                    doc["kind"],
                    doc.get("call_id", ""),
                    doc["at"],
                    doc.get("data", {}),
                    tuple(doc.get("calls", ())),
                )
            await asyncio.sleep(0.05)

    async def close(self):
        return None


class LiveTestPlugin:
    name = "livetest"
    description = "live events from a file of JSON lines (tests only)"
    sample_config = '[[source]]\\nname = "t"\\nplugin = "livetest"\\npath = "/tmp/events"\\n'

    def create_source(self, name, options):
        opts = Options(options)
        path = Path(opts.text("path"))
        opts.finish()
        return LiveTestSource(name, path)
'''


def install_plugin(where: Path) -> Path:
    """The plugin module and its dist-info (entry point) in `where`, to put on PYTHONPATH."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "livetest_plugin.py").write_text(PLUGIN)
    info = where / "cdrstats_livetest-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cdrstats-livetest\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[cdrstats.plugins]\nlivetest = livetest_plugin:LiveTestPlugin\n"
    )
    return where


class LiveAgent:
    """`cdrstats-agent run` with one livetest source, as a subprocess."""

    def __init__(self, workdir: Path, collector: CollectorServer) -> None:
        self.events = workdir / "events.jsonl"
        self.config = workdir / "agent.toml"
        self.log = workdir / "agent.log"
        self.env = {"PYTHONPATH": str(install_plugin(workdir / "site")), "PATH": str(BIN)}
        self.config.write_text(
            f'[agent]\nstate_dir = "{workdir / "state"}"\nspool_sync = "normal"\n'
            f'log_level = "debug"\n\n'
            f'[collector]\nurls = ["{collector.url}"]\nbackoff_max_s = 0.5\n\n'
            f"[live]\nflush_interval_s = 0.05\n\n"
            f'[[source]]\nname = "pbx-live"\nplugin = "livetest"\npath = "{self.events}"\n'
        )
        token = collector.create_token("acme", "pbx-live")
        self.cli("enroll", collector.url, token)
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, command: str, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "cdrstats-agent"), command, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"{command} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "cdrstats-agent"), "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def emit(self, **event: Any) -> None:
        with self.events.open("a") as f:
            f.write(json.dumps(event) + "\n")

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


@pytest.fixture
def collector(database_url: str, tmp_path: Path) -> Iterator[CollectorServer]:
    server = CollectorServer(database_url, tmp_path / "collector")
    with server.config_path.open("a") as f:
        f.write("[live]\nstale_s = 3\n")  # the agent's silence is noticed quickly
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def agent(collector: CollectorServer, tmp_path: Path) -> Iterator[LiveAgent]:
    made = LiveAgent(tmp_path / "agent", collector)
    try:
        yield made
    finally:
        made.stop()


def rows(database_url: str) -> dict[str, tuple[Any, ...]]:
    """call_id -> (switch name, source, state, caller, callee) of every live_call row."""
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT c.call_id, s.name, c.source, c.state, c.caller, c.callee FROM live_call c"
            " JOIN switch s ON s.id = c.switch_id"
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in found}


def test_live_calls_appear_change_and_disappear(
    collector: CollectorServer, agent: LiveAgent
) -> None:
    db = collector.database_url
    agent.start()

    def until(expected: dict[str, tuple[Any, ...]], what: str) -> None:
        wait_for(
            lambda: rows(db) == expected,
            timeout=30,
            what=what,
            diagnostics=lambda: f"rows: {rows(db)}\nagent log:\n{agent.log_tail()}",
        )

    def call(call_id: str, caller: str, state: str = "answered") -> dict[str, Any]:
        return {"call_id": call_id, "caller": caller, "callee": "2000", "state": state}

    agent.emit(kind="snapshot", at=T, calls=[call("x", "100"), call("y", "101", "ringing")])
    agent.emit(kind="started", call_id="a", at=T + 1, data={"caller": "102", "callee": "33"})
    until(
        {
            "x": ("pbx-live", "pbx-live", "answered", "100", "2000"),
            "y": ("pbx-live", "pbx-live", "ringing", "101", "2000"),
            "a": ("pbx-live", "pbx-live", "ringing", "102", "33"),
        },
        "the snapshot and a started call",
    )
    agent.emit(kind="answered", call_id="a", at=T + 3, data={})
    agent.emit(kind="ended", call_id="x", at=T + 4, data={"hangup_cause": 16})
    until(
        {
            "y": ("pbx-live", "pbx-live", "ringing", "101", "2000"),
            "a": ("pbx-live", "pbx-live", "answered", "102", "33"),
        },
        "an answered call and an ended one gone",
    )
    # live() crashes: the agent restarts it and forwards nothing until its next snapshot.
    agent.emit(crash=True)
    wait_for(
        lambda: "event=live_restart" in agent.log.read_text(),
        timeout=30,
        what="live() restarted",
        diagnostics=agent.log_tail,
    )
    agent.emit(kind="started", call_id="lost", at=T + 5, data={"caller": "9"})
    agent.emit(kind="snapshot", at=T + 6, calls=[call("a", "102"), call("c", "103")])
    until(
        {
            "a": ("pbx-live", "pbx-live", "answered", "102", "2000"),
            "c": ("pbx-live", "pbx-live", "answered", "103", "2000"),
        },
        "the state resynchronised by the snapshot after the crash",
    )
    wait_for(
        lambda: "live: 2 calls in progress" in agent.cli("status"),
        timeout=30,
        what="`cdrstats-agent status` showing the live calls",
        diagnostics=lambda: agent.cli("status"),
    )
    # The agent goes away: its calls stop counting after stale_s, and maintenance prunes them.
    agent.stop()
    with psycopg.connect(db) as conn:
        tenant = conn.execute("SELECT id FROM tenant WHERE name = 'acme'").fetchone()
    assert tenant is not None

    async def counts() -> dict[int, int]:
        async with await psycopg.AsyncConnection.connect(db) as conn:
            return await live.live_counts(conn, tenant[0])

    assert list(asyncio.run(counts()).values()) in ([2], [])
    wait_for(lambda: asyncio.run(counts()) == {}, timeout=30, what="the live state to expire")

    async def maintain() -> maintenance.Report:
        async with await psycopg.AsyncConnection.connect(db) as conn:
            return await maintenance.run(conn)

    assert asyncio.run(maintain()).live_sources_pruned == 1
    assert rows(db) == {}
    assert "event=live_failed" in agent.log.read_text()

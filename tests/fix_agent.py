"""Real agents as subprocesses, synthetic Asterisk traffic on disk, and exactly-once checks.

Loaded by the root conftest.py. Used by the fault tests (tests/test_faults.py):

CallFeed        synthetic calls (cdrstats_agent.synthetic) appended to `<dir>/Master.csv` as
                Asterisk cdr_csv writes them (21 columns); remembers every natural key written.
AgentProcess    `cdrstats-agent` enrolled and run as a subprocess with a csv `[[source]]` over
                that directory: `.enroll(url, token)`, `.start()`, `.kill()` (SIGKILL),
                `.stop()` (SIGTERM), `.spool()` (the spool read read-only), `.status()` (the
                `cdrstats-agent status` command), `.log_text()`, `.log_tail()`.
stored()        what PostgreSQL holds for one agent: rows, distinct keys, and the sums of the
                `accepted` / `duplicates` of its batch acks (`ingest_batch.ack`).
wait_for()      poll a condition with a deadline; on timeout fail with a diagnostic text.

GateProxy       a TCP proxy between agent and collector that can hold the next request or the
                next answer, so that a test kills the agent while a batch is in flight.

Fixtures: `agent_factory(workdir, cdr_dir, collector_url, **settings)` builds AgentProcess
objects and SIGKILLs whatever still runs at teardown; `gate_proxy_factory(url)` starts a
GateProxy to a collector URL.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import psycopg
import pytest
from cdrstats_agent.synthetic import (
    DEMO_SWITCHES,
    CallGenerator,
    SwitchProfile,
    asterisk_csv_line,
    asterisk_csv_row,
)

from tests.fix_proxy import TcpProxy

BIN = Path(sys.executable).parent
AGENT = str(BIN / "cdrstats-agent")
PARIS = ZoneInfo("Europe/Paris")
FIRST_CALL_END = datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
"""Calls end from here on, two seconds apart (a weekday with no DST change in Paris)."""

# Asterisk cdr_csv 21-column layout: the asterisk preset's key is uniqueid:sequence.
UNIQUEID, SEQUENCE = 16, 20


def asterisk_key(row: list[str]) -> str:
    """The natural key the csv plugin's asterisk preset gives a 21-column row."""
    return f"{row[UNIQUEID]}:{row[SEQUENCE]}"


class CallFeed:
    """Synthetic calls of one switch, written to `directory/Master.csv` as Asterisk does."""

    def __init__(
        self,
        directory: Path,
        *,
        switch: SwitchProfile = DEMO_SWITCHES[0],
        seed: int = 1,
        tz: ZoneInfo = PARIS,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.path = directory / "Master.csv"
        self.switch = switch
        self.tz = tz
        self._generator = CallGenerator(switch, seed)
        self._end = FIRST_CALL_END
        self.keys: set[str] = set()
        """Natural keys of every call made so far (written or not)."""
        self.lines: list[str] = []
        """Every line made so far, in order."""

    def make(self, n: int) -> list[str]:
        """`n` new calls as Master.csv lines (not written anywhere); their keys are kept."""
        out = []
        for _ in range(n):
            self._end += timedelta(seconds=2)
            row = asterisk_csv_row(self._generator.call(self._end), self.tz, self.switch)
            key = asterisk_key(row)
            assert key not in self.keys, f"generator repeated key {key}"
            self.keys.add(key)
            out.append(asterisk_csv_line(row))
        self.lines.extend(out)
        return out

    def append(self, n: int) -> int:
        """Append `n` new calls to Master.csv (one write, as a switch flushing its buffer)."""
        write_lines(self.path, self.make(n))
        return n

    @property
    def written(self) -> int:
        return len(self.lines)


def write_lines(path: Path, lines: list[str]) -> None:
    with path.open("a", encoding="utf-8", newline="") as f:
        f.write("".join(lines))


# --- the agent as a real process ---------------------------------------------------------------


@dataclass(frozen=True)
class SpoolView:
    """The spool as seen from outside (read-only), summed over sources."""

    read: int
    """CDRs the sources committed to the spool since it was created."""
    rejected: int
    unbatched: int
    batches: int
    batch_cdrs: int
    quarantined: int

    @property
    def pending(self) -> int:
        return self.unbatched + self.batch_cdrs


class AgentProcess:
    """`cdrstats-agent run` as a subprocess, with one csv source over `cdr_dir`.

    `sources` (TOML text of one or more `[[source]]` tables) replaces that csv source.
    """

    def __init__(
        self,
        workdir: Path,
        cdr_dir: Path,
        collector_url: str,
        *,
        batch_max_cdrs: int = 200,
        batch_max_age_s: float = 0.2,
        chunk_cdrs: int = 100,
        interval: float = 0.05,
        backoff_max_s: float = 1.0,
        timeout_s: float = 10.0,
        spool_sync: str = "normal",
        log_level: str = "debug",
        sources: str | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.config_path = workdir / "agent.toml"
        self.log_path = workdir / "agent.log"
        self.config_path.write_text(
            f"""[agent]
state_dir = "{self.state_dir}"
log_level = "{log_level}"
spool_sync = "{spool_sync}"

[collector]
urls = ["{collector_url}"]
batch_max_cdrs = {batch_max_cdrs}
batch_max_age_s = {batch_max_age_s}
timeout_s = {timeout_s}
backoff_max_s = {backoff_max_s}

"""
            + (sources if sources is not None else _csv_source(cdr_dir, interval, chunk_cdrs))
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def _cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AGENT, args[0], "--config", str(self.config_path), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def enroll(self, url: str, token: str) -> None:
        done = self._cli("enroll", url, token)
        if done.returncode != 0:
            raise AssertionError(f"enroll failed ({done.returncode}): {done.stderr}{done.stdout}")

    @property
    def agent_id(self) -> str:
        doc = json.loads((self.state_dir / "identity.json").read_text())
        return str(doc["agent_id"])

    def start(self) -> None:
        assert not self.running, "the agent is already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- test: start #{self.starts} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [AGENT, "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind in the agent."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.kills += 1
        self.process.wait(30)
        self.process = None
        with self.log_path.open("ab") as log:
            log.write(b"--- test: SIGKILL ---\n")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a clean stop), SIGKILL if it takes longer than `timeout`."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self.process = None

    def spool(self) -> SpoolView | None:
        """The spool read through a read-only SQLite connection (None before the first run)."""
        path = self.state_dir / "spool.sqlite"
        if not path.exists():
            return None
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        except sqlite3.Error:
            return None
        try:
            db.execute("BEGIN")  # one snapshot for all the counts
            read, rejected = db.execute(
                "SELECT coalesce(sum(read_count), 0), coalesce(sum(rejected_count), 0) FROM source"
            ).fetchone()
            (unbatched,) = db.execute("SELECT coalesce(sum(cdrs), 0) FROM chunk").fetchone()
            batches, batch_cdrs = db.execute(
                "SELECT count(*), coalesce(sum(cdrs), 0) FROM batch"
            ).fetchone()
            (quarantined,) = db.execute("SELECT count(*) FROM quarantine").fetchone()
        except sqlite3.Error:
            return None  # not created yet by the agent
        finally:
            db.close()
        return SpoolView(read, rejected, unbatched, batches, batch_cdrs, quarantined)

    def status(self) -> str:
        """The output of `cdrstats-agent status` (stdout)."""
        done = self._cli("status", timeout=60)
        return done.stdout + done.stderr

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def events(self, event: str) -> list[str]:
        """Log lines of one event (`event=NAME`)."""
        needle = f" event={event} "
        return [line for line in self.log_text().splitlines() if needle in line + " "]


def _csv_source(cdr_dir: Path, interval: float, chunk_cdrs: int) -> str:
    return f"""[[source]]
name = "master-csv"
plugin = "csv"
preset = "asterisk"
path = "{cdr_dir}"
timezone = "Europe/Paris"
country_code = "33"
interval = {interval}
chunk_cdrs = {chunk_cdrs}
"""


class AgentFactory(Protocol):
    def __call__(
        self, workdir: Path, cdr_dir: Path, collector_url: str, **settings: Any
    ) -> AgentProcess: ...


@pytest.fixture
def agent_factory() -> Iterator[AgentFactory]:
    made: list[AgentProcess] = []

    def make(workdir: Path, cdr_dir: Path, collector_url: str, **settings: Any) -> AgentProcess:
        agent = AgentProcess(workdir, cdr_dir, collector_url, **settings)
        made.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in made:
            with contextlib.suppress(Exception):
                agent.kill()


# --- what PostgreSQL holds -------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    rows: int
    """`cdr` rows of the agent."""
    distinct_keys: int
    batches: int
    """`ingest_batch` records of the agent (one per committed batch)."""
    accepted: int
    """Sum of `accepted` over the agent's batch acks."""
    duplicates: int
    """Sum of `duplicates` over the agent's batch acks."""


def stored(database_url: str, agent_id: str) -> Stored:
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT key) FROM cdr WHERE agent_id = %s", (agent_id,)
        ).fetchone() or (0, 0)
        batches, accepted, duplicates = conn.execute(
            "SELECT count(*), coalesce(sum((ack->>'accepted')::bigint), 0),"
            " coalesce(sum((ack->>'duplicates')::bigint), 0)"
            " FROM ingest_batch WHERE agent_id = %s",
            (agent_id,),
        ).fetchone() or (0, 0, 0)
    return Stored(int(rows), int(distinct), int(batches), int(accepted), int(duplicates))


def stored_keys(database_url: str, agent_id: str) -> list[str]:
    """Every `cdr.key` of the agent, one per row (a key stored twice appears twice)."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        return [r[0] for r in conn.execute("SELECT key FROM cdr WHERE agent_id = %s", (agent_id,))]


def total_cdr_rows(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SELECT count(*) FROM cdr").fetchone()
    return int(row[0]) if row else 0


def key_difference(found: list[str], expected: set[str]) -> str:
    """A short description of how the stored keys differ from the expected ones."""
    seen: dict[str, int] = {}
    for key in found:
        seen[key] = seen.get(key, 0) + 1
    missing = sorted(expected - seen.keys())
    extra = sorted(seen.keys() - expected)
    doubled = sorted(k for k, n in seen.items() if n > 1)
    return (
        f"{len(found)} rows, {len(seen)} distinct keys, {len(expected)} expected;"
        f" missing {len(missing)} {missing[:5]}, unexpected {len(extra)} {extra[:5]},"
        f" doubled {len(doubled)} {doubled[:5]}"
    )


# --- waiting ---------------------------------------------------------------------------------


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    diagnostics: Callable[[], str] = lambda: "",
    every: float = 0.1,
) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds with `diagnostics()`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}\n{diagnostics()}"
            )
        time.sleep(every)


# --- a network path that can hold a request or an answer in flight -------------------------


class GateProxy(TcpProxy):
    """A TCP proxy (agent → collector) that can hold the next request or the next answer.

        proxy.hold("response")            # the next answer stops in the proxy
        proxy.wait_held("response", 30)   # the collector has answered (committed): in flight
        agent.kill(); proxy.release()     # the ack is lost with the agent

    `hold("request")` stops the next request before the collector sees it instead.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(target)
        self._gate = threading.Condition()
        self._holding = {"request": False, "response": False}
        self._held = {"request": 0, "response": 0}
        self.held_total = {"request": 0, "response": 0}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self, direction: str) -> None:
        with self._gate:
            self._holding[direction] = True

    def wait_held(self, direction: str, timeout: float) -> bool:
        with self._gate:
            return self._gate.wait_for(lambda: self._held[direction] > 0, timeout)

    def release(self) -> None:
        with self._gate:
            self._holding = {"request": False, "response": False}
            self._gate.notify_all()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            direction = "request" if src.getsockname()[1] == self.port else "response"
            while data := src.recv(65536):
                with self._gate:
                    if self._holding[direction]:
                        self._held[direction] += 1
                        self.held_total[direction] += 1
                        self._gate.notify_all()
                        self._gate.wait_for(lambda: not self._holding[direction])
                        self._held[direction] -= 1
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._conns.difference_update((src, dst))


@pytest.fixture
def gate_proxy_factory() -> Iterator[Callable[[str], GateProxy]]:
    """`make(url)`: a started GateProxy to the host:port of `url`; stopped at teardown."""
    made: list[GateProxy] = []

    def make(url: str) -> GateProxy:
        parts = urlsplit(url)
        proxy = GateProxy((parts.hostname or "127.0.0.1", parts.port or 80))
        proxy.start()
        made.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in made:
            proxy.release()
            proxy.stop()

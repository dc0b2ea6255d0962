"""Nothing lost, nothing doubled — under faults, with real processes (DESIGN.md, "Promises").

Every test writes synthetic calls as Asterisk `Master.csv` lines (21 columns) into a directory,
runs the real agent (`cdrstats-agent enroll`, then `cdrstats-agent run`) with a csv source over
it, and the real collector (`cdrstats serve`) in front of PostgreSQL, breaks something while
the calls flow, and then counts:

* the `cdr` table holds exactly the natural keys of the calls written (uniqueid:sequence, as
  the asterisk preset builds them), each once (`count(*) == count(DISTINCT key)`);
* the `accepted` of the agent's batch acks (`ingest_batch.ack`) sum to the number of calls and
  the `duplicates` to 0 (or to the known number of repeated rows): the primary key alone would
  hide a CDR sent twice, the acks do not;
* the spool's read counter equals the number of lines written: no line was read twice into the
  spool and none skipped, across every SIGKILL.

Waits are bounded polls that fail with the agent's and the collector's log tails; no sleep is
an assertion and nothing asserts on timing.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest
from cdrstats_agent import wire
from cdrstats_agent.synthetic import DEMO_SWITCHES, CallGenerator
from nacl.signing import SigningKey
from psycopg import conninfo

from tests.fix_agent import (
    FIRST_CALL_END,
    AgentFactory,
    AgentProcess,
    CallFeed,
    GateProxy,
    key_difference,
    stored,
    stored_keys,
    total_cdr_rows,
    wait_for,
    write_lines,
)
from tests.fix_db import CollectorServer, with_dbname
from tests.fix_proxy import PgProxy

SETTLE_S = 60.0
"""Longest wait for the agent to ship everything after a fault has been repaired."""
STEP_S = 30.0
"""Longest wait for one step of a scenario (the agent reading, retrying, ...)."""


# --- helpers ---------------------------------------------------------------------------------


def diagnostics(
    agent: AgentProcess, collector: CollectorServer, database_url: str
) -> Callable[[], str]:
    def text() -> str:
        try:
            db = repr(stored(database_url, agent.agent_id))
        except (psycopg.Error, OSError) as exc:
            db = f"unavailable: {exc}"
        return (
            f"agent {'running' if agent.running else 'NOT running'}, spool {agent.spool()}\n"
            f"PostgreSQL: {db}\n"
            f"--- agent log (tail) ---\n{agent.log_tail()}\n"
            f"--- collector log (tail) ---\n{collector.log_tail()}"
        )

    return text


def read_so_far(agent: AgentProcess) -> int:
    view = agent.spool()
    return 0 if view is None else view.read


def reading_past(agent: AgentProcess, count: int) -> Callable[[], bool]:
    """A condition: the agent's sources have committed more than `count` CDRs to the spool."""
    return lambda: read_so_far(agent) > count


def answered_503(agent: AgentProcess, times: int) -> Callable[[], bool]:
    """A condition: the agent's log shows `times` deliveries answered 503 (kept and retried)."""

    def met() -> bool:
        failures = agent.events("collector_down") + agent.events("collector_retry")
        return sum("HTTP 503" in line for line in failures) >= times

    return met


def settle(
    agent: AgentProcess,
    database_url: str,
    expected_read: int,
    diag: Callable[[], str],
    timeout: float = SETTLE_S,
) -> None:
    """Wait until the agent has read `expected_read` CDRs, and shipped and got acks for all."""
    agent_id = agent.agent_id

    def done() -> bool:
        if not agent.running:
            raise AssertionError(f"the agent exited\n{diag()}")
        view = agent.spool()
        if view is None or view.read < expected_read or view.pending:
            return False
        s = stored(database_url, agent_id)
        return s.accepted + s.duplicates >= view.read

    wait_for(
        done,
        timeout=timeout,
        what=f"{expected_read} CDRs read, delivered and acknowledged",
        diagnostics=diag,
        every=0.2,
    )


def assert_exactly_once(
    agent: AgentProcess,
    database_url: str,
    expected_keys: set[str],
    *,
    read: int,
    duplicates: int = 0,
) -> None:
    """PostgreSQL holds each expected key once; the acks and the spool account for every row."""
    view = agent.spool()
    assert view is not None
    assert view.read == read, f"the spool took {view.read} CDRs from {read} lines written"
    assert (view.rejected, view.quarantined, view.pending) == (0, 0, 0), view

    keys = stored_keys(database_url, agent.agent_id)
    assert len(keys) == len(expected_keys) and set(keys) == expected_keys, key_difference(
        keys, expected_keys
    )
    assert total_cdr_rows(database_url) == len(expected_keys)
    s = stored(database_url, agent.agent_id)
    assert s.rows == s.distinct_keys == len(expected_keys), s
    assert (s.accepted, s.duplicates) == (len(expected_keys), duplicates), (
        f"acks: {s.accepted} accepted and {s.duplicates} duplicates, expected"
        f" {len(expected_keys)} and {duplicates}"
    )


def enrolled_agent(
    agent_factory: AgentFactory,
    workdir: Path,
    feed: CallFeed,
    collector: CollectorServer,
    agent_url: str | None = None,
    **settings: object,
) -> AgentProcess:
    """An agent for `feed`'s directory, enrolled with `collector` (sending to `agent_url`)."""
    agent = agent_factory(workdir, feed.directory, agent_url or collector.url, **settings)
    agent.enroll(collector.url, collector.create_token("acme", feed.switch.name))
    return agent


def probe_batch(probe_agent: str, key: SigningKey, seq: int = 1) -> bytes:
    """A valid signed batch of one call from another switch (another enrolled agent)."""
    cdr = CallGenerator(DEMO_SWITCHES[1], seed=99).call(FIRST_CALL_END)
    body = wire.build_body([wire.pack_cdr(cdr)])
    sealed: bytes = wire.seal_batch(probe_agent, seq, body, key)
    return sealed


# --- 1. SIGKILL -----------------------------------------------------------------------------

KILLS = 6
CHUNK = 1700
"""Calls per append: one append while the agent runs and one while it is dead, per kill."""


def test_agent_sigkilled_repeatedly_during_load(
    tmp_path: Path,
    collector_server: CollectorServer,
    database_url: str,
    agent_factory: AgentFactory,
    gate_proxy_factory: Callable[[str], GateProxy],
) -> None:
    """~20,000 calls arrive while the agent is SIGKILLed 6 times and restarted each time.

    Kill moments, in a seeded random order: two while the collector's answer to a batch it has
    committed is held in the network (the ack is lost with the agent: the restarted agent must
    redeliver the same batch, recognised as such), two while a request (or its rest) is held
    before the collector has it all (released after the kill: the collector may still get and
    store the dead agent's batch, that the restarted agent sends again), two at a random
    moment of the load.
    """
    rng = random.Random(20261125)
    feed = CallFeed(tmp_path / "cdr-csv", seed=1)
    proxy = gate_proxy_factory(collector_server.url)
    agent = enrolled_agent(
        agent_factory,
        tmp_path / "agent",
        feed,
        collector_server,
        proxy.url,
        batch_max_cdrs=100,
        chunk_cdrs=50,
        spool_sync="full",
    )
    diag = diagnostics(agent, collector_server, database_url)
    moments = ["ack_in_flight", "request_in_flight", "anywhere"] * (KILLS // 3)
    rng.shuffle(moments)

    agent.start()
    for moment in moments:
        before = read_so_far(agent)
        gate = {"ack_in_flight": "response", "request_in_flight": "request"}.get(moment)
        if gate is not None:
            proxy.hold(gate)  # the next answer (or request) stops in the network
        feed.append(CHUNK)  # calls written while the agent runs
        wait_for(
            reading_past(agent, before),
            timeout=STEP_S,
            what="the agent to read the new calls",
            diagnostics=diag,
        )
        if gate is not None:
            assert proxy.wait_held(gate, STEP_S), f"no {gate} held in {STEP_S} s\n{diag()}"
        else:
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment of the load
        agent.kill()
        proxy.release()
        feed.append(CHUNK)  # calls written while the agent is dead
        agent.start()

    assert agent.kills == KILLS
    assert proxy.held_total["response"] >= moments.count("ack_in_flight")
    settle(agent, database_url, feed.written, diag)
    assert_exactly_once(agent, database_url, feed.keys, read=feed.written)
    # Each ack lost with a killed agent came back as a redelivery of the same batch (same seq,
    # same bytes), answered with the stored ack: nothing inserted twice, nothing counted twice.
    redelivered = collector_server.log_path.read_text().count("event=batch_redelivered")
    assert redelivered >= moments.count("ack_in_flight"), diag()


# --- 2. collector down -----------------------------------------------------------------------

OUTAGE_S = 30.0


@pytest.mark.slow
def test_collector_down_for_30_seconds(
    tmp_path: Path,
    collector_server: CollectorServer,
    database_url: str,
    agent_factory: AgentFactory,
) -> None:
    """The collector is stopped for 30 s while calls keep arriving: they wait in the spool
    (which grows, and nothing reaches PostgreSQL), then drain exactly once."""
    feed = CallFeed(tmp_path / "cdr-csv", seed=2)
    agent = enrolled_agent(agent_factory, tmp_path / "agent", feed, collector_server)
    agent_id = agent.agent_id
    diag = diagnostics(agent, collector_server, database_url)
    agent.start()
    feed.append(1000)
    settle(agent, database_url, feed.written, diag)
    before_outage = feed.written
    in_db = stored(database_url, agent_id)
    assert in_db.accepted == before_outage

    collector_server.stop()
    pending: list[int] = []
    outage_end = time.monotonic() + OUTAGE_S
    while time.monotonic() < outage_end:  # calls keep arriving for 30 s
        feed.append(100)
        time.sleep(0.5)
        view = agent.spool()
        if view is not None:
            pending.append(view.pending)
    wait_for(
        lambda: read_so_far(agent) >= feed.written,
        timeout=STEP_S,
        what="the agent to read every call into its spool",
        diagnostics=diag,
    )
    view = agent.spool()
    assert view is not None
    waiting = feed.written - before_outage
    assert view.read == feed.written and view.pending == waiting, view
    assert pending == sorted(pending) and pending[-1] > pending[0], pending  # it grew
    status = agent.status()
    assert f"spool: {waiting} CDRs pending" in status, status
    assert "collector: cannot reach" in status, status
    assert stored(database_url, agent_id) == in_db  # nothing reached PostgreSQL
    assert agent.events("collector_down"), diag()

    collector_server.start()
    settle(agent, database_url, feed.written, diag)
    assert_exactly_once(agent, database_url, feed.keys, read=feed.written)
    log = agent.log_text()
    assert log.rfind("event=collector_up") > log.rfind("event=collector_down"), diag()


# --- 3. PostgreSQL unavailable ---------------------------------------------------------------


@pytest.fixture
def proxied_collector(
    database_url: str, pg_proxy: PgProxy, tmp_path: Path
) -> Iterator[CollectorServer]:
    """A collector whose connections to PostgreSQL go through `pg_proxy`."""
    dbname = conninfo.conninfo_to_dict(database_url)["dbname"]
    server = CollectorServer(pg_proxy.url(str(dbname)), tmp_path / "collector-via-proxy")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_postgresql_unreachable(
    tmp_path: Path,
    proxied_collector: CollectorServer,
    pg_proxy: PgProxy,
    database_url: str,
    agent_factory: AgentFactory,
) -> None:
    """The network to PostgreSQL is cut while the agent pushes: the collector answers 503 and
    stores nothing, the agent keeps its batches and retries; restored: everything once."""
    collector = proxied_collector
    feed = CallFeed(tmp_path / "cdr-csv", seed=3)
    agent = enrolled_agent(agent_factory, tmp_path / "agent", feed, collector)
    agent_id = agent.agent_id
    probe = collector.enroll("acme", "probe")
    diag = diagnostics(agent, collector, database_url)
    agent.start()
    feed.append(3000)
    wait_for(
        lambda: stored(database_url, agent_id).rows > 0,
        timeout=STEP_S,
        what="the first batches in PostgreSQL",
        diagnostics=diag,
    )

    pg_proxy.cut()
    feed.append(2000)  # calls keep arriving
    wait_for(
        answered_503(agent, times=3),
        timeout=STEP_S,
        what="the agent to meet 503s and retry",
        diagnostics=diag,
    )
    during = stored(database_url, agent_id)
    response = httpx.post(
        collector.url + "/api/v1/ingest",
        content=probe_batch(probe.agent_id, probe.key),
        headers={"Content-Type": "application/msgpack"},
        timeout=30,
    )
    assert response.status_code == 503, response.text
    assert "Retry-After" in response.headers and "error" in response.json()
    assert httpx.get(collector.url + "/healthz", timeout=30).status_code == 503
    wait_for(
        lambda: read_so_far(agent) >= feed.written,
        timeout=STEP_S,
        what="the agent to read every call into its spool",
        diagnostics=diag,
    )
    assert stored(database_url, agent_id) == during, "a batch was stored while cut off"

    pg_proxy.restore()
    settle(agent, database_url, feed.written, diag)
    assert_exactly_once(agent, database_url, feed.keys, read=feed.written)
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM cdr WHERE agent_id = %s", (probe.agent_id,))
        assert row.fetchone() == (0,)  # the probe's batch answered 503 stored nothing
    log = agent.log_text()
    assert log.rfind("event=collector_up") > log.rfind("event=collector_down"), diag()


class PrivatePostgres:
    """An embedded PostgreSQL 16 of this test alone (pgserver), which it may stop and start."""

    def __init__(self, datadir: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
            from cdrstats_collector import embedded

            server, self.url = embedded.start_embedded(datadir)
        self.datadir = Path(server.pgdata)
        self._user: str | None = server.system_user  # postgres refuses to run as root
        self._pg_ctl = str(Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_ctl")
        self._socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [self._pg_ctl, "-D", str(self.datadir), "-w", *args],
            check=True,
            capture_output=True,
            timeout=60,
            user=self._user,
        )

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")

    def start(self) -> None:
        self._ctl(
            "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", str(self.datadir / "log"), "start"
        )


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    # Not under tmp_path: when the tests run as root, PostgreSQL runs as another user
    # (pgserver's), who must reach the data directory, and pytest keeps its own base
    # directory private (mode 0700, reset by every pytest session).
    base = Path(tempfile.mkdtemp(prefix="cdrstats-faults-pg-"))
    try:
        pg = PrivatePostgres(base / "pg")
        try:
            yield pg
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                pg.stop("immediate")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_postgresql_restart(
    tmp_path: Path, private_postgres: PrivatePostgres, agent_factory: AgentFactory
) -> None:
    """A real PostgreSQL restart while the agent pushes: a private embedded server is stopped
    (`pg_ctl stop -m fast`: sessions terminated), the agent meets 503s and retries, the server
    is started again and the collector's pool reconnects: everything exactly once."""
    from cdrstats_collector import migrate

    pg = private_postgres
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE cdrstats")
    database_url = with_dbname(pg.url, "cdrstats")
    migrate.upgrade(database_url)
    collector = CollectorServer(database_url, tmp_path / "collector")
    collector.start()
    try:
        feed = CallFeed(tmp_path / "cdr-csv", seed=4)
        agent = enrolled_agent(agent_factory, tmp_path / "agent", feed, collector)
        agent_id = agent.agent_id
        diag = diagnostics(agent, collector, database_url)
        agent.start()
        feed.append(3000)
        wait_for(
            lambda: stored(database_url, agent_id).rows > 0,
            timeout=STEP_S,
            what="the first batches in PostgreSQL",
            diagnostics=diag,
        )

        pg.stop("fast")
        feed.append(2000)
        wait_for(
            answered_503(agent, times=3),
            timeout=STEP_S,
            what="the agent to meet 503s and retry",
            diagnostics=diag,
        )
        pg.start()

        settle(agent, database_url, feed.written, diag)
        assert_exactly_once(agent, database_url, feed.keys, read=feed.written)
    finally:
        collector.stop()


# --- 4. duplicate delivery -------------------------------------------------------------------


def test_same_calls_in_a_second_file(
    tmp_path: Path,
    collector_server: CollectorServer,
    database_url: str,
    agent_factory: AgentFactory,
) -> None:
    """Calls already delivered appear again in other files of the directory.

    An exact copy of Master.csv (`Master.csv.bak`) is recognised by the csv plugin as a copy of
    a file it has read (first bytes and the bytes before its position) and not read again. The
    same calls re-exported in another order with a few new ones (`Master.csv.merged`) cannot be
    recognised: they are read and delivered again, and the natural key stores each call once —
    the acks count them as duplicates.
    """
    old, new = 3000, 60
    feed = CallFeed(tmp_path / "cdr-csv", seed=5)
    agent = enrolled_agent(agent_factory, tmp_path / "agent", feed, collector_server)
    diag = diagnostics(agent, collector_server, database_url)
    agent.start()
    feed.append(old)
    settle(agent, database_url, old, diag)

    # An operator copies Master.csv (atomically: a half-written copy is another file).
    tmp_copy = feed.directory / ".copy-in-progress"
    tmp_copy.write_bytes(feed.path.read_bytes())
    tmp_copy.rename(feed.directory / "Master.csv.bak")
    wait_for(
        lambda: any("Master.csv.bak" in line for line in agent.events("copy_found")),
        timeout=STEP_S,
        what="the agent to notice Master.csv.bak",
        diagnostics=diag,
    )

    # The same calls again, newest first, with new calls among them.
    again = list(reversed(feed.lines))
    merged: list[str] = []
    for i, line in enumerate(again):
        merged.append(line)
        if i % (old // new) == 0 and len(merged) < old + new:
            merged.extend(feed.make(1))
    assert len(merged) == old + new and merged[0] != feed.lines[0]
    write_lines(feed.directory / "Master.csv.merged", merged)

    settle(agent, database_url, old + old + new, diag)
    assert_exactly_once(agent, database_url, feed.keys, read=old + old + new, duplicates=old)


# --- an upload cut halfway -------------------------------------------------------------------


def test_upload_cut_halfway_is_not_a_server_error(collector_server: CollectorServer) -> None:
    """An agent killed (or a network cut) in the middle of sending a batch: the collector drops
    the request like any other refused one, without an error and its traceback in the log
    (the SIGKILL test above meets this when it kills an agent whose request is held)."""
    head = (
        b"POST /api/v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/msgpack\r\nContent-Length: 100000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", collector_server.port), timeout=10) as s:
        s.sendall(head + bytes(1000))  # then gone, 99,000 bytes short

    def accounted() -> bool:
        if "event=request_failed" in collector_server.log_path.read_text():
            return True
        metrics = httpx.get(collector_server.url + "/metrics", timeout=10).text
        return "cdrstats_ingest_batch_seconds_count 1.0" in metrics

    wait_for(accounted, timeout=STEP_S, what="the collector to account for the cut upload")
    log = collector_server.log_path.read_text()
    assert "event=request_failed" not in log and "Traceback" not in log, log

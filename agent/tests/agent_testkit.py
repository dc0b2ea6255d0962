"""Test helpers for the agent: CDR factories, an in-test source, and a collector peer.

`CollectorPeer` is a small Starlette app served by uvicorn on a free loopback port. It checks
envelopes and signatures with the real `wire` functions, keeps `last_seq` and stored batches
like the collector does (redelivery, 409, 413, 422), stores CDRs by natural key, and can be
told to answer the next requests with a given status, or be stopped (then it refuses).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import uvicorn
from cdrstats_agent import wire
from cdrstats_agent.config import AgentSettings, CollectorSettings, Config
from cdrstats_agent.identity import Identity
from cdrstats_agent.model import CDR, Direction, Disposition
from cdrstats_agent.plugin import ReadResult, Rejected
from nacl.signing import SigningKey, VerifyKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def make_cdr(n: int, key_prefix: str = "call") -> CDR:
    start = T0 + timedelta(seconds=n)
    return CDR(
        key=f"{key_prefix}-{n}",
        start=start,
        answer=start + timedelta(seconds=2),
        end=start + timedelta(seconds=32),
        duration=32,
        billsec=30,
        disposition=Disposition.ANSWERED,
        direction=Direction.OUTBOUND,
        caller="1001",
        callee="33123456789",
        accountcode="acme",
        hangup_cause=16,
        extra={"n": n},
    )


def keys_of_body(body: bytes) -> list[str]:
    parsed = wire.parse_body(body)
    index = parsed.fields.index("key")
    return [row[index] for row in parsed.rows]


def keys_of_packed(packed: bytes) -> list[str]:
    """Keys of CDRs packed and concatenated (a spool chunk)."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(packed)
    return [row[0] for row in unpacker]


class ListSource:
    """A source over a fixed list of CDRs; the checkpoint is the count read so far.

    Yields results of `chunk` CDRs; `fail_after` raises after that many results (once per
    instance unless `fail_always`); `reads` counts results handed out; `rejects` marks CDR
    numbers (0-based) to report as rejected instead.
    """

    def __init__(
        self,
        name: str,
        total: int,
        *,
        chunk: int = 100,
        key_prefix: str = "call",
        fail_after: int | None = None,
        pause: float = 0.0,
        rejects: frozenset[int] = frozenset(),
    ) -> None:
        self.name = name
        self.total = total
        self.chunk = chunk
        self.key_prefix = key_prefix
        self.fail_after = fail_after
        self.pause = pause
        self.rejects = rejects
        self.reads = 0
        self.failures = 0
        self.starts: list[str | None] = []
        self.closed = False

    async def check(self) -> None:
        return None

    async def read(self, checkpoint: str | None) -> AsyncIterator[ReadResult]:
        self.starts.append(checkpoint)
        pos = int(checkpoint or 0)
        given = 0
        while pos < self.total:
            if self.fail_after is not None and given >= self.fail_after and self.failures == 0:
                self.failures += 1
                raise RuntimeError("source broke on purpose")
            end = min(self.total, pos + self.chunk)
            cdrs = [make_cdr(i, self.key_prefix) for i in range(pos, end) if i not in self.rejects]
            rejected = [
                Rejected(f"list:{i}", "bad row") for i in range(pos, end) if i in self.rejects
            ]
            pos = end
            given += 1
            self.reads += 1
            yield ReadResult(cdrs, str(pos), rejected)
            if self.pause:
                await asyncio.sleep(self.pause)
        await asyncio.Event().wait()  # like a real source: wait for more, forever

    async def close(self) -> None:
        self.closed = True


# --- the collector peer ------------------------------------------------------------------------


@dataclass
class Received:
    seq: int
    status: int
    sent_at: int
    body_digest: bytes
    url: str
    spool: wire.SpoolStatus | None = None


@dataclass
class PeerState:
    agent_id: str
    verify_key: VerifyKey | None
    last_seq: int = 0
    batches: dict[int, bytes] = field(default_factory=dict)  # seq -> body digest
    cdrs: dict[str, int] = field(default_factory=dict)  # key -> times stored (1 or more)
    duplicates: int = 0
    received: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    """Statuses to answer the next ingest requests with (before any check)."""
    commit_then: list[int] = field(default_factory=list)
    """Statuses to answer after committing (a lost ack), for the next requests."""
    max_body: int = wire.MAX_BODY_BYTES
    delay: float = 0.0
    """Seconds each ingest request takes (to keep a batch in flight)."""
    on_ingest: Any = None
    """Called (no arguments) at each ingest request, after the delay."""
    tokens: set[str] = field(default_factory=set)
    collector_key: SigningKey = field(default_factory=SigningKey.generate)
    enrolled: list[dict[str, Any]] = field(default_factory=list)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": "0"} if status == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class CollectorPeer:
    def __init__(self, agent_id: str = "agent-1", verify_key: VerifyKey | None = None) -> None:
        self.state = PeerState(agent_id, verify_key)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.app = Starlette(
            routes=[
                Route("/api/v1/ingest", self._ingest, methods=["POST"]),
                Route("/api/v1/enroll", self._enroll, methods=["POST"]),
                Route("/api/v1/agent/status", self._status, methods=["GET"]),
                Route("/healthz", self._health, methods=["GET"]),
            ]
        )

    async def start(self) -> None:
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        server = _QuietServer(config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _ingest(self, request: Request) -> Response:
        st = self.state
        data = await request.body()
        if st.delay:
            await asyncio.sleep(st.delay)
        if st.on_ingest is not None:
            st.on_ingest()
        if len(data) > st.max_body:
            return _error(413, f"body larger than {st.max_body} bytes")
        try:
            envelope = wire.unseal(data, "cdr_batch")
        except wire.WireError as exc:
            return _error(422, str(exc))
        if envelope.signer != st.agent_id or st.verify_key is None:
            return _error(401, f"unknown agent {envelope.signer!r}")
        try:
            batch = wire.open_batch(envelope, st.verify_key)
        except wire.WireError as exc:
            return _error(401, str(exc))
        if abs(wire.now_us() - batch.sent_at) > wire.CLOCK_WINDOW_S * 1_000_000:
            return _error(401, "sent_at outside the clock window")
        digest = wire.body_digest(batch.body)
        if st.script:
            status = st.script.pop(0)
            st.received.append(Received(batch.seq, status, batch.sent_at, digest, self.url))
            return _error(status, f"scripted {status}")
        known = st.batches.get(batch.seq)
        if known == digest:
            st.received.append(Received(batch.seq, 200, batch.sent_at, digest, self.url))
            return JSONResponse(
                {"seq": batch.seq, "accepted": 0, "duplicates": 0, "redelivery": True}
            )
        if known is not None or batch.seq <= st.last_seq:
            st.received.append(Received(batch.seq, 409, batch.sent_at, digest, self.url))
            return _error(409, f"seq {batch.seq} already used", last_seq=st.last_seq)
        try:
            body = wire.parse_body(batch.body)
            rows = wire.check_rows(body.fields, body.rows)
        except wire.WireError as exc:
            st.received.append(Received(batch.seq, 422, batch.sent_at, digest, self.url))
            return _error(422, str(exc))
        accepted = duplicates = 0
        for row in rows:
            key = row[0]
            if key in st.cdrs:
                st.cdrs[key] += 1
                duplicates += 1
            else:
                st.cdrs[key] = 1
                accepted += 1
        st.duplicates += duplicates
        st.batches[batch.seq] = digest
        st.last_seq = batch.seq
        if st.commit_then:
            status = st.commit_then.pop(0)
            st.received.append(Received(batch.seq, status, batch.sent_at, digest, self.url))
            return _error(status, "committed, but the answer is lost")
        st.received.append(Received(batch.seq, 200, batch.sent_at, digest, self.url, batch.spool))
        return JSONResponse(
            {"seq": batch.seq, "accepted": accepted, "duplicates": duplicates, "redelivery": False}
        )

    async def _enroll(self, request: Request) -> Response:
        st = self.state
        try:
            doc = await request.json()
            token, public_key = doc["token"], doc["public_key"]
            verify_key = wire.verify_key_from_text(public_key)
        except (ValueError, KeyError, TypeError, wire.WireError) as exc:
            return _error(422, f"malformed enrollment: {exc}")
        if token not in st.tokens:
            return _error(401, "token unknown, used or expired")
        st.tokens.discard(token)
        st.verify_key = verify_key
        st.enrolled.append(doc)
        return JSONResponse(
            {
                "agent_id": st.agent_id,
                "tenant": "acme",
                "switch": "pbx1",
                "collector_public_key": wire.key_to_text(st.collector_key.verify_key),
            },
            status_code=201,
        )

    async def _status(self, request: Request) -> Response:
        st = self.state
        header = request.headers.get("Authorization", "")
        if st.verify_key is None:
            return _error(401, "unknown agent")
        try:
            agent = wire.verify_request(
                st.verify_key, header, "GET", request.url.path, b"", wire.now_us()
            )
        except wire.WireError as exc:
            return _error(401, str(exc))
        if agent != st.agent_id:
            return _error(401, f"unknown agent {agent!r}")
        return JSONResponse(
            {
                "agent_id": agent,
                "tenant": "acme",
                "switch": "pbx1",
                "last_seq": st.last_seq,
                "last_seen": "2026-11-25T10:00:00Z",
            }
        )


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{_free_port()}"


def agent_config(state_dir: Any, urls: list[str], **collector: Any) -> Config:
    settings: dict[str, Any] = {
        "batch_max_cdrs": 500,
        "batch_max_age_s": 0.05,
        "timeout_s": 5.0,
        "backoff_max_s": 0.1,
    }
    settings.update(collector)
    spool_max_mb = settings.pop("spool_max_mb", 64)
    return Config(
        agent=AgentSettings(state_dir=state_dir, spool_max_mb=spool_max_mb, spool_sync="normal"),
        collector=CollectorSettings(urls=tuple(urls), **settings),
    )


def identity_for(peer: CollectorPeer, url: str | None = None) -> tuple[Identity, SigningKey]:
    key = SigningKey.generate()
    peer.state.verify_key = key.verify_key
    identity = Identity(
        agent_id=peer.state.agent_id,
        tenant="acme",
        switch="pbx1",
        collector_public_key=wire.key_to_text(peer.state.collector_key.verify_key),
        url=url or peer.url,
    )
    return identity, key


async def wait_until(predicate: Any, within: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)

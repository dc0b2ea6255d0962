"""`POST /api/v1/ingest`: a signed CDR batch in, an ack out (docs/http-api.md).

Checks, in the documented order: size (413), envelope (422), agent and signature and clock
(401), redelivery (200 with the stored ack), replay (409), body and rows (422), database
(503), then the transaction in `store`. Nothing a client sends leads to a 500.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from cdrstats_agent import logs, wire
from nacl.exceptions import BadSignatureError
from psycopg_pool import PoolTimeout
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from . import replies, store
from .agents import KnownAgent, parse_agent_id
from .state import CollectorState, get_state

log = logs.get_logger("cdrstats.collector.ingest")


class _TooLarge(Exception):
    pass


async def read_bounded(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes (declared or actually sent)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _TooLarge()
        except ValueError:
            pass  # the server rejects a malformed Content-Length before we see it
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _ack_response(ack: wire.Ack) -> JSONResponse:
    return JSONResponse(ack.to_json())


async def ingest_endpoint(request: Request) -> Response:
    state = get_state(request)
    started = time.perf_counter()
    result, response = await _ingest(request, state)
    state.metrics.batches.labels(result).inc()
    state.metrics.latency.observe(time.perf_counter() - started)
    return response


async def _ingest(request: Request, state: CollectorState) -> tuple[str, Response]:
    limit = state.settings.max_body_bytes
    try:
        data = await read_bounded(request, limit)
    except _TooLarge:
        return "too_large", replies.error(413, f"batch larger than {limit} bytes: split it")
    except ClientDisconnect:
        # The agent went away mid-upload (killed, network cut): nothing was read, nothing is
        # stored, and the agent resends the batch from its spool. Nobody reads this answer.
        log.info("upload_cut", received="partial")
        return "client_gone", replies.error(400, "upload cut before the body was complete")

    try:
        envelope = wire.unseal(data, "cdr_batch")
    except wire.WireError as exc:
        return "invalid", _invalid(str(exc), None)

    agent_id = parse_agent_id(envelope.signer)
    if agent_id is None:
        return "unauthorized", _unauthorized("unknown agent", envelope.signer)
    try:
        agent = state.agents.cached(agent_id)
        if agent is None:
            async with state.pool.connection() as conn:
                status = await state.agents.status(conn, agent_id)
            if status is None:
                return "unauthorized", _unauthorized("unknown agent", envelope.signer)
            if status.revoked:
                return "unauthorized", _unauthorized("agent revoked", envelope.signer)
            agent = status.agent
    except (psycopg.OperationalError, PoolTimeout) as exc:
        return "unavailable", _unavailable(exc)

    try:
        batch = wire.open_batch(envelope, agent.key)
    except wire.WireError as exc:
        if _bad_signature(envelope, agent):
            return "unauthorized", _unauthorized("bad signature", envelope.signer)
        return "invalid", _invalid(str(exc), envelope.signer)
    now = wire.now_us()
    skew_s = (batch.sent_at - now) / 1e6
    if abs(skew_s) > state.settings.clock_window_s:
        return "unauthorized", _unauthorized(
            f"sent_at is {skew_s:+.0f} s from the collector's clock (window"
            f" {state.settings.clock_window_s} s): check the agent's clock",
            envelope.signer,
        )

    if batch.spool_error is not None:
        log.warning("batch_status_ignored", agent=envelope.signer, reason=batch.spool_error)
    digest = wire.body_digest(batch.body)
    ingestor = state.ingestor
    prepared: store.Prepared | None = None
    bad: str | None = None
    try:
        body = wire.parse_body(batch.body)
        rows = wire.check_rows(body.fields, body.rows)
        prepared = ingestor.prepare(agent.ref, rows, now)
    except wire.WireError as exc:
        bad = str(exc)
    except RecursionError:
        bad = "batch body is nested too deeply"

    try:
        async with state.pool.connection() as conn:
            if prepared is None:
                outcome = await ingestor.batch_state(conn, agent.ref.id, batch.seq, digest)
                if outcome is None:
                    return "invalid", _invalid(bad or "bad batch body", envelope.signer)
            else:
                try:
                    outcome = await ingestor.store(
                        conn, agent.ref, batch.seq, digest, prepared, batch.spool
                    )
                except store.BadRows as exc:
                    return "invalid", _invalid(str(exc), envelope.signer)
    except (psycopg.OperationalError, PoolTimeout, store.StoreUnavailable) as exc:
        return "unavailable", _unavailable(exc)

    return _answer(state, agent, batch, outcome, prepared)


def _answer(
    state: CollectorState,
    agent: KnownAgent,
    batch: wire.Batch,
    outcome: store.Outcome,
    prepared: store.Prepared | None,
) -> tuple[str, Response]:
    signer = str(agent.ref.id)
    if isinstance(outcome, store.Stored):
        ack = outcome.ack
        metrics = state.metrics
        metrics.cdrs.labels("accepted").inc(ack.accepted)
        metrics.cdrs.labels("duplicate").inc(ack.duplicates)
        now = time.time()
        metrics.last_seen.labels(signer).set(now)
        if prepared is not None and prepared.rows:
            metrics.lag.labels(signer).set(max(0.0, now - prepared.newest_start_us / 1e6))
        log.debug(
            "batch_stored",
            agent=signer,
            seq=ack.seq,
            accepted=ack.accepted,
            duplicates=ack.duplicates,
        )
        return "stored", _ack_response(ack)
    if isinstance(outcome, store.Redelivery):
        log.info("batch_redelivered", agent=signer, seq=batch.seq)
        return "redelivery", _ack_response(outcome.ack)
    if isinstance(outcome, store.Conflict):
        log.warning(
            "batch_conflict",
            agent=signer,
            seq=batch.seq,
            last_seq=outcome.last_seq,
            reason=outcome.reason,
        )
        return "conflict", replies.error(409, outcome.reason, last_seq=outcome.last_seq)
    state.agents.forget(agent.ref.id)
    return "unauthorized", _unauthorized(outcome.reason, signer)


def _bad_signature(envelope: wire.Envelope, agent: KnownAgent) -> bool:
    """Whether `open_batch` failed on the signature (401) rather than the payload (422)."""
    try:
        agent.key.verify(envelope.payload, envelope.sig)
    except BadSignatureError:
        return True
    return False


def _invalid(message: str, agent: str | None) -> JSONResponse:
    log.warning("batch_invalid", agent=agent or "-", reason=message)
    return replies.error(422, message)


def _unauthorized(reason: str, agent: str) -> JSONResponse:
    log.warning("batch_unauthorized", agent=agent[:64], reason=reason)
    return replies.error(401, reason)


def _unavailable(exc: Any) -> JSONResponse:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    log.warning("batch_unavailable", reason=reason)
    return replies.unavailable("database unavailable, retry later")

"""The uplink: forms batches in the spool and delivers them to the collector, in order.

Two coroutines share one `Uplink`:
  former  forms a batch when `batch_max_cdrs` CDRs wait or the oldest waited
          `batch_max_age_s`; it keeps at most one batch ready behind the one in flight, so the
          next body is already built (and durable) when an ack arrives.
  sender  sends the lowest-numbered batch, one at a time (the collector relies on in-order
          delivery per agent), sealed with a fresh `sent_at` and spool status (what waits
          besides it, its delivery lag) at each attempt, and reacts to the answer as
          docs/http-api.md says:
            200            delete the batch (the only way a CDR leaves the spool)
            401, 403       log the reason once, keep the batch, retry with backoff
            409            renumber the pending batches after the collector's last_seq, resend
            413            split the batch in two, send both (a single CDR: quarantine)
            422            quarantine the batch, log loudly, go on
            5xx, timeout,  backoff (exponential, full jitter, capped at backoff_max_s), next
            refused        collector URL, same batch again
State changes (collector down, up, refusing) are logged once, not at every retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
from nacl.signing import SigningKey

from . import wire
from .logs import get_logger
from .spool import PendingBatch, Spool

INGEST_PATH = "/api/v1/ingest"
STATUS_PATH = "/api/v1/agent/status"
BATCHES_AHEAD = 2
"""Formed batches kept at most (the one in flight and the next one)."""
BACKOFF_BASE_S = 0.5
log = get_logger("cdrstats.agent.uplink")


class CollectorError(Exception):
    """A collector could not be reached or refused a request; the text says which and why."""


def error_text(response: httpx.Response) -> str:
    """The one-line `error` of a collector's JSON error body (or what there is instead)."""
    try:
        doc = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    return str(doc)[:200]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Uplink:
    """Delivers the spool's batches to the collector (see the module docstring)."""

    def __init__(
        self,
        spool: Spool,
        *,
        urls: Sequence[str],
        agent_id: str,
        key: SigningKey,
        batch_max_cdrs: int = 5000,
        batch_max_age_s: float = 1.0,
        timeout_s: float = 30.0,
        backoff_max_s: float = 60.0,
        backoff_base_s: float = BACKOFF_BASE_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not urls:
            raise ValueError("the uplink needs at least one collector URL")
        self.spool = spool
        self.urls = [u.rstrip("/") for u in urls]
        self.agent_id = agent_id
        self.key = key
        self.batch_max_cdrs = batch_max_cdrs
        self.batch_max_age_s = batch_max_age_s
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self.backoff_base_s = backoff_base_s
        self._transport = transport
        self._current = 0
        self.state = "starting"
        """starting | up | down (unreachable or 5xx) | refused (401/403)"""
        self.last_error = ""
        self.last_ack_at: float | None = None
        self.acked_batches = 0
        self.acked_cdrs = 0
        self.sent_bytes = 0
        self._trouble_since = 0.0
        self._trouble_attempts = 0
        self._conflicts = 0

    @property
    def url(self) -> str:
        """The collector URL in use (the next one after a failure)."""
        return self.urls[self._current]

    async def run(self) -> None:
        """Form and deliver batches until cancelled."""
        timeout = httpx.Timeout(self.timeout_s)
        async with httpx.AsyncClient(timeout=timeout, transport=self._transport) as client:
            former = asyncio.create_task(self._form_loop(), name="uplink-former")
            try:
                await self._send_loop(client)
            finally:
                former.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await former

    # --- forming --------------------------------------------------------------------------

    async def _form_loop(self) -> None:
        spool = self.spool
        while True:
            waiting = spool.unbatched_cdrs
            if waiting and spool.batches < BATCHES_AHEAD:
                oldest = spool.oldest_unbatched_at or time.time()
                left = oldest + self.batch_max_age_s - time.time()
                if waiting >= self.batch_max_cdrs or left <= 0:
                    await spool.form_batch(self.batch_max_cdrs)
                    continue
                await spool.wait_changed(left)
            else:
                await spool.wait_changed(1.0)

    # --- sending --------------------------------------------------------------------------

    async def _send_loop(self, client: httpx.AsyncClient) -> None:
        while True:
            if self.spool.batches == 0:
                await self.spool.wait_changed(1.0)
                continue
            batch = await self.spool.next_batch()
            if batch is not None:
                await self._deliver(client, batch)

    def spool_status(self, batch: PendingBatch) -> wire.SpoolStatus:
        """What waits in the spool besides `batch`, and how long `batch` has waited."""
        spool = self.spool
        return wire.SpoolStatus(
            batches=max(0, spool.batches - 1),
            cdrs=max(0, spool.pending_cdrs - batch.cdrs),
            lag_s=round(max(0.0, time.time() - batch.oldest_at), 3),
        )

    async def _deliver(self, client: httpx.AsyncClient, batch: PendingBatch) -> None:
        """Deliver one batch: return once the spool was changed by the collector's answer."""
        failures = 0
        while True:
            url = self.url
            envelope = wire.seal_batch(
                self.agent_id, batch.seq, batch.body, self.key, spool=self.spool_status(batch)
            )
            try:
                response = await client.post(
                    url + INGEST_PATH,
                    content=envelope,
                    headers={"Content-Type": "application/msgpack"},
                )
            except httpx.HTTPError as exc:
                failures += 1
                self._unreachable(url, f"{type(exc).__name__}: {exc}".rstrip(": "), batch.seq)
                self._failover()
                await self._backoff(failures)
                continue
            status = response.status_code
            if status == 200:
                await self._acked(url, batch, response)
                return
            if status in (401, 403):
                failures += 1
                self._refused(url, status, error_text(response), batch.seq)
                await self._backoff(failures)
                continue
            if status == 409:
                last_seq = _last_seq(response)
                if last_seq is not None:
                    self._reachable(url)
                    await self._renumber(batch, last_seq)
                    return
            elif status == 413:
                self._reachable(url)
                await self._split(batch, error_text(response))
                return
            elif status == 422:
                self._reachable(url)
                await self._quarantine(batch, error_text(response))
                return
            failures += 1
            self._unreachable(url, f"HTTP {status}: {error_text(response)}", batch.seq)
            self._failover()
            await self._backoff(failures, _retry_after(response))

    async def _acked(self, url: str, batch: PendingBatch, response: httpx.Response) -> None:
        try:
            ack: Any = response.json()
        except ValueError:
            ack = None
        if not isinstance(ack, dict):
            ack = {}
        if ack.get("seq") != batch.seq:
            log.warning("ack_seq_mismatch", sent=batch.seq, acked=ack.get("seq"), url=url)
        self._reachable(url)
        self._conflicts = 0
        await self.spool.ack(batch.seq, ack)
        self.last_ack_at = time.time()
        self.acked_batches += 1
        self.acked_cdrs += batch.cdrs
        self.sent_bytes += len(batch.body)
        log.debug(
            "batch_acked",
            seq=batch.seq,
            cdrs=batch.cdrs,
            accepted=ack.get("accepted"),
            duplicates=ack.get("duplicates"),
            redelivery=ack.get("redelivery"),
        )

    async def _renumber(self, batch: PendingBatch, last_seq: int) -> None:
        pairs = await self.spool.renumber(last_seq)
        log.warning(
            "batches_renumbered",
            seq=batch.seq,
            collector_last_seq=last_seq,
            batches=len(pairs),
            first_new_seq=pairs[0][1] if pairs else None,
        )
        self._conflicts += 1
        if self._conflicts > 3:  # the collector keeps refusing: do not spin
            await self._backoff(self._conflicts - 3)

    async def _split(self, batch: PendingBatch, reason: str) -> None:
        halves = await self.spool.split(batch.seq)
        if halves is None:
            await self._quarantine(
                batch, f"a single CDR is larger than the collector accepts (413: {reason})"
            )
            return
        log.warning(
            "batch_split",
            seq=batch.seq,
            cdrs=batch.cdrs,
            bytes=len(batch.body),
            into=f"{halves[0].cdrs}+{halves[1].cdrs}",
            reason=reason,
        )

    async def _quarantine(self, batch: PendingBatch, reason: str) -> None:
        await self.spool.quarantine(batch.seq, reason)
        log.error(
            "batch_quarantined",
            seq=batch.seq,
            cdrs=batch.cdrs,
            reason=reason,
            hint="kept in the spool's quarantine table; see cdrstats-agent status",
        )

    # --- state and backoff ----------------------------------------------------------------

    def _failover(self) -> None:
        if len(self.urls) > 1:
            self._current = (self._current + 1) % len(self.urls)

    def _enter_trouble(self, state: str) -> bool:
        self._trouble_attempts += 1
        if self.state == state:
            return False
        if self.state not in ("down", "refused"):
            self._trouble_since = time.monotonic()
        self.state = state
        return True

    def _unreachable(self, url: str, reason: str, seq: int) -> None:
        self.last_error = f"{url}: {reason}"
        if self._enter_trouble("down"):
            log.warning("collector_down", url=url, reason=reason, seq=seq)
        else:
            log.debug("collector_retry", url=url, reason=reason, seq=seq)

    def _refused(self, url: str, status: int, reason: str, seq: int) -> None:
        self.last_error = f"{url}: HTTP {status}: {reason}"
        if self._enter_trouble("refused"):
            log.error(
                "collector_refused",
                url=url,
                status=status,
                reason=reason,
                seq=seq,
                hint="check the enrollment with: cdrstats-agent check",
            )
        else:
            log.debug("collector_retry", url=url, status=status, seq=seq)

    def _reachable(self, url: str) -> None:
        if self.state == "up":
            return
        if self.state in ("down", "refused"):
            log.info(
                "collector_up",
                url=url,
                after_s=round(time.monotonic() - self._trouble_since, 1),
                attempts=self._trouble_attempts,
            )
        else:
            log.info("collector_up", url=url)
        self.state = "up"
        self.last_error = ""
        self._trouble_attempts = 0

    async def _backoff(self, failures: int, retry_after: float | None = None) -> None:
        """Exponential backoff with full jitter, capped at backoff_max_s."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** min(failures - 1, 30))
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        await asyncio.sleep(delay)


def _last_seq(response: httpx.Response) -> int | None:
    try:
        doc = response.json()
    except ValueError:
        return None
    value = doc.get("last_seq") if isinstance(doc, dict) else None
    return value if type(value) is int and value >= 0 else None


async def fetch_agent_status(
    url: str,
    agent_id: str,
    key: SigningKey,
    *,
    timeout_s: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """The collector's view of this agent (signed `GET /api/v1/agent/status`)."""
    full = url.rstrip("/") + STATUS_PATH
    path = urlsplit(full).path
    auth = wire.sign_request(key, agent_id, "GET", path, wire.now_us())
    try:
        async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
            response = await client.get(full, headers={"Authorization": auth})
    except httpx.HTTPError as exc:
        raise CollectorError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code == 401:
        raise CollectorError(f"{url} does not recognise this agent: {error_text(response)}")
    if response.status_code != 200:
        raise CollectorError(f"{url} answered {response.status_code}: {error_text(response)}")
    try:
        doc: Any = response.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise CollectorError(f"{url} answered the status request with a body that is not JSON")
    return doc

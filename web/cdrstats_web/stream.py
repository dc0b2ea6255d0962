"""`GET /t/{tenant}/events`: the tab's server-sent-event stream.

One stream per browser tab, scoped to the tenant in the path (checked like every page: a
tenant user naming another tenant gets 404, nobody gets 401). Events come from the
collector's realtime broker (`cdrstats_collector.realtime`): `cdr` (a batch was stored),
`live` (live call state changed), `resync` (reload your figures). A comment line is sent as a
heartbeat when nothing happened for a while, so proxies keep the connection open and the
browser notices a dead one. `Last-Event-ID` resumes where the browser left off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from cdrstats_collector import shutdown
from cdrstats_collector.realtime import Broker, Subscriber
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .console import Console

RETRY_MS = 2000
LISTEN_WAIT_S = 3.0


async def _frames(broker: Broker, sub: Subscriber) -> AsyncIterator[bytes]:
    try:
        yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
        async for event in sub:
            yield b": heartbeat\n\n" if event is None else event.encode()
    finally:
        broker.unsubscribe(sub)


async def events(console: Console, request: Request) -> Response:
    try:
        _who, tenant, _ = await console.tenant_context(request)
    except HTTPException as exc:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)
    # The first stream of a process starts the LISTEN connection: wait (briefly) until it is
    # up, so that a page that has its stream open also gets the next batch.
    shutdown.on_exit_signal(console.broker.end_streams)  # SIGTERM ends the streams at once
    await console.broker.wait_listening(LISTEN_WAIT_S)
    sub = console.broker.subscribe(int(tenant["id"]), request.headers.get("last-event-id"))
    return StreamingResponse(
        _frames(console.broker, sub),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )

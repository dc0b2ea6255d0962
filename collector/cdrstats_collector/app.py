"""The collector's ASGI application.

    app = create_app(settings)      # then: uvicorn.run(app, ...)

The lifespan opens the PostgreSQL pool and the per-process caches (kept in
`app.state.collector`, see `state.py`) and runs maintenance in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from cdrstats_agent import logs
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import (
    commands,
    import_api,
    live,
    maintenance,
    metrics,
    notify,
    replies,
    retention,
    rules_api,
)
from .agents import AgentDirectory
from .api import routes as read_api_routes
from .enroll import enroll_endpoint, status_endpoint
from .evaluator import Evaluator
from .ingest import ingest_endpoint
from .settings import Settings
from .state import CollectorState, get_state
from .store import Ingestor

log = logs.get_logger("cdrstats.collector.app")


async def healthz(request: Request) -> Response:
    state = get_state(request)
    try:
        async with state.pool.connection(timeout=min(2.0, state.settings.pool_timeout)) as conn:
            await conn.execute("SELECT 1")
    except (psycopg.OperationalError, PoolTimeout):
        return replies.unavailable("PostgreSQL is unreachable")
    return JSONResponse({"status": "ok"})


async def metrics_endpoint(request: Request) -> Response:
    return Response(get_state(request).metrics.render(), media_type=metrics.CONTENT_TYPE)


async def _maintain(state: CollectorState) -> None:
    settings = state.settings
    while True:
        try:
            async with state.pool.connection() as conn:
                report = await maintenance.run(
                    conn,
                    months_ahead=settings.months_ahead,
                    batch_keep_days=settings.batch_keep_days,
                    cache=state.ingestor.partitions,
                    keep=retention.Policy(
                        settings.cdr_retention_days, settings.aggregate_retention_days
                    ),
                    history=maintenance.Keep.from_settings(settings),
                )
            done = report.retention_done
            log.info(
                "maintenance_done",
                batches_pruned=report.batches_pruned,
                partitions_dropped=len(done.partitions_dropped),
                cdr_rows_deleted=done.cdr_rows_deleted,
                aggregate_rows_deleted=done.aggregate_rows_deleted,
                **report.pruned.log_fields(),
            )
            delay = settings.maintenance_interval_s
        except (psycopg.Error, PoolTimeout) as exc:
            text = str(exc).strip()
            log.warning("maintenance_failed", reason=text.splitlines()[0] if text else repr(exc))
            delay = min(60.0, settings.maintenance_interval_s)
        await asyncio.sleep(delay)


def create_app(settings: Settings) -> Starlette:
    """The collector app for `settings`; nothing connects before the lifespan starts."""
    from cdrstats_web.console import Console  # the web console, mounted last (see below)

    console = Console(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database_url,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            timeout=settings.pool_timeout,
            open=False,
            name="cdrstats-collector",
            kwargs={"application_name": "cdrstats-collector", "connect_timeout": 5},
            check=AsyncConnectionPool.check_connection,
        )
        # Do not wait for PostgreSQL: the collector answers 503 until it is reachable.
        await pool.open(wait=False)
        ingestor = Ingestor(aggregates=settings.aggregates)
        state = CollectorState(settings, pool, ingestor, AgentDirectory(), metrics.Metrics())
        app.state.collector = state
        task = asyncio.create_task(_maintain(state), name="cdrstats-maintenance")
        notifier = asyncio.create_task(  # alert emails and webhooks (docs/notifications.md)
            notify.Notifier(settings, pool).run_forever(), name="cdrstats-notify"
        )
        evaluator = Evaluator(  # rules (docs/rules.md)
            settings.database_url, url=settings.url, limits=commands.limits(settings)
        )
        evaluator.start()
        log.info("collector_started", url=settings.url)
        try:
            yield
        finally:
            await evaluator.close()
            await console.broker.close()
            await commands.close(app)
            for background in (task, notifier):
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
            await pool.close()

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("request_failed", path=request.url.path, exc_info=True)
        return replies.error(500, "internal error (logged by the collector)")

    routes = [
        Route("/api/v1/ingest", ingest_endpoint, methods=["POST"]),
        Route("/api/v1/enroll", enroll_endpoint, methods=["POST"]),
        Route("/api/v1/agent/status", status_endpoint, methods=["GET"]),
        Route("/api/v1/live", live.live_endpoint, methods=["POST"]),
        Route("/api/v1/live/calls", live.live_calls_endpoint, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *read_api_routes(),  # the read API: reports, CDR search, exports, OpenAPI
        *commands.routes(),  # remote actions: agents' long poll and results, block/unblock
        *notify.routes(),  # alert notification channels (docs/notifications.md)
        *rules_api.routes(),  # rules, alerts, destination lists (docs/rules.md)
        *import_api.routes(),  # CSV uploads: jobs, preview, rejected rows, profiles
        # The web console (cdrstats_web): pages, static assets, SSE; serves "/" and below.
        console.mount(),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={Exception: server_error},
        middleware=[console.session_middleware()],
    )

"""Signed session cookies for the console (and for `auth.principal` on API routes).

The cookie is Starlette's `SessionMiddleware` (itsdangerous-signed, not encrypted: it holds
only the user id and the CSRF token). The signing secret is, in order:

1. the environment variable `CDRSTATS_SECRET_KEY` (at least 32 characters), or
2. derived from the collector's own Ed25519 private key, which `cdrstats db upgrade` keeps in
   the `collector_key` table: HMAC-SHA256(private key, "cdrstats console session v1").

The second needs no setting and gives every collector process that shares the database the
same secret, so a browser behind a load balancer stays logged in whichever process answers.
Rotating the collector key logs every console user out. The secret is read from the database
on the first request (nothing connects before the collector's lifespan starts); while it
cannot be read, requests get an empty, unsaved session (nobody is logged in).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from typing import Any

from cdrstats_agent import logs
from cdrstats_agent.errors import ConfigError
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

ENV_SECRET = "CDRSTATS_SECRET_KEY"
MIN_SECRET_CHARS = 32
COOKIE = "cdrstats_session"
MAX_AGE_S = 12 * 3600
_DERIVE_LABEL = b"cdrstats console session v1"

log = logs.get_logger("cdrstats.web.sessions")


def secret_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """`CDRSTATS_SECRET_KEY` when set; raises `ConfigError` when it is too short."""
    value = (os.environ if env is None else env).get(ENV_SECRET)
    if value is None or value == "":
        return None
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError(
            ENV_SECRET,
            f"must have at least {MIN_SECRET_CHARS} characters, got {len(value)}",
            hint="generate one with: python3 -c 'import secrets; print(secrets.token_hex(32))'",
        )
    return value


def derive_secret(private_key: bytes) -> str:
    return hmac.new(private_key, _DERIVE_LABEL, hashlib.sha256).hexdigest()


NO_SESSION = "cdrstats.no_session"
"""Scope key set when the secret is unknown yet: the session is empty and will not be saved."""
_NO_WAIT_PREFIXES = ("/api/", "/healthz", "/metrics")
"""Paths that never wait for the secret (agents' API, probes): an empty session meanwhile."""
RETRY_S = 1.0
WAIT_S = 2.0


class ConsoleSessions:
    """Pure-ASGI wrapper: a `SessionMiddleware` whose secret is resolved on first use.

    One load at a time runs in the background; console pages wait for it (at most `WAIT_S`),
    the API and health probes never do. A failed load is retried at most every `RETRY_S`.
    """

    def __init__(
        self, app: ASGIApp, *, secret: str | None = None, https_only: bool = False
    ) -> None:
        self.app = app
        self.https_only = https_only
        self._inner: ASGIApp | None = None
        self._loading: asyncio.Task[None] | None = None
        self._next_try = 0.0
        env_secret = secret if secret is not None else secret_from_env()
        if env_secret is not None:
            self._inner = self._wrap(env_secret)

    def _wrap(self, secret: str) -> ASGIApp:
        return SessionMiddleware(
            self.app,
            secret_key=secret,
            session_cookie=COOKIE,
            max_age=MAX_AGE_S,
            same_site="lax",
            https_only=self.https_only,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self._inner is None:
            task = self._start_loading(scope)
            if task is not None and not str(scope.get("path", "")).startswith(_NO_WAIT_PREFIXES):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), WAIT_S)
        inner = self._inner
        if inner is None:
            scope["session"] = {}
            scope[NO_SESSION] = True
            await self.app(scope, receive, send)
            return
        await inner(scope, receive, send)

    def _start_loading(self, scope: Scope) -> asyncio.Task[None] | None:
        if self._loading is not None and not self._loading.done():
            return self._loading
        now = time.monotonic()
        if now < self._next_try:
            return None
        self._next_try = now + RETRY_S
        self._loading = asyncio.create_task(self._load(scope["app"]), name="cdrstats-session-key")
        return self._loading

    async def _load(self, app: Any) -> None:
        from cdrstats_collector import keys

        try:
            pool = app.state.collector.pool
            async with pool.connection(timeout=WAIT_S) as conn:
                signing = await keys.load_signing_key(conn)
        except Exception as exc:  # any failure: no sessions until a later load succeeds
            text = str(exc).strip()
            reason = text.splitlines()[0] if text else repr(exc)
            log.warning("session_secret_unavailable", reason=reason)
            return
        self._inner = self._wrap(derive_secret(bytes(signing)))

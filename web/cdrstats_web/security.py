"""CSRF tokens and login rate limiting.

CSRF: a synchronizer token kept in the signed session. Every console form carries it in the
hidden field `csrf_token`; scripts send it in the `X-CSRF-Token` header. `checked_form`
refuses any unsafe request without the right token (403) before the handler looks at the
form. Login gets a token too (the login page creates the session that holds it), so a page of
another site cannot log a browser in to an account of its choosing.

Rate limiting: failed logins are counted per (client address, username) and per client
address in a sliding window; once over the limit, further attempts are refused with 429 and
`Retry-After` without checking the password. Counts are per collector process (each process
of a load-balanced pair allows the limit: documented in docs/console.md).
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request

from .sessions import NO_SESSION

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_SESSION_KEY = "csrf"


def csrf_token(request: Request) -> str:
    """This session's CSRF token (created on first use)."""
    token = request.session.get(_SESSION_KEY)
    if not isinstance(token, str) or len(token) < 20:
        token = secrets.token_urlsafe(32)
        request.session[_SESSION_KEY] = token
    return token


def new_csrf_token(request: Request) -> str:
    """A fresh token (after login, so that a token seen before login is useless after)."""
    request.session[_SESSION_KEY] = token = secrets.token_urlsafe(32)
    return token


def _valid(request: Request, sent: object) -> bool:
    expected = request.session.get(_SESSION_KEY)
    return (
        isinstance(expected, str)
        and isinstance(sent, str)
        and bool(sent)
        and secrets.compare_digest(expected.encode(), sent.encode())
    )


MAX_FORM_BYTES = 64 * 1024
"""Console forms are small; a bigger body is refused before it is read (413)."""


async def checked_form(request: Request) -> FormData:
    """The request's form, or 403 when the CSRF token is missing or wrong.

    413 for a body over `MAX_FORM_BYTES`, 411 when its length is not announced.
    """
    if request.scope.get(NO_SESSION):
        raise HTTPException(
            503, "sessions are unavailable while the database is unreachable: try again shortly"
        )
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise HTTPException(411, "a form must be sent with its Content-Length")
    if int(length) > MAX_FORM_BYTES:
        raise HTTPException(413, f"a form may have at most {MAX_FORM_BYTES} bytes")
    form = await request.form(max_files=0, max_fields=200)
    sent = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not _valid(request, sent):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")
    return form


def check_header(request: Request) -> None:
    """For script requests (fetch): 403 unless `X-CSRF-Token` matches."""
    if not _valid(request, request.headers.get(CSRF_HEADER)):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")


@dataclass
class LoginLimiter:
    """Sliding-window counts of failed logins."""

    per_user: int = 5
    per_address: int = 30
    window_s: float = 300.0
    _fails: dict[tuple[str, str], deque[float]] = field(default_factory=dict)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._fails.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._fails[key]
        return times

    def retry_after(self, address: str, username: str, now: float | None = None) -> int:
        """Seconds until this attempt may be made (0: allowed now)."""
        now = time.monotonic() if now is None else now
        waits = []
        for key, limit in (
            ((address, username.lower()), self.per_user),
            ((address, ""), self.per_address),
        ):
            times = self._recent(key, now)
            if len(times) >= limit:
                waits.append(times[-limit] + self.window_s - now)
        return max(1, int(max(waits)) + 1) if waits else 0

    def failed(self, address: str, username: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._fails) > 100_000:
            self._fails.clear()
        for key in ((address, username.lower()), (address, "")):
            self._fails.setdefault(key, deque(maxlen=1000)).append(now)

    def succeeded(self, address: str, username: str) -> None:
        self._fails.pop((address, username.lower()), None)

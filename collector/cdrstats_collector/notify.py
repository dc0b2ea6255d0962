"""Alert notifications: per-tenant channels (email over SMTP, signed webhooks) and the
delivery loop that sends every new alert to them (docs/notifications.md).

    notify_channel   id, tenant_id, kind 'email'|'webhook', target, secret, min_severity, ...
    notify_delivery  one row per attempt: alert_id, channel_id, attempt, at, ok, error

The rules engine writes an `alert` row with `notify_state = 'pending'` and sends
`NOTIFY cdrstats_alert`. Every collector process runs one `Notifier`: woken by that NOTIFY
(or every `POLL_S` seconds), it claims due alerts with `UPDATE ... FOR UPDATE SKIP LOCKED`
(several collectors never send one alert twice at the same time), marks them `sending` with a
lease, sends them to the tenant's enabled channels whose `min_severity` the alert reaches,
records each attempt in `notify_delivery` and marks the alert `sent`, `none` (no channel),
`pending` again with the next attempt after a doubling backoff (`[notify] retry_s`), or
`failed` after `[notify] max_attempts` with the reasons in `notify_error`. A retry sends only
to the channels that have not accepted the alert yet. An alert set `pending` again by the
rules engine (a snooze that ended while the condition holds) starts a new round: every
channel gets it again and attempts count from 1. A collector that dies while sending
leaves a `sending` alert whose lease runs out: another claims it again.

Webhooks: `POST` of a JSON document, signed with HMAC-SHA256 over `<timestamp>.<body>` with
the channel's secret: headers `X-CDRStats-Timestamp` (Unix seconds) and
`X-CDRStats-Signature: sha256=<hex>`; any 2xx is a success, redirects are not followed.

HTTP API (JSON; readers may list, admins write; tenant-scoped like the rest of the API):

    GET    /api/v1/notify/channels             the tenant's channels (never the secret)
    POST   /api/v1/notify/channels             {kind, target, min_severity?, name?, secret?}
    PATCH  /api/v1/notify/channels/{id}        {enabled?, min_severity?, name?}
    DELETE /api/v1/notify/channels/{id}
    POST   /api/v1/notify/channels/{id}/test   send a test notification now
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import smtplib
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import httpx
import psycopg
from cdrstats_agent import logs
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import apidoc, audit, auth, replies
from .settings import Settings
from .state import get_state

log = logs.get_logger("cdrstats.collector.notify")

ALERT_CHANNEL = "cdrstats_alert"
KINDS = ("email", "webhook")
SEVERITIES = ("info", "warning", "critical")
"""In increasing order; a channel gets the alerts at or above its `min_severity`."""
ADMIN_ROLES = auth.ADMIN_ROLES
POLL_S = 5.0
"""Without a NOTIFY the loop still looks for due alerts this often."""
BATCH = 20
MAX_RETRY_S = 3600.0
MAX_ADDRESSES = 20
SIGNATURE_HEADER = "X-CDRStats-Signature"
TIMESTAMP_HEADER = "X-CDRStats-Timestamp"
_EMAIL = re.compile(r"^[^@\s,;<>\"()\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


class ChannelError(Exception):
    """Bad channel input; `field` names what was wrong (API 400, CLI exit 2)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# --- channels ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Channel:
    id: int
    tenant_id: int
    name: str
    kind: str
    target: str
    min_severity: str
    enabled: bool
    created_at: datetime
    created_by: str
    secret: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "name": self.name,
            "kind": self.kind,
            "target": self.target,
            "min_severity": self.min_severity,
            "enabled": self.enabled,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


_COLUMNS = "id, tenant_id, name, kind, target, min_severity, enabled, created_at, created_by"


def severity_rank(severity: str) -> int:
    """Position in SEVERITIES; an unknown severity ranks as the highest (never dropped)."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        return len(SEVERITIES)


def parse_addresses(value: Any) -> list[str]:
    """Email addresses from a list or a comma/semicolon separated text; ChannelError."""
    if isinstance(value, str):
        items = [v.strip() for v in re.split(r"[,;]", value)]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise ChannelError("target", "email addresses as a list or a comma-separated text")
    items = [v for v in items if v]
    if not items:
        raise ChannelError("target", "at least one email address is required")
    if len(items) > MAX_ADDRESSES:
        raise ChannelError("target", f"at most {MAX_ADDRESSES} addresses")
    for item in items:
        if len(item) > 254 or not _EMAIL.match(item):
            raise ChannelError("target", f"{item!r:.80} is not an email address")
    return items


def check_url(value: Any) -> str:
    """An http(s) URL with a host; ChannelError otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ChannelError("target", "the webhook URL is required")
    url = value.strip()
    if len(url) > 2000:
        raise ChannelError("target", "URL longer than 2000 characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ChannelError("target", f"{url!r:.80} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ChannelError("target", f"{url!r:.80} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ChannelError("target", f"{url!r:.80} has no host")
    if port == 0 or any(c in url for c in " \r\n\t"):
        raise ChannelError("target", f"{url!r:.80} is not a valid URL")
    return url


def check_channel(doc: dict[str, Any]) -> dict[str, Any]:
    """The clean column values of a channel to create from `doc` (API body or CLI)."""
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ChannelError("kind", f"must be one of {', '.join(KINDS)}, got {kind!r:.40}")
    if kind == "email":
        target = ", ".join(parse_addresses(doc.get("target")))
    else:
        target = check_url(doc.get("target"))
    severity = doc.get("min_severity", "warning")
    if severity not in SEVERITIES:
        raise ChannelError(
            "min_severity", f"must be one of {', '.join(SEVERITIES)}, got {severity!r:.40}"
        )
    name = doc.get("name", "")
    if not isinstance(name, str) or len(name) > 100:
        raise ChannelError("name", "a text of at most 100 characters")
    enabled = doc.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ChannelError("enabled", "must be true or false")
    secret = doc.get("secret")
    if kind == "email":
        if secret:
            raise ChannelError("secret", "only webhook channels have a secret")
        secret = ""
    elif secret is None or secret == "":
        secret = secrets.token_urlsafe(32)
    elif not isinstance(secret, str) or not 16 <= len(secret) <= 200:
        raise ChannelError("secret", "a text of 16 to 200 characters (or none: one is made)")
    unknown = sorted(set(doc) - {"kind", "target", "min_severity", "name", "enabled", "secret"})
    if unknown:
        raise ChannelError(unknown[0], "unknown field")
    return {
        "kind": kind,
        "target": target,
        "min_severity": severity,
        "name": name.strip(),
        "enabled": enabled,
        "secret": secret,
    }


async def add_channel(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    doc: dict[str, Any],
    *,
    by: str,
    user_id: int | None = None,
) -> Channel:
    """Check and store a channel, audited; the returned Channel carries its secret."""
    clean = check_channel(doc)
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO notify_channel (tenant_id, name, kind, target, secret, min_severity,"
            " enabled, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            f" RETURNING {_COLUMNS}, secret",
            (
                tenant_id,
                clean["name"],
                clean["kind"],
                clean["target"],
                clean["secret"],
                clean["min_severity"],
                clean["enabled"],
                by,
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        channel = Channel(*row)
        await audit.record(
            conn,
            tenant_id,
            user_id,
            by,
            "notify.channel_add",
            f"{channel.kind}:{channel.id}",
            {"target": channel.target, "min_severity": channel.min_severity},
        )
    return channel


async def list_channels(conn: psycopg.AsyncConnection[Any], tenant_id: int) -> list[Channel]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM notify_channel WHERE tenant_id = %s ORDER BY id", (tenant_id,)
    )
    return [Channel(*r) for r in await cur.fetchall()]


async def get_channel(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, channel_id: int
) -> Channel | None:
    """The channel with its secret (for sending), or None when the tenant has no such one."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS}, secret FROM notify_channel WHERE tenant_id = %s AND id = %s",
        (tenant_id, channel_id),
    )
    row = await cur.fetchone()
    return None if row is None else Channel(*row)


async def update_channel(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    channel_id: int,
    doc: dict[str, Any],
    *,
    by: str,
    user_id: int | None = None,
) -> Channel | None:
    """Change a channel's `enabled`, `min_severity` or `name` (audited); None when the tenant
    has no such channel. ChannelError for bad input (kind, target and secret never change:
    make a new channel)."""
    unknown = sorted(set(doc) - {"enabled", "min_severity", "name"})
    if unknown:
        raise ChannelError(unknown[0], "cannot be changed (enabled, min_severity, name can)")
    if not doc:
        raise ChannelError("enabled", "nothing to change: give enabled, min_severity or name")
    if "enabled" in doc and not isinstance(doc["enabled"], bool):
        raise ChannelError("enabled", "must be true or false")
    if "min_severity" in doc and doc["min_severity"] not in SEVERITIES:
        raise ChannelError(
            "min_severity",
            f"must be one of {', '.join(SEVERITIES)}, got {doc['min_severity']!r:.40}",
        )
    if "name" in doc and (not isinstance(doc["name"], str) or len(doc["name"]) > 100):
        raise ChannelError("name", "a text of at most 100 characters")
    changes = {k: (v.strip() if k == "name" else v) for k, v in doc.items()}
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE notify_channel SET enabled = coalesce(%(enabled)s, enabled),"
            " min_severity = coalesce(%(min_severity)s, min_severity),"
            " name = coalesce(%(name)s, name)"
            f" WHERE tenant_id = %(t)s AND id = %(id)s RETURNING {_COLUMNS}",
            {
                "enabled": changes.get("enabled"),
                "min_severity": changes.get("min_severity"),
                "name": changes.get("name"),
                "t": tenant_id,
                "id": channel_id,
            },
        )
        row = await cur.fetchone()
        if row is None:
            return None
        channel = Channel(*row)
        await audit.record(
            conn,
            tenant_id,
            user_id,
            by,
            "notify.channel_update",
            f"{channel.kind}:{channel.id}",
            changes,
        )
    return channel


async def delete_channel(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    channel_id: int,
    *,
    by: str,
    user_id: int | None = None,
) -> bool:
    async with conn.transaction():
        cur = await conn.execute(
            "DELETE FROM notify_channel WHERE tenant_id = %s AND id = %s RETURNING kind, target",
            (tenant_id, channel_id),
        )
        row = await cur.fetchone()
        if row is None:
            return False
        await audit.record(
            conn,
            tenant_id,
            user_id,
            by,
            "notify.channel_delete",
            f"{row[0]}:{channel_id}",
            {"target": row[1]},
        )
    return True


async def test_channel(
    conn: psycopg.AsyncConnection[Any],
    settings: Settings,
    tenant_id: int,
    channel_id: int,
    *,
    by: str,
    user_id: int | None = None,
) -> str | None:
    """Send a test notification through one channel now; None when it was accepted, else
    the reason. LookupError when the tenant has no such channel. Audited."""
    channel = await get_channel(conn, tenant_id, channel_id)
    if channel is None:
        raise LookupError(f"no notification channel {channel_id}")
    alert = Alert(
        id=0,
        tenant_id=tenant_id,
        tenant="",
        rule_id=None,
        severity="info",
        state="open",
        title="CDR-Stats test notification",
        detail={"note": f"sent by {by} to check this channel"},
        opened_at=datetime.now(UTC),
        attempt=1,
    )
    error = await Sender(settings).send(channel, alert)
    async with conn.transaction():
        await audit.record(
            conn,
            tenant_id,
            user_id,
            by,
            "notify.channel_test",
            f"{channel.kind}:{channel.id}",
            {"ok": error is None, "error": error},
        )
    return error


# --- sending -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """What a notification says about an alert."""

    id: int
    tenant_id: int
    tenant: str
    rule_id: int | None
    severity: str
    state: str
    title: str
    detail: Any
    opened_at: datetime | None
    attempt: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "tenant": self.tenant,
            "rule_id": self.rule_id,
            "severity": self.severity,
            "state": self.state,
            "title": self.title,
            "detail": self.detail,
            "opened_at": None if self.opened_at is None else self.opened_at.isoformat(),
        }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-CDRStats-Signature` value: `sha256=` + hex HMAC-SHA256(secret, ts + "." + body)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, tolerance_s: int = 300
) -> bool:
    """What a webhook receiver does (docs/notifications.md): the signature matches and the
    timestamp is recent."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def email_message(settings: Settings, channel: Channel, alert: Alert) -> EmailMessage:
    msg = EmailMessage()
    subject = " ".join(f"[CDR-Stats] {alert.severity}: {alert.title}".split())  # no CR/LF
    msg["Subject"] = subject[:200]
    msg["From"] = settings.smtp_from
    msg["To"] = channel.target
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=settings.smtp_from.rsplit("@", 1)[-1])
    if alert.id:
        msg["X-CDRStats-Alert"] = str(alert.id)
    lines = [
        alert.title,
        "",
        f"Severity: {alert.severity}",
        f"State:    {alert.state}",
        f"Tenant:   {alert.tenant or alert.tenant_id}",
    ]
    if alert.opened_at is not None:
        lines.append(f"Opened:   {alert.opened_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC")
    if alert.id:
        lines.append(f"Console:  {settings.url}/alerts#alert-{alert.id}")
    lines += ["", "Detail:", json.dumps(alert.detail, indent=2, sort_keys=True, default=str)]
    msg.set_content("\n".join(lines) + "\n")
    return msg


class Sender:
    """Sends one notification through one channel; returns None or the failure's reason."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, channel: Channel, alert: Alert) -> str | None:
        try:
            if channel.kind == "email":
                return await asyncio.to_thread(self._email, channel, alert)
            return await self._webhook(channel, alert)
        except Exception as exc:  # a sender bug must not stop the loop: it is a failure
            log.error("notify_send_crashed", channel=channel.id, exc_info=True)
            return f"internal error: {type(exc).__name__}"

    def _email(self, channel: Channel, alert: Alert) -> str | None:
        s = self.settings
        if not s.smtp_host:
            return "email is not configured (set [notify] smtp_host)"
        msg = email_message(s, channel, alert)
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s) as smtp:
                if s.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if s.smtp_username:
                    smtp.login(s.smtp_username, s.smtp_password)
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = {addr: code for addr, (code, _) in exc.recipients.items()}
            return f"SMTP: recipients refused {codes}"
        except smtplib.SMTPResponseException as exc:
            text = (
                exc.smtp_error.decode(errors="replace")
                if isinstance(exc.smtp_error, bytes)
                else str(exc.smtp_error)
            )
            return f"SMTP {exc.smtp_code}: {text}"[:300]
        except (smtplib.SMTPException, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"timed out after {s.smtp_timeout_s:g} s"
            return f"SMTP {s.smtp_host}:{s.smtp_port}: {reason}"[:300]
        return None

    async def _webhook(self, channel: Channel, alert: Alert) -> str | None:
        body = json.dumps(
            {"event": "alert", "attempt": alert.attempt, "alert": alert.to_json()},
            separators=(",", ":"),
            default=str,
        ).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "cdrstats-collector",
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(channel.secret, ts, body),
        }
        timeout = self.settings.webhook_timeout_s
        try:
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
                r = await client.post(channel.target, content=body, headers=headers)
        except httpx.TimeoutException:
            return f"webhook: timed out after {timeout:g} s"
        except httpx.HTTPError as exc:
            return f"webhook: {type(exc).__name__}: {exc}"[:300]
        if 200 <= r.status_code < 300:
            return None
        return f"webhook: HTTP {r.status_code} {r.reason_phrase}"[:300]


# --- the delivery loop -------------------------------------------------------------------------

# A round of notification starts when an alert becomes 'pending' with no attempt scheduled
# (new, or set pending again by the rules engine, e.g. when a snooze ends): its attempts are
# counted from 1 again. A retry (or a reclaimed lease) has notify_next_at set.
_CLAIM = """
WITH due AS (
    SELECT id, notify_next_at IS NULL AS fresh FROM alert
     WHERE notify_state IN ('pending', 'sending')
       AND coalesce(notify_next_at, '-infinity') <= now()
     ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
UPDATE alert a SET notify_state = 'sending',
       notify_attempts = CASE WHEN due.fresh THEN 1 ELSE a.notify_attempts + 1 END,
       notify_next_at = now() + make_interval(secs => %(lease)s)
  FROM due WHERE a.id = due.id
RETURNING a.id, a.tenant_id, (SELECT name FROM tenant WHERE id = a.tenant_id), a.rule_id,
          a.severity, a.state, a.title, a.detail, a.opened_at, a.notify_attempts
"""


class Notifier:
    """One per collector process: delivers pending alerts (see the module docstring)."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool[Any]) -> None:
        self.settings = settings
        self.pool = pool
        self.sender = Sender(settings)
        self.wake = asyncio.Event()
        self.listening = asyncio.Event()

    @property
    def lease_s(self) -> float:
        """How long a claimed alert is ours before another collector may claim it again."""
        s = self.settings
        return 60.0 + 2 * max(s.smtp_timeout_s, s.webhook_timeout_s)

    def backoff_s(self, attempt: int) -> float:
        return float(min(MAX_RETRY_S, self.settings.notify_retry_s * 2 ** max(0, attempt - 1)))

    async def run_forever(self) -> None:
        listener = asyncio.create_task(self._listen(), name="cdrstats-notify-listener")
        try:
            while True:
                self.wake.clear()
                idle = self._idle_s()
                try:
                    while await self.deliver_due() == BATCH:
                        pass  # a full batch: there may be more
                except (psycopg.Error, PoolTimeout) as exc:
                    text = str(exc).strip()
                    log.warning("notify_failed", reason=text.splitlines()[0] if text else repr(exc))
                    idle = 60.0  # database down or schema not upgraded yet: do not spin
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), idle)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    def _idle_s(self) -> float:
        return max(0.05, min(POLL_S, self.settings.notify_retry_s))

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.settings.database_url,
                    autocommit=True,
                    connect_timeout=5,
                    application_name="cdrstats-notify",
                ) as conn:
                    await conn.execute(f"LISTEN {ALERT_CHANNEL}")
                    self.listening.set()
                    self.wake.set()  # anything raised while we were not listening
                    async for _ in conn.notifies():
                        self.wake.set()
            except psycopg.Error as exc:
                log.warning("notify_listener_down", error=str(exc).strip()[:200])
            finally:
                self.listening.clear()
            await asyncio.sleep(2.0)

    async def deliver_due(self) -> int:
        """Claim the alerts due now, send them, record the outcome; returns how many."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(_CLAIM, {"lease": self.lease_s, "limit": BATCH})
            claimed = [Alert(*r) for r in await cur.fetchall()]
        # All at once (SMTP in worker threads): a batch takes about one timeout, well inside
        # the lease. No connection is held while sending.
        await asyncio.gather(*(self._deliver(alert) for alert in claimed))
        return len(claimed)

    async def _deliver(self, alert: Alert) -> None:
        # On a retry, the channels that accepted the alert earlier in this round are skipped.
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS}, secret FROM notify_channel c"
                " WHERE tenant_id = %(t)s AND enabled AND NOT EXISTS (SELECT 1"
                "   FROM notify_delivery d WHERE d.alert_id = %(a)s AND d.channel_id = c.id"
                "   AND d.ok AND %(n)s > 1 AND d.at >= (SELECT max(at) FROM notify_delivery"
                "   WHERE alert_id = %(a)s AND attempt = 1)) ORDER BY id",
                {"t": alert.tenant_id, "a": alert.id, "n": alert.attempt},
            )
            rows = await cur.fetchall()
        rank = severity_rank(alert.severity)
        channels = [
            ch for ch in (Channel(*r) for r in rows) if severity_rank(ch.min_severity) <= rank
        ]
        results = await asyncio.gather(*(self.sender.send(ch, alert) for ch in channels))
        failures = [
            f"{ch.kind} {ch.id}: {err}" for ch, err in zip(channels, results, strict=True) if err
        ]
        async with self.pool.connection() as conn:
            await self._record(conn, alert, channels, results, failures)

    async def _record(
        self,
        conn: psycopg.AsyncConnection[Any],
        alert: Alert,
        channels: list[Channel],
        results: list[str | None],
        failures: list[str],
    ) -> None:
        if not channels:  # none matches, or (on a retry) all have accepted it already
            cur = await conn.execute(
                "SELECT 1 FROM notify_delivery WHERE alert_id = %(a)s AND ok AND %(n)s > 1"
                " AND at >= (SELECT max(at) FROM notify_delivery"
                "            WHERE alert_id = %(a)s AND attempt = 1) LIMIT 1",
                {"a": alert.id, "n": alert.attempt},
            )
            state = "sent" if await cur.fetchone() else "none"
        elif not failures:
            state = "sent"
        elif alert.attempt >= self.settings.notify_max_attempts:
            state = "failed"
        else:
            state = "pending"
        async with conn.transaction():
            for ch, err in zip(channels, results, strict=True):
                await conn.execute(
                    "INSERT INTO notify_delivery (tenant_id, alert_id, channel_id, kind, target,"
                    " attempt, ok, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (alert.tenant_id, alert.id, ch.id, ch.kind, ch.target, alert.attempt,
                     err is None, err),
                )  # fmt: skip
            await conn.execute(
                "UPDATE alert SET notify_state = %s, notify_error = %s,"
                " notified_at = CASE WHEN %s = 'sent' THEN now() ELSE notified_at END,"
                " notify_next_at = CASE WHEN %s = 'pending'"
                "   THEN now() + make_interval(secs => %s) END"
                " WHERE id = %s",
                (
                    state,
                    "; ".join(failures)[:2000] or None,
                    state,
                    state,
                    self.backoff_s(alert.attempt),
                    alert.id,
                ),
            )
            # The console's Alerts page shows notify_state: tell it (no `state`, so it is
            # not announced as a new alert). Wakes the notifiers too, which find nothing due.
            payload = {"tenant_id": alert.tenant_id, "alert_id": alert.id, "notify_state": state}
            await conn.execute("SELECT pg_notify(%s, %s)", (ALERT_CHANNEL, json.dumps(payload)))
        log.info(
            "alert_notified" if state in ("sent", "none") else "alert_notify_failed",
            alert=alert.id,
            tenant=alert.tenant_id,
            state=state,
            attempt=alert.attempt,
            channels=len(channels),
            errors="; ".join(failures)[:500] or None,
        )


# --- HTTP API ----------------------------------------------------------------------------------


def _channel_id(request: Request) -> int:
    text = request.path_params["id"]
    if not text.isdigit() or len(text) > 18:
        raise HTTPException(404, f"no notification channel {text[:40]!r}")
    return int(text)


async def _handle(request: Request, what: str) -> Response:
    state = get_state(request)
    try:
        if what == "list":
            who = await auth.require(request)
            tenant_id = auth.tenant_scope(who, request.query_params.get("tenant"))
            async with auth.tenant_connection(state.pool, tenant_id) as conn:
                found = await list_channels(conn, tenant_id)
            return JSONResponse({"tenant_id": tenant_id, "channels": [c.to_json() for c in found]})
        who = await auth.require(request, roles=ADMIN_ROLES)
        if what == "add":
            doc = await replies.json_object(request, "the channel")
            tenant = doc.pop("tenant", request.query_params.get("tenant"))
            if tenant is not None and type(tenant) not in (int, str):
                raise HTTPException(400, "tenant: must be a tenant id")
            tenant_id = auth.tenant_scope(who, tenant)
            async with state.pool.connection() as conn:
                channel = await add_channel(
                    conn, tenant_id, doc, by=who.username, user_id=who.user_id
                )
            answer = channel.to_json()
            if channel.kind == "webhook":
                answer["secret"] = channel.secret  # shown once, like an API token
            return JSONResponse(answer, status_code=201)
        tenant_id = auth.tenant_scope(who, request.query_params.get("tenant"))
        channel_id = _channel_id(request)
        async with state.pool.connection() as conn:
            if what == "update":
                doc = await replies.json_object(request, "the channel")
                updated = await update_channel(
                    conn, tenant_id, channel_id, doc, by=who.username, user_id=who.user_id
                )
                if updated is None:
                    raise HTTPException(404, f"no notification channel {channel_id}")
                return JSONResponse(updated.to_json())
            if what == "delete":
                if not await delete_channel(
                    conn, tenant_id, channel_id, by=who.username, user_id=who.user_id
                ):
                    raise HTTPException(404, f"no notification channel {channel_id}")
                return JSONResponse({"id": channel_id, "deleted": True})
            try:
                error = await test_channel(
                    conn, state.settings, tenant_id, channel_id, by=who.username,
                    user_id=who.user_id,
                )  # fmt: skip
            except LookupError as exc:
                raise HTTPException(404, str(exc)) from None
        if error is not None:
            return replies.error(502, error, id=channel_id, ok=False)
        return JSONResponse({"id": channel_id, "ok": True})
    except ChannelError as exc:
        return replies.error(400, str(exc), field=exc.field)
    except auth.ParamError as exc:
        return replies.error(400 if what in ("add", "update") else 422, str(exc.detail))
    except HTTPException as exc:
        return replies.error(
            exc.status_code, str(exc.detail), headers=dict(exc.headers) if exc.headers else None
        )
    except (psycopg.OperationalError, PoolTimeout):
        return replies.unavailable("database unavailable, retry later")


async def channels_endpoint(request: Request) -> Response:
    return await _handle(request, "list" if request.method == "GET" else "add")


async def channel_endpoint(request: Request) -> Response:
    return await _handle(request, "delete" if request.method == "DELETE" else "update")


async def channel_test_endpoint(request: Request) -> Response:
    return await _handle(request, "test")


def routes() -> list[BaseRoute]:
    """The notification routes, to mount in the collector app (before the console)."""
    return [
        Route("/api/v1/notify/channels", channels_endpoint, methods=["GET", "POST"]),
        Route("/api/v1/notify/channels/{id}", channel_endpoint, methods=["PATCH", "DELETE"]),
        Route("/api/v1/notify/channels/{id}/test", channel_test_endpoint, methods=["POST"]),
    ]


def openapi_paths() -> dict[str, Any]:
    """The notification routes in the OpenAPI document (`openapi.py` adds them)."""
    errors = apidoc.errors

    common = {"_401": "no or invalid credentials", "_503": "PostgreSQL is unavailable"}
    admin = {**common, "_403": "not an admin (superadmin, tenant_admin)"}
    tenant_param = {
        "name": "tenant",
        "in": "query",
        "required": False,
        "schema": {"type": "integer"},
        "description": "superadmins: the tenant id",
    }
    id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
    channel = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "tenant_id": {"type": "integer"},
            "name": {"type": "string"},
            "kind": {"type": "string", "enum": list(KINDS)},
            "target": {"type": "string"},
            "min_severity": {"type": "string", "enum": list(SEVERITIES)},
            "enabled": {"type": "boolean"},
            "created_at": {"type": "string", "format": "date-time"},
            "created_by": {"type": "string"},
            "secret": {"type": "string", "description": "webhooks, in the POST answer only"},
        },
    }

    def ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    security: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}]
    return {
        "/api/v1/notify/channels": {
            "get": {
                "operationId": "notify_channels",
                "summary": "The tenant's notification channels (docs/notifications.md)",
                "tags": ["notifications"],
                "parameters": [tenant_param],
                "responses": {
                    "200": ok(
                        "OK",
                        {
                            "type": "object",
                            "properties": {
                                "tenant_id": {"type": "integer"},
                                "channels": {"type": "array", "items": channel},
                            },
                        },
                    ),
                    **errors(_404="another tenant", _422="bad tenant", **common),
                },
                "security": security,
            },
            "post": {
                "operationId": "notify_channel_add",
                "summary": "Add an email or webhook channel",
                "tags": ["notifications"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["kind", "target"],
                                "properties": {
                                    "kind": {"type": "string", "enum": list(KINDS)},
                                    "target": {
                                        "type": ["string", "array"],
                                        "description": "email addresses, or the webhook URL",
                                    },
                                    "min_severity": {
                                        "type": "string",
                                        "enum": list(SEVERITIES),
                                        "default": "warning",
                                    },
                                    "name": {"type": "string"},
                                    "enabled": {"type": "boolean", "default": True},
                                    "secret": {
                                        "type": "string",
                                        "description": "webhooks: HMAC key (made if absent)",
                                    },
                                    "tenant": {"type": ["integer", "string"]},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": ok("created", channel),
                    **errors(
                        _400="bad field (named in `field`)",
                        _404="another tenant",
                        _415="the body is not application/json",
                        **admin,
                    ),
                },
                "security": security,
            },
        },
        "/api/v1/notify/channels/{id}": {
            "patch": {
                "operationId": "notify_channel_update",
                "summary": "Enable or disable a channel, change its min_severity or name",
                "tags": ["notifications"],
                "parameters": [id_param, tenant_param],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "enabled": {"type": "boolean"},
                                    "min_severity": {"type": "string", "enum": list(SEVERITIES)},
                                    "name": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": ok("the channel", channel),
                    **errors(
                        _400="bad field (named in `field`)",
                        _404="no such channel in the tenant",
                        _415="the body is not application/json",
                        **admin,
                    ),
                },
                "security": security,
            },
            "delete": {
                "operationId": "notify_channel_delete",
                "summary": "Delete a notification channel",
                "tags": ["notifications"],
                "parameters": [id_param, tenant_param],
                "responses": {
                    "200": ok("deleted", {"type": "object"}),
                    **errors(_404="no such channel in the tenant", **admin),
                },
                "security": security,
            },
        },
        "/api/v1/notify/channels/{id}/test": {
            "post": {
                "operationId": "notify_channel_test",
                "summary": "Send a test notification through a channel now",
                "tags": ["notifications"],
                "parameters": [id_param, tenant_param],
                "responses": {
                    "200": ok("accepted by the mail server or the webhook", {"type": "object"}),
                    **errors(
                        _404="no such channel in the tenant",
                        _502="the channel failed (the reason is the error)",
                        **admin,
                    ),
                },
                "security": security,
            }
        },
    }

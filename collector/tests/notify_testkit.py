"""Real peers for the notification tests: an SMTP server (aiosmtpd) and an HTTP server that
receives webhooks, both on loopback, and alert rows written as the rules engine writes them."""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from psycopg.types.json import Jsonb

from tests.fix_db import free_port


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content())  # type: ignore[attr-defined]


class Inbox:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"


class SmtpServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.inbox = Inbox()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


@dataclass
class Hook:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> Any:
        return json.loads(self.body)


@dataclass
class HookServer:
    """Webhook receiver: `/ok/...` answers 204, `/fail/...` 500, `/slow/...` after 3 s."""

    port: int = field(default_factory=free_port)
    received: list[Hook] = field(default_factory=list)

    def __post_init__(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                received.append(
                    Hook(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                if self.path.startswith("/slow"):
                    time.sleep(3)
                code = 500 if self.path.startswith("/fail") else 204
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Hook]:
        return [h for h in list(self.received) if h.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def add_alert(
    conn: psycopg.Connection[Any],
    tenant_id: int,
    severity: str = "warning",
    title: str = "ASR below 30 % on trunk carrier-a",
    detail: dict[str, Any] | None = None,
) -> int:
    """An alert row as the rules engine writes it (notify_state 'pending'), and its NOTIFY."""
    row = conn.execute(
        "INSERT INTO alert (tenant_id, episode_key, severity, title, detail)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (
            tenant_id,
            uuid.uuid4().hex,
            severity,
            title,
            Jsonb(detail if detail is not None else {"asr": 12.5, "trunk": "carrier-a"}),
        ),
    ).fetchone()
    assert row is not None
    conn.execute("SELECT pg_notify('cdrstats_alert', %s)", (json.dumps({"tenant_id": tenant_id}),))
    return int(row[0])


def alert_state(conn: psycopg.Connection[Any], alert_id: int) -> tuple[str, int, str | None]:
    row = conn.execute(
        "SELECT notify_state, notify_attempts, notify_error FROM alert WHERE id = %s", (alert_id,)
    ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1]), row[2]


def deliveries(
    conn: psycopg.Connection[Any], alert_id: int
) -> list[tuple[int, str, int, bool, str | None]]:
    """(channel id, kind, attempt, ok, error) of every attempt for the alert."""
    rows = conn.execute(
        "SELECT channel_id, kind, attempt, ok, error FROM notify_delivery WHERE alert_id = %s"
        " ORDER BY attempt, channel_id",
        (alert_id,),
    ).fetchall()
    return [(int(r[0]), str(r[1]), int(r[2]), bool(r[3]), r[4]) for r in rows]

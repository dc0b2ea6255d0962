"""mod_json_cdr / mod_xml_cdr: CDRs POSTed by the switch to a port the agent listens on.

The switch posts one document per channel (`url` in json_cdr.conf / xml_cdr.conf, with
`?uuid=<uuid>`), encoded three ways (`encode` parameter):

* `true` (default): `Content-Type: application/x-www-form-urlencoded`, body `cdr=<url-encoded>`;
* `base64`: `Content-Type: application/x-www-form-base64-encoded`, body `cdr=<base64>`;
* `false`: the raw document (`application/json`, or XML for mod_xml_cdr).

Variable values inside the document are themselves URL-encoded unless `encode-values=false`
(`decode_values` option). Any 2xx tells the switch the CDR is stored; anything else makes it
retry (`retries`, `delay`) and finally write the CDR to its `err-log-dir`.

**2xx only once the CDR is in the spool.** `read()` yields each received CDR as a
`ReadResult`; the agent's runner commits a result to the spool before it asks the generator
for the next one (docs/plugins.md, rule 1 of `read`). So when the generator resumes after a
`yield`, the CDRs of that result are committed, and only then are their HTTP requests
answered `200`. If the commit fails, the runner closes the generator: the pending requests
get `503` and the switch retries. A request that waits longer than `reply_timeout_s` also
gets `503`. Duplicates after such a retry are harmless (uuid is the natural key).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from cdrstats_agent.errors import SourceError
from cdrstats_agent.logs import get_logger
from cdrstats_agent.model import CDR
from cdrstats_agent.plugin import ReadResult, Rejected

from .variables import Invalid, Settings, Skipped, to_cdr

log = get_logger("cdrstats.plugins.freeswitch.http")
MAX_BODY = 8 << 20
HEADER_LIMIT = 64 << 10
PROFILE_FIELDS = (
    "caller_id_name",
    "caller_id_number",
    "destination_number",
    "network_addr",
    "ani",
    "context",
    "username",
)
"""Caller-profile fields (callflow) used when the variables lack them."""


class BadDocument(ValueError):
    """A POST body that is not a mod_json_cdr / mod_xml_cdr document."""


def decode_body(body: bytes, content_type: str) -> bytes:
    """The document inside a POST body (form-encoded, base64 or raw)."""
    stripped = body.strip()
    if stripped.startswith(b"cdr="):
        payload = stripped[4:]
        if "base64" in content_type:
            try:
                return base64.b64decode(unquote_to_bytes(payload), validate=False)
            except (binascii.Error, ValueError) as exc:
                raise BadDocument(f"cdr= is not valid base64 ({exc})") from None
        return unquote_to_bytes(payload.replace(b"+", b" "))
    if stripped[:1] in (b"{", b"<"):
        return stripped
    try:
        decoded = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise BadDocument(
            "body is neither `cdr=...` (form-encoded or base64) nor a JSON/XML document"
        ) from None
    return decoded


def variables_of(document: bytes, decode_values: bool) -> dict[str, Any]:
    """Channel variables of a JSON or XML CDR, with caller-profile fields as fallback."""
    text = document.decode("utf-8", errors="replace").strip()
    variables: dict[str, Any] = {}
    profile: dict[str, str] = {}
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise BadDocument(f"not JSON ({exc})") from None
        raw = doc.get("variables") if isinstance(doc, dict) else None
        if not isinstance(raw, dict):
            raise BadDocument("JSON CDR has no `variables` object")
        variables = {str(k): v for k, v in raw.items()}
        flow = doc.get("callflow")
        first = flow[0] if isinstance(flow, list) and flow else flow
        if isinstance(first, dict) and isinstance(first.get("caller_profile"), dict):
            profile = {k: v for k, v in first["caller_profile"].items() if isinstance(v, str)}
        if "core-uuid" in doc:
            variables.setdefault("core_uuid", doc["core-uuid"])
    elif text.startswith("<"):
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise BadDocument(f"not XML ({exc})") from None
        node = root.find("variables")
        if node is None:
            raise BadDocument("XML CDR has no <variables> element")
        variables = {child.tag: child.text or "" for child in node}
        cp = root.find("callflow/caller_profile")
        if cp is not None:
            profile = {child.tag: child.text or "" for child in cp if len(child) == 0}
    else:
        raise BadDocument("neither JSON nor XML")
    if decode_values:
        variables = {
            k: unquote(v) if isinstance(v, str) and "%" in v else v for k, v in variables.items()
        }
        profile = {k: unquote(v) if "%" in v else v for k, v in profile.items()}
    for name in PROFILE_FIELDS:
        if profile.get(name) and not variables.get(name):
            variables[name] = profile[name]
    return variables


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""


def _future() -> asyncio.Future[bool]:
    return asyncio.get_running_loop().create_future()


@dataclass
class _Pending:
    cdr: CDR | None
    rejected: Rejected | None
    done: asyncio.Future[bool] = field(default_factory=lambda: _future())


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One HTTP/1.1 request (Content-Length or chunked body); None at a clean EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadDocument("connection closed inside the request head") from None
    except asyncio.LimitOverrunError:
        raise BadDocument("request head too long") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadDocument(f"not an HTTP request line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadDocument(f"malformed header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
    return Request(parts[0], parts[1], headers)


async def read_body(reader: asyncio.StreamReader, req: Request) -> bytes:
    if req.headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                raise BadDocument("body too large")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length_text = req.headers.get("content-length", "0")
    if not length_text.isdigit():
        raise BadDocument(f"bad Content-Length {length_text[:20]!r}")
    length = int(length_text)
    if length > MAX_BODY:
        raise BadDocument("body too large")
    return await reader.readexactly(length)


def _response(status: int, reason: str, text: str) -> bytes:
    body = (text + "\n").encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class HttpSource:
    """Listens for mod_json_cdr / mod_xml_cdr posts."""

    def __init__(
        self,
        name: str,
        *,
        listen: str,
        port: int,
        path: str,
        credentials: str | None,
        decode_values: bool,
        settings: Settings,
        reply_timeout_s: float,
    ) -> None:
        self.name = name
        self.listen = listen
        self.port = port
        self.path = path
        self.credentials = credentials
        self.decode_values = decode_values
        self.settings = settings
        self.reply_timeout_s = reply_timeout_s
        self.stats = {"posts": 0, "cdrs": 0, "rejected": 0, "b_legs": 0, "unanswered": 0}
        self.bound_port: int | None = None
        """The port actually listened on (useful with port = 0 in tests)."""
        self.listening = asyncio.Event()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._sequence = 0

    async def check(self) -> None:
        try:
            server = await asyncio.start_server(lambda r, w: None, self.listen, self.port)
        except OSError as exc:
            raise SourceError(
                f"cannot listen on {self.listen}:{self.port} for CDR posts: {exc.strerror or exc}"
            ) from None
        server.close()
        await server.wait_closed()

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        if self.credentials is None:
            return True
        value = headers.get("authorization", "")
        if not value.lower().startswith("basic "):
            return False
        try:
            given = base64.b64decode(value[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self.credentials.encode())

    def _parse(self, req: Request) -> _Pending:
        where = f"POST {req.target[:120]}"
        try:
            document = decode_body(req.body, req.headers.get("content-type", ""))
            variables = variables_of(document, self.decode_values)
            result = to_cdr(variables, self.settings)
        except (BadDocument, Invalid) as exc:
            return _Pending(None, Rejected(where, str(exc)))
        if isinstance(result, Skipped):
            self.stats["b_legs"] += 1
            return _Pending(None, None)
        return _Pending(result, None)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue = self._queue
        try:
            while queue is not None:
                try:
                    req = await read_request(reader)
                    if req is None:
                        return
                    if req.headers.get("expect", "").lower() == "100-continue":
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    req.body = await read_body(reader, req)
                except (BadDocument, ValueError, asyncio.IncompleteReadError) as exc:
                    writer.write(_response(400, "Bad Request", str(exc)))
                    await writer.drain()
                    return
                reply = await self._answer(req, queue)
                writer.write(reply)
                await writer.drain()
                if req.headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.LimitOverrunError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, req: Request, queue: asyncio.Queue[_Pending]) -> bytes:
        if req.method != "POST":
            return _response(405, "Method Not Allowed", "POST CDRs here")
        if req.target.split("?", 1)[0] != self.path:
            return _response(404, "Not Found", f"CDRs are posted to {self.path}")
        if not self._authorized(req.headers):
            return _response(401, "Unauthorized", "bad credentials (json_cdr.conf `cred`)")
        if self._queue is not queue:  # read() ended since this connection was opened
            return _response(503, "Service Unavailable", "not reading; retry")
        self.stats["posts"] += 1
        pending = self._parse(req)
        if pending.rejected is not None:
            # Counted in the spool like any rejected row; 2xx would lose nothing more (the
            # switch cannot send it better), but 4xx makes the switch keep it in err-log-dir.
            await queue.put(pending)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(pending.done), self.reply_timeout_s)
            return _response(400, "Bad Request", pending.rejected.reason)
        if pending.cdr is None:
            return _response(200, "OK", 'B leg: not stored (legs = "a")')
        await queue.put(pending)
        try:
            stored = await asyncio.wait_for(asyncio.shield(pending.done), self.reply_timeout_s)
        except TimeoutError:
            stored = False
        if not stored:
            self.stats["unanswered"] += 1
            return _response(503, "Service Unavailable", "not stored yet; retry")
        return _response(200, "OK", "stored")

    async def read(self, checkpoint: str | None) -> AsyncGenerator[ReadResult, None]:
        queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._queue = queue
        try:
            server = await asyncio.start_server(
                self._handle, self.listen, self.port, limit=HEADER_LIMIT
            )
        except OSError as exc:
            raise SourceError(
                f"cannot listen on {self.listen}:{self.port} for CDR posts: {exc.strerror or exc}"
            ) from None
        self.bound_port = server.sockets[0].getsockname()[1]
        self.listening.set()
        log.info("listening", source=self.name, address=f"{self.listen}:{self.bound_port}")
        batch: list[_Pending] = []
        try:
            while True:
                batch = [await queue.get()]
                while not queue.empty() and len(batch) < 500:
                    batch.append(queue.get_nowait())
                self._sequence += 1
                cdrs = [p.cdr for p in batch if p.cdr is not None]
                rejected = [p.rejected for p in batch if p.rejected is not None]
                yield ReadResult(cdrs, json.dumps({"posts": self._sequence}), rejected)
                # Resumed: the runner has committed that result to the spool.
                self.stats["cdrs"] += len(cdrs)
                self.stats["rejected"] += len(rejected)
                for p in batch:
                    if not p.done.done():
                        p.done.set_result(True)
                batch = []
        finally:
            self.listening.clear()
            self._queue = None
            server.close()
            for p in batch:
                if not p.done.done():
                    p.done.set_result(False)
            while not queue.empty():
                p = queue.get_nowait()
                if not p.done.done():
                    p.done.set_result(False)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def close(self) -> None:
        pass

"""mod_json_cdr / mod_xml_cdr posts: three encodings, 2xx only after the spool commit."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cdrstats_agent.errors import ConfigError, SourceError
from cdrstats_agent.model import Disposition
from cdrstats_agent.plugin import ReadResult
from cdrstats_freeswitch.http_source import HttpSource
from freeswitch_testkit import REFERENCE, make_source, wait_until

SAMPLE = (REFERENCE / "json_cdr_cgrates_fscdr_test.json").read_bytes()
SAMPLE_UUID = "3da8bf84-c133-4959-9e24-e72875cb33a1"


class Listening:
    """An HTTP source whose `read()` is driven by the test, one result at a time."""

    def __init__(self, **options: Any) -> None:
        source = make_source({"store": "http", "port": 0, **options})
        assert isinstance(source.store, HttpSource)
        self.store: HttpSource = source.store
        self.agen: AsyncGenerator[ReadResult, None] = source.read(None)
        self.pending: asyncio.Future[ReadResult] = asyncio.ensure_future(anext(self.agen))

    async def start(self) -> Listening:
        await wait_until(self.store.listening.is_set, 5, "the HTTP source to listen")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.store.bound_port}/cdr"

    async def result(self) -> ReadResult:
        """The next result; the HTTP replies for it are held until `commit()`."""
        result = await asyncio.wait_for(self.pending, 10)
        return result

    def commit(self) -> None:
        """What the runner does after committing a result: ask for the next one."""
        self.pending = asyncio.ensure_future(anext(self.agen))

    async def close(self) -> None:
        self.pending.cancel()
        await asyncio.gather(self.pending, return_exceptions=True)
        await self.agen.aclose()


async def post(url: str, content: bytes, content_type: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            url + f"?uuid={SAMPLE_UUID}",
            content=content,
            headers={"Content-Type": content_type},
            **kw,
        )


ENCODINGS = {
    "form": (
        b"cdr=" + quote(SAMPLE.decode(), safe="").encode(),
        "application/x-www-form-urlencoded",
    ),
    "base64": (b"cdr=" + base64.b64encode(SAMPLE), "application/x-www-form-base64-encoded"),
    "raw": (SAMPLE, "application/json"),
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
async def test_reference_document_in_each_encoding(encoding: str) -> None:
    server = await Listening().start()
    try:
        body, content_type = ENCODINGS[encoding]
        reply = asyncio.ensure_future(post(server.url, body, content_type))
        result = await server.result()
        (cdr,) = result.cdrs
        await asyncio.sleep(0.05)
        assert not reply.done(), "answered before the CDR was committed"
        server.commit()
        response = await reply
        assert response.status_code == 200
        assert cdr.key == SAMPLE_UUID
        assert cdr.start == datetime.fromtimestamp(1515666344.534355, UTC)
        assert cdr.answer == datetime.fromtimestamp(1515666347.954373, UTC)
        assert (cdr.duration, cdr.billsec, cdr.hangup_cause) == (71, 68, 16)
        assert cdr.disposition is Disposition.ANSWERED
        assert (cdr.caller, cdr.callee) == ("1001", "1002")  # from the callflow's caller_profile
        assert (cdr.src_ip, cdr.user_agent) == ("10.10.10.100", "Jitsi2.10.5550Linux")
        assert (cdr.read_codec, cdr.write_codec) == ("PCMU", "PCMU")
        assert cdr.extra["sip_hangup_disposition"] == "send_bye"
        assert cdr.extra["core_uuid"] == "eb8bcdd2-d9eb-4f8f-80c3-1a4042aabe31"
    finally:
        await server.close()


async def test_no_commit_means_no_2xx() -> None:
    """The runner's commit failed: it closes the generator; the switch gets 503 and retries."""
    server = await Listening().start()
    try:
        reply = asyncio.ensure_future(post(server.url, *ENCODINGS["raw"]))
        await server.result()
        await server.agen.aclose()
        response = await reply
        assert response.status_code == 503
    finally:
        await server.close()


async def test_reply_timeout_gives_503() -> None:
    server = await Listening(reply_timeout_s=0.2).start()
    try:
        response = await post(server.url, *ENCODINGS["raw"])
        assert response.status_code == 503
        assert server.store.stats["unanswered"] == 1
    finally:
        await server.close()


async def test_xml_cdr_with_encoded_values() -> None:
    xml = (
        '<?xml version="1.0"?><cdr core-uuid="c1"><channel_data><state>CS_REPORTING</state>'
        "</channel_data><variables><uuid>11111111-2222-3333-4444-555555555555</uuid>"
        "<caller_id_name>Jane%20Doe</caller_id_name><start_epoch>1700000000</start_epoch>"
        "<answer_epoch>0</answer_epoch><end_epoch>1700000020</end_epoch>"
        "<duration>20</duration><billsec>0</billsec><hangup_cause>ORIGINATOR_CANCEL"
        "</hangup_cause><sip_user_agent>Linphone%2F5.0</sip_user_agent></variables>"
        "<callflow><caller_profile><caller_id_number>2000</caller_id_number>"
        "<destination_number>3000</destination_number></caller_profile></callflow></cdr>"
    )
    server = await Listening().start()
    try:
        body = b"cdr=" + quote(xml, safe="").encode()
        reply = asyncio.ensure_future(post(server.url, body, "application/x-www-form-urlencoded"))
        (cdr,) = (await server.result()).cdrs
        server.commit()
        assert (await reply).status_code == 200
        assert (cdr.caller_name, cdr.caller, cdr.callee) == ("Jane Doe", "2000", "3000")
        assert cdr.user_agent == "Linphone/5.0" and cdr.answer is None
        assert cdr.disposition is Disposition.CANCELLED and cdr.hangup_cause == 487
    finally:
        await server.close()


async def test_bad_documents_are_rejected_and_counted() -> None:
    server = await Listening().start()
    try:
        no_uuid = json.dumps({"variables": {"start_epoch": "1700000000"}}).encode()
        for body, expected in (
            (b"cdr=%7Bnot json", "not JSON"),
            (b"hello", "neither `cdr=...`"),
            (no_uuid, "uuid: missing"),
        ):
            reply = asyncio.ensure_future(post(server.url, body, "application/json"))
            result = await server.result()
            assert not result.cdrs and expected in result.rejected[0].reason
            server.commit()
            response = await reply
            assert response.status_code == 400 and expected in response.text
    finally:
        await server.close()


async def test_credentials_path_method_and_b_legs() -> None:
    server = await Listening(credentials="fs:secret").start()
    try:
        body, ctype = ENCODINGS["raw"]
        assert (await post(server.url, body, ctype)).status_code == 401
        assert (await post(server.url, body, ctype, auth=("fs", "wrong"))).status_code == 401
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.url)).status_code == 405
            other = server.url.replace("/cdr", "/other")
            assert (await client.post(other, content=body)).status_code == 404
        b_leg = json.loads(SAMPLE)
        b_leg["variables"]["call_uuid"] = "00000000-0000-0000-0000-000000000001"
        response = await post(server.url, json.dumps(b_leg).encode(), ctype, auth=("fs", "secret"))
        assert response.status_code == 200 and "B leg" in response.text
        reply = asyncio.ensure_future(post(server.url, body, ctype, auth=("fs", "secret")))
        assert (await server.result()).cdrs[0].key == SAMPLE_UUID
        server.commit()
        assert (await reply).status_code == 200
    finally:
        await server.close()


async def test_curl_style_expect_continue_and_chunked_body() -> None:
    server = await Listening().start()
    try:
        body, _ = ENCODINGS["form"]
        reader, writer = await asyncio.open_connection("127.0.0.1", server.store.bound_port)
        writer.write(
            b"POST /cdr?uuid=x HTTP/1.1\r\nHost: fs\r\nUser-Agent: freeswitch-json/1.0\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        half = len(body) // 2
        for chunk in (body[:half], body[half:]):
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        assert (await server.result()).cdrs[0].key == SAMPLE_UUID
        server.commit()
        status = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
        assert status.startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await server.close()


async def test_check_and_options() -> None:
    busy = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = busy.sockets[0].getsockname()[1]
    try:
        source = make_source({"store": "http", "port": port})
        with pytest.raises(SourceError, match=f"cannot listen on 127.0.0.1:{port}"):
            await source.check()
    finally:
        busy.close()
    with pytest.raises(ConfigError, match="credentials"):
        make_source({"store": "http", "credentials": "nocolon"})
    with pytest.raises(ConfigError, match="url_path"):
        make_source({"store": "http", "url_path": "cdr"})


@pytest.mark.parametrize("encoding", ["form", "base64"])
async def test_plus_signs_survive_each_encoding(encoding: str) -> None:
    """FreeSWITCH's url-encoding escapes '+' (%2B); base64 bodies are sent unescaped and hold
    '+' and '/' of their own alphabet."""
    doc = json.dumps(
        {
            "variables": {
                "uuid": "22222222-2222-2222-2222-222222222222",
                "caller_id_number": "+33612345678",
                "caller_id_name": "~~~>>>???~~~>>>",
                "start_epoch": "1700000000",
                "end_epoch": "1700000010",
            }
        }
    ).encode()
    if encoding == "form":
        body, ctype = b"cdr=" + quote(doc.decode(), safe="").encode(), ENCODINGS["form"][1]
        assert b"%2B33612345678" in body
    else:
        body, ctype = b"cdr=" + base64.b64encode(doc), ENCODINGS["base64"][1]
        assert b"+" in body[4:] and b"/" in body[4:]
    server = await Listening(decode_values=False).start()
    try:
        reply = asyncio.ensure_future(post(server.url, body, ctype))
        (cdr,) = (await server.result()).cdrs
        server.commit()
        assert (await reply).status_code == 200
        assert cdr.caller == "+33612345678" and cdr.caller_name == "~~~>>>???~~~>>>"
    finally:
        await server.close()


async def test_a_kept_alive_connection_after_read_ended_gets_503() -> None:
    server = await Listening().start()
    body, ctype = ENCODINGS["raw"]
    async with httpx.AsyncClient(timeout=10) as client:
        url = server.url
        reply = asyncio.ensure_future(
            client.post(url, content=body, headers={"Content-Type": ctype})
        )
        await server.result()
        server.commit()
        assert (await reply).status_code == 200
        await server.close()  # read() ends (the agent restarts the source)
        again = server.store.read(None)
        pending = asyncio.ensure_future(anext(again))
        try:
            await wait_until(server.store.listening.is_set, 5, "the new listener")
            stale = await client.post(url, content=body, headers={"Content-Type": ctype})
            assert stale.status_code == 503
        finally:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
            await again.aclose()

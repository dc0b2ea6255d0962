"""Identity and enrollment, and the CLI commands that use them (enroll, check, status)."""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path

import pytest
from agent_testkit import CollectorPeer, dead_url, make_cdr
from cdrstats_agent import wire
from cdrstats_agent.errors import IdentityError
from cdrstats_agent.identity import (
    IDENTITY_FILE,
    KEY_FILE,
    enroll,
    load_agent,
    load_identity,
    load_key,
    load_or_create_key,
)
from cdrstats_agent.spool import SPOOL_FILE, SpoolStore


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = load_or_create_key(state)
    path = state / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert load_or_create_key(state).encode() == key.encode()
    assert load_key(state).verify_key == key.verify_key
    assert [p.name for p in state.iterdir()] == [KEY_FILE]  # no temporary file left behind


def test_bad_key_file(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not base64!")
    with pytest.raises(IdentityError, match="not a valid agent key"):
        load_key(tmp_path)
    with pytest.raises(IdentityError, match="not enrolled; run: cdrstats-agent enroll"):
        load_agent(tmp_path)


async def test_enroll_writes_identity_and_refuses_to_overwrite(
    tmp_path: Path, peer: CollectorPeer
) -> None:
    peer.state.tokens = {"tok-1", "tok-2"}
    identity = await enroll(tmp_path, peer.url + "/", "tok-1", hostname="pbx1")
    assert (identity.agent_id, identity.tenant, identity.switch) == ("agent-1", "acme", "pbx1")
    assert identity.url == peer.url
    assert load_identity(tmp_path) == identity
    assert stat.S_IMODE((tmp_path / IDENTITY_FILE).stat().st_mode) == 0o600
    key = load_key(tmp_path)
    sent = peer.state.enrolled[0]
    assert sent["public_key"] == wire.key_to_text(key.verify_key)
    assert sent["hostname"] == "pbx1" and sent["version"]

    with pytest.raises(IdentityError, match=r"already enrolled as agent agent-1.*--force"):
        await enroll(tmp_path, peer.url, "tok-2")
    assert load_key(tmp_path).encode() == key.encode()

    again = await enroll(tmp_path, peer.url, "tok-2", force=True)
    assert again.agent_id == "agent-1"
    assert load_key(tmp_path).encode() != key.encode()  # a forced enrollment rotates the key


async def test_enroll_errors(tmp_path: Path, peer: CollectorPeer) -> None:
    with pytest.raises(IdentityError, match="refused the enrollment token: token unknown"):
        await enroll(tmp_path, peer.url, "wrong")
    assert load_identity(tmp_path) is None
    with pytest.raises(IdentityError, match="cannot reach"):
        await enroll(tmp_path, dead_url(), "tok")


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cdrstats_agent.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def config_file(tmp_path: Path, urls: list[str] | None = None) -> str:
    path = tmp_path / "agent.toml"
    collector = f"[collector]\nurls = {urls!r}\n".replace("'", '"') if urls else ""
    path.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n{collector}')
    return str(path)


async def test_cli_enroll_check_status(tmp_path: Path, peer: CollectorPeer) -> None:
    peer.state.tokens = {"tok"}
    config = config_file(tmp_path)

    code, out, err = await cli("check", "--config", config)
    assert code == 1
    assert "FAIL identity:" in out and "not enrolled" in out

    code, out, err = await cli("enroll", peer.url, "tok", "--config", config)
    assert (code, err) == (0, "")
    assert out == f"enrolled as agent agent-1 (tenant acme, switch pbx1) with {peer.url}\n"

    code, out, err = await cli("enroll", peer.url, "tok", "--config", config)
    assert code == 1 and "already enrolled" in err

    code, out, err = await cli("check", "--config", config)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("OK   config:")
    assert "OK   identity: agent agent-1 (tenant acme, switch pbx1)" in lines
    assert f"OK   collector {peer.url}: enrolled as agent-1, last_seq 0" in lines

    code, out, err = await cli("status", "--config", config)
    assert code == 1 and "does not exist yet" in out

    store = SpoolStore(tmp_path / "state" / SPOOL_FILE)
    store.commit("pbx1", [make_cdr(i) for i in range(10)], "10")
    store.form_batch(4)
    store.ack(1, {"seq": 1, "accepted": 4, "duplicates": 0, "redelivery": False})
    store.form_batch(4)
    store.quarantine(2, "cdrs[1]: start must be an integer")
    store.close()
    code, out, err = await cli("status", "--config", config)
    assert code == 0, err
    assert "spool: 2 CDRs pending (2 not yet batched), 0 batches pending" in out
    assert "last ack: seq 1," in out and "accepted=4" in out
    assert "quarantined batches: 1 (4 CDRs)" in out
    assert "cdrs[1]: start must be an integer" in out
    assert "source pbx1: read 10, rejected 0, checkpoint '10'" in out
    assert f"collector {peer.url}: agent agent-1, last_seq 0" in out


async def test_cli_check_reports_an_unreachable_collector(
    tmp_path: Path, peer: CollectorPeer
) -> None:
    peer.state.tokens = {"tok"}
    await enroll(tmp_path / "state", peer.url, "tok")
    config = config_file(tmp_path, [peer.url, dead_url()])
    code, out, _ = await cli("check", "--config", config)
    assert code == 1
    assert f"OK   collector {peer.url}" in out
    assert "FAIL collector http://127.0.0.1:" in out and "cannot reach" in out

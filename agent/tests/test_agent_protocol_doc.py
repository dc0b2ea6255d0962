"""docs/protocol.md's worked example still decodes, verifies, and is what the script prints."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from cdrstats_agent import wire
from cdrstats_agent.model import CDR_FIELDS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
sys.path.insert(0, str(ROOT / "agent" / "scripts"))

import protocol_example  # noqa: E402


def doc_bytes(name: str) -> bytes:
    text = DOC.read_text()
    match = re.search(rf"<!-- example:{name} -->\n```\n(.*?)\n```", text, re.S)
    assert match, f"docs/protocol.md has no example:{name} block"
    return bytes.fromhex(match.group(1).replace("\n", " "))


def test_doc_example_decodes_and_verifies() -> None:
    envelope_bytes = doc_bytes("envelope")
    public_key = re.search(r"its public key, base64:\n\s+`([^`]+)`", DOC.read_text())
    assert public_key
    key = wire.verify_key_from_text(public_key.group(1))

    envelope = wire.unseal(envelope_bytes, "cdr_batch")
    assert envelope.signer == "agent-example"
    assert envelope.sig == doc_bytes("signature")
    batch = wire.open_batch(envelope, key)
    assert (batch.seq, batch.sent_at) == (1, 1_764_064_800_000_000)
    assert wire.from_us(batch.sent_at) == datetime(2025, 11, 25, 10, 0, tzinfo=UTC)
    assert batch.body == doc_bytes("body")

    body = wire.parse_body(batch.body)
    assert tuple(body.fields) == CDR_FIELDS
    (row,) = wire.check_rows(body.fields, body.rows)
    cdr = wire.row_to_cdr(row)
    assert cdr == protocol_example.CDR_EXAMPLE
    assert cdr.start == datetime(2025, 11, 25, 9, 59, tzinfo=UTC)
    assert (cdr.caller, cdr.callee_e164, cdr.sip_code) == ("1001", "+33142278000", 200)


def test_script_still_produces_the_doc_bytes() -> None:
    parts = protocol_example.example()
    for name in ("body", "signature", "envelope"):
        assert parts[name] == doc_bytes(name), f"rerun agent/scripts/protocol_example.py: {name}"

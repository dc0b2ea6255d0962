"""Print the worked example of docs/protocol.md: a one-CDR batch, byte for byte.

    .venv/bin/python agent/scripts/protocol_example.py

Everything is fixed (key seed, agent id, seq, sent_at, the CDR) and Ed25519 signatures are
deterministic, so the output is the same on every run; agent/tests/test_agent_protocol_doc.py
checks that the doc still shows these bytes and that they still decode.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgpack
from cdrstats_agent import wire
from cdrstats_agent.model import CDR, Direction, Disposition
from nacl.signing import SigningKey

SEED = bytes(range(32))
"""The example's private key seed (0x00..0x1f). An example only: never use a known key."""
AGENT = "agent-example"
SEQ = 1
SENT_AT = 1_764_064_800_000_000  # 2025-11-25T10:00:00Z in µs
CDR_EXAMPLE = CDR(
    key="4f1c2a9e-0b6d-4c1e-9d1a-5e0c7a3b2f10",
    start=datetime(2025, 11, 25, 9, 59, 0, tzinfo=UTC),
    answer=datetime(2025, 11, 25, 9, 59, 4, tzinfo=UTC),
    end=datetime(2025, 11, 25, 9, 59, 34, tzinfo=UTC),
    duration=34,
    billsec=30,
    disposition=Disposition.ANSWERED,
    direction=Direction.OUTBOUND,
    caller="1001",
    callee="33142278000",
    callee_e164="+33142278000",
    accountcode="acme",
    hangup_cause=16,
    sip_code=200,
    ring_time=4,
    src_ip="192.0.2.10",
    read_codec="PCMA",
    write_codec="PCMA",
)


def example() -> dict[str, bytes]:
    key = SigningKey(SEED)
    row = wire.pack_cdr(CDR_EXAMPLE)
    body = wire.build_body([row])
    envelope = wire.seal_batch(AGENT, SEQ, body, key, sent_at=SENT_AT)
    payload = msgpack.unpackb(envelope, raw=False)["payload"]
    return {
        "public_key": bytes(key.verify_key),
        "row": row,
        "body": body,
        "payload": payload,
        "signature": key.sign(payload).signature,
        "envelope": envelope,
    }


def hex_lines(data: bytes, width: int = 32) -> str:
    return "\n".join(data[i : i + width].hex(" ") for i in range(0, len(data), width))


def main() -> None:
    parts = example()
    print(f"public key (base64): {wire.key_to_text(SigningKey(SEED).verify_key)}")
    for name in ("row", "body", "payload", "signature", "envelope"):
        print(f"\n{name} ({len(parts[name])} bytes):")
        print(hex_lines(parts[name]))


if __name__ == "__main__":
    main()

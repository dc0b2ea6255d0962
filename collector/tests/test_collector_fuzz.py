"""Whatever a client sends, the collector answers with a 2xx or 4xx, never a 500, and a refused
request changes nothing. Seeded random requests, from raw garbage down to correctly signed
batches whose CDRs carry values of every wrong type."""

from __future__ import annotations

import os
import random
from typing import Any

import httpx
import msgpack
from cdrstats_agent import wire
from cdrstats_agent.model import CDR_FIELDS
from collector_testkit import body_of, full_cdr, snapshot

from tests.fix_db import CollectorServer, EnrolledAgent

CASES = int(os.environ.get("CDRSTATS_FUZZ_CASES", "240"))
ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**31,
    2**63 - 1,
    -(2**63),
    1.5,
    float("inf"),
    "",
    "x" * 3000,
    "nul\x00",
    "ANSWERED",
    "inbound",
    "192.0.2.1",
    "::1",
    "not-an-ip",
    b"\xff\xfe",
    [],
    [1, [2, [3]]],
    {},
    {"k": "v"},
    {"k": [None, {"deep": 1.5}]},
    wire.now_us(),
]


def _random_value(rng: random.Random) -> Any:
    return rng.choice(ODD_VALUES)


def _random_body(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:  # a random structure instead of a body
        return msgpack.packb(rng.choice(ODD_VALUES), use_bin_type=True)
    fields = list(CDR_FIELDS)
    if kind == 1:
        rng.shuffle(fields)
        fields = fields[: rng.randint(0, len(fields))]
    elif kind == 2:
        fields.insert(rng.randrange(len(fields)), rng.choice(["bogus", "start", ""]))
    rows: list[Any] = []
    for _ in range(rng.randint(0, 4)):
        row: Any = list(wire.cdr_to_row(full_cdr(rng.randrange(10**6))))
        row = [row[CDR_FIELDS.index(f)] if f in CDR_FIELDS else None for f in fields]
        for _ in range(rng.randint(1, 3)):
            if row:
                row[rng.randrange(len(row))] = _random_value(rng)
        if kind == 3 and rng.random() < 0.5:
            row = row[:-1] if rng.random() < 0.5 else rng.choice(ODD_VALUES)
        rows.append(row)
    return msgpack.packb({"fields": fields, "cdrs": rows}, use_bin_type=True)


def _random_request(rng: random.Random, agent: EnrolledAgent, seq: int) -> bytes:
    valid = wire.seal_batch(agent.agent_id, seq, body_of([full_cdr(seq)]), agent.key)
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 300))
    if kind == 1:
        return valid[: rng.randrange(len(valid))]
    if kind == 2:
        data = bytearray(valid)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 3:  # a signed payload of the wrong shape
        payload = {
            k: _random_value(rng) for k in ("agent", "seq", "sent_at", "body") if rng.random() < 0.8
        }
        return wire.seal("cdr_batch", agent.agent_id, payload, agent.key)
    return wire.seal_batch(agent.agent_id, seq, _random_body(rng), agent.key)


def test_no_request_gets_a_500_and_refusals_change_nothing(
    collector_server: CollectorServer,
) -> None:
    agent = collector_server.enroll()
    rng = random.Random(int(os.environ.get("CDRSTATS_FUZZ_SEED", "20261125")))
    seq = 1
    statuses: dict[int, int] = {}
    with httpx.Client(timeout=30) as client:
        for case in range(CASES):
            data = _random_request(rng, agent, seq)
            before = snapshot(collector_server.database_url)
            r = client.post(
                collector_server.url + "/api/v1/ingest",
                content=data,
                headers={"content-type": "application/msgpack"},
            )
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (case, r.status_code, r.text, collector_server.log_tail())
            if r.status_code == 200:
                seq += 1
            else:
                assert "error" in r.json(), (case, r.text)
                assert snapshot(collector_server.database_url) == before, (case, r.text)
    # the mix reached the deep checks, not only the envelope parser
    assert statuses.get(422, 0) > CASES // 4
    assert statuses.get(401, 0) > 0

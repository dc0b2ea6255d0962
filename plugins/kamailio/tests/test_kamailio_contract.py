"""The agent's plugin contract kit (cdrstats_agent.testing) run on the kamailio plugin.

The feed writes `acc` rows into a scratch MariaDB database as Kamailio's acc module does: one
INVITE and one BYE per call (the callee hangs up every other call, tags swapped); the bad
record is a BYE that belongs to no accounted INVITE.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cdrstats_agent.testing import SourceContract
from cdrstats_kamailio.plugin import KamailioPlugin
from kamailio_testkit import KamailioDB, Rig

_made: list[KamailioDB] = []
_numbers = itertools.count(1)


class AccFeed:
    def __init__(self, workdir: Path, rpc_url: str | None = None) -> None:
        self.rpc_url = rpc_url
        self.db = KamailioDB(f"cdrstats_kam_c{os.getpid()}_{next(_numbers)}")
        _made.append(self.db)
        self.n = 0
        self.t0 = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(minutes=30)

    def options(self) -> dict[str, Any]:
        options = {"db_url": self.db.url, "timezone": "UTC", "poll_s": 0.02, "gap_wait_s": 0.2}
        return options | ({"rpc_url": self.rpc_url} if self.rpc_url else {})

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self.db.connect()
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO acc (method, from_tag, to_tag, callid, sip_code, sip_reason, time,"
                " src_user, dst_ouser) VALUES (%s, %s, %s, %s, '200', 'OK', %s, '1001', '2002')",
                rows,
            )
        conn.close()

    def append(self, n: int) -> list[str]:
        rows, keys = [], []
        for _ in range(n):
            self.n += 1
            cid, ft, tt = f"c{self.n}@10.0.0.1", f"a{self.n}", f"b{self.n}"
            at = self.t0 + timedelta(seconds=self.n)
            rows.append(("INVITE", ft, tt, cid, at))
            rows.append(("BYE", *((ft, tt) if self.n % 2 else (tt, ft)), cid, at))
            keys.append(f"{cid};{ft}")
        self._insert(rows)
        return keys

    def append_bad(self) -> None:
        self._insert([("BYE", "x", "y", "nobody@10.0.0.1", self.t0)])


class TestKamailioContract(SourceContract):  # type: ignore[misc]  # (Any to mypy, as for csv)
    plugin = KamailioPlugin()
    rpc_url: str | None = None

    def feed(self, workdir: Path) -> AccFeed:
        return AccFeed(workdir, self.rpc_url)

    def test_contract_live_events(self, tmp_path: Path, kamailio_rig: Rig) -> None:
        """Live events need Kamailio's RPC: the contract's live test against the real one."""
        self.rpc_url = kamailio_rig.kamailio.rpc_url
        super().test_contract_live_events(tmp_path)

    @pytest.fixture(autouse=True)
    def _drop_databases(self) -> Iterator[None]:
        yield
        while _made:
            _made.pop().drop()

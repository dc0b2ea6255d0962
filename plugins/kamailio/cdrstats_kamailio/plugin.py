"""The `kamailio` plugin: CDRs from acc tables, live dialogs and htable bans over JSON-RPC.

`KamailioPlugin.create_source` validates the `[[source]]` table (no I/O). `KamailioSource.read`
polls the accounting database every `poll_s` seconds:

- `records = "acc"`: `acc` INVITE/BYE rows paired into CDRs, failed calls from `missed_calls`
  (or failed INVITEs in `acc`); checkpoint = both tables' last id + the open INVITEs.
- `records = "acc_cdrs"`: one dialog-based CDR per `acc_cdrs` row; checkpoint = last id.

With `rpc_url` the source is a `KamailioLiveSource`: `live()` polls the dialog module
(`dlg.stats_active`, `dlg.list`) and `actions()` returns `block_ip` / `unblock_ip` on an
htable. Without it the source has neither (the agent's firewall backend blocks instead).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

from cdrstats_agent.errors import SourceError
from cdrstats_agent.logs import get_logger
from cdrstats_agent.model import CDR
from cdrstats_agent.plugin import ActionHandler, LiveEvent, ReadResult, Rejected

from .ban import HtableBan
from .cdrs import cdr_from_cdrs_row
from .config import KamailioOptions, parse_options
from .db import Database, GapGuard, redact
from .live import DialogPoller
from .pairing import AccPairer, CheckpointError, PairSettings, PairState
from .rpc import RpcClient

log = get_logger("cdrstats.plugins.kamailio")

Fetched = tuple[list[dict[str, Any]], list[dict[str, Any]], str]
"""acc rows, missed_calls rows, and where the reading is: `more` (a full page: read on at
once), `end` (both tables read to their end) or `holding` (rows wait behind a hole in the
ids, see db.GapGuard: poll again later)."""

SAMPLE_CONFIG = """\
[[source]]
name = "kamailio"
plugin = "kamailio"
# The database Kamailio's acc module writes to (db_url in kamailio.cfg).
db_url = "mysql://kamailio:secret@127.0.0.1:3306/kamailio"
# "acc": pair acc INVITE/BYE rows (+ missed_calls); "acc_cdrs": dialog-based CDRs.
records = "acc"
# failed calls from "missed_calls" (db_missed_flag) or "acc" (failed_transaction_flag)
failed_from = "missed_calls"
# Kamailio writes DATETIME in its host's local time; default: this host's time zone.
# timezone = "Europe/Paris"
# country_code = "33"
# open_call_timeout_s = 14400   # close a call whose BYE never comes
# Live dialogs and native blocking through jsonrpcs over xhttp:
# rpc_url = "http://127.0.0.1:5071/RPC"
# ban_table = "ipban"
# db_extra / cdr_extra columns -> CDR fields:
# [source.fields]
# caller = "src_user"
# callee = "dst_ouser"
# src_ip = "src_ip"
"""


class KamailioSource:
    def __init__(self, name: str, options: KamailioOptions) -> None:
        self.name = name
        self.options = options

    # --- database --------------------------------------------------------------------------

    def _tables(self) -> list[str]:
        o = self.options
        if o.records == "acc_cdrs":
            return [o.cdrs_table]
        return [o.acc_table] + ([o.missed_table] if o.failed_from == "missed_calls" else [])

    def _prepare(self, db: Database) -> dict[str, str]:
        """Check tables and columns; the field mapping restricted to columns that exist."""
        o = self.options
        fields = dict(o.fields)
        for table in self._tables():
            try:
                have = set(db.columns(table))
            except SourceError as exc:
                if "cannot connect" in str(exc):
                    raise
                raise SourceError(
                    f"{exc} (is Kamailio's acc schema created, acc-create.sql, and is"
                    f" {table!r} the table its acc module writes?)"
                ) from None
            core = (
                {"id", "start_time", "end_time", "duration", *o.key_columns}
                if o.records == "acc_cdrs"
                else {"id", "method", "from_tag", "to_tag", "callid", "sip_code", "time"}
            )
            if core - have:
                raise SourceError(
                    f"{redact(o.db_url)}: table {table} has no column(s)"
                    f" {', '.join(sorted(core - have))}"
                    + (" (write them with cdr_extra)" if o.records == "acc_cdrs" else "")
                )
            missing = {f: c for f, c in fields.items() if c not in have}
            if missing and o.fields_required:
                named = ", ".join(f"{f} = {c!r}" for f, c in sorted(missing.items()))
                raise SourceError(
                    f"{redact(o.db_url)}: table {table} has no column for fields {named}"
                    " (add it with db_extra /"
                    " cdr_extra and ALTER TABLE, or change [source.fields])"
                )
            for f in missing:
                del fields[f]
        return fields

    def _check_positions(self, db: Database, positions: Mapping[str, int]) -> None:
        """A checkpoint beyond a table's last id means the table was emptied and restarted."""
        for table, last in positions.items():
            if last and db.max_id(table) < last:
                raise SourceError(
                    f"table {table} ends before the checkpoint (id {last}): it was truncated or"
                    " recreated; remove this source's checkpoint to read it from the start"
                    " (cdrstats-agent status shows it)"
                )

    async def check(self) -> None:
        db = Database(self.options.db_url)
        try:
            await asyncio.to_thread(self._prepare, db)
        finally:
            await asyncio.to_thread(db.close)

    async def read(self, checkpoint: str | None) -> AsyncGenerator[ReadResult, None]:
        if self.options.records == "acc":
            inner = self._read_acc(checkpoint)
        else:
            inner = self._read_cdrs(checkpoint)
        try:
            async for result in inner:
                yield result
        finally:
            await inner.aclose()

    async def _read_acc(self, checkpoint: str | None) -> AsyncGenerator[ReadResult, None]:
        o = self.options
        try:
            state = PairState.loads(checkpoint)
        except CheckpointError as exc:
            raise SourceError(f"{self.name}: {exc}") from None
        db = Database(o.db_url)
        pending: asyncio.Task[Fetched] | None = None
        try:
            fields = await asyncio.to_thread(self._prepare, db)
            positions = {o.acc_table: state.acc_id}
            if o.failed_from == "missed_calls":
                positions[o.missed_table] = state.missed_id
            await asyncio.to_thread(self._check_positions, db, positions)
            pairer = AccPairer(
                PairSettings(
                    fields=fields,
                    tz=o.tz,
                    country_code=o.country_code,
                    failed_from=o.failed_from,
                    open_call_timeout_s=o.open_call_timeout_s,
                    acc_table=o.acc_table,
                    missed_table=o.missed_table,
                ),
                state,
            )
            acc_guard, missed_guard = GapGuard(o.gap_wait_s), GapGuard(o.gap_wait_s)
            log.info("acc_reading", source=self.name, acc_id=state.acc_id,
                     missed_id=state.missed_id, open_calls=len(state.open))  # fmt: skip

            def fetch(acc_id: int, missed_id: int) -> asyncio.Task[Fetched]:
                return asyncio.create_task(
                    asyncio.to_thread(
                        self._fetch_acc, db, acc_id, missed_id, acc_guard, missed_guard
                    )
                )

            pending = fetch(state.acc_id, state.missed_id)
            while True:
                acc_rows, missed_rows, where = await pending
                pending = None
                if where == "more":  # read the next page while this one is paired and committed
                    pending = fetch(
                        int(acc_rows[-1]["id"]) if acc_rows else state.acc_id,
                        int(missed_rows[-1]["id"]) if missed_rows else state.missed_id,
                    )
                before = (state.acc_id, state.missed_id, len(state.open))
                now = time.time() if where == "end" else None  # a backlog times nothing out
                fed = pairer.feed(acc_rows, missed_rows, now)
                after = (state.acc_id, state.missed_id, len(state.open))
                if fed.cdrs or fed.rejected or before != after:
                    yield ReadResult(fed.cdrs, state.dumps(), fed.rejected)
                if pending is None:
                    await asyncio.sleep(o.poll_s)
                    pending = fetch(state.acc_id, state.missed_id)
        finally:
            if pending is not None and not pending.done():
                # the thread cannot be interrupted: close the connection once it is done
                pending.add_done_callback(lambda _: db.close())
            else:
                await asyncio.to_thread(db.close)

    def _fetch_acc(
        self,
        db: Database,
        acc_id: int,
        missed_id: int,
        acc_guard: GapGuard,
        missed_guard: GapGuard,
    ) -> Fetched:
        o = self.options
        rows = db.rows_after(o.acc_table, acc_id, o.batch_rows)
        acc_rows = acc_guard.accept(acc_id, rows)
        held = len(acc_rows) < len(rows)
        full = len(rows) == o.batch_rows
        missed_rows: list[dict[str, Any]] = []
        if o.failed_from == "missed_calls":
            rows = db.rows_after(o.missed_table, missed_id, o.batch_rows)
            missed_rows = missed_guard.accept(missed_id, rows)
            held = held or len(missed_rows) < len(rows)
            full = full or len(rows) == o.batch_rows
        return acc_rows, missed_rows, "holding" if held else "more" if full else "end"

    async def _read_cdrs(self, checkpoint: str | None) -> AsyncGenerator[ReadResult, None]:
        o = self.options
        try:
            last_id = int(json.loads(checkpoint)["id"]) if checkpoint else 0
        except (ValueError, TypeError, KeyError) as exc:
            raise SourceError(
                f"{self.name}: checkpoint is not an acc_cdrs checkpoint: {exc}"
            ) from None
        db = Database(o.db_url)
        guard = GapGuard(o.gap_wait_s)
        try:
            fields = await asyncio.to_thread(self._prepare, db)
            await asyncio.to_thread(self._check_positions, db, {o.cdrs_table: last_id})
            while True:
                rows = await asyncio.to_thread(db.rows_after, o.cdrs_table, last_id, o.batch_rows)
                taken = guard.accept(last_id, rows)
                cdrs: list[CDR] = []
                rejected: list[Rejected] = []
                for row in taken:
                    last_id = int(row["id"])
                    try:
                        cdrs.append(
                            cdr_from_cdrs_row(
                                row,
                                fields=fields,
                                key_columns=o.key_columns,
                                tz=o.tz,
                                country_code=o.country_code,
                            )
                        )
                    except ValueError as exc:
                        rejected.append(Rejected(f"{o.cdrs_table}:{row['id']}", str(exc)))
                if taken:
                    yield ReadResult(cdrs, json.dumps({"v": 1, "id": last_id}), rejected)
                if len(rows) < o.batch_rows or len(taken) < len(rows):
                    await asyncio.sleep(o.poll_s)
        finally:
            await asyncio.to_thread(db.close)

    async def close(self) -> None:
        pass


class KamailioLiveSource(KamailioSource):
    """A source with `rpc_url`: also live dialogs and, with a `ban_table`, native blocking."""

    def __init__(self, name: str, options: KamailioOptions) -> None:
        super().__init__(name, options)
        assert options.rpc_url is not None
        self.rpc_url = options.rpc_url
        self._rpc: RpcClient | None = None

    def _rpc_client(self) -> RpcClient:
        if self._rpc is None:
            self._rpc = RpcClient(self.rpc_url, self.options.rpc_timeout_s)
        return self._rpc

    async def live(self) -> AsyncIterator[LiveEvent]:
        poller = DialogPoller(
            self.name,
            self._rpc_client(),
            self.options.live_interval_s,
            self.options.snapshot_interval_s,
        )
        async for event in poller.events():
            yield event

    def actions(self) -> Mapping[str, ActionHandler]:
        if self.options.ban_table is None:
            return {}
        ban = HtableBan(self._rpc_client(), self.options.ban_table)
        return {"block_ip": ban.block_ip, "unblock_ip": ban.unblock_ip}

    async def close(self) -> None:
        rpc, self._rpc = self._rpc, None
        if rpc is not None:
            await rpc.aclose()


class KamailioPlugin:
    name = "kamailio"
    description = "Kamailio acc / missed_calls / acc_cdrs tables, live dialogs, htable bans"
    sample_config = SAMPLE_CONFIG

    def create_source(self, name: str, options: Mapping[str, Any]) -> KamailioSource:
        parsed = parse_options(options)
        if parsed.rpc_url is not None:
            return KamailioLiveSource(name, parsed)
        return KamailioSource(name, parsed)


__all__ = ["KamailioLiveSource", "KamailioPlugin", "KamailioSource"]

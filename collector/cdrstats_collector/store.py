"""The ingest transaction: a checked batch of CDRs into PostgreSQL, exactly once.

Pure data layer (no HTTP). For one batch of one agent, in ONE transaction:

1. lock the agent row (`FOR NO KEY UPDATE`), then look up `(agent, seq)` in `ingest_batch`:
   unknown/revoked agent, redelivery (same body digest: the stored ack is returned) and
   replays (409) are decided here, under the lock. The same statement reads the version of
   `accountcode_map` (count, max id): the mappings (accountcodes.py) are re-read only when
   it changed, and each row whose accountcode is mapped for this switch (or any switch)
   gets that tenant instead of the switch's (`assign_tenants`; nothing per row when none is mapped);
2. load the rows with a binary COPY straight into `cdr`, inside a savepoint. If a row is
   already there (unique_violation on the natural key), roll back to the savepoint and load
   through the per-connection staging table with `INSERT ... ON CONFLICT DO NOTHING`,
   counting inserted rows and duplicates. The common case (no duplicate) costs one COPY;
3. classify each new CDR's destination (classify.py; the switch's numbering plan, the
   tenant's timezone and the dial prefixes are cached per process for `CONTEXT_TTL_S`) —
   done on the prepared rows before loading them — and add the rows really inserted to the
   aggregates in one statement per tenant of the batch (aggregates.py; one unless account
   codes are mapped);
4. record the batch with its ack, advance the agent's `last_seq`, keep the spool status the
   agent sent with the batch, and `NOTIFY cdr_ingest` once per tenant that got rows
   (delivered at commit).

Partitions for the months the batch touches are created before, in a short transaction of
their own (see `partitions.ensure`). Rows are converted once, cheaply: timestamps go to the
server as the binary form of their µs value, `src_ip` is validated with `ipaddress` and sent
in binary, `extra` is encoded to JSON once (see docs/decisions/0001-ingest-copy-and-dedup.md).
"""

from __future__ import annotations

import ipaddress
import json
import operator
import re
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from uuid import UUID

import psycopg
from cdrstats_agent import wire
from cdrstats_agent.model import CDR_FIELDS
from psycopg import errors as pgerrors
from psycopg.adapt import Dumper
from psycopg.postgres import types as _builtin_types
from psycopg.pq import Format
from psycopg.types.json import Jsonb

from . import accountcodes, aggregates, classify, partitions

MIN_START_US = 946_684_800_000_000
"""Calls that start before 2000-01-01 UTC are refused: a zero or garbage clock, not a call."""
MAX_FUTURE_US = 86_400 * 1_000_000
MAX_KEY_CHARS = 1024
"""A natural key longer than this is refused (it could not be indexed anyway)."""
"""Calls may start at most this far after the collector's clock (a switch clock ahead)."""

NOTIFY_CHANNEL = "cdr_ingest"

_RENAMED = {"start": "start_time", "answer": "answer_time", "end": "end_time"}
CDR_COLUMNS: tuple[str, ...] = tuple(_RENAMED.get(f, f) for f in CDR_FIELDS)
"""`cdr` columns in wire field order (what `wire.check_rows` returns)."""
DEST_COLUMNS: tuple[str, ...] = ("dest_country", "dest_kind", "dest_prefix")
"""Filled by the collector (classify.py), never sent by agents."""
COPY_COLUMNS: tuple[str, ...] = (
    *CDR_COLUMNS,
    "tenant_id",
    "switch_id",
    "agent_id",
    *DEST_COLUMNS,
)
_FIELD_OF_COLUMN = {col: field for field, col in zip(CDR_FIELDS, CDR_COLUMNS, strict=True)}

_TYPES = {
    "key": "text",
    "start_time": "timestamptz",
    "answer_time": "timestamptz",
    "end_time": "timestamptz",
    "duration": "int4",
    "billsec": "int4",
    "hangup_cause": "int4",
    "sip_code": "int4",
    "ring_time": "int4",
    "src_ip": "inet",
    "extra": "jsonb",
    "tenant_id": "int8",
    "switch_id": "int8",
    "agent_id": "uuid",
}
COPY_TYPES: tuple[str, ...] = tuple(_TYPES.get(c, "text") for c in COPY_COLUMNS)

_I_START = CDR_FIELDS.index("start")
_I_SRC_IP = CDR_FIELDS.index("src_ip")
_I_EXTRA = CDR_FIELDS.index("extra")

_COLS = ", ".join(COPY_COLUMNS)
_COPY_CDR = f"COPY cdr ({_COLS}) FROM STDIN (FORMAT BINARY)".encode()
_COPY_STAGING = f"COPY cdr_staging ({_COLS}) FROM STDIN (FORMAT BINARY)".encode()
_CREATE_STAGING = (
    b"CREATE TEMP TABLE IF NOT EXISTS cdr_staging"
    b" (LIKE cdr INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_MERGE_STAGING = (
    f"INSERT INTO cdr ({_COLS}) SELECT {_COLS} FROM cdr_staging ON CONFLICT DO NOTHING"
    f" RETURNING {aggregates.RETURNING_FACTS}"
).encode()
_FACTS_OF_ROW = operator.itemgetter(*(COPY_COLUMNS.index(c) for c in aggregates.FACT_COLUMNS))
_I_CALLEE = COPY_COLUMNS.index("callee")
_I_CALLEE_E164 = COPY_COLUMNS.index("callee_e164")
_I_DEST = COPY_COLUMNS.index("dest_country")
_I_ACCOUNTCODE = COPY_COLUMNS.index("accountcode")
_I_TENANT = COPY_COLUMNS.index("tenant_id")
_FACTS_OF_ROW_T = operator.itemgetter(
    _I_TENANT, *(COPY_COLUMNS.index(c) for c in aggregates.FACT_COLUMNS)
)
_MERGE_STAGING_T = (
    f"INSERT INTO cdr ({_COLS}) SELECT {_COLS} FROM cdr_staging ON CONFLICT DO NOTHING"
    f" RETURNING tenant_id, {aggregates.RETURNING_FACTS}"
).encode()

CONTEXT_TTL_S = 10.0
"""Numbering plans, tenant timezones and dial prefixes are re-read at most this often."""
_SWITCH_CONTEXT = (
    b"SELECT s.country, s.international_prefix, s.national_prefix, t.timezone,"
    b" (SELECT count(*) FROM dial_prefix), (SELECT max(updated_at) FROM dial_prefix)"
    b" FROM switch s JOIN tenant t ON t.id = s.tenant_id"
    b" WHERE s.id = %(switch)s AND s.tenant_id = %(tenant)s"
)

_STATE = (
    b"SELECT a.revoked_at IS NOT NULL, a.last_seq, b.body_sha256, b.ack"
    b" FROM agent a LEFT JOIN ingest_batch b ON b.agent_id = a.id AND b.seq = %(seq)s"
    b" WHERE a.id = %(agent)s"
)
# Under the lock, the batch record is read by a second statement: in READ COMMITTED a
# statement that waited for the agent row lock sees the row's new version but not rows other
# transactions committed meanwhile (a joined ingest_batch row), so a racing resend of the
# same batch would look like a replay. A new statement takes a new snapshot.
_NOTIFY = b"SELECT pg_notify('" + NOTIFY_CHANNEL.encode() + b"', %s)"
_LOCK_AGENT = (
    b"SELECT revoked_at IS NOT NULL, last_seq FROM agent WHERE id = %(agent)s FOR NO KEY UPDATE"
)
# ... and the account-code mappings' version in the same round trip (one row always).
_BATCH = (
    b"SELECT b.body_sha256, b.ack, v.n, v.top"
    b" FROM (" + accountcodes.VERSION_SQL.encode() + b") AS v(n, top)"
    b" LEFT JOIN ingest_batch b ON b.agent_id = %(agent)s AND b.seq = %(seq)s"
)
_FINISH = (
    b"WITH b AS (INSERT INTO ingest_batch (agent_id, seq, body_sha256, ack)"
    b"           VALUES (%(agent)s, %(seq)s, %(digest)s, %(ack)s)),"
    b"     a AS (UPDATE agent SET last_seq = %(seq)s, last_seen_at = now(),"
    b"           spool_batches = coalesce(%(sb)s::int4, spool_batches),"
    b"           spool_cdrs = coalesce(%(sc)s::int8, spool_cdrs),"
    b"           spool_lag_s = coalesce(%(sl)s::float8, spool_lag_s),"
    b"           status_at = CASE WHEN %(sb)s::int4 IS NULL THEN status_at ELSE now() END"
    b"           WHERE id = %(agent)s)"
    b" SELECT CASE WHEN %(notify)s::text IS NULL THEN NULL"
    b"             ELSE pg_notify('" + NOTIFY_CHANNEL.encode() + b"', %(notify)s) END"
)


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentRef:
    """An enrolled agent as the store needs it (from the agent row, never from the client)."""

    id: UUID
    tenant_id: int
    switch_id: int


@dataclass(frozen=True, slots=True)
class Stored:
    ack: wire.Ack


@dataclass(frozen=True, slots=True)
class Redelivery:
    ack: wire.Ack


@dataclass(frozen=True, slots=True)
class Conflict:
    last_seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Unknown or revoked agent."""

    reason: str


Outcome = Stored | Redelivery | Conflict | Refused


class BadRows(wire.WireError):
    """A CDR that cannot be stored; the text names `cdrs[i]` and the field. Nothing stored."""


class StoreUnavailable(Exception):
    """A transient condition: the caller should answer 503 and the agent retry."""


# --- binary COPY encoding -------------------------------------------------------------------

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 UTC in Unix µs: PostgreSQL's timestamp zero
_pack_q = struct.Struct(">q").pack


class _MicrosTimestamptz(Dumper):
    """int µs since the Unix epoch → binary timestamptz (µs since 2000-01-01)."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return _pack_q(obj - _PG_EPOCH_US)


class _PreEncoded(Dumper):
    """A value already in PostgreSQL's binary format."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return obj  # type: ignore[no-any-return]


def _dumper(base: type[Dumper], type_name: str) -> type[Dumper]:
    return type(f"{base.__name__}_{type_name}", (base,), {"oid": _builtin_types[type_name].oid})


_DUMPERS = (
    _dumper(_MicrosTimestamptz, "timestamptz"),
    _dumper(_PreEncoded, "inet"),
    _dumper(_PreEncoded, "jsonb"),
    _dumper(_PreEncoded, "uuid"),
)


def _copy_cursor(conn: psycopg.AsyncConnection[Any]) -> psycopg.AsyncCursor[Any]:
    cur = conn.cursor()
    for dumper in _DUMPERS:
        cur.adapters.register_dumper(None, dumper)
    return cur


def encode_inet(text: str) -> bytes:
    """Binary inet of an address string; raises ValueError when it is not an IP address."""
    addr = ipaddress.ip_address(text)
    packed = addr.packed
    if addr.version == 4:
        return b"\x02\x20\x00\x04" + packed
    return b"\x03\x80\x00\x10" + packed


_json_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


@dataclass(slots=True)
class Prepared:
    """Rows ready for COPY (`COPY_COLUMNS` order) and what the batch touches."""

    rows: list[list[Any]]
    months: set[date]
    newest_start_us: int


@dataclass(slots=True)
class _SwitchContext:
    expires: float
    plan: classify.NumberingPlan
    days: aggregates.LocalDays


@dataclass(slots=True)
class _Loaded:
    """What a load stored: rows inserted, per tenant, and the aggregates' input."""

    accepted: int
    per_tenant: dict[int, int]
    grouped: list[tuple[int, aggregates.Grouped, str]]
    """(tenant, grouped facts, tenant timezone), tenants in id order."""

    def notify_payloads(self, ref: AgentRef) -> list[str]:
        return [
            json.dumps(
                {
                    "tenant_id": tenant,
                    "switch_id": ref.switch_id,
                    "agent_id": str(ref.id),
                    "accepted": n,
                }
            )
            for tenant, n in sorted(self.per_tenant.items())
            if n
        ]


class Ingestor:
    """Stores batches; holds the per-process caches (known partitions, encoded addresses,
    numbering plans, tenant timezones, the destination classifier)."""

    def __init__(
        self, cache: partitions.PartitionCache | None = None, *, aggregates: bool = True
    ) -> None:
        self.partitions = cache or partitions.PartitionCache()
        self.aggregates = aggregates
        """False (`[ingest] aggregates = false`): rows are stored (and classified) without
        updating the aggregates: a bulk backfill followed by `aggregates.rebuild`, or a
        measurement of their cost."""
        self._inet: dict[str, bytes] = {}
        self._switches: dict[int, _SwitchContext] = {}
        self.classifier = classify.Classifier()
        self._prefix_version: tuple[Any, ...] | None = None
        self.account_codes = accountcodes.AccountCodeCache()
        """The account-code mappings (shared with the live path: `state.ingestor`)."""

    def forget(self) -> None:
        """Drop the cached plans, timezones, prefixes and account codes (re-read next batch)."""
        self._switches.clear()
        self._prefix_version = None
        self.account_codes.forget()

    async def _context(self, conn: psycopg.AsyncConnection[Any], agent: AgentRef) -> _SwitchContext:
        now = time.monotonic()
        ctx = self._switches.get(agent.switch_id)
        if ctx is not None and ctx.expires > now:
            return ctx
        cur = await conn.execute(
            _SWITCH_CONTEXT, {"switch": agent.switch_id, "tenant": agent.tenant_id}
        )
        row = await cur.fetchone()
        if row is None:
            raise StoreUnavailable(f"switch {agent.switch_id} of tenant {agent.tenant_id} is gone")
        country, intl, national, timezone, n_prefixes, prefixes_at = row
        try:
            plan = classify.NumberingPlan(country, intl, national)
        except classify.PlanError:
            plan = classify.NumberingPlan(None, intl, national)
        if ctx is None or ctx.days.timezone != timezone:
            days = aggregates.LocalDays(timezone)
        else:
            days = ctx.days
        version = (n_prefixes, prefixes_at)
        if version != self._prefix_version:
            cur = await conn.execute(
                "SELECT prefix, name, country, kind FROM dial_prefix ORDER BY prefix"
            )
            self.classifier = classify.Classifier(
                classify.DialPrefix(*r) for r in await cur.fetchall()
            )
            self._prefix_version = version
        ctx = self._switches[agent.switch_id] = _SwitchContext(now + CONTEXT_TTL_S, plan, days)
        return ctx

    def classify_rows(self, rows: Sequence[list[Any]], plan: classify.NumberingPlan) -> None:
        """Fill the destination columns of prepared rows (in place)."""
        destination = self.classifier.destination
        to_e164 = plan.e164
        for row in rows:
            e164 = row[_I_CALLEE_E164]
            if e164 is None:
                callee = row[_I_CALLEE]
                e164 = to_e164(callee) if callee else None
            row[_I_DEST : _I_DEST + 3] = destination(e164)

    # -- CPU part, before any transaction -------------------------------------------------

    def prepare(self, agent: AgentRef, rows: list[list[Any]], now_us: int) -> Prepared:
        """Turn `wire.check_rows` output into COPY rows (in place: `rows` is consumed).

        Raises `BadRows` naming the CDR index and field.
        """
        starts = [row[_I_START] for row in rows]
        newest = max(starts, default=0)
        if rows and (min(starts) < MIN_START_US or newest > now_us + MAX_FUTURE_US):
            for i, start in enumerate(starts):
                if start < MIN_START_US:
                    raise BadRows(f"cdrs[{i}]: start {wire.from_us(start)} is before 2000")
                if start > now_us + MAX_FUTURE_US:
                    raise BadRows(
                        f"cdrs[{i}]: start {wire.from_us(start)} is more than a day ahead of"
                        " the collector's clock"
                    )
        if len(self._inet) > 50_000:
            self._inet.clear()
        inet = self._inet
        tail = (agent.tenant_id, agent.switch_id, agent.id.bytes, None, None, None)
        for i, row in enumerate(rows):
            if len(row[0]) > MAX_KEY_CHARS:
                raise BadRows(f"cdrs[{i}]: key is longer than {MAX_KEY_CHARS} characters")
            ip = row[_I_SRC_IP]
            if ip is not None:
                encoded = inet.get(ip)
                if encoded is None:
                    try:
                        encoded = inet[ip] = encode_inet(ip)
                    except ValueError:
                        raise BadRows(
                            f"cdrs[{i}]: src_ip {ip!r:.60} is not an IP address"
                        ) from None
                row[_I_SRC_IP] = encoded
            try:
                row[_I_EXTRA] = b"\x01" + _json_encode(row[_I_EXTRA]).encode()
            except (TypeError, ValueError, RecursionError) as exc:
                raise BadRows(f"cdrs[{i}]: extra cannot be stored as JSON: {exc}") from None
            row.extend(tail)
        return Prepared(rows, partitions.months_of(starts), newest)

    # -- the transaction --------------------------------------------------------------------

    async def ingest(
        self,
        conn: psycopg.AsyncConnection[Any],
        agent: AgentRef,
        seq: int,
        digest: bytes,
        rows: list[list[Any]],
        now_us: int | None = None,
        spool: wire.SpoolStatus | None = None,
    ) -> Outcome:
        """Store one batch of checked rows (`wire.check_rows` output; consumed).

        Raises `BadRows` (nothing stored), `StoreUnavailable` or psycopg's
        `OperationalError` (transient: retry later).
        """
        prepared = self.prepare(agent, rows, wire.now_us() if now_us is None else now_us)
        return await self.store(conn, agent, seq, digest, prepared, spool)

    async def store(
        self,
        conn: psycopg.AsyncConnection[Any],
        agent: AgentRef,
        seq: int,
        digest: bytes,
        prepared: Prepared,
        spool: wire.SpoolStatus | None = None,
    ) -> Outcome:
        """The transaction for rows already prepared with `prepare`.

        `spool` (what the agent said about its spool with this batch) is stored on the
        agent row with the batch record.
        """
        await partitions.ensure(conn, prepared.months, self.partitions)
        async with conn.transaction():
            params = {"agent": agent.id, "seq": seq}
            cur = await conn.execute(_LOCK_AGENT, params)
            locked = await cur.fetchone()
            version: tuple[Any, ...] | None = None
            if locked is not None:
                cur = await conn.execute(_BATCH, params)
                row = await cur.fetchone()
                assert row is not None  # the version subquery always gives one row
                locked = (*locked, row[0], row[1])
                version = (row[2], row[3])
            decided = _decide(locked, seq, digest)
            if decided is not None:
                return decided
            loaded = await self._load_and_group(conn, agent, prepared.rows, version)
            accepted = loaded.accepted
            ack = wire.Ack(seq=seq, accepted=accepted, duplicates=len(prepared.rows) - accepted)
            notifies = loaded.notify_payloads(agent)
            finish = {
                "agent": agent.id,
                "seq": seq,
                "digest": digest,
                "ack": Jsonb(ack.to_json()),
                "notify": notifies[0] if len(notifies) == 1 else None,
                "sb": None if spool is None else spool.batches,
                "sc": None if spool is None else spool.cdrs,
                "sl": None if spool is None else spool.lag_s,
            }
            try:
                # aggregates and the batch record in one round trip
                async with conn.pipeline():
                    for tenant, grouped, timezone in loaded.grouped:
                        await aggregates.apply(conn, grouped, tenant, agent.switch_id, timezone)
                    await conn.execute(_FINISH, finish)
                    if len(notifies) > 1:  # account codes mapped to other tenants
                        for payload in notifies:
                            await conn.execute(_NOTIFY, (payload,))
            except pgerrors.DeadlockDetected as exc:
                raise StoreUnavailable("aggregate update deadlocked; retry") from exc
        return Stored(ack)

    async def store_unbatched(
        self,
        conn: psycopg.AsyncConnection[Any],
        ref: AgentRef,
        prepared: Prepared,
        finish: Callable[[int], Awaitable[None]] | None = None,
    ) -> int:
        """The ingest transaction without the agent batch protocol (CSV imports, csvimport.py).

        Same partitions, account-code mapping, classification, dedup load, aggregates and
        `NOTIFY cdr_ingest` as `store`, but no agent row is locked and no `ingest_batch` is
        recorded: `ref.id` is only written to `cdr.agent_id`. `finish(accepted)` runs inside
        the transaction (the caller's own bookkeeping, committed with the rows). Returns the
        rows inserted.
        """
        await partitions.ensure(conn, prepared.months, self.partitions)
        async with conn.transaction():
            loaded = await self._load_and_group(conn, ref, prepared.rows, None)
            if loaded.accepted:
                try:
                    async with conn.pipeline():
                        for tenant, grouped, timezone in loaded.grouped:
                            await aggregates.apply(conn, grouped, tenant, ref.switch_id, timezone)
                        for payload in loaded.notify_payloads(ref):
                            await conn.execute(_NOTIFY, (payload,))
                except pgerrors.DeadlockDetected as exc:
                    raise StoreUnavailable("aggregate update deadlocked; retry") from exc
            if finish is not None:
                await finish(loaded.accepted)
        return loaded.accepted

    async def _load_and_group(
        self,
        conn: psycopg.AsyncConnection[Any],
        ref: AgentRef,
        rows: list[list[Any]],
        version: tuple[Any, ...] | None,
    ) -> _Loaded:
        """Map account codes to tenants, classify, load, and group what was inserted."""
        ctx = await self._context(conn, ref)
        codes = await self.account_codes.get(conn, version)
        mapped = assign_tenants(rows, codes.codes(ref.switch_id), ref.tenant_id)
        self.classify_rows(rows, ctx.plan)
        if not mapped:
            accepted, facts = await self._load(conn, rows)
            grouped = []
            if accepted and self.aggregates:
                grouped = [(ref.tenant_id, aggregates.group(facts, ctx.days), ctx.days.timezone)]
            return _Loaded(accepted, {ref.tenant_id: accepted}, grouped)
        accepted, tenant_facts = await self._load(conn, rows, with_tenant=True)
        per_tenant: dict[int, list[aggregates.Fact]] = {}
        for fact in tenant_facts:
            per_tenant.setdefault(fact[0], []).append(fact[1:])
        grouped = []
        if self.aggregates:
            for tenant in sorted(per_tenant):
                days = ctx.days if tenant == ref.tenant_id else codes.days[tenant]
                grouped.append((tenant, aggregates.group(per_tenant[tenant], days), days.timezone))
        return _Loaded(accepted, {t: len(f) for t, f in per_tenant.items()}, grouped)

    async def _load(
        self,
        conn: psycopg.AsyncConnection[Any],
        rows: Sequence[list[Any]],
        *,
        with_tenant: bool = False,
    ) -> tuple[int, Iterable[aggregates.Fact]]:
        """COPY the rows; returns how many were new and what aggregates need of them
        (preceded by the row's tenant id when `with_tenant`)."""
        if not rows:
            return 0, ()
        try:
            async with conn.transaction():
                await self._copy(conn, _COPY_CDR, rows)
            return len(rows), map(_FACTS_OF_ROW_T if with_tenant else _FACTS_OF_ROW, rows)
        except pgerrors.UniqueViolation:
            pass  # some rows are already stored: dedup through the staging table
        await conn.execute(_CREATE_STAGING)
        await self._copy(conn, _COPY_STAGING, rows)
        cur = await conn.execute(_MERGE_STAGING_T if with_tenant else _MERGE_STAGING)
        facts: list[aggregates.Fact] = await cur.fetchall()
        return len(facts), facts

    async def copy_rows(
        self, conn: psycopg.AsyncConnection[Any], rows: Sequence[list[Any]]
    ) -> None:
        """Binary COPY of prepared rows straight into `cdr` (no dedup: fails on a duplicate)."""
        await self._copy(conn, _COPY_CDR, rows)

    async def _copy(
        self, conn: psycopg.AsyncConnection[Any], statement: bytes, rows: Sequence[list[Any]]
    ) -> None:
        try:
            async with _copy_cursor(conn) as cur, cur.copy(statement) as copy:
                copy.set_types(COPY_TYPES)
                for row in rows:
                    await copy.write_row(row)
        except pgerrors.UniqueViolation:
            raise
        except pgerrors.CheckViolation as exc:
            if "no partition" in (exc.diag.message_primary or ""):
                self.partitions.clear()
                raise StoreUnavailable("a cdr partition was missing; retry") from exc
            raise _bad_rows(exc) from exc
        except (pgerrors.DataError, pgerrors.IntegrityError, pgerrors.ProgramLimitExceeded) as exc:
            raise _bad_rows(exc) from exc

    # -- read-only answer for a batch whose body is bad -------------------------------------

    async def batch_state(
        self, conn: psycopg.AsyncConnection[Any], agent_id: UUID, seq: int, digest: bytes
    ) -> Outcome | None:
        """What `ingest` would answer before looking at the rows (None: a new batch).

        Lets the caller keep the documented order of checks (redelivery and replay before a
        malformed body) without taking the agent lock.
        """
        async with conn.transaction():
            cur = await conn.execute(_STATE, {"agent": agent_id, "seq": seq})
            return _decide(await cur.fetchone(), seq, digest)


def assign_tenants(rows: Sequence[list[Any]], codes: Mapping[str, int], own: int) -> bool:
    """Give each prepared row the tenant its accountcode is mapped to (`codes`), the switch's
    tenant `own` otherwise (in place). True when some row went to another tenant."""
    if not codes:
        return False
    mapped = False
    get = codes.get
    for row in rows:
        tenant = get(row[_I_ACCOUNTCODE], own)
        row[_I_TENANT] = tenant
        if tenant != own:
            mapped = True
    return mapped


def _decide(row: Any, seq: int, digest: bytes) -> Outcome | None:
    if row is None:
        return Refused("unknown agent")
    revoked, last_seq, stored_digest, stored_ack = row
    if revoked:
        return Refused("agent revoked")
    if stored_digest is not None:
        if bytes(stored_digest) == digest:
            ack = wire.Ack(
                seq=seq,
                accepted=int(stored_ack["accepted"]),
                duplicates=int(stored_ack["duplicates"]),
                redelivery=True,
            )
            return Redelivery(ack)
        return Conflict(int(last_seq), f"seq {seq} was already used with another body")
    if seq <= last_seq:
        return Conflict(int(last_seq), f"seq {seq} is not after last_seq {last_seq} (replay)")
    return None


_CONTEXT = re.compile(r"COPY \w+, line (\d+)(?:, column (\w+))?")


def _bad_rows(exc: psycopg.Error) -> BadRows:
    """A database refusal of a row, as `cdrs[i]: field: message`."""
    message = (exc.diag.message_primary or str(exc)).strip()
    match = _CONTEXT.search(exc.diag.context or "")
    if match is None:
        return BadRows(f"a CDR was refused by the database: {message}")
    where = f"cdrs[{int(match[1]) - 1}]"
    if match[2]:
        where += f": {_FIELD_OF_COLUMN.get(match[2], match[2])}"
    return BadRows(f"{where}: {message}")

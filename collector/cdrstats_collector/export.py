"""Export of a CDR search as CSV or XLSX, streamed: memory stays flat whatever the row count.

CSV: PostgreSQL writes it (`COPY (SELECT ...) TO STDOUT (FORMAT csv, HEADER)`, timestamps in
the tenant's timezone); the collector forwards the bytes in 64 KiB chunks. Nothing is held
but one chunk.

XLSX: an .xlsx file is a zip of XML parts. The worksheet rows are formatted as XML by
PostgreSQL (one text per row, from a server-side cursor fetched 2,000 rows at a time) and the
collector deflates them into a zip written to the response as it goes (zip64, data
descriptors: no seeking, no temporary file). Dates are real Excel dates (local time of the
tenant, formatted yyyy-mm-dd hh:mm:ss); text cells are inline strings, so a caller name
such as "=HYPERLINK(...)" stays text. Why not a library: openpyxl's write-only mode and
xlsxwriter's constant_memory mode both finish the whole file (in memory or a temporary file)
before the first byte can be sent, and cost several µs per cell in Python.

Rows are in chronological order (start_time, key, switch_id ascending).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import zipfile
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from .auth import tenant_connection
from .search import Where

CHUNK = 64 * 1024
FETCH = 2_000

# (header, SQL expression over `cdr c`, kind) -- kind: text, number, time
EXPORT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("start_time", "c.start_time", "time"),
    ("answer_time", "c.answer_time", "time"),
    ("end_time", "c.end_time", "time"),
    ("switch", "{switch}", "text"),
    ("direction", "c.direction", "text"),
    ("caller", "c.caller", "text"),
    ("caller_name", "c.caller_name", "text"),
    ("callee", "c.callee", "text"),
    ("callee_e164", "c.callee_e164", "text"),
    ("dest_country", "c.dest_country", "text"),
    ("dest_prefix", "c.dest_prefix", "text"),
    ("accountcode", "c.accountcode", "text"),
    ("disposition", "c.disposition", "text"),
    ("hangup_cause", "c.hangup_cause", "number"),
    ("sip_code", "c.sip_code", "number"),
    ("duration", "c.duration", "number"),
    ("billsec", "c.billsec", "number"),
    ("ring_time", "c.ring_time", "number"),
    ("trunk", "c.trunk", "text"),
    ("src_ip", "host(c.src_ip)", "text"),
    ("key", "c.key", "text"),
)
ORDER = " ORDER BY c.start_time, c.key, c.switch_id"
_CONTROL = "".join(chr(i) for i in range(1, 32) if i not in (9, 10, 13))
_SPECIAL = "[&<>\x01-\x08\x0b\x0c\x0e-\x1f]"
_SAFE_TEXT = {"{switch}", "c.disposition", "c.dest_country", "c.dest_prefix", "host(c.src_ip)"}
"""Columns that cannot hold XML specials (a CHECKed enum, ISO codes, digits, an address, the
switch names, which are escaped in Python when the CASE literal is built)."""


def _switch_case(names: Mapping[int, str]) -> sql.Composable:
    if not names:
        return sql.SQL("NULL::text")
    whens = sql.SQL(" ").join(
        sql.SQL("WHEN {} THEN {}").format(sql.Literal(i), sql.Literal(n))
        for i, n in sorted(names.items())
    )
    return sql.SQL("(CASE c.switch_id {} END)").format(whens)


def _select(columns: Sequence[sql.Composable], w: Where) -> sql.Composed:
    return sql.SQL("SELECT {} FROM cdr c WHERE {}{}").format(
        sql.SQL(", ").join(columns),
        sql.SQL(w.sql),
        sql.SQL(ORDER),
    )


def _expr(expr: str, switch: sql.Composable) -> sql.Composable:
    if expr == "{switch}":
        return switch
    return sql.SQL(expr)


async def csv_stream(
    pool: AsyncConnectionPool[Any], tenant: int, tz: ZoneInfo, w: Where, names: Mapping[int, str]
) -> AsyncIterator[bytes]:
    switch = _switch_case(names)
    columns = [
        sql.SQL("{} AS {}").format(_expr(e, switch), sql.Identifier(h))
        for h, e, _ in EXPORT_COLUMNS
    ]
    query = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(_select(columns, w))
    async with tenant_connection(pool, tenant) as conn:
        await conn.execute(sql.SQL("SET LOCAL TimeZone = {}").format(sql.Literal(tz.key)))
        buf = bytearray()
        async with conn.cursor() as cur, cur.copy(query, w.params) as copy:
            async for data in copy:
                buf += data
                if len(buf) >= CHUNK:
                    yield bytes(buf)
                    buf.clear()
        if buf:
            yield bytes(buf)


# --- xlsx ------------------------------------------------------------------------------------

_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG = "http://schemas.openxmlformats.org/package/2006"
_XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'

_STATIC_PARTS = {
    "[Content_Types].xml": (
        f'{_XML}<Types xmlns="{_PKG}/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
        'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-'
        'officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        '<Override PartName="/xl/styles.xml" ContentType="application/vnd.openxmlformats-'
        'officedocument.spreadsheetml.styles+xml"/></Types>'
    ),
    "_rels/.rels": (
        f'{_XML}<Relationships xmlns="{_PKG}/relationships">'
        f'<Relationship Id="rId1" Type="{_REL}/officeDocument" Target="xl/workbook.xml"/>'
        "</Relationships>"
    ),
    "xl/workbook.xml": (
        f'{_XML}<workbook xmlns="{_NS}" xmlns:r="{_REL}"><sheets>'
        '<sheet name="CDRs" sheetId="1" r:id="rId1"/></sheets></workbook>'
    ),
    "xl/_rels/workbook.xml.rels": (
        f'{_XML}<Relationships xmlns="{_PKG}/relationships">'
        f'<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
        f'<Relationship Id="rId2" Type="{_REL}/styles" Target="styles.xml"/>'
        "</Relationships>"
    ),
    "xl/styles.xml": (
        f'{_XML}<styleSheet xmlns="{_NS}">'
        '<numFmts count="1"><numFmt numFmtId="164" formatCode="yyyy-mm-dd hh:mm:ss"/></numFmts>'
        '<fonts count="2"><font><sz val="11"/><name val="Calibri"/></font>'
        '<font><b/><sz val="11"/><name val="Calibri"/></font></fonts>'
        '<fills count="2"><fill><patternFill patternType="none"/></fill>'
        '<fill><patternFill patternType="gray125"/></fill></fills>'
        '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
        '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/>'
        '</cellStyleXfs><cellXfs count="3">'
        '<xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
        '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
        '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
        '</cellXfs><cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/>'
        "</cellStyles></styleSheet>"
    ),
}


_OPEN = {
    "number": "<c><v>",
    "time": '<c s="1"><v>',
    "text": '<c t="inlineStr"><is><t>',
}
_CLOSE = {"number": "</v></c>", "time": "</v></c>", "text": "</t></is></c>"}


def _xml_cell(expr: sql.Composable, kind: str, escape: bool) -> list[sql.Composable]:
    """Three arguments of concat() giving one <c> element, or <c/> for a NULL (which keeps
    the columns aligned): opening markup, value (NULL is '' in concat), closing markup."""
    value: sql.Composable
    if kind == "time":
        # Excel serial date of the local wall time: days since 1899-12-30 (float8, not numeric)
        value = sql.SQL(
            "(date_part('epoch', {} AT TIME ZONE %(xlsx_tz)s) / 86400.0 + 25569)::float8"
        ).format(expr)
    elif kind == "text" and escape:
        value = sql.SQL(
            "replace(replace(replace(translate({}, %(xlsx_ctl)s, ''), '&', '&amp;'),"
            " '<', '&lt;'), '>', '&gt;')"
        ).format(expr)
    else:
        value = expr
    return [
        sql.SQL("CASE WHEN {} IS NULL THEN '<c/>' ELSE {} END").format(
            expr, sql.Literal(_OPEN[kind])
        ),
        value,
        sql.SQL("CASE WHEN {} IS NULL THEN '' ELSE {} END").format(expr, sql.Literal(_CLOSE[kind])),
    ]


def _xml_row(switch: sql.Composable) -> sql.Composable:
    """One <row> per CDR, built by a single concat() (a chain of || copies the growing row
    once per piece). Rows whose free-text fields hold nothing to escape (nearly all of them)
    take the plain branch; the others are escaped field by field."""
    free = [_expr(e, switch) for _, e, k in EXPORT_COLUMNS if k == "text" and e not in _SAFE_TEXT]
    probe = sql.SQL("concat({})").format(sql.SQL(", ").join(free))

    def row(escape: bool) -> sql.Composable:
        parts: list[sql.Composable] = [sql.Literal("<row>")]
        for _, e, k in EXPORT_COLUMNS:
            parts += _xml_cell(_expr(e, switch), k, escape and e not in _SAFE_TEXT)
        parts.append(sql.Literal("</row>"))
        return sql.SQL("concat({})").format(sql.SQL(", ").join(parts))

    return sql.SQL("CASE WHEN {} ~ %(xlsx_special)s THEN {} ELSE {} END").format(
        probe, row(True), row(False)
    )


def _xml_escape(text: str) -> str:
    text = text.translate({ord(c): None for c in _CONTROL})
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _header_row() -> str:
    cells = "".join(f'<c t="inlineStr" s="2"><is><t>{h}</t></is></c>' for h, _, _ in EXPORT_COLUMNS)
    return f"<row>{cells}</row>"


class _Sink(io.RawIOBase):
    """A write-only, non-seekable file: zipfile then writes data descriptors."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += b
        return len(b)

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


def _member(name: str) -> zipfile.ZipInfo:
    """A zip member with a fixed timestamp: the same search gives the same bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    # Level 1 as for the whole file: a ZipInfo otherwise carries zlib's default level. The
    # attribute is `_compresslevel` on 3.11/3.12 (3.13 keeps it as an alias of compress_level).
    setattr(info, "_compresslevel", 1)  # noqa: B010
    return info


async def xlsx_stream(
    pool: AsyncConnectionPool[Any], tenant: int, tz: ZoneInfo, w: Where, names: Mapping[int, str]
) -> AsyncIterator[bytes]:
    switch = _switch_case({i: _xml_escape(n) for i, n in names.items()})
    query = _select([_xml_row(switch)], w)
    params = {**w.params, "xlsx_tz": tz.key, "xlsx_ctl": _CONTROL, "xlsx_special": _SPECIAL}
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, text in _STATIC_PARTS.items():
            zf.writestr(_member(name), text)
        yield sink.take()
        with zf.open(_member("xl/worksheets/sheet1.xml"), "w", force_zip64=True) as sheet:
            sheet.write(f'{_XML}<worksheet xmlns="{_NS}"><sheetData>{_header_row()}'.encode())
            async with (
                tenant_connection(pool, tenant) as conn,
                conn.cursor(name="cdrstats_export") as cur,
            ):
                await cur.execute(query, params)
                # PostgreSQL formats the next rows while a thread deflates these (zlib
                # releases the GIL): the two cores work at once.
                pending = asyncio.ensure_future(cur.fetchmany(FETCH))
                try:
                    while rows := await pending:
                        pending = asyncio.ensure_future(cur.fetchmany(FETCH))
                        await asyncio.to_thread(sheet.write, "".join([r[0] for r in rows]).encode())
                        if len(sink.data) >= CHUNK:
                            yield sink.take()
                finally:
                    if not pending.done():
                        pending.cancel()
                        with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                            await pending
            sheet.write(b"</sheetData></worksheet>")
    yield sink.take()

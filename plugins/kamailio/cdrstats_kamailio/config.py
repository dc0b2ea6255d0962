"""The kamailio `[[source]]` options, validated without I/O (errors name the key)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from urllib.parse import urlsplit

from cdrstats_agent.options import Options

from .db import IDENTIFIER, redact, url_kind
from .records import MAPPABLE_FIELDS

RECORDS = ("acc", "acc_cdrs")
FAILED_FROM = ("missed_calls", "acc")

DEFAULT_ACC_FIELDS = {"caller": "src_user", "callee": "dst_ouser", "src_ip": "src_ip",
                      "user_agent": "ua"}  # fmt: skip
"""Used when present (the columns Kamailio's default config adds with db_extra)."""
DEFAULT_CDRS_FIELDS = {"caller": "src_user", "callee": "dst_user", "src_ip": "src_ip",
                       "sip_code": "sip_code"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class KamailioOptions:
    db_url: str
    records: str
    acc_table: str
    missed_table: str
    cdrs_table: str
    failed_from: str
    fields: Mapping[str, str]
    fields_required: bool
    """True when `[source.fields]` was given: every mapped column must exist."""
    key_columns: tuple[str, str]
    tz: tzinfo
    country_code: str | None
    poll_s: float
    batch_rows: int
    gap_wait_s: float
    open_call_timeout_s: float
    rpc_url: str | None
    live_interval_s: float
    snapshot_interval_s: float
    ban_table: str | None
    rpc_timeout_s: float


def local_timezone() -> tzinfo:
    """The agent host's time zone (Kamailio writes DATETIME columns in its host's local time)."""
    tz = datetime.now().astimezone().tzinfo
    assert tz is not None
    return tz


def parse_options(table: Mapping[str, Any]) -> KamailioOptions:
    opts = Options(table)
    db_url = opts.text("db_url")
    if url_kind(db_url) is None:
        raise opts.error(
            "db_url",
            f"unsupported database URL {redact(db_url)!r}",
            hint="use mysql://user:password@host:3306/kamailio or postgresql://user@host/kamailio",
        )
    records = opts.choice("records", RECORDS, "acc")
    names = {}
    for key, default in (("acc_table", "acc"), ("missed_table", "missed_calls"),
                         ("cdrs_table", "acc_cdrs")):  # fmt: skip
        value = opts.text(key, default)
        if not IDENTIFIER.match(value):
            raise opts.error(key, f"{value!r} is not a plain table name")
        names[key] = value
    failed_from = opts.choice("failed_from", FAILED_FROM, "missed_calls")
    given = opts.table("fields", None)
    if given is None:
        fields = dict(DEFAULT_ACC_FIELDS if records == "acc" else DEFAULT_CDRS_FIELDS)
    else:
        fopts = Options(given, prefix="fields")
        fields = {}
        for field in MAPPABLE_FIELDS:
            column = fopts.text(field, None)
            if column is None or column == "":
                continue
            if not IDENTIFIER.match(column):
                raise fopts.error(field, f"{column!r} is not a plain column name")
            fields[field] = column
        fopts.finish()
    key_columns = opts.text_list("key_columns", ["callid", "from_tag"])
    if len(key_columns) != 2 or not all(IDENTIFIER.match(c) for c in key_columns):
        raise opts.error(
            "key_columns",
            f"must name two columns (Call-ID, From tag), got {key_columns!r}",
            hint='acc_cdrs has no Call-ID by default: add it with cdr_extra, e.g. "callid=$ci"',
        )
    tz = opts.timezone("timezone", None) or local_timezone()
    country_code = opts.text("country_code", None)
    if country_code is not None and not (country_code.isdigit() and 1 <= len(country_code) <= 3):
        raise opts.error("country_code", f"must be 1 to 3 digits, got {country_code!r}")
    rpc_url = opts.text("rpc_url", None)
    if rpc_url is not None:
        parts = urlsplit(rpc_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise opts.error(
                "rpc_url",
                f"must be an http:// URL of Kamailio's jsonrpcs over xhttp, got {rpc_url!r}",
                hint="for example http://127.0.0.1:5071/RPC",
            )
    ban_table = opts.text("ban_table", "ipban")
    if ban_table == "":
        ban_table = None
    elif not IDENTIFIER.match(ban_table):
        raise opts.error("ban_table", f"{ban_table!r} is not an htable name")
    result = KamailioOptions(
        db_url=db_url,
        records=records,
        acc_table=names["acc_table"],
        missed_table=names["missed_table"],
        cdrs_table=names["cdrs_table"],
        failed_from=failed_from,
        fields=fields,
        fields_required=given is not None,
        key_columns=(key_columns[0], key_columns[1]),
        tz=tz,
        country_code=country_code,
        poll_s=opts.number("poll_s", 1.0, minimum=0.01),
        batch_rows=opts.integer("batch_rows", 2000, minimum=1),
        gap_wait_s=opts.number("gap_wait_s", 2.0, minimum=0.0),
        open_call_timeout_s=opts.number("open_call_timeout_s", 14400.0, minimum=1.0),
        rpc_url=rpc_url,
        live_interval_s=opts.number("live_interval_s", 2.0, minimum=0.05),
        snapshot_interval_s=opts.number("snapshot_interval_s", 30.0, minimum=0.1),
        ban_table=ban_table,
        rpc_timeout_s=opts.number("rpc_timeout_s", 5.0, minimum=0.1),
    )
    opts.finish()
    return result

"""`cdrstats`: run the collector and administer it.

    cdrstats serve [--host 127.0.0.1] [--port 8080]
    cdrstats db upgrade | db maintain
    cdrstats db rebuild-aggregates [--tenant T] [--since ISO --until ISO]
    cdrstats tenant add NAME [--timezone TZ]
    cdrstats tenant retention NAME --cdr-days N | --default
    cdrstats switch set NAME --tenant T [--country CC] [--international-prefix P]
                                        [--national-prefix P]
    cdrstats switch list --tenant T
    cdrstats prefix import FILE [--replace] | prefix list [--starting DIGITS]
    cdrstats prefix delete PREFIX
    cdrstats user add USERNAME --role ROLE [--tenant T] [--password P]
    cdrstats user passwd USERNAME [--password P]
    cdrstats agent-token create --tenant T --switch NAME [--ttl HOURS] [--url URL]
    cdrstats api-token create --user NAME [--label TEXT] [--ttl-days DAYS]
    cdrstats api-token revoke --user NAME
    cdrstats block IP --switch NAME --tenant T [--ttl 1h] [--dry-run]
    cdrstats unblock IP --switch NAME --tenant T [--dry-run]
    cdrstats blocks --tenant T [--commands]
    cdrstats allowlist add NETWORK [--tenant T] [--note TEXT] | list | delete NETWORK [--tenant T]
    cdrstats notify add-email --tenant T --to ADDR[,ADDR] [--min-severity S] [--name N]
    cdrstats notify add-webhook --tenant T --url URL [--secret S] [--min-severity S] [--name N]
    cdrstats notify list --tenant T | test|enable|disable|delete ID --tenant T
    cdrstats import FILE --profile NAME --tenant T --switch S [--timezone TZ] [--report OUT.csv]
    cdrstats import-profile add NAME --tenant T (--preset P | --file PROFILE.toml)
    cdrstats import-profile list --tenant T | delete NAME --tenant T
    cdrstats rule add --tenant T (--json DOC | --file RULE.json) | list --tenant T | delete ID
    cdrstats accountcode map CODE --tenant T [--switch-id N] | list | unmap ID

Every administrative command is written to the audit log as `cli:<os user>`, in the same
transaction as what it does.

Every command takes --database-url (else $CDRSTATS_DATABASE_URL, else [database] url in
/etc/cdrstats/collector.toml or the --config file) and --embedded [DIR] (an embedded
PostgreSQL for trying things out). Errors are one line; exit 2 for usage and configuration
problems, 1 when the database refuses or is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from cdrstats_agent import logs
from cdrstats_agent.errors import ConfigError

from . import (
    aggregates,
    audit,
    auth,
    commands,
    csvimport,
    dialplan,
    embedded,
    enroll,
    maintenance,
    migrate,
    notify,
    retention,
    rules,
    settings,
    tenants,
    users,
)


class UsageError(Exception):
    """Exit 2: the command line or the configuration is wrong."""


def _settings(args: argparse.Namespace) -> settings.Settings:
    url = args.database_url
    if args.embedded is not None and not url:
        url = embedded.start(args.embedded)
    loaded = settings.load(url, args.config)
    return loaded.with_overrides(host=getattr(args, "host", None), port=getattr(args, "port", None))


def _connect(cfg: settings.Settings) -> psycopg.Connection[Any]:
    return psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=10)


def actor() -> str:
    """Who the audit log names for a CLI action: `cli:<os user>`."""
    return f"cli:{getpass.getuser()}"


class Audited:
    """A connection in one transaction with `record()`: the action and its audit entry are
    committed together (or neither is)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def record(
        self, action: str, target: str = "", tenant_id: int | None = None, **detail: Any
    ) -> None:
        audit.record_sync(self.conn, tenant_id, None, actor(), action, target, detail)


@contextlib.contextmanager
def _audited(cfg: settings.Settings) -> Iterator[Audited]:
    with _connect(cfg) as conn, conn.transaction():
        yield Audited(conn)


# --- commands --------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    cfg = _settings(args)
    logs.setup(args.log_level)
    uvicorn.run(
        create_app(cfg),
        host=cfg.host,
        port=cfg.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    ran = migrate.upgrade(cfg.database_url, months_ahead=cfg.months_ahead)
    if ran:
        for m in ran:
            print(f"applied {m.version:04d}_{m.name}")
    else:
        print("schema is up to date")
    return 0


def cmd_db_maintain(args: argparse.Namespace) -> int:
    cfg = _settings(args)

    async def run() -> maintenance.Report:
        async with await psycopg.AsyncConnection.connect(cfg.database_url) as conn:
            return await maintenance.run(
                conn,
                months_ahead=cfg.months_ahead,
                batch_keep_days=cfg.batch_keep_days,
                keep=retention.Policy(cfg.cdr_retention_days, cfg.aggregate_retention_days),
                history=maintenance.Keep.from_settings(cfg),
            )

    report = asyncio.run(run())
    print(
        f"partitions ensured for {report.partitions_ensured} months,"
        f" {report.batches_pruned} old batch records pruned"
    )
    done = report.retention_done
    dropped = ", ".join(done.partitions_dropped)
    print(
        f"retention: {len(done.partitions_dropped)} cdr partitions dropped"
        f"{' (' + dropped + ')' if dropped else ''},"
        f" {done.cdr_rows_deleted} CDRs deleted, {done.aggregate_rows_deleted} aggregate rows"
        " deleted"
    )
    p = report.pruned
    print(
        f"history: {p.commands} commands, {p.ip_blocks} ended blocks, {p.live_counts} live"
        f" counts, {p.import_jobs} import jobs ({p.import_rejects} rejected rows),"
        f" {p.alerts} resolved alerts pruned"
    )
    return 0


def _instant(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option} {text!r} is not an ISO date or date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_db_rebuild(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    since, until = _instant(args.since, "--since"), _instant(args.until, "--until")
    if (since is None) != (until is None):
        raise UsageError("give both --since and --until, or neither (everything)")
    if since is not None and until is not None and until <= since:
        raise UsageError("--until must be after --since")
    with _connect(cfg) as conn:
        tid = tenants.tenant_id(conn, args.tenant) if args.tenant else None
        if since is None or until is None:
            done = aggregates.rebuild_all(conn, tid)
        else:
            ids = (
                [tid]
                if tid is not None
                else [int(r[0]) for r in conn.execute("SELECT id FROM tenant ORDER BY id")]
            )
            done = [aggregates.rebuild(conn, t, since, until) for t in ids]
        for r in done:  # recorded once done (a rebuild commits as it goes)
            audit.record_sync(
                conn,
                r.tenant_id,
                None,
                actor(),
                "aggregates.rebuild",
                str(r.tenant_id),
                {"hours": [h.isoformat() for h in r.hours], "days": [str(d) for d in r.days]},
            )
    for r in done:
        print(
            f"tenant {r.tenant_id}: hours {r.hours[0].isoformat()} to {r.hours[1].isoformat()},"
            f" local days {r.days[0]} to {r.days[1]} rebuilt"
        )
    if not done:
        print("no CDRs: nothing to rebuild")
    return 0


def cmd_tenant_retention(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    if args.default == (args.cdr_days is not None):
        raise UsageError("give either --cdr-days N or --default")
    with _audited(cfg) as a:
        retention.set_tenant_retention(a.conn, args.name, args.cdr_days)
        a.record(
            "tenant.retention",
            args.name,
            tenants.tenant_id(a.conn, args.name),
            cdr_days=args.cdr_days,
        )
    if args.cdr_days is None:
        print(f"tenant {args.name!r}: raw CDRs kept as the collector's [retention] cdr_days")
    else:
        print(f"tenant {args.name!r}: raw CDRs kept {args.cdr_days} days")
    return 0


def cmd_switch_set(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _audited(cfg) as a:
        plan = dialplan.set_switch_plan(
            a.conn,
            args.tenant,
            args.name,
            country=args.country,
            international_prefix=args.international_prefix,
            national_prefix=args.national_prefix,
        )
        a.record(
            "switch.plan",
            args.name,
            tenants.tenant_id(a.conn, args.tenant),
            country=plan.country,
            international_prefix=plan.international_prefix,
            national_prefix=plan.national_prefix,
        )
    print(
        f"switch {args.name!r}: country {plan.country or '-'}, international prefix"
        f" {plan.international_prefix or '-'}, national prefix {plan.national_prefix or '-'}"
    )
    return 0


def cmd_switch_list(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _connect(cfg) as conn:
        plans = dialplan.list_switch_plans(conn, args.tenant)
    for sp in plans:
        p = sp.plan
        print(
            f"{sp.name}\tcountry={p.country or '-'}"
            f"\tinternational_prefix={p.international_prefix or '-'}"
            f"\tnational_prefix={p.national_prefix or '-'}"
        )
    return 0


def cmd_prefix_import(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    entries = dialplan.read_prefix_file(args.file)
    with _audited(cfg) as a:
        n = dialplan.import_prefixes(a.conn, entries, replace=args.replace)
        a.record("prefix.import", str(args.file), None, count=n, replace=args.replace)
    print(f"{n} dial prefixes imported{' (the table was replaced)' if args.replace else ''}")
    return 0


def cmd_prefix_list(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _connect(cfg) as conn:
        rows = dialplan.list_prefixes(conn, args.starting or "")
    for p in rows:
        print(f"{p.prefix}\t{p.name}\t{p.country or ''}\t{p.kind or ''}")
    return 0


def cmd_prefix_delete(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _audited(cfg) as a:
        dialplan.delete_prefix(a.conn, args.prefix)
        a.record("prefix.delete", args.prefix)
    print(f"dial prefix {args.prefix} deleted")
    return 0


def cmd_tenant_add(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _audited(cfg) as a:
        tid = tenants.add_tenant(a.conn, args.name, args.timezone)
        a.record("tenant.create", args.name, tid, timezone=args.timezone)
    print(f"tenant {args.name!r} created (id {tid}, timezone {args.timezone})")
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    password = args.password or secrets.token_urlsafe(15)
    with _audited(cfg) as a:
        users.add_user(a.conn, args.username, args.role, password, args.tenant)
        tid = tenants.tenant_id(a.conn, args.tenant) if args.tenant else None
        a.record("user.create", args.username, tid, role=args.role, tenant=args.tenant)
    print(f"user {args.username!r} created with role {args.role}")
    if not args.password:
        print(f"password: {password}")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    password = args.password or secrets.token_urlsafe(15)
    with _audited(cfg) as a:
        users.set_password(a.conn, args.username, password)
        a.record("user.password", args.username, _user_tenant(a.conn, args.username))
    print(f"password of {args.username!r} changed")
    if not args.password:
        print(f"password: {password}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    if args.ttl <= 0:
        raise UsageError("--ttl must be a positive number of hours")
    with _audited(cfg) as a:
        tid = tenants.tenant_id(a.conn, args.tenant)
        sid = tenants.ensure_switch(a.conn, tid, args.switch)
        token = enroll.create_token(a.conn, tid, sid, timedelta(hours=args.ttl))
        a.record("agent_token.create", args.switch, tid, ttl_hours=args.ttl)
    url = (args.url or cfg.url).rstrip("/")
    print(
        f"enrollment token for switch {args.switch!r} of tenant {args.tenant!r}"
        f" (one use, valid {args.ttl:g} h)"
    )
    print("on the switch, run:")
    print(f"  cdrstats-agent enroll {url} {token}")
    return 0


def cmd_api_token_create(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    if args.ttl_days is not None and args.ttl_days <= 0:
        raise UsageError("--ttl-days must be a positive number of days")
    ttl = None if args.ttl_days is None else timedelta(days=args.ttl_days)
    with _audited(cfg) as a:
        token = auth.create_token(a.conn, args.user, args.label, ttl)
        a.record(
            "api_token.create",
            args.user,
            _user_tenant(a.conn, args.user),
            label=args.label,
            ttl_days=args.ttl_days,
        )
    lifetime = "no expiry" if ttl is None else f"valid {args.ttl_days:g} days"
    print(f"API token for user {args.user!r} ({lifetime}); it is shown only once:")
    print(token)
    return 0


def _user_tenant(conn: psycopg.Connection[Any], username: str) -> int | None:
    row = conn.execute("SELECT tenant_id FROM app_user WHERE username = %s", (username,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _block_command(args: argparse.Namespace, verb: str) -> int:
    cfg = _settings(args)
    block_args: dict[str, Any] = {"ip": args.ip, "dry_run": args.dry_run}
    if verb == "block_ip":
        block_args["ttl"] = cfg.default_block_ttl_s if args.ttl is None else args.ttl

    async def run() -> commands.CommandRow:
        async with await psycopg.AsyncConnection.connect(
            cfg.database_url, autocommit=True, connect_timeout=10
        ) as conn:
            tid = await _tenant_id(conn, args.tenant)
            return await commands.create_command(
                conn,
                tenant_id=tid,
                switch=args.switch,
                verb=verb,
                args=block_args,
                issued_by=actor(),
                own_addresses=lambda: commands.collector_addresses([cfg.url]),
                **commands.limits(cfg),
            )

    row = asyncio.run(run())
    what = "block" if verb == "block_ip" else "unblock"
    extra = f" for {row.args['ttl']} s" if "ttl" in row.args else ""
    dry = " (dry run)" if row.args.get("dry_run") else ""
    print(
        f"{what} of {row.args['ip']} on switch {args.switch!r}{extra} queued{dry}:"
        f" command {row.id} (seq {row.seq})"
    )
    return 0


async def _tenant_id(conn: psycopg.AsyncConnection[Any], name: str) -> int:
    cur = await conn.execute("SELECT id FROM tenant WHERE name = %s", (name,))
    row = await cur.fetchone()
    if row is None:
        raise tenants.UnknownTenant(name)
    return int(row[0])


TenantWork = Callable[[psycopg.AsyncConnection[Any], int], Awaitable[int]]


def _in_tenant(args: argparse.Namespace, work: TenantWork, refused: type[Exception]) -> int:
    """`work(conn, tenant id)` for `--tenant` on an autocommit connection; `refused` (the
    module's own error for bad input) becomes a usage error (exit 2)."""
    cfg = _settings(args)

    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(
            cfg.database_url, autocommit=True, connect_timeout=10
        ) as conn:
            return await work(conn, await _tenant_id(conn, args.tenant))

    try:
        return asyncio.run(run())
    except refused as exc:
        raise UsageError(str(exc)) from None


def cmd_block(args: argparse.Namespace) -> int:
    return _block_command(args, "block_ip")


def cmd_unblock(args: argparse.Namespace) -> int:
    return _block_command(args, "unblock_ip")


def cmd_blocks(args: argparse.Namespace) -> int:
    cfg = _settings(args)

    async def run() -> tuple[list[dict[str, Any]], list[commands.CommandRow]]:
        async with await psycopg.AsyncConnection.connect(
            cfg.database_url, autocommit=True, connect_timeout=10
        ) as conn:
            tid = await _tenant_id(conn, args.tenant)
            blocks = await commands.active_blocks(conn, tid)
            rows = await commands.list_commands(conn, tid) if args.commands else []
            return blocks, rows

    blocks, rows = asyncio.run(run())
    for b in blocks:
        print(f"{b['switch']}\t{b['ip']}\tuntil {b['expires_at']}\tby {b['issued_by']}")
    if not blocks:
        print("no active blocks")
    for r in rows:
        doc = r.to_json()
        print(
            f"{doc['issued_at']}\t{doc['switch']}\t{doc['verb']}\t{doc['args'].get('ip')}"
            f"\t{doc['status']}\t{doc['issued_by']}\t{doc['result'] or ''}"
        )
    return 0


def cmd_api_token_revoke(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _audited(cfg) as a:
        count = auth.revoke_tokens(a.conn, args.user)
        a.record("api_token.revoke", args.user, _user_tenant(a.conn, args.user), count=count)
    print(
        f"{count} API token(s) of user {args.user!r} revoked (collectors forget them within 30 s)"
    )
    return 0


def cmd_accountcode_map(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _audited(cfg) as a:
        mid = tenants.add_accountcode(a.conn, args.accountcode, args.tenant, args.switch_id)
        tid = tenants.tenant_id(a.conn, args.tenant)
        a.record("accountcode.map", args.accountcode.strip(), tid, switch_id=args.switch_id)
    where = "any switch" if args.switch_id is None else f"switch {args.switch_id}"
    print(f"mapping {mid}: accountcode {args.accountcode.strip()!r} on {where} -> {args.tenant}")
    return 0


def cmd_accountcode_unmap(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _audited(cfg) as a:
        was = tenants.remove_accountcode(a.conn, args.id)
        a.record(
            "accountcode.unmap",
            was["accountcode"],
            int(was["tenant_id"]),
            switch_id=was["switch_id"],
            tenant=was["tenant"],
        )
    print(f"mapping {args.id} removed ({was['accountcode']!r} -> {was['tenant']})")
    return 0


def cmd_accountcode_list(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _connect(cfg) as conn:
        for m in tenants.accountcodes(conn):
            print(f"{m['id']}\t{m['accountcode']}\t{m['switch'] or '*'}\t{m['tenant']}")
    return 0


def cmd_allowlist_add(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _audited(cfg) as a:
        tid = tenants.tenant_id(a.conn, args.tenant) if args.tenant else None
        net = commands.allowlist_add(a.conn, args.network, tid, args.note)
        a.record("allowlist.add", net, tid, note=args.note)
    print(f"{net} can never be blocked ({'tenant ' + repr(args.tenant) if tid else 'any tenant'})")
    return 0


def cmd_allowlist_delete(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _audited(cfg) as a:
        tid = tenants.tenant_id(a.conn, args.tenant) if args.tenant else None
        if not commands.allowlist_delete(a.conn, args.network, tid):
            raise tenants.AdminError(f"{args.network} is not in the allowlist")
        a.record("allowlist.delete", args.network, tid)
    print(f"{args.network} removed from the allowlist")
    return 0


def cmd_allowlist_list(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _connect(cfg) as conn:
        for tenant, net, note in commands.allowlist_list(conn):
            print(f"{tenant or '*'}\t{net}\t{note}")
    return 0


def _notify(args: argparse.Namespace, action: str) -> int:
    cfg = _settings(args)

    async def work(conn: psycopg.AsyncConnection[Any], tid: int) -> int:
        if action in ("add-email", "add-webhook"):
            doc: dict[str, Any] = {"min_severity": args.min_severity, "name": args.name}
            if action == "add-email":
                doc.update(kind="email", target=args.to)
            else:
                doc.update(kind="webhook", target=args.url)
                if args.secret:
                    doc["secret"] = args.secret
            ch = await notify.add_channel(conn, tid, doc, by=actor())
            print(f"channel {ch.id}: {ch.kind} {ch.target} (alerts from {ch.min_severity})")
            if ch.kind == "webhook":
                print(f"secret (signs every request, shown only once): {ch.secret}")
        elif action == "list":
            for ch in await notify.list_channels(conn, tid):
                state = "enabled" if ch.enabled else "disabled"
                print(f"{ch.id}\t{ch.kind}\t{ch.target}\t{ch.min_severity}\t{state}\t{ch.name}")
        elif action in ("enable", "disable"):
            doc = {"enabled": action == "enable"}
            if not await notify.update_channel(conn, tid, args.id, doc, by=actor()):
                raise tenants.AdminError(f"tenant {args.tenant!r} has no channel {args.id}")
            print(f"channel {args.id} {action}d")
        elif action == "delete":
            if not await notify.delete_channel(conn, tid, args.id, by=actor()):
                raise tenants.AdminError(f"tenant {args.tenant!r} has no channel {args.id}")
            print(f"channel {args.id} deleted")
        else:
            try:
                error = await notify.test_channel(conn, cfg, tid, args.id, by=actor())
            except LookupError:
                raise tenants.AdminError(
                    f"tenant {args.tenant!r} has no channel {args.id}"
                ) from None
            if error is not None:
                print(f"channel {args.id}: test failed: {error}", file=sys.stderr)
                return 1
            print(f"channel {args.id}: test notification accepted")
        return 0

    return _in_tenant(args, work, notify.ChannelError)


def cmd_notify_add_email(args: argparse.Namespace) -> int:
    return _notify(args, "add-email")


def cmd_notify_add_webhook(args: argparse.Namespace) -> int:
    return _notify(args, "add-webhook")


def cmd_notify_list(args: argparse.Namespace) -> int:
    return _notify(args, "list")


def cmd_notify_test(args: argparse.Namespace) -> int:
    return _notify(args, "test")


def cmd_notify_delete(args: argparse.Namespace) -> int:
    return _notify(args, "delete")


def cmd_notify_enable(args: argparse.Namespace) -> int:
    return _notify(args, "enable")


def cmd_notify_disable(args: argparse.Namespace) -> int:
    return _notify(args, "disable")


def cmd_rule_add(args: argparse.Namespace) -> int:
    text = args.file.read_text() if args.file else args.json
    if not text:
        raise UsageError("give the rule as --json '{...}' or --file rule.json")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"the rule is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError("the rule must be a JSON object (docs/rules.md)")

    async def work(conn: psycopg.AsyncConnection[Any], tid: int) -> int:
        rule = await rules.create_rule(conn, tid, doc, actor())
        print(f"rule {rule['id']}: {rule['name']} ({rule['kind']}, {rule['action']})")
        return 0

    return _in_tenant(args, work, rules.RuleError)


def cmd_rule_list(args: argparse.Namespace) -> int:
    async def work(conn: psycopg.AsyncConnection[Any], tid: int) -> int:
        for r in await rules.list_rules(conn, tid):
            state = "enabled" if r["enabled"] else "disabled"
            params = json.dumps(r["params"], sort_keys=True)
            print(
                f"{r['id']}\t{r['name']}\t{r['kind']}\t{r['window_s']}s\t{params}"
                f"\t{r['action']}\t{state}"
            )
        return 0

    return _in_tenant(args, work, rules.RuleError)


def cmd_rule_delete(args: argparse.Namespace) -> int:
    async def work(conn: psycopg.AsyncConnection[Any], tid: int) -> int:
        if not await rules.delete_rule(conn, tid, args.id, actor()):
            raise tenants.AdminError(f"tenant {args.tenant!r} has no rule {args.id}")
        print(f"rule {args.id} deleted")
        return 0

    return _in_tenant(args, work, rules.RuleError)


def cmd_import(args: argparse.Namespace) -> int:
    from . import store

    cfg = _settings(args)
    if not args.file.is_file():
        raise UsageError(f"{args.file}: no such file")
    with _connect(cfg) as conn:
        tid = tenants.tenant_id(conn, args.tenant)
        sid = tenants.ensure_switch(conn, tid, args.switch)

    def progress(job: csvimport.Progress) -> None:
        if sys.stderr.isatty():
            print(
                f"\r{job.rows_read} rows read, {job.imported} imported,"
                f" {job.duplicates} duplicates, {job.rejected} rejected",
                end="",
                file=sys.stderr,
                flush=True,
            )

    async def run() -> csvimport.Progress:
        async with await psycopg.AsyncConnection.connect(
            cfg.database_url, autocommit=True, connect_timeout=10
        ) as conn:
            importer = csvimport.Importer(
                conn, store.Ingestor(), tenant_id=tid, switch_id=sid, progress=progress
            )
            return await importer.run(
                args.file,
                args.profile,
                timezone=args.timezone,
                created_by=actor(),
            )

    job = asyncio.run(run())
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(
        f"{args.file.name}: {job.rows_read} rows read, {job.imported} imported,"
        f" {job.duplicates} duplicates skipped, {job.rejected} rejected (job {job.job_id})"
    )
    with _connect(cfg) as conn:
        audit.record_sync(
            conn,
            tid,
            None,
            actor(),
            "import.run",
            str(args.file.name),
            {
                "job_id": str(job.job_id),
                "profile": args.profile,
                "switch": args.switch,
                "rows_read": job.rows_read,
                "imported": job.imported,
                "duplicates": job.duplicates,
                "rejected": job.rejected,
            },
        )
        for line, reason in csvimport.first_rejects(conn, tid, job.job_id):
            print(f"  line {line}: {reason}")
        if job.rejected > 10:
            print(f"  ... {job.rejected - 10} more (--report FILE writes them all as CSV)")
        if args.report is not None:
            with open(args.report, "w", encoding="utf-8", newline="") as out:
                n = csvimport.write_reject_report(conn, tid, job.job_id, out)
            kept = f" (the first {n} kept)" if n < job.rejected else ""
            print(f"rejected rows written to {args.report}{kept}")
    return 0


def cmd_import_profile_add(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    if (args.preset is None) == (args.file is None):
        raise UsageError("give either --preset NAME or --file PROFILE.toml")
    if args.file is not None:
        try:
            text = args.file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{args.file}: {exc.strerror}") from None
        options = csvimport.profile_from_toml(text, str(args.file))
    else:
        options = {"preset": args.preset}
    with _audited(cfg) as a:
        tid = tenants.tenant_id(a.conn, args.tenant)
        csvimport.save_profile(a.conn, tid, args.name, options)
        a.record("import_profile.save", args.name, tid, options=options)
    print(f"import profile {args.name!r} saved for tenant {args.tenant!r}")
    return 0


def cmd_import_profile_delete(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _audited(cfg) as a:
        tid = tenants.tenant_id(a.conn, args.tenant)
        if not csvimport.delete_profile(a.conn, tid, args.name):
            raise tenants.AdminError(f"tenant {args.tenant!r} has no import profile {args.name!r}")
        a.record("import_profile.delete", args.name, tid)
    print(f"import profile {args.name!r} deleted from tenant {args.tenant!r}")
    return 0


def cmd_import_profile_list(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _connect(cfg) as conn:
        tid = tenants.tenant_id(conn, args.tenant)
        found = csvimport.list_profiles(conn, tid)
    for name, options, builtin in found:
        kind = "built-in" if builtin else "tenant"
        print(f"{name}\t{kind}\t{csvimport.profile_options_text(options)}")
    return 0


# --- parser ----------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", help="PostgreSQL URL (else $CDRSTATS_DATABASE_URL)")
    common.add_argument(
        "--config", type=Path, help=f"config file (default {settings.DEFAULT_CONFIG})"
    )
    common.add_argument(
        "--embedded",
        nargs="?",
        const=str(embedded.DEFAULT_DATADIR),
        metavar="DIR",
        help="use an embedded PostgreSQL with its data in DIR (default var/pg)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="cdrstats", description="CDR-Stats collector")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: Any, name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=help)
        p.set_defaults(func=func)
        return p

    serve = command(sub, "serve", cmd_serve, "run the collector (HTTP API)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])

    db = sub.add_parser("db", help="schema and upkeep").add_subparsers(
        dest="db_command", required=True, metavar="COMMAND"
    )
    command(db, "upgrade", cmd_db_upgrade, "apply pending migrations")
    command(db, "maintain", cmd_db_maintain, "create partitions ahead, prune, apply retention")
    rebuild = command(
        db, "rebuild-aggregates", cmd_db_rebuild, "recompute aggregates from the cdr table"
    )
    rebuild.add_argument("--tenant", help="one tenant (default: every tenant)")
    rebuild.add_argument("--since", help="ISO date or date-time (UTC unless an offset is given)")
    rebuild.add_argument("--until", help="ISO date or date-time, exclusive")

    tenant = sub.add_parser("tenant", help="tenants").add_subparsers(
        dest="tenant_command", required=True, metavar="COMMAND"
    )
    add = command(tenant, "add", cmd_tenant_add, "create a tenant")
    add.add_argument("name")
    add.add_argument("--timezone", default="UTC", help="IANA timezone (default UTC)")
    tret = command(tenant, "retention", cmd_tenant_retention, "a tenant's own CDR retention")
    tret.add_argument("name")
    tret.add_argument("--cdr-days", type=int, help="keep this tenant's raw CDRs N days")
    tret.add_argument("--default", action="store_true", help="use the collector's setting")

    switch = sub.add_parser("switch", help="switches' numbering plans").add_subparsers(
        dest="switch_command", required=True, metavar="COMMAND"
    )
    sset = command(switch, "set", cmd_switch_set, "set a switch's numbering plan")
    sset.add_argument("name", help="switch name")
    sset.add_argument("--tenant", required=True)
    sset.add_argument("--country", help="ISO 3166 alpha-2 code of the switch's country ('' clears)")
    sset.add_argument("--international-prefix", help="e.g. 00, 011 ('' for none)")
    sset.add_argument("--national-prefix", help="e.g. 0, 1 ('' for none)")
    slist = command(switch, "list", cmd_switch_list, "list a tenant's switches and plans")
    slist.add_argument("--tenant", required=True)

    prefix = sub.add_parser("prefix", help="dial prefixes (destinations)").add_subparsers(
        dest="prefix_command", required=True, metavar="COMMAND"
    )
    pimp = command(prefix, "import", cmd_prefix_import, "import dial prefixes from a CSV file")
    pimp.add_argument("file", type=Path, help="CSV: prefix,name,country,kind")
    pimp.add_argument("--replace", action="store_true", help="delete prefixes not in the file")
    plist = command(prefix, "list", cmd_prefix_list, "list dial prefixes")
    plist.add_argument("--starting", help="only prefixes starting with these digits")
    pdel = command(prefix, "delete", cmd_prefix_delete, "delete one dial prefix")
    pdel.add_argument("prefix")

    user = sub.add_parser("user", help="console users").add_subparsers(
        dest="user_command", required=True, metavar="COMMAND"
    )
    uadd = command(user, "add", cmd_user_add, "create a console user")
    uadd.add_argument("username")
    uadd.add_argument("--role", required=True, choices=users.ROLES)
    uadd.add_argument("--tenant", help="the user's tenant (all roles but superadmin)")
    uadd.add_argument("--password", help="default: a generated one, printed once")
    upass = command(user, "passwd", cmd_user_passwd, "set a console user's password")
    upass.add_argument("username")
    upass.add_argument("--password", help="default: a generated one, printed once")

    token = sub.add_parser("agent-token", help="agent enrollment tokens").add_subparsers(
        dest="token_command", required=True, metavar="COMMAND"
    )
    tcreate = command(token, "create", cmd_token_create, "create a one-time enrollment token")
    tcreate.add_argument("--tenant", required=True)
    tcreate.add_argument("--switch", required=True, help="switch name (created if missing)")
    tcreate.add_argument("--ttl", type=float, default=24.0, help="hours (default 24)")
    tcreate.add_argument("--url", help="collector URL agents use (default from settings)")

    api_token = sub.add_parser("api-token", help="HTTP API tokens").add_subparsers(
        dest="api_token_command", required=True, metavar="COMMAND"
    )
    acreate = command(api_token, "create", cmd_api_token_create, "create an API bearer token")
    acreate.add_argument("--user", required=True, help="the console user the token acts as")
    acreate.add_argument("--label", default="", help="a note to recognise the token by")
    acreate.add_argument("--ttl-days", type=float, help="lifetime in days (default: no expiry)")
    arevoke = command(api_token, "revoke", cmd_api_token_revoke, "revoke every token of a user")
    arevoke.add_argument("--user", required=True)

    block = command(sub, "block", cmd_block, "block an IP address on a switch (remote action)")
    block.add_argument("ip")
    block.add_argument("--switch", required=True, help="switch name")
    block.add_argument("--tenant", required=True)
    block.add_argument(
        "--ttl",
        help="how long: seconds, or 15m, 1h, 7d (default [commands] default_block_ttl_s, 1h)",
    )
    block.add_argument(
        "--dry-run", action="store_true", help="the agent checks but changes nothing"
    )
    unblock = command(sub, "unblock", cmd_unblock, "unblock an IP address on a switch")
    unblock.add_argument("ip")
    unblock.add_argument("--switch", required=True, help="switch name")
    unblock.add_argument("--tenant", required=True)
    unblock.add_argument(
        "--dry-run", action="store_true", help="the agent checks but changes nothing"
    )
    blocks = command(sub, "blocks", cmd_blocks, "active blocks of a tenant (and recent commands)")
    blocks.add_argument("--tenant", required=True)
    blocks.add_argument("--commands", action="store_true", help="also list recent commands")

    acc = sub.add_parser("accountcode", help="account codes mapped to tenants").add_subparsers(
        dest="accountcode_command", required=True, metavar="COMMAND"
    )
    amap = command(acc, "map", cmd_accountcode_map, "CDRs with this accountcode go to a tenant")
    amap.add_argument("accountcode", help="the code as the switch writes it")
    amap.add_argument("--tenant", required=True, help="the tenant the CDRs belong to")
    amap.add_argument("--switch-id", type=int, help="only on this switch (default: any switch)")
    aunmap = command(acc, "unmap", cmd_accountcode_unmap, "remove a mapping")
    aunmap.add_argument("id", type=int, help="mapping id (see accountcode list)")
    command(acc, "list", cmd_accountcode_list, "list the mappings")

    allow = sub.add_parser("allowlist", help="addresses that can never be blocked").add_subparsers(
        dest="allowlist_command", required=True, metavar="COMMAND"
    )
    aadd = command(allow, "add", cmd_allowlist_add, "add a network (or one address)")
    aadd.add_argument("network")
    aadd.add_argument("--tenant", help="only for this tenant (default: every tenant)")
    aadd.add_argument("--note", default="", help="why (shown when a block is refused)")
    adel = command(allow, "delete", cmd_allowlist_delete, "remove a network")
    adel.add_argument("network")
    adel.add_argument("--tenant")
    command(allow, "list", cmd_allowlist_list, "list the allowlist")

    nfy = sub.add_parser("notify", help="alert notification channels").add_subparsers(
        dest="notify_command", required=True, metavar="COMMAND"
    )
    nmail = command(nfy, "add-email", cmd_notify_add_email, "send a tenant's alerts by email")
    nmail.add_argument("--to", required=True, help="address(es), comma-separated")
    nhook = command(nfy, "add-webhook", cmd_notify_add_webhook, "POST alerts to a URL (signed)")
    nhook.add_argument("--url", required=True, help="http:// or https:// URL")
    nhook.add_argument("--secret", help="HMAC key, 16 to 200 characters (default: made, printed)")
    for p in (nmail, nhook):
        p.add_argument("--tenant", required=True)
        p.add_argument(
            "--min-severity", default="warning", choices=notify.SEVERITIES, help="default warning"
        )
        p.add_argument("--name", default="", help="a label")
    nlist = command(nfy, "list", cmd_notify_list, "list a tenant's channels")
    nlist.add_argument("--tenant", required=True)
    ntest = command(nfy, "test", cmd_notify_test, "send a test notification through a channel")
    ndel = command(nfy, "delete", cmd_notify_delete, "delete a channel")
    non = command(nfy, "enable", cmd_notify_enable, "send alerts through a channel again")
    noff = command(nfy, "disable", cmd_notify_disable, "stop sending through a channel")
    for p in (ntest, ndel, non, noff):
        p.add_argument("id", type=int, help="channel id (see notify list)")
        p.add_argument("--tenant", required=True)

    rule = sub.add_parser("rule", help="alert and fraud rules (docs/rules.md)").add_subparsers(
        dest="rule_command", required=True, metavar="COMMAND"
    )
    radd = command(rule, "add", cmd_rule_add, "add a rule from its JSON document")
    rsrc = radd.add_mutually_exclusive_group(required=True)
    rsrc.add_argument("--json", help='the rule document, e.g. \'{"name": ..., "kind": ...}\'')
    rsrc.add_argument("--file", type=Path, help="a file holding the rule document")
    rlist = command(rule, "list", cmd_rule_list, "list a tenant's rules")
    rdel = command(rule, "delete", cmd_rule_delete, "delete a rule (its alerts are resolved)")
    rdel.add_argument("id", type=int, help="rule id (see rule list)")
    for p in (radd, rlist, rdel):
        p.add_argument("--tenant", required=True)

    imp = command(sub, "import", cmd_import, "import a CSV file of CDRs (docs/csv-import.md)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--profile", required=True, help="import profile (asterisk, ... or saved)")
    imp.add_argument("--tenant", required=True)
    imp.add_argument("--switch", required=True, help="switch name (created if missing)")
    imp.add_argument("--timezone", help="IANA zone of the file's local times (default: tenant's)")
    imp.add_argument("--report", type=Path, help="write the rejected rows to this CSV file")
    iprof = sub.add_parser("import-profile", help="CSV import profiles").add_subparsers(
        dest="import_profile_command", required=True, metavar="COMMAND"
    )
    ipadd = command(iprof, "add", cmd_import_profile_add, "save a named mapping for a tenant")
    ipadd.add_argument("name")
    ipadd.add_argument("--tenant", required=True)
    ipadd.add_argument("--preset", choices=sorted(csvimport.BUILTIN_PROFILES))
    ipadd.add_argument("--file", type=Path, help="TOML file: the CSV plugin's mapping options")
    iplist = command(iprof, "list", cmd_import_profile_list, "list a tenant's import profiles")
    ipdel = command(iprof, "delete", cmd_import_profile_delete, "delete a tenant's import profile")
    ipdel.add_argument("name")
    ipdel.add_argument("--tenant", required=True)
    iplist.add_argument("--tenant", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except (ConfigError, UsageError, tenants.InvalidArgument, embedded.EmbeddedUnavailable) as exc:
        print(f"cdrstats: {exc}", file=sys.stderr)
        return 2
    except (tenants.AdminError, migrate.MigrationError, commands.CommandError) as exc:
        print(f"cdrstats: {exc}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"cdrstats: database unavailable: {first}", file=sys.stderr)
        return 1
    except psycopg.errors.UndefinedTable as exc:
        print(
            f"cdrstats: the schema is missing ({exc.diag.message_primary}):"
            " run `cdrstats db upgrade`",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`cdrstats`: run the collector and administer it.

    cdrstats serve [--host 127.0.0.1] [--port 8080]
    cdrstats db upgrade | db maintain
    cdrstats tenant add NAME [--timezone TZ]
    cdrstats user add USERNAME --role ROLE [--tenant T] [--password P]
    cdrstats user passwd USERNAME [--password P]
    cdrstats agent-token create --tenant T --switch NAME [--ttl HOURS] [--url URL]
    cdrstats api-token create --user NAME [--label TEXT] [--ttl-days DAYS]

Every command takes --database-url (else $CDRSTATS_DATABASE_URL, else [database] url in
/etc/cdrstats/collector.toml or the --config file) and --embedded [DIR] (an embedded
PostgreSQL for trying things out). Errors are one line; exit 2 for usage and configuration
problems, 1 when the database refuses or is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from cdrstats_agent import logs
from cdrstats_agent.errors import ConfigError

from . import auth, embedded, enroll, maintenance, migrate, settings, tenants, users


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
                conn, months_ahead=cfg.months_ahead, batch_keep_days=cfg.batch_keep_days
            )

    report = asyncio.run(run())
    print(
        f"partitions ensured for {report.partitions_ensured} months,"
        f" {report.batches_pruned} old batch records pruned"
    )
    return 0


def cmd_tenant_add(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    with _connect(cfg) as conn:
        tid = tenants.add_tenant(conn, args.name, args.timezone)
    print(f"tenant {args.name!r} created (id {tid}, timezone {args.timezone})")
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    password = args.password or secrets.token_urlsafe(15)
    with _connect(cfg) as conn:
        users.add_user(conn, args.username, args.role, password, args.tenant)
    print(f"user {args.username!r} created with role {args.role}")
    if not args.password:
        print(f"password: {password}")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    password = args.password or secrets.token_urlsafe(15)
    with _connect(cfg) as conn:
        users.set_password(conn, args.username, password)
    print(f"password of {args.username!r} changed")
    if not args.password:
        print(f"password: {password}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    if args.ttl <= 0:
        raise UsageError("--ttl must be a positive number of hours")
    with _connect(cfg) as conn:
        tid = tenants.tenant_id(conn, args.tenant)
        sid = tenants.ensure_switch(conn, tid, args.switch)
        token = enroll.create_token(conn, tid, sid, timedelta(hours=args.ttl))
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
    with _connect(cfg) as conn:
        token = auth.create_token(conn, args.user, args.label, ttl)
    lifetime = "no expiry" if ttl is None else f"valid {args.ttl_days:g} days"
    print(f"API token for user {args.user!r} ({lifetime}); it is shown only once:")
    print(token)
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
    command(db, "maintain", cmd_db_maintain, "create partitions ahead, prune batch records")

    tenant = sub.add_parser("tenant", help="tenants").add_subparsers(
        dest="tenant_command", required=True, metavar="COMMAND"
    )
    add = command(tenant, "add", cmd_tenant_add, "create a tenant")
    add.add_argument("name")
    add.add_argument("--timezone", default="UTC", help="IANA timezone (default UTC)")

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
    except (tenants.AdminError, migrate.MigrationError) as exc:
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

"""`cdrstats-agent`: run | check | enroll | status | sample-config | plugin new (docs/agent.md).

Exit codes: 0 fine, 1 a check or an operation failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, plugin, scaffold
from .checks import run_checks
from .config import DEFAULT_CONFIG_PATH, Config, load_config, sample_config, url_problem
from .errors import ConfigError, IdentityError
from .identity import enroll, load_agent
from .live import read_status_file as read_live_status
from .logs import setup as setup_logging
from .runner import AgentError, run_agent
from .spool import SPOOL_FILE, SpoolError, SpoolStore
from .uplink import CollectorError, fetch_agent_status


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=DEFAULT_CONFIG_PATH,
        help=f"agent configuration file (default {DEFAULT_CONFIG_PATH})",
    )
    parser = argparse.ArgumentParser(
        prog="cdrstats-agent",
        description="CDR-Stats agent: reads a switch's CDRs and pushes them to the collector.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the agent (until SIGTERM)")
    sub.add_parser(
        "check", parents=[common], help="check config, sources, enrollment and the collector"
    )
    p = sub.add_parser("enroll", parents=[common], help="enroll with a collector using a token")
    p.add_argument("url", metavar="URL", help="collector base URL, e.g. http://collector:8080")
    p.add_argument("token", metavar="TOKEN", help="one-time enrollment token")
    p.add_argument("--force", action="store_true", help="replace an existing identity")
    sub.add_parser("status", parents=[common], help="spool, sources and the collector's view")
    p = sub.add_parser(
        "sample-config", parents=[common], help="print a config file for a plugin's source"
    )
    p.add_argument("plugin", metavar="PLUGIN", help="plugin name (e.g. csv)")
    p = sub.add_parser("plugin", help="plugin authoring: `plugin new NAME` (docs/plugins.md)")
    p.add_argument("action", choices=["new"], help="new: scaffold a plugin distribution")
    p.add_argument("name", metavar="NAME", help="plugin name (lower_snake_case)")
    p.add_argument("--dir", default=".", help="where to create cdrstats-NAME/ (default .)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command
    try:
        if command == "sample-config":
            return _sample_config(args.plugin)
        if command == "plugin":
            return _plugin_new(args.name, args.dir)
        if command == "enroll":
            return _enroll(args.config, args.url, args.token, args.force)
        config = load_config(args.config)
        if command == "run":
            return _run(config)
        if command == "check":
            return asyncio.run(_check(config))
        return asyncio.run(_status(config))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(config: Config) -> int:
    setup_logging(config.agent.log_level)
    if config.agent.log_level != "debug":  # httpx logs every request at info: too chatty
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        asyncio.run(run_agent(config, handle_signals=True))
    except (AgentError, SpoolError, IdentityError) as exc:
        print(f"cdrstats-agent: {exc}", file=sys.stderr)
        return 1
    return 0


def _sample_config(name: str) -> int:
    try:
        found = plugin.load(name)
    except ConfigError as exc:
        print(f"cdrstats-agent: {exc.problem}", file=sys.stderr)
        return 2
    sys.stdout.write(sample_config(found))
    return 0


def _enroll(config_path: str, url: str, token: str, force: bool) -> int:
    problem = url_problem(url)
    if problem:
        print(f"cdrstats-agent: {problem}", file=sys.stderr)
        return 2
    config = load_config(config_path)
    setup_logging("warning")
    try:
        identity = asyncio.run(
            enroll(
                config.agent.state_dir,
                url,
                token,
                force=force,
                timeout_s=config.collector.timeout_s,
            )
        )
    except IdentityError as exc:
        print(f"cdrstats-agent: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cdrstats-agent: {config.agent.state_dir}: {exc}", file=sys.stderr)
        return 1
    print(
        f"enrolled as agent {identity.agent_id} (tenant {identity.tenant},"
        f" switch {identity.switch}) with {identity.url}"
    )
    return 0


async def _check(config: Config) -> int:
    setup_logging("warning")
    return await run_checks(config)


def _plugin_new(name: str, parent: str) -> int:
    try:
        root = scaffold.create(name, Path(parent))
    except (scaffold.ScaffoldError, OSError) as exc:
        print(f"cdrstats-agent: {exc}", file=sys.stderr)
        return 2
    print(f"created {root}: pip install -e {root} && python -m pytest {root}")
    return 0


async def _status(config: Config) -> int:
    setup_logging("warning")
    state_dir = config.agent.state_dir
    path = state_dir / SPOOL_FILE
    if not path.exists():
        print(f"spool: {path} does not exist yet (the agent has not run)")
        return 1
    try:
        store = SpoolStore(path, max_bytes=config.agent.spool_max_bytes)
    except SpoolError as exc:
        print(f"spool: {exc}")
        return 1
    try:
        stats = store.stats()
        sources = store.sources()
        quarantined = store.quarantined()
    finally:
        store.close()
    used = 100 * stats.bytes / stats.max_bytes
    print(
        f"spool: {stats.pending_cdrs} CDRs pending ({stats.unbatched_cdrs} not yet batched),"
        f" {stats.batches} batches pending, {_mb(stats.bytes)} of {_mb(stats.max_bytes)}"
        f" ({used:.1f}%), oldest {_age(stats.oldest_age_s)}"
    )
    print(f"next seq: {stats.next_seq}")
    if stats.last_ack_at is None:
        print("last ack: none")
    else:
        detail = " ".join(f"{k}={v}" for k, v in stats.last_ack.items())
        print(
            f"last ack: seq {stats.last_ack_seq}, {_age(time.time() - stats.last_ack_at)} ago"
            + (f" ({detail})" if detail else "")
        )
    print(f"quarantined batches: {stats.quarantined} ({stats.quarantined_cdrs} CDRs)")
    for q in quarantined[-10:]:
        print(f"  #{q.id} seq {q.seq}, {q.cdrs} CDRs, {_ago(q.quarantined_at)}: {q.reason}")
    for s in sources:
        print(
            f"source {s.name}: read {s.read}, rejected {s.rejected},"
            f" checkpoint {s.checkpoint!r}, updated {_ago(s.updated_at)}"
        )
        for at, where, reason in s.last_rejected[:5]:
            print(f"  rejected {_ago(at)}: {where}: {reason}")
    configured = {sc.name for sc in config.sources} - {s.name for s in sources}
    for name in sorted(configured):
        print(f"source {name}: not read yet")
    _print_live(config)
    try:
        identity, key = load_agent(state_dir)
    except IdentityError as exc:
        print(f"collector: {exc}")
        return 0
    url = (config.collector.urls or (identity.url,))[0]
    try:
        view: dict[str, Any] = await fetch_agent_status(
            url, identity.agent_id, key, timeout_s=min(config.collector.timeout_s, 10.0)
        )
    except CollectorError as exc:
        print(f"collector: {exc}")
    else:
        print(
            f"collector {url}: agent {view.get('agent_id')}, last_seq {view.get('last_seq')},"
            f" last_seen {view.get('last_seen')}"
        )
    return 0


def _print_live(config: Config) -> None:
    """Calls in progress as the running agent last wrote them (`state_dir/live.json`)."""
    doc = read_live_status(config.agent.state_dir)
    if doc is None:
        return
    raw = doc.get("sources")
    sources: dict[str, Any] = raw if isinstance(raw, dict) else {}
    calls = sum(int(v.get("calls", 0)) for v in sources.values() if isinstance(v, dict))
    running = "" if doc.get("running") else " (agent not running)"
    at = doc.get("updated_at")
    when = _ago(float(at)) if isinstance(at, int | float) else "-"
    print(
        f"live: {calls} calls in progress, {doc.get('sent_messages', 0)} messages sent,"
        f" {doc.get('dropped_events', 0)} events dropped, collector {doc.get('collector')},"
        f" updated {when}{running}"
    )
    for name, view in sorted(sources.items()):
        if isinstance(view, dict):
            if view.get("unavailable"):
                flags = ["no live calls as configured"]
            else:
                flags = [] if view.get("running") else ["live() not running"]
            if view.get("resync"):
                flags.append("waiting for a snapshot")
            extra = f" ({', '.join(flags)})" if flags else ""
            print(f"  live {name}: {view.get('calls', 0)} calls{extra}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ") or type(exc).__name__
    return text


def _mb(n: int) -> str:
    return f"{n / 1048576:.1f} MB"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def _ago(at: float) -> str:
    return f"{_age(max(0.0, time.time() - at))} ago"


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: the whole product on one machine, with traffic, in a few seconds.

Starts PostgreSQL (embedded unless CDRSTATS_DATABASE_URL is set), applies migrations, runs the
collector on http://127.0.0.1:8080, creates the admin login, enrolls one real agent per demo
switch and feeds each switch's Asterisk-style Master.csv with synthetic calls that the agents
read with the CSV plugin and push through their spool and uplink. Everything is kept under
`var/demo/` (and `var/pg/`), so a second run continues where the first stopped. Ctrl-C stops
everything cleanly.

Each piece is started with the same commands an operator uses (`cdrstats ...`,
`cdrstats-agent ...`), so the demo also shows how the product is run for real.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import psycopg
from cdrstats_agent.synthetic import (
    DEMO_SWITCHES,
    CallGenerator,
    SwitchProfile,
    asterisk_csv_line,
    asterisk_csv_row,
)

from .embedded import start_embedded

TENANT = "demo"
TIMEZONES = {
    "pbx-paris": "Europe/Paris",
    "pbx-london": "Europe/London",
    "sbc-newyork": "America/New_York",
}


DEMO_RULES = [
    {
        "name": "Low ASR per switch",
        "kind": "asr",
        "window_s": 3600,
        "params": {"op": "below", "threshold": 45, "clear": 50, "min_calls": 30, "per": "switch"},
        "severity": "warning",
    },
    {
        "name": "Calls to premium and satellite ranges",
        "kind": "risk_destination",
        "window_s": 3600,
        "params": {"count": 1, "per": "switch"},
        "severity": "critical",
    },
    {
        "name": "First call to a new country",
        "kind": "new_country",
        "window_s": 3600,
        "severity": "info",
    },
    {
        "name": "Burst of short calls",
        "kind": "short_calls",
        "window_s": 300,
        "params": {"count": 10, "max_billsec": 6, "per": "switch"},
    },
]
"""Rules the demo tenant starts with (docs/rules.md), added with `cdrstats rule add`."""


def _bin(name: str) -> str:
    """A console script of this environment (the demo runs from the project's venv)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise SystemExit(
            f"demo: cannot find the {name!r} command; run `make demo` from the project root"
        )
    return found


def _run(
    args: list[str], env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise SystemExit(
            f"demo: {' '.join(args[:3])} failed: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def _add_rules(env: dict[str, str]) -> None:
    """The demo rules, once (a rule the operator deleted or renamed is not added again)."""
    listed = _run([_bin("cdrstats"), "rule", "list", "--tenant", TENANT], env)
    if listed.stdout.strip():
        return
    for rule in DEMO_RULES:
        _run([_bin("cdrstats"), "rule", "add", "--tenant", TENANT, "--json", json.dumps(rule)], env)


def _admin_password(var: Path, env: dict[str, str]) -> str:
    saved = var / "admin-password.txt"
    if saved.exists():
        return saved.read_text().strip()
    password = secrets.token_urlsafe(12)
    added = _run(
        [_bin("cdrstats"), "user", "add", "admin", "--role", "superadmin", "--password", password],
        env,
        check=False,
    )
    if added.returncode != 0:  # kept database, lost password file: set a new one
        _run([_bin("cdrstats"), "user", "passwd", "admin", "--password", password], env)
    saved.write_text(password + "\n")
    saved.chmod(0o600)
    return password


def _agent_config(var: Path, switch: SwitchProfile, url: str) -> Path:
    state = var / "agents" / switch.name
    cdr_dir = var / "switches" / switch.name / "cdr-csv"
    state.mkdir(parents=True, exist_ok=True)
    cdr_dir.mkdir(parents=True, exist_ok=True)
    config = state / "agent.toml"
    config.write_text(
        f"""# Agent for the demo switch {switch.name} (written by the demo)
[agent]
state_dir = "{state}"
spool_max_mb = 64

[collector]
urls = ["{url}"]
batch_max_age_s = 0.5

[[source]]
name = "master-csv"
plugin = "csv"
preset = "asterisk"
path = "{cdr_dir}"
timezone = "{TIMEZONES[switch.name]}"
country_code = "{switch.country_code}"
"""
    )
    return config


def _enroll(config: Path, switch: SwitchProfile, url: str, env: dict[str, str]) -> None:
    if (config.parent / "identity.json").exists():
        return
    created = _run(
        [_bin("cdrstats"), "agent-token", "create", "--tenant", TENANT, "--switch", switch.name],
        env,
    )
    token = next(
        (
            line.split()[-1]
            for line in created.stdout.splitlines()
            if "cdrstats-agent enroll" in line
        ),
        None,
    )
    if token is None:
        raise SystemExit(f"demo: no enrollment command in: {created.stdout!r}")
    _run([_bin("cdrstats-agent"), "enroll", "--config", str(config), url, token], env)


class Traffic:
    """Appends synthetic calls to each demo switch's Master.csv, as Asterisk would."""

    def __init__(self, var: Path, rate_per_hour: float) -> None:
        self.var = var
        self.rate = rate_per_hour
        self.generators = {s.name: CallGenerator(s, seed=int(time.time())) for s in DEMO_SWITCHES}
        self.written = 0

    def _append(self, switch: SwitchProfile, start: datetime, end: datetime, rate: float) -> None:
        tz = ZoneInfo(TIMEZONES[switch.name])
        lines = [
            asterisk_csv_line(asterisk_csv_row(cdr, tz, switch))
            for cdr in self.generators[switch.name].calls_between(start, end, rate)
        ]
        with open(self.var / "switches" / switch.name / "cdr-csv" / "Master.csv", "a") as f:
            f.writelines(lines)
        self.written += len(lines)

    def backfill(self, days: int) -> None:
        """History for the first run, so reports have something to show."""
        marker = self.var / "backfilled"
        if marker.exists():
            return
        now = datetime.now(UTC)
        for switch in DEMO_SWITCHES:
            self._append(switch, now - timedelta(days=days), now, self.rate / 4)
        marker.touch()

    def tick(self, start: datetime, end: datetime) -> None:
        for switch in DEMO_SWITCHES:
            self._append(switch, start, end, self.rate)


def _count(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        row = conn.execute("SELECT count(*) FROM cdr").fetchone()
        return int(row[0]) if row else 0


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("demo: the collector exited at start (see its log above)")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"demo: the collector did not answer on {url} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cdrstats-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--var", type=Path, default=Path("var"), help="where demo data is kept")
    parser.add_argument("--rate", type=float, default=1800, help="calls per hour per switch")
    parser.add_argument("--backfill-days", type=int, default=3)
    parser.add_argument(
        "--duration", type=float, default=0, help="stop after N seconds (0: run until Ctrl-C)"
    )
    args = parser.parse_args(argv)

    var: Path = args.var.resolve() / "demo"
    var.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    env = dict(os.environ)
    dsn = env.get("CDRSTATS_DATABASE_URL")
    server = None
    if not dsn:
        server, dsn = start_embedded(args.var.resolve() / "pg")
        print(f"demo: embedded PostgreSQL 16 at {args.var / 'pg'}")
    env["CDRSTATS_DATABASE_URL"] = dsn

    children: list[subprocess.Popen[bytes]] = []
    try:
        _run([_bin("cdrstats"), "db", "upgrade"], env)
        _run(
            [_bin("cdrstats"), "tenant", "add", TENANT, "--timezone", "Europe/Paris"],
            env,
            check=False,
        )
        password = _admin_password(var, env)
        _add_rules(env)
        collector = subprocess.Popen(
            [_bin("cdrstats"), "serve", "--host", "127.0.0.1", "--port", str(args.port)], env=env
        )
        children.append(collector)
        _wait_http(url, collector)

        traffic = Traffic(var, args.rate)
        configs = [_agent_config(var, s, url) for s in DEMO_SWITCHES]
        for config, switch in zip(configs, DEMO_SWITCHES, strict=True):
            _enroll(config, switch, url, env)
        traffic.backfill(args.backfill_days)
        for config in configs:
            children.append(
                subprocess.Popen([_bin("cdrstats-agent"), "run", "--config", str(config)], env=env)
            )

        print(
            f"\n  CDR-Stats demo is running: {url}\n"
            f"  login: admin / {password}\n"
            f"  metrics: {url}/metrics   health: {url}/healthz\n"
            f"  switches: {', '.join(s.name for s in DEMO_SWITCHES)}"
            f" (CSV files under {var / 'switches'})\n"
            "  Ctrl-C stops everything; run `make demo` again to continue with the same data.\n",
            flush=True,
        )
        started = time.monotonic()
        last, last_count = datetime.now(UTC), _count(dsn)
        while not args.duration or time.monotonic() - started < args.duration:
            time.sleep(5)
            now = datetime.now(UTC)
            traffic.tick(last, now)
            last = now
            count = _count(dsn)
            print(f"demo: {count} CDRs in PostgreSQL (+{count - last_count} in 5 s)", flush=True)
            last_count = count
            for child in children:
                if child.poll() is not None:
                    raise SystemExit(
                        f"demo: a child process exited ({child.returncode}): {child.args!r}"
                    )
    except KeyboardInterrupt:
        print("\ndemo: stopping", flush=True)
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        if server is not None:
            server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

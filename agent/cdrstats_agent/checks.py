"""`cdrstats-agent check`: every item the agent needs, one line each, with an exact diagnosis.

    code = await run_checks(config)        # prints `OK   item: detail` / `FAIL item: reason`

Items, in order: the config (already validated by `load_config`), the user the check runs as,
each source (`Source.check()`), the identity (enrolled? key readable?), the state directory and
spool, and each collector URL (a signed `GET /api/v1/agent/status`). A failure says what is
wrong and what to do:

- a CDR file or directory this user cannot read: its owner, group and mode, and the group to
  add the agent to (`permission_text`);
- a database that refused the user name or password, or cannot be reached (`explain_source`);
- a collector that cannot be reached (refused, no such host, timed out, not HTTP), whose
  database is down (503), or that does not know this agent (not enrolled there, revoked, or a
  key that is not the enrolled one) (`explain_status`).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import re
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from . import wire
from .config import Config
from .errors import IdentityError, SourceError
from .identity import IDENTITY_FILE, KEY_FILE, load_agent
from .spool import SPOOL_FILE, SpoolError, SpoolStore
from .uplink import STATUS_PATH, error_text

Print = Callable[[str], None]


class Report:
    """Prints one line per item and remembers whether any failed."""

    def __init__(self, out: Print = print) -> None:
        self.out = out
        self.failed = False

    def ok(self, item: str, detail: str = "") -> None:
        self.out(f"OK   {item}" + (f": {detail}" if detail else ""))

    def fail(self, item: str, reason: str) -> None:
        self.failed = True
        self.out(f"FAIL {item}: {reason}")


def user_name(uid: int | None = None) -> str:
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def permission_text(path: str | Path) -> str:
    """Why this user may not read `path`: owner, group, mode, and what to change."""
    path = str(path)
    target = path
    try:
        st = os.stat(target)
    except PermissionError:
        # The file itself cannot even be looked at: the culprit is a directory above it.
        target = os.path.dirname(path) or "/"
        while target != "/" and os.access(target, os.X_OK):
            target = os.path.dirname(target)
        try:
            st = os.stat(target)
        except OSError:
            return f"{path}: permission denied (and its directories cannot be inspected)"
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    owner, group = user_name(st.st_uid), group_name(st.st_gid)
    me = user_name()
    where = path if target == path else f"{path}: directory {target}"
    return (
        f"{where}: permission denied for user {me} (owner {owner}:{group}, mode"
        f" {stat.S_IMODE(st.st_mode):04o}); add {me} to group {group!r}"
        " (SupplementaryGroups= in the unit, see docs/packaging.md) or make it group-readable"
    )


_PG_PASSWORD = re.compile(r'password authentication failed for user "([^"]+)"')
_PG_NO_PASSWORD = re.compile(r"no password supplied|fe_sendauth")
_MYSQL_DENIED = re.compile(r"Access denied for user '([^']*)'@'([^']*)'")
_REFUSED = re.compile(r"Connection refused|connection refused|Can't connect to MySQL server")


def explain_source(exc: BaseException) -> str:
    """An operator-readable reason for a failed `Source.check()`, whatever the plugin raised."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, PermissionError) or (
        isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM)
    ):
        if exc.filename:
            return permission_text(exc.filename)
        return f"permission denied for user {user_name()}: {text}"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: does not exist"
    match = _PG_PASSWORD.search(text)
    if match:
        return (
            f"the PostgreSQL server refused user {match.group(1)!r}: wrong password"
            f" (check the source's password / dsn option) [{text}]"
        )
    if _PG_NO_PASSWORD.search(text):
        return f"the PostgreSQL server wants a password and the source gives none [{text}]"
    match = _MYSQL_DENIED.search(text)
    if match:
        return (
            f"the MySQL/MariaDB server refused user {match.group(1)!r} from {match.group(2)!r}:"
            f" wrong password, or the user may not connect from this host [{text}]"
        )
    if isinstance(exc, SourceError):
        return text
    if _REFUSED.search(text):
        return f"the switch's database or service refused the connection: {text}"
    return f"{type(exc).__name__}: {text}"


def explain_status(url: str, agent_id: str, response: httpx.Response) -> str:
    """What a non-200 answer to the status request means for the operator."""
    reason = error_text(response)
    code = response.status_code
    if code == 401:
        if "revoked" in reason:
            return (
                f"{url}: agent {agent_id} was revoked by the collector's administrator;"
                " enroll again with a new token: cdrstats-agent enroll --force URL TOKEN"
            )
        if "unknown agent" in reason:
            return (
                f"{url}: agent not enrolled with this collector (it does not know agent"
                f" {agent_id}: another collector, or its database was reset); enroll with a"
                " token from this collector: cdrstats-agent enroll --force URL TOKEN"
            )
        return (
            f"{url}: the collector refused this agent's signature ({reason}): agent.key is not"
            " the key enrolled as this agent, or this host's clock is wrong; check the clock"
            " (timedatectl) or enroll again with --force"
        )
    if code == 503:
        return f"{url}: the collector answers but its database is unavailable ({reason})"
    if code == 404:
        return f"{url}: answered 404: is this the collector's base URL? ({reason})"
    return f"{url}: answered {code}: {reason}"


def explain_unreachable(url: str, exc: httpx.HTTPError, timeout_s: float) -> str:
    """Why the collector at `url` could not be reached, and what to look at."""
    host = urlsplit(url).hostname or url
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(c, socket.gaierror) for c in chain):
        return f"collector unreachable: host name {host!r} does not resolve"
    if any(isinstance(c, ConnectionRefusedError) for c in chain):
        return (
            f"collector unreachable: cannot reach {url}: connection refused (is `cdrstats serve`"
            " running there, on that port, and reachable from this host?)"
        )
    text = "; ".join(dict.fromkeys(str(c) for c in chain if str(c))) or type(exc).__name__
    head = f"collector unreachable: cannot reach {url}"
    if isinstance(exc, httpx.TimeoutException):
        return f"{head}: no answer within {timeout_s:g} s (a firewall dropping packets?)"
    if isinstance(exc, httpx.ConnectError):
        resolve = ("Name or service not known", "nodename nor servname", "name resolution")
        if any(r in text for r in resolve):
            return f"{head}: host name {host!r} does not resolve ({text})"
        if "refused" in text.lower():
            return (
                f"{head}: connection refused (is `cdrstats serve` running there, on that port,"
                " and reachable from this host?)"
            )
        return f"{head}: {text}"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return f"{head}: it does not answer HTTP as a collector would ({text})"
    return f"{head}: {type(exc).__name__}: {text}"


async def collector_status(
    url: str, agent_id: str, key: Any, *, timeout_s: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[dict[str, Any] | None, str]:  # fmt: skip
    """The collector's view of this agent, or None and the diagnosis."""
    full = url.rstrip("/") + STATUS_PATH
    auth = wire.sign_request(key, agent_id, "GET", urlsplit(full).path, wire.now_us())
    try:
        async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
            response = await client.get(full, headers={"Authorization": auth})
    except httpx.HTTPError as exc:
        return None, explain_unreachable(url, exc, timeout_s)
    if response.status_code != 200:
        return None, explain_status(url, agent_id, response)
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return None, f"{url}: answered 200 with a body that is not a JSON object"
    return doc, ""


def _identity_problem(state_dir: Path, exc: IdentityError) -> str:
    for name in (IDENTITY_FILE, KEY_FILE):
        path = state_dir / name
        if path.exists() and not os.access(path, os.R_OK):
            return permission_text(path) + " (was `enroll` run as another user?)"
    if not os.access(state_dir, os.X_OK) and state_dir.exists():
        return permission_text(state_dir / IDENTITY_FILE)
    text = str(exc)
    if "not enrolled" in text:
        return (
            f"agent not enrolled ({state_dir / IDENTITY_FILE} does not exist); get a token from"
            " the collector's admin (cdrstats agent-token create) and run, as the agent's user:"
            " cdrstats-agent enroll URL TOKEN"
        )
    return text


async def run_checks(
    config: Config, *, out: Print = print, transport: httpx.AsyncBaseTransport | None = None
) -> int:
    """Check everything; 0 when all is well, 1 when an item failed (see the module docstring)."""
    report = Report(out)
    report.ok("config", f"{config.path} ({len(config.sources)} sources)")
    groups = sorted({group_name(g) for g in os.getgroups()} | {group_name(os.getegid())})
    report.ok("user", f"{user_name()} (groups: {', '.join(groups)})")
    for sc in config.sources:
        try:
            await sc.source.check()
        except Exception as exc:
            report.fail(f"source {sc.name}", explain_source(exc))
        else:
            report.ok(f"source {sc.name}", f"plugin {sc.plugin}")
        finally:
            try:
                await sc.source.close()
            except Exception as exc:
                report.fail(f"source {sc.name}", f"close failed: {explain_source(exc)}")
    state_dir = config.agent.state_dir
    try:
        identity, key = load_agent(state_dir)
    except IdentityError as exc:
        report.fail("identity", _identity_problem(state_dir, exc))
        return 1
    report.ok(
        "identity",
        f"agent {identity.agent_id} (tenant {identity.tenant}, switch {identity.switch})",
    )
    _check_spool(config, report)
    for url in config.collector.urls or (identity.url,):
        view, problem = await collector_status(
            url, identity.agent_id, key, timeout_s=min(config.collector.timeout_s, 10.0),
            transport=transport,
        )  # fmt: skip
        if view is None:
            report.fail(f"collector {url}", problem)
        else:
            report.ok(
                f"collector {url}",
                f"enrolled as {view.get('agent_id')}, last_seq {view.get('last_seq')}",
            )
    return 1 if report.failed else 0


def _check_spool(config: Config, report: Report) -> None:
    state_dir = config.agent.state_dir
    spool_path = state_dir / SPOOL_FILE
    if not os.access(state_dir, os.W_OK | os.X_OK):
        report.fail(
            "spool", permission_text(state_dir).replace("permission denied", "not writable")
        )
    elif not spool_path.exists():
        report.ok("spool", f"{spool_path} will be created at the first run")
    elif not os.access(spool_path, os.R_OK | os.W_OK):
        report.fail("spool", permission_text(spool_path))
    else:
        try:
            store = SpoolStore(spool_path, max_bytes=config.agent.spool_max_bytes)
            try:
                stats = store.stats()
            finally:
                store.close()
            report.ok("spool", f"{stats.pending_cdrs} CDRs pending, {stats.batches} batches")
        except SpoolError as exc:
            report.fail("spool", str(exc))

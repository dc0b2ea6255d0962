"""Every administrative `cdrstats` command writes the audit log (as `cli:<os user>`), in the
same transaction as the action: a refused action leaves no entry."""

from __future__ import annotations

import getpass
from pathlib import Path

import psycopg
import pytest
from cdrstats_collector import cli


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CDRSTATS_DATABASE_URL", raising=False)
    monkeypatch.setenv("CDRSTATS_CONFIG", str(tmp_path / "absent.toml"))
    (tmp_path / "absent.toml").write_text("")


def test_every_admin_command_is_audited(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--database-url", database_url]
    prefixes = tmp_path / "prefixes.csv"
    prefixes.write_text("prefix,name,country,kind\n4420,London,GB\n")
    steps: list[tuple[list[str], str, str]] = [
        (["tenant", "add", "acme"], "tenant.create", "acme"),
        (["tenant", "retention", "acme", "--cdr-days", "30"], "tenant.retention", "acme"),
        (["prefix", "import", str(prefixes)], "prefix.import", str(prefixes)),
        (["prefix", "delete", "4420"], "prefix.delete", "4420"),
        (["user", "add", "ann", "--role", "tenant_admin", "--tenant", "acme"], "user.create",
         "ann"),
        (["user", "passwd", "ann", "--password", "a long new password"], "user.password", "ann"),
        (["agent-token", "create", "--tenant", "acme", "--switch", "sw1"], "agent_token.create",
         "sw1"),
        (["switch", "set", "sw1", "--tenant", "acme", "--country", "GB"], "switch.plan", "sw1"),
        (["api-token", "create", "--user", "ann", "--label", "ci"], "api_token.create", "ann"),
        (["api-token", "revoke", "--user", "ann"], "api_token.revoke", "ann"),
        (["allowlist", "add", "198.51.100.0/24", "--tenant", "acme"], "allowlist.add",
         "198.51.100.0/24"),
        (["allowlist", "delete", "198.51.100.0/24", "--tenant", "acme"], "allowlist.delete",
         "198.51.100.0/24"),
        (["import-profile", "add", "mine", "--tenant", "acme", "--preset", "asterisk"],
         "import_profile.save", "mine"),
        (["notify", "add-email", "--tenant", "acme", "--to", "noc@example.net"],
         "notify.channel_add", "email:"),
    ]  # fmt: skip
    profile = tmp_path / "carrier.toml"
    profile.write_text(
        'delimiter = ";"\ntime_format = "%Y-%m-%d %H:%M:%S"\nkey = "ref"\n'
        'fields = { start = "when", caller = "from", callee = "to", duration = "secs" }\n'
    )
    data = tmp_path / "march.csv"
    data.write_text("ref;when;from;to;secs\nr1;2025-03-01 10:05:00;101;201;2\n")
    steps += [
        (["import-profile", "add", "carrier", "--tenant", "acme", "--file", str(profile)],
         "import_profile.save", "carrier"),
        (["import", str(data), "--profile", "carrier", "--tenant", "acme", "--switch", "sw1"],
         "import.run", "march.csv"),
        (["db", "rebuild-aggregates", "--tenant", "acme"], "aggregates.rebuild", "1"),
    ]  # fmt: skip
    for argv, _, _ in steps:
        assert cli.main(argv + db) == 0, (argv, capsys.readouterr())
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT username, action, target, tenant_id IS NOT NULL FROM audit_log ORDER BY id"
        ).fetchall()
    me = f"cli:{getpass.getuser()}"
    assert [(r[1], r[2][: len(t)]) for r, (_, _, t) in zip(rows, steps, strict=True)] == [
        (a, t) for _, a, t in steps
    ]
    assert {r[0] for r in rows} == {me}
    tenant_scoped = {r[1] for r in rows if r[3]}
    assert tenant_scoped >= {"tenant.create", "user.create", "agent_token.create"}
    assert "prefix.import" not in tenant_scoped  # the prefix table is not a tenant's

    # refused actions: an error, and nothing recorded
    capsys.readouterr()
    for argv in (
        ["tenant", "add", "acme"],  # exists
        ["allowlist", "delete", "203.0.113.0/24"],  # not there
        ["api-token", "revoke", "--user", "nobody"],
    ):
        assert cli.main(argv + db) == 1
    with psycopg.connect(database_url) as conn:
        count = conn.execute("SELECT count(*) FROM audit_log").fetchone()
    assert count == (len(steps),)

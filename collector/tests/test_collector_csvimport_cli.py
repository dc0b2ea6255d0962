"""`cdrstats import` and `cdrstats import-profile`, in process against a real PostgreSQL."""

from __future__ import annotations

import csv
from pathlib import Path

import psycopg
import pytest
from cdrstats_collector import cli


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CDRSTATS_DATABASE_URL", raising=False)
    monkeypatch.setenv("CDRSTATS_CONFIG", str(tmp_path / "absent.toml"))
    (tmp_path / "absent.toml").write_text("")


def run(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    code = cli.main([*argv, "--database-url", url])
    out, err = capsys.readouterr()
    return code, out, err


PROFILE = """
delimiter = ";"
decimal_comma = true
time_format = ["%d/%m/%Y %H:%M", "%Y-%m-%d %H:%M:%S"]
key = "ref"
fields = { start = "when", caller = "from", callee = "to", duration = "secs" }
"""


def test_profile_add_list_and_import_with_report(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, database_url, "tenant", "add", "acme")[0] == 0
    profile = tmp_path / "carrier.toml"
    profile.write_text(PROFILE)
    code, out, err = run(
        capsys,
        database_url,
        "import-profile",
        "add",
        "carrier",
        "--tenant",
        "acme",
        "--file",
        str(profile),
    )
    assert (code, err) == (0, "") and "'carrier' saved" in out
    code, out, _ = run(capsys, database_url, "import-profile", "list", "--tenant", "acme")
    assert code == 0
    listed = [line.split("\t")[:2] for line in out.splitlines()]
    assert listed == [
        ["asterisk", "built-in"],
        ["freeswitch-example", "built-in"],
        ["freeswitch-default", "built-in"],
        ["carrier", "tenant"],
    ]
    data = tmp_path / "march.csv"
    data.write_text(
        "ref;when;from;to;secs\n"
        "r1;01/03/2025 10:00;100;200;1,5\n"
        "r2;2025-03-01 10:05:00;101;201;2\n"
        "r3;someday;102;202;3\n",
        encoding="utf-8",
    )
    report = tmp_path / "rejected.csv"
    argv = ["import", str(data), "--profile", "carrier", "--tenant", "acme", "--switch", "pbx"]
    code, out, err = run(capsys, database_url, *argv, "--report", str(report))
    assert (code, err) == (0, "")
    first = out.splitlines()[0]
    assert first.startswith(
        "march.csv: 3 rows read, 2 imported, 0 duplicates skipped, 1 rejected (job "
    )
    assert "  line 4: column 2 'when': not a time in format" in out
    with open(report, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["line", "reason", "raw"]
    assert rows[1][0] == "4" and rows[1][2] == "r3;someday;102;202;3"
    code, out, _ = run(capsys, database_url, *argv)
    assert code == 0 and "0 imported, 2 duplicates skipped, 1 rejected" in out
    with psycopg.connect(database_url) as conn:
        switches = conn.execute("SELECT name FROM switch").fetchall()
        stored = conn.execute("SELECT key, duration FROM cdr ORDER BY key").fetchall()
    assert switches == [("pbx",)]  # created by the first import
    assert stored == [("r1", 1), ("r2", 2)]


def test_import_errors_exit_codes(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, database_url, "tenant", "add", "acme")[0] == 0
    binary = tmp_path / "export.csv"
    binary.write_bytes(b"PK\x03\x04\x14\x00\x00\x00" + bytes(200))
    base = ["--tenant", "acme", "--switch", "pbx"]
    code, out, err = run(
        capsys, database_url, "import", str(binary), "--profile", "asterisk", *base
    )
    assert code == 1 and out == ""
    assert err == (
        "cdrstats: export.csv: this is not a text file: byte 6 is NUL (a binary file,"
        " or UTF-16 text, renamed .csv?)\n"
    )
    code, _, err = run(capsys, database_url, "import", str(binary), "--profile", "nope", *base)
    assert code == 2 and "unknown import profile 'nope'" in err
    code, _, err = run(
        capsys, database_url, "import", str(tmp_path / "absent.csv"), "--profile", "asterisk", *base
    )
    assert code == 2 and "absent.csv: no such file" in err
    code, _, err = run(
        capsys, database_url, "import", str(binary), "--profile", "asterisk",
        "--tenant", "ghost", "--switch", "pbx",
    )  # fmt: skip
    assert code == 2 and "unknown tenant 'ghost'" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('fields = { callee = "to" }\n')
    code, _, err = run(
        capsys, database_url, "import-profile", "add", "x", "--tenant", "acme", "--file", str(bad)
    )
    assert code == 2 and "profile.fields.start: is required" in err
    bad.write_text("fields = {\n")
    code, _, err = run(
        capsys, database_url, "import-profile", "add", "x", "--tenant", "acme", "--file", str(bad)
    )
    assert code == 2 and "is not valid TOML" in err
    code, _, err = run(capsys, database_url, "import-profile", "add", "x", "--tenant", "acme")
    assert code == 2 and "give either --preset NAME or --file PROFILE.toml" in err


def test_profile_delete(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, database_url, "tenant", "add", "acme")[0] == 0
    add = ("import-profile", "add", "mine", "--tenant", "acme", "--preset", "asterisk")
    assert run(capsys, database_url, *add)[0] == 0
    delete = ("import-profile", "delete", "mine", "--tenant", "acme")
    code, out, _ = run(capsys, database_url, *delete)
    assert code == 0 and "'mine' deleted" in out
    code, _, err = run(capsys, database_url, *delete)
    assert code == 1 and "has no import profile 'mine'" in err
    code, _, err = run(
        capsys, database_url, "import-profile", "delete", "asterisk", "--tenant", "acme"
    )
    assert code != 0 and "built-in" in err
    _, out, _ = run(capsys, database_url, "import-profile", "list", "--tenant", "acme")
    assert "mine" not in out

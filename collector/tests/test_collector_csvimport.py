"""CSV import (csvimport.py): awkward real-world files into a real PostgreSQL, exactly once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cdrstats_csv.detect as csvdetect
import psycopg
import pytest
from cdrstats_agent.errors import ConfigError
from cdrstats_collector import csvimport, tenants
from csvimport_testkit import REFERENCE, cdrs, job_row, rejects, run_import, save_profile, tenant

CARRIER = {
    "fields": {
        "start": "Date appel",
        "caller": "Appelant",
        "caller_name": "Nom",
        "callee": "Appelé",
        "duration": "Durée",
    },
    "key": "Id",
    "time_format": ["%d/%m/%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S", "iso8601", "epoch"],
}
"""A carrier's invoice export: French header, day-first dates."""


def _carrier_file(path: Path, rows: list[str], encoding: str = "cp1252") -> Path:
    text = "Id;Date appel;Appelant;Nom;Appelé;Durée\r\n" + "".join(r + "\r\n" for r in rows)
    path.write_bytes(text.encode(encoding))
    return path


async def test_semicolons_decimal_commas_latin1_and_several_date_formats(
    database_url: str, tmp_path: Path
) -> None:
    tid, sid = tenant(database_url, timezone="Europe/Paris")
    save_profile(database_url, tid, "carrier", CARRIER)
    path = _carrier_file(
        tmp_path / "facture.csv",
        [
            "A1;03/02/2025 10:00:00;0142000001;Zoë Ångström;0033612345678;12,5",
            "A2;2025-02-03 11:00:00;0142000002;François Œuvré;0612345678;61,0",
            "A3;2025-02-03T12:00:00+00:00;0142000003;Jürgen;0612345679;0,9",
            "A4;1738587600;0142000004;Ève;0612345670;3",
            "A5;31/02/2025 10:00:00;0142000005;Bad date;0612345671;4",
            "A6;03/02/2025 13:00:00;0142000006;Bad duration;0612345672;quatre",
        ],
    )
    notes: list[dict[str, Any]] = []
    job = await run_import(database_url, tid, sid, path, "carrier", notes=notes)
    assert (job.status, job.rows_read, job.imported, job.duplicates, job.rejected) == (
        "done",
        6,
        4,
        0,
        2,
    )
    stored = {r["key"]: r for r in cdrs(database_url, tid)}
    assert sorted(stored) == ["A1", "A2", "A3", "A4"]
    assert stored["A1"]["caller_name"] == "Zoë Ångström"
    assert stored["A2"]["caller_name"] == "François Œuvré"  # Œ exists in cp1252, not Latin-1
    assert stored["A1"]["duration"] == 12 and stored["A2"]["duration"] == 61
    # local times read in the tenant's zone (Paris, UTC+1 in February); ISO with offset as is
    assert stored["A1"]["start_time"] == datetime(2025, 2, 3, 9, 0, tzinfo=UTC)
    assert stored["A2"]["start_time"] == datetime(2025, 2, 3, 10, 0, tzinfo=UTC)
    assert stored["A3"]["start_time"] == datetime(2025, 2, 3, 12, 0, tzinfo=UTC)
    assert stored["A4"]["start_time"] == datetime(2025, 2, 3, 13, 0, tzinfo=UTC)
    assert {r["agent_id"] for r in stored.values()} == {csvimport.import_agent_id(tid)}
    reasons = rejects(database_url, tid, job.job_id)
    assert [line for line, _ in reasons] == [6, 7]
    assert "column 2 'Date appel'" in reasons[0][1] and "31/02/2025" in reasons[0][1]
    assert "column 6 'Durée'" in reasons[1][1] and "not a duration" in reasons[1][1]
    row = job_row(database_url, tid, job.job_id)
    assert (row["rows_read"], row["imported"], row["rejected"], row["status"]) == (6, 4, 2, "done")
    assert row["agent_id"] == csvimport.import_agent_id(tid)
    assert row["options"]["delimiter"] == ";" and row["options"]["encoding"] == "cp1252"
    assert row["options"]["decimal_comma"] is True and row["options"]["header"] is True
    # the same ingest path as agents: aggregates and one cdr_ingest NOTIFY for the batch
    with psycopg.connect(database_url) as conn:
        agg = conn.execute(
            "SELECT sum(calls), sum(duration_sum) FROM agg_kpi_hour WHERE tenant_id = %s", (tid,)
        ).fetchone()
    assert agg == (4, 12 + 61 + 0 + 3)
    ingest = [n for n in notes if n["channel"] == "cdr_ingest"]
    assert ingest == [
        {
            "channel": "cdr_ingest",
            "tenant_id": tid,
            "switch_id": sid,
            "agent_id": str(csvimport.import_agent_id(tid)),
            "accepted": 4,
        }
    ]
    progress = [n for n in notes if n["channel"] == csvimport.NOTIFY_CHANNEL]
    assert progress[0]["status"] == "running" and progress[0]["rows_read"] == 0
    assert progress[-1] == {
        "channel": csvimport.NOTIFY_CHANNEL,
        "tenant_id": tid,
        "job_id": str(job.job_id),
        "status": "done",
        "rows_read": 6,
        "imported": 4,
        "duplicates": 0,
        "rejected": 2,
        "error": None,
        "bytes_read": path.stat().st_size,
        "bytes_total": path.stat().st_size,
    }


async def test_reimport_and_overlapping_file_insert_no_duplicate(
    database_url: str, tmp_path: Path
) -> None:
    tid, sid = tenant(database_url)
    save_profile(database_url, tid, "carrier", CARRIER)
    rows = [f"C{i};0{i}/03/2025 10:00:00;100{i};Name {i};200{i};{i}" for i in range(1, 7)]
    first = _carrier_file(tmp_path / "jan.csv", rows[:4])
    job1 = await run_import(database_url, tid, sid, first, "carrier")
    assert (job1.imported, job1.duplicates) == (4, 0)
    again = await run_import(database_url, tid, sid, first, "carrier")
    assert (again.rows_read, again.imported, again.duplicates, again.rejected) == (4, 0, 4, 0)
    overlap = _carrier_file(tmp_path / "feb.csv", rows[2:], encoding="utf-8")
    job3 = await run_import(database_url, tid, sid, overlap, "carrier")
    assert (job3.imported, job3.duplicates) == (2, 2)
    assert [r["key"] for r in cdrs(database_url, tid)] == [f"C{i}" for i in range(1, 7)]
    with psycopg.connect(database_url) as conn:
        calls = conn.execute(
            "SELECT sum(calls) FROM agg_kpi_hour WHERE tenant_id = %s", (tid,)
        ).fetchone()
    assert calls == (6,)  # duplicates are not counted twice in the aggregates


async def test_content_hash_key_dedups_files_without_a_key_column(
    database_url: str, tmp_path: Path
) -> None:
    tid, sid = tenant(database_url)
    save_profile(database_url, tid, "nokey", {"fields": {"start": "start", "callee": "to"}})
    path = tmp_path / "nokey.csv"
    path.write_text("start,to\n2025-01-05 10:00:00,123\n2025-01-05 10:01:00,124\n")
    assert (await run_import(database_url, tid, sid, path, "nokey")).imported == 2
    again = await run_import(database_url, tid, sid, path, "nokey")
    assert (again.imported, again.duplicates) == (0, 2)
    # an overlapping export saved by another tool: BOM, CRLF, a blank line; the hash is of
    # the record's bytes without BOM and line end, so the common row is still a duplicate
    overlap = tmp_path / "overlap.csv"
    overlap.write_bytes(
        b"\xef\xbb\xbfstart,to\r\n2025-01-05 10:01:00,124\r\n\r\n2025-01-05 10:02:00,125\r\n"
    )
    third = await run_import(database_url, tid, sid, overlap, "nokey")
    assert (third.rows_read, third.imported, third.duplicates) == (2, 1, 1)
    assert [r["callee"] for r in cdrs(database_url, tid)] == ["123", "124", "125"]


async def test_bom_quoted_newlines_empty_lines_missing_columns_truncated_last_line(
    database_url: str, tmp_path: Path
) -> None:
    tid, sid = tenant(database_url)
    save_profile(
        database_url,
        tid,
        "pbx",
        {
            "fields": {"start": "start", "caller": "from", "callee": "to", "duration": "secs"},
            "key": "id",
        },
    )
    text = (
        "id,start,from,to,secs,note\n"  # line 1
        'k1,2025-01-05 10:00:00,100,200,30,"first line\n'  # line 2
        'second line"\n'  # line 3
        "\n"  # line 4: empty
        "k2,2025-01-05 10:05:00,101,201,31,plain\n"  # line 5
        "   \n"  # line 6: blanks only
        "k3,2025-01-05 10:06:00,102\n"  # line 7: missing columns
        "k4,2025-01-05 10:07:00,103,203,33,ok\n"  # line 8
        "k5,2025-01-05 10:08:00,104,2"  # line 9: truncated, no newline
    )
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    job = await run_import(database_url, tid, sid, path, "pbx")
    assert (job.rows_read, job.imported, job.rejected) == (5, 3, 2)
    stored = {r["key"]: r for r in cdrs(database_url, tid)}
    assert sorted(stored) == ["k1", "k2", "k4"]
    assert stored["k1"]["extra"]["note"] == "first line\nsecond line"
    reasons = rejects(database_url, tid, job.job_id)
    assert reasons == [
        (7, "has 3 columns, the header has 6"),
        (9, "has 4 columns, the header has 6"),
    ]
    # the BOM is not part of the first column's name: `id` was found as the key column
    assert job_row(database_url, tid, job.job_id)["options"]["encoding"] == "utf-8"


async def test_empty_and_binary_files_fail_clearly(database_url: str, tmp_path: Path) -> None:
    tid, sid = tenant(database_url)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(csvimport.CsvImportError, match=r"empty.csv: the file is empty \(0 bytes\)"):
        await run_import(database_url, tid, sid, empty, "asterisk")
    binary = tmp_path / "photo.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    with pytest.raises(csvimport.CsvImportError, match="not a text file: byte 9 is NUL"):
        await run_import(database_url, tid, sid, binary, "asterisk")
    only_blank = tmp_path / "blank.csv"
    only_blank.write_bytes(b"\n\r\n  \n")
    with pytest.raises(csvimport.CsvImportError, match="no records"):
        await run_import(database_url, tid, sid, only_blank, "asterisk")
    with psycopg.connect(database_url) as conn:
        jobs = conn.execute(
            "SELECT file_name, status, error FROM import_job WHERE tenant_id = %s"
            " ORDER BY started_at",
            (tid,),
        ).fetchall()
        assert conn.execute("SELECT count(*) FROM cdr").fetchone() == (0,)
    assert [(j[0], j[1]) for j in jobs] == [
        ("empty.csv", "failed"),
        ("photo.csv", "failed"),
        ("blank.csv", "failed"),
    ]
    assert "0 bytes" in jobs[0][2] and "NUL" in jobs[1][2]


async def test_header_only_file_and_header_without_mapped_column(
    database_url: str, tmp_path: Path
) -> None:
    tid, sid = tenant(database_url)
    save_profile(database_url, tid, "p", {"fields": {"start": "start"}, "header": True})
    only_header = tmp_path / "h.csv"
    only_header.write_text("start,to\n")
    job = await run_import(database_url, tid, sid, only_header, "p")
    assert (job.status, job.rows_read, job.imported) == ("done", 0, 0)
    wrong = tmp_path / "w.csv"
    wrong.write_text("begin,to\n2025-01-05 10:00:00,1\n2025-01-05 10:01:00,2\n")
    job = await run_import(database_url, tid, sid, wrong, "p")
    assert (job.imported, job.rejected) == (0, 2)
    assert rejects(database_url, tid, job.job_id)[0] == (
        2,
        "header has no column 'start' (fields.start)",
    )


async def test_builtin_asterisk_profile_reads_the_reference_master_csv(
    database_url: str, tmp_path: Path
) -> None:
    source = REFERENCE / "asterisk" / "testsuite_self_test_Master.csv"
    if not source.exists():
        pytest.skip(f"reference file missing: {source}")
    tid, sid = tenant(database_url)
    lines = [x for x in source.read_bytes().splitlines() if x.strip()]
    job = await run_import(database_url, tid, sid, source, "asterisk", timezone="UTC")
    assert (job.rows_read, job.imported, job.rejected) == (len(lines), len(lines), 0)
    stored = cdrs(database_url, tid)
    assert stored[0]["key"] == "1270167992.0"
    assert stored[0]["start_time"] == datetime(2010, 4, 2, 0, 26, 32, tzinfo=UTC)
    assert stored[0]["disposition"] == "ANSWERED" and stored[0]["duration"] == 7
    again = await run_import(database_url, tid, sid, source, "asterisk", timezone="UTC")
    assert (again.imported, again.duplicates) == (0, len(lines))


async def test_batches_progress_and_bounded_rejects(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csvimport, "BATCH_ROWS", 3)
    monkeypatch.setattr(csvimport, "MAX_REJECTS_KEPT", 4)
    tid, sid = tenant(database_url)
    save_profile(database_url, tid, "carrier", CARRIER)
    good = [f"G{i};05/01/2025 10:{i:02d}:00;1;N;2;1" for i in range(7)]
    bad = [f"B{i};yesterday;1;N;2;1" for i in range(6)]
    old = ["O1;05/01/1999 10:00:00;1;N;2;1"]
    path = _carrier_file(tmp_path / "many.csv", good + bad + old)
    notes: list[dict[str, Any]] = []
    job = await run_import(database_url, tid, sid, path, "carrier", notes=notes)
    assert (job.rows_read, job.imported, job.rejected) == (14, 7, 7)
    progress = [n for n in notes if n["channel"] == csvimport.NOTIFY_CHANNEL]
    imported = [n["imported"] for n in progress]
    assert imported == sorted(imported) and imported[-1] == 7
    assert len([n for n in notes if n["channel"] == "cdr_ingest"]) == 3  # batches of 3, 3, 1
    kept = rejects(database_url, tid, job.job_id)
    assert len(kept) == 4 and [line for line, _ in kept] == [9, 10, 11, 12]
    with psycopg.connect(database_url) as conn:
        report = csvimport.reject_report(conn, tid, job.job_id)
    assert report.splitlines()[0] == "line,reason,raw"
    assert report.splitlines()[1].startswith("9,column 2 'Date appel': not a time in format")
    assert "B0;yesterday" in report.splitlines()[1]
    assert job_row(database_url, tid, job.job_id)["rejected"] == 7


async def test_profiles_are_checked_and_per_tenant(database_url: str, tmp_path: Path) -> None:
    tid, sid = tenant(database_url)
    other, other_sid = tenant(database_url, "other")
    with pytest.raises(ConfigError, match=r"profile\.fields\.start"):
        save_profile(database_url, tid, "bad", {"fields": {"callee": "to"}})
    with pytest.raises(ConfigError, match=r"profile\.fields\.begin"):
        save_profile(database_url, tid, "bad", {"fields": {"start": "s", "begin": "b"}})
    with pytest.raises(tenants.InvalidArgument, match="built-in"):
        save_profile(database_url, tid, "asterisk", {"preset": "asterisk"})
    save_profile(database_url, tid, "mine", {"fields": {"start": 1}, "header": False})
    path = tmp_path / "x.csv"
    path.write_text("2025-01-05 10:00:00\n")
    with pytest.raises(tenants.InvalidArgument, match="unknown import profile 'mine'"):
        await run_import(database_url, other, other_sid, path, "mine")
    assert (await run_import(database_url, tid, sid, path, "mine")).imported == 1
    with psycopg.connect(database_url) as conn:
        names = [p[0] for p in csvimport.list_profiles(conn, tid)]
        other_names = [p[0] for p in csvimport.list_profiles(conn, other)]
    assert names == ["asterisk", "freeswitch-example", "freeswitch-default", "mine"]
    assert "mine" not in other_names


def test_import_tables_have_forced_row_level_security(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,"
            " (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid)"
            " FROM pg_class c WHERE relname IN ('import_profile', 'import_job', 'import_reject')"
            " ORDER BY relname"
        ).fetchall()
    assert rows == [
        ("import_job", True, True, 2),
        ("import_profile", True, True, 2),
        ("import_reject", True, True, 2),
    ]


@pytest.mark.parametrize("worker", [False, True], ids=["in-process", "worker-process"])
async def test_mapping_in_a_worker_process_gives_the_same_result(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker: bool
) -> None:
    monkeypatch.setattr(csvimport, "WORKER_MIN_BYTES", 0 if worker else 1 << 40)
    monkeypatch.setattr(csvimport, "WORKERS", 2)
    monkeypatch.setattr(csvimport, "BATCH_ROWS", 4)
    tid, sid = tenant(database_url)
    save_profile(database_url, tid, "carrier", CARRIER)
    good = [f"W{i};05/01/2025 11:{i:02d}:00;1;Zoë;2;1,5" for i in range(10)]
    path = _carrier_file(tmp_path / "w.csv", [*good[:5], "W99;never;1;N;2;1", *good[5:]])
    notes: list[dict[str, Any]] = []
    job = await run_import(database_url, tid, sid, path, "carrier", notes=notes)
    assert (job.rows_read, job.imported, job.rejected) == (11, 10, 1)
    assert rejects(database_url, tid, job.job_id)[0][0] == 7
    assert len([n for n in notes if n["channel"] == "cdr_ingest"]) == 3
    assert {r["caller_name"] for r in cdrs(database_url, tid)} == {"Zoë"}
    # an unusable header line fails the job with the same message either way
    save_profile(database_url, tid, "strict", {"fields": {"start": "a"}, "header": True})
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b'a,"b\n2025-01-05 10:00:00,x\n')
    with pytest.raises(csvimport.CsvImportError, match="line 1: header malformed CSV"):
        await run_import(database_url, tid, sid, broken, "strict")


async def test_timezone_precedence(database_url: str, tmp_path: Path) -> None:
    tid, sid = tenant(database_url, timezone="Europe/Paris")
    with psycopg.connect(database_url, autocommit=True) as conn:
        sid2 = tenants.ensure_switch(conn, tid, "sw2")
        sid3 = tenants.ensure_switch(conn, tid, "sw3")
    save_profile(database_url, tid, "tenant-zone", {"fields": {"start": "start"}, "key": "id"})
    save_profile(
        database_url,
        tid,
        "ny",
        {"fields": {"start": "start"}, "key": "id", "timezone": "America/New_York"},
    )
    path = tmp_path / "tz.csv"
    path.write_text("id,start\nk,2025-01-05 10:00:00\n")
    await run_import(database_url, tid, sid, path, "tenant-zone")  # the tenant's zone
    await run_import(database_url, tid, sid2, path, "ny")  # the profile's zone
    await run_import(database_url, tid, sid3, path, "ny", timezone="UTC")  # --timezone wins
    starts = {r["switch_id"]: r["start_time"].astimezone(UTC).hour for r in cdrs(database_url, tid)}
    assert starts == {sid: 9, sid2: 15, sid3: 10}


async def test_named_columns_imply_a_header_the_guess_missed(
    database_url: str, tmp_path: Path
) -> None:
    tid, sid = tenant(database_url)
    save_profile(
        database_url,
        tid,
        "named",
        {"fields": {"start": "when", "callee": "who"}, "time_format": "%b %d %Y %H:%M"},
    )
    path = tmp_path / "text-only.csv"  # no value looks like data: no header guessed
    path.write_text("who,when\nalice,Jan 05 2025 10:00\n")
    assert not csvdetect.detect(path.read_bytes(), complete=True).header
    job = await run_import(database_url, tid, sid, path, "named")
    assert (job.imported, job.rejected) == (1, 0)
    assert cdrs(database_url, tid)[0]["callee"] == "alice"


def test_preview_guesses_fields_and_maps_the_first_rows() -> None:
    sample = (
        "Call-ID;Date;From;To;Duration;Status\r\n"
        "x1;2025-01-05 10:00:00;0142000001;0612345678;12,5;ANSWERED\r\n"
        "x2;bad;0142000002;0612345679;3;BUSY\r\n"
        "x3;2025-01-05 10:02:00;0142000003;0612345670;0;NO ANSWER\r\n"
    ).encode("cp1252")
    seen = csvimport.preview(sample, complete=True, timezone="Europe/Paris", limit=2)
    assert seen.guesses == {
        "start": "Date",
        "duration": "Duration",
        "caller": "From",
        "callee": "To",
        "disposition": "Status",
        "key": "Call-ID",
    }
    assert seen.header == ("Call-ID", "Date", "From", "To", "Duration", "Status")
    assert seen.options["delimiter"] == ";" and seen.options["decimal_comma"] is True
    assert seen.problem is None and [r.line for r in seen.rows] == [2, 3]
    first, second = seen.rows
    assert first.cdr is not None and first.cdr.key == "x1" and first.cdr.duration == 12
    assert first.cdr.start == datetime(2025, 1, 5, 9, 0, tzinfo=UTC)
    assert second.cdr is None and second.values is not None and second.values[1] == "bad"
    assert second.reason is not None and "column 2 'Date'" in second.reason
    # a profile is used as it is; a file without a time column says why nothing maps
    nothing = csvimport.preview(b"a;b\r\nx;y\r\n", complete=True)
    assert nothing.problem is not None and "fields.start: is required" in nothing.problem
    with pytest.raises(csvdetect.NotText):
        csvimport.preview(b"", complete=True)


async def test_tab_separated_latin1_without_header_columns_by_number(
    database_url: str, tmp_path: Path
) -> None:
    """A switch export with no header: columns by number, tabs, Latin-1 (a byte cp1252 does
    not define, so detection falls back to Latin-1), day-first dates, HH:MM:SS durations."""
    tid, sid = tenant(database_url)
    save_profile(
        database_url,
        tid,
        "tabs",
        {
            "fields": {"start": 1, "caller": 2, "caller_name": 3, "callee": 4, "duration": 5},
            "key": 6,
            "duration_unit": "hms",
            "time_format": ["%d.%m.%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S"],
        },
    )
    rows = [
        "05.01.2025 10:00:00\t100\tJosé Muñoz\t200\t00:01:05\tT1",  # line 1
        "2025-01-05 10:01:00\t101\tSøren \x81\t201\t1:00\tT2",  # line 2: \x81 (Latin-1 only)
        "05.01.2025 10:02:00\t102\tAnaïs\t202\t00:61:00\tT3",  # line 3: bad duration
        "05.01.2025 10:03:00\t103",  # line 4: missing columns
        "05.01.2025 10:04:00\t104\tÉlodie\t204\t00:00:09\tT5",  # line 5
    ]
    path = tmp_path / "export.txt"
    path.write_bytes("\n".join(rows).encode("latin-1") + b"\n")
    job = await run_import(database_url, tid, sid, path, "tabs")
    assert (job.rows_read, job.imported, job.rejected) == (5, 3, 2)
    stored = {r["key"]: r for r in cdrs(database_url, tid)}
    assert sorted(stored) == ["T1", "T2", "T5"]
    assert stored["T1"]["caller_name"] == "José Muñoz" and stored["T1"]["duration"] == 65
    assert stored["T2"]["caller_name"] == "Søren \x81" and stored["T2"]["duration"] == 60
    assert stored["T5"]["caller_name"] == "Élodie"
    reasons = rejects(database_url, tid, job.job_id)
    assert [line for line, _ in reasons] == [3, 4]
    assert "column 5: not a duration in HH:MM:SS: '00:61:00'" in reasons[0][1]
    assert reasons[1][1] == "has 2 columns, fields.callee needs column 4"
    options = job_row(database_url, tid, job.job_id)["options"]
    assert (options["delimiter"], options["encoding"], options["header"]) == (
        "\t",
        "latin-1",
        False,
    )


async def test_pipe_separated_crlf_with_open_quote_at_the_end(
    database_url: str, tmp_path: Path
) -> None:
    """`|` delimiter, CRLF line ends, a row whose quote never closes before the end of the
    file (a cut download): the rows before it are imported, it is rejected with its line."""
    tid, sid = tenant(database_url)
    save_profile(
        database_url,
        tid,
        "pipes",
        {"fields": {"start": "when", "callee": "to", "billsec": "billed"}, "key": "ref"},
    )
    text = (
        "ref|when|to|billed|memo\r\n"
        'P1|2025-01-05 10:00:00|200|12|"a | b"\r\n'
        "P2|2025-01-05 10:01:00|201|13|\r\n"
        "\r\n"
        'P3|2025-01-05 10:02:00|202|14|"cut here'
    )
    path = tmp_path / "pipes.csv"
    path.write_bytes(text.encode())
    job = await run_import(database_url, tid, sid, path, "pipes")
    assert (job.rows_read, job.imported, job.rejected) == (3, 2, 1)
    stored = {r["key"]: r for r in cdrs(database_url, tid)}
    assert stored["P1"]["extra"]["memo"] == "a | b" and stored["P2"]["billsec"] == 13
    reasons = rejects(database_url, tid, job.job_id)
    assert len(reasons) == 1 and reasons[0][0] == 5 and "malformed CSV" in reasons[0][1]
    assert job_row(database_url, tid, job.job_id)["options"]["delimiter"] == "|"


async def test_progress_notifies_are_spaced_and_carry_bytes(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress NOTIFYs: one at the start, then after a batch only when NOTIFY_INTERVAL_S
    passed or another 1/NOTIFY_STEPS of the file was read (the job row is still updated with
    every batch), one at the end; bytes_read grows to bytes_total (the file size)."""
    monkeypatch.setattr(csvimport, "BATCH_ROWS", 2)
    monkeypatch.setattr(csvimport, "NOTIFY_INTERVAL_S", 3600.0)
    monkeypatch.setattr(csvimport, "NOTIFY_STEPS", 2)  # halves: 5 batches, 1 NOTIFY between
    tid, sid = tenant(database_url)
    save_profile(database_url, tid, "carrier", CARRIER)
    path = _carrier_file(
        tmp_path / "p.csv", [f"N{i};05/01/2025 10:{i:02d}:00;1;N;2;1" for i in range(9)]
    )
    size = path.stat().st_size
    notes: list[dict[str, Any]] = []
    job = await run_import(database_url, tid, sid, path, "carrier", notes=notes)
    progress = [n for n in notes if n["channel"] == csvimport.NOTIFY_CHANNEL]
    assert [(n["status"], n["rows_read"]) for n in progress] == [
        ("running", 0),
        ("running", 4),  # the batch that passed the middle of the file
        ("running", 9),  # the batch that reached its end
        ("done", 9),
    ]
    assert [n["bytes_read"] for n in progress][2:] == [size, size]
    assert size / 2 <= progress[1]["bytes_read"] < size
    assert {n["bytes_total"] for n in progress} == {size}
    assert len([n for n in notes if n["channel"] == "cdr_ingest"]) == 5  # batches of 2
    assert job.bytes_read == size
    # with no spacing, every batch notifies, and bytes_read grows with the rows
    monkeypatch.setattr(csvimport, "NOTIFY_INTERVAL_S", 0.0)
    notes.clear()
    await run_import(database_url, tid, sid, path, "carrier", notes=notes)
    progress = [n for n in notes if n["channel"] == csvimport.NOTIFY_CHANNEL]
    read = [n["bytes_read"] for n in progress]
    assert len(progress) == 7 and read == sorted(read) and 0 < read[1] < read[-3] < size
    assert progress[-1]["bytes_read"] == size and progress[-1]["duplicates"] == 9


async def test_binary_garbage_after_the_sample_costs_only_its_lines(
    database_url: str, tmp_path: Path
) -> None:
    """A file that looks like CSV in its first 64 KiB (what detection reads) and then holds
    binary data (two files concatenated, a broken copy): the text rows are imported, each
    garbage line is rejected with its number and why, and the row after them is kept."""
    tid, sid = tenant(database_url)
    save_profile(
        database_url, tid, "pbx", {"fields": {"start": "start", "callee": "to"}, "key": "id"}
    )
    good = [f"g{i},2025-01-05 10:{i // 60:02d}:{i % 60:02d},2{i:05d}" for i in range(2500)]
    body = "id,start,to\n" + "\n".join(good) + "\n"
    assert len(body) > csvdetect.SAMPLE_BYTES
    garbage = b"PK\x03\x04\x14\x00\x08\x00,\x00\n" + b"\xff\xfe\xfd,x,y\n"
    path = tmp_path / "joined.csv"
    path.write_bytes(body.encode() + garbage + b"last,2025-01-05 11:00:00,300\n")
    job = await run_import(database_url, tid, sid, path, "pbx")
    assert (job.status, job.rows_read, job.imported, job.rejected) == ("done", 2503, 2501, 2)
    assert rejects(database_url, tid, job.job_id) == [
        (2502, "holds a NUL byte (binary data)"),
        (
            2503,
            "cannot be decoded as utf-8 (byte 0xff at position 1); set the `encoding`"
            " option (latin-1, cp1252...)",
        ),
    ]
    assert "last" in {r["key"] for r in cdrs(database_url, tid)}

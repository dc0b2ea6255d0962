"""Following files through `CsvSource.read()`: partial lines, rotation, truncation, deletion,
inode reuse, headers, and resuming from every checkpoint."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from cdrstats_agent.errors import SourceError
from cdrstats_csv import follow
from csv_testkit import LiveReader, append, cdrs_of, drain, keys_of, make_source, rejected_of

GENERIC: dict[str, Any] = {"fields": {"start": 2}, "key": 1, "time_format": "epoch"}


def row(i: int) -> str:
    return f"k{i},{1_700_000_000 + i}\n"


def rows(*numbers: int) -> str:
    return "".join(row(i) for i in numbers)


def keys(*numbers: int) -> list[str]:
    return [f"k{i}" for i in numbers]


def files_in(checkpoint: str) -> list[str]:
    return [Path(f["path"]).name for f in json.loads(checkpoint)["files"]]


async def test_partial_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "cdr.csv"
    path.write_text(rows(1, 2) + "k3,17000")
    reader = LiveReader(make_source({**GENERIC, "path": str(path)}))
    try:
        assert keys_of(await reader.until_idle()) == keys(1, 2)
        append(path, "00003\nbad\n")
        got = await reader.until_idle()
        assert keys_of(got) == keys(3)
        assert cdrs_of(got)[0].start.timestamp() == 1_700_000_003
        assert [(Path(w).name, r) for w, r in rejected_of(got)] == [
            ("cdr.csv:4", "has 1 columns, fields.start needs column 2")
        ]
    finally:
        await reader.close()


async def test_chunks_are_bounded_and_checkpoints_advance(tmp_path: Path) -> None:
    path = tmp_path / "cdr.csv"
    path.write_text(rows(1, 2, 3, 4, 5))
    results = await drain(make_source({**GENERIC, "path": str(path), "chunk_cdrs": 2}))
    assert [keys_of([r]) for r in results] == [keys(1, 2), keys(3, 4), keys(5)]
    offsets = [json.loads(r.checkpoint)["files"][0]["offset"] for r in results]
    assert offsets == [len(rows(1, 2)), len(rows(1, 2, 3, 4)), len(rows(1, 2, 3, 4, 5))]


@pytest.mark.parametrize("mode", ["file", "dir"])
@pytest.mark.parametrize(
    "rotated_name", ["Master.csv.1", "Master.csv.2024-05-10-14-00-00"], ids=["logrotate", "fs"]
)
@pytest.mark.parametrize("restart", [False, True], ids=["live", "restart"])
async def test_rename_rotation(tmp_path: Path, mode: str, rotated_name: str, restart: bool) -> None:
    """The renamed file is finished under its new name; the new file is read from 0."""
    master = tmp_path / "Master.csv"
    master.write_text(rows(1, 2, 3))
    path = str(master if mode == "file" else tmp_path)
    source = make_source({**GENERIC, "path": path, "pattern": "Master.csv*"})
    first = await drain(source)
    assert keys_of(first) == keys(1, 2, 3)

    append(master, rows(4, 5))  # written before the rotation, not read yet
    master.rename(tmp_path / rotated_name)
    master.write_text(rows(6, 7))

    if restart:
        second = await drain(
            make_source({**GENERIC, "path": path, "pattern": "Master.csv*"}), first[-1].checkpoint
        )
    else:
        reader = LiveReader(source, first[-1].checkpoint)
        second = await reader.until_idle()
        append(master, rows(8))
        second += await reader.until_idle()
        await reader.close()
    expected = keys(4, 5, 6, 7) if restart else keys(4, 5, 6, 7, 8)
    assert keys_of(second) == expected
    assert sorted(files_in(second[-1].checkpoint)) == sorted(["Master.csv", rotated_name])


async def test_freeswitch_rotation_with_preset(tmp_path: Path) -> None:
    """mod_cdr_csv with rotate-on-hup: Master.csv -> Master.csv.<Y-m-d-H-M-S>, then reopen."""
    line = (
        '"A","1001","1002","default","2024-05-10 14:0{i}:00","","2024-05-10 14:0{i}:05",'
        '"5","0","NO_ANSWER","uuid-{i}","","","",""\n'
    )
    master = tmp_path / "cdr-csv" / "Master.csv"
    master.parent.mkdir()
    master.write_text(line.format(i=1) + line.format(i=2))
    options = {"preset": "freeswitch-example", "timezone": "UTC", "path": str(master)}
    reader = LiveReader(make_source(options))
    try:
        assert keys_of(await reader.until_idle()) == ["uuid-1", "uuid-2"]
        append(master, line.format(i=3))
        master.rename(master.with_name("Master.csv.2024-05-10-14-05-00"))
        master.write_text(line.format(i=4))
        assert keys_of(await reader.until_idle()) == ["uuid-3", "uuid-4"]
    finally:
        await reader.close()


@pytest.mark.parametrize("mode", ["file", "dir"])
async def test_copytruncate_recovers_the_lines_in_the_copy(tmp_path: Path, mode: str) -> None:
    master = tmp_path / "Master.csv"
    master.write_text(rows(1, 2, 3))
    path = str(master if mode == "file" else tmp_path)
    reader = LiveReader(make_source({**GENERIC, "path": path, "pattern": "Master.csv*"}))
    try:
        assert keys_of(await reader.until_idle()) == keys(1, 2, 3)
        append(master, rows(4, 5))  # not read before logrotate copies and truncates
        shutil.copyfile(master, tmp_path / "Master.csv.1")
        os.truncate(master, 0)
        append(master, rows(6))
        got = await reader.until_idle()
        assert sorted(keys_of(got)) == keys(4, 5, 6)
        append(master, rows(7))
        assert keys_of(await reader.until_idle()) == keys(7)
    finally:
        await reader.close()


async def test_truncation_without_copy_restarts_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "cdr.csv"
    path.write_text(rows(1, 2, 3))
    reader = LiveReader(make_source({**GENERIC, "path": str(path)}))
    try:
        assert keys_of(await reader.until_idle()) == keys(1, 2, 3)
        path.write_text(rows(10))  # shorter than what was read: truncated
        got = await reader.until_idle()
        assert keys_of(got) == keys(10)
        assert rejected_of(got) == []
    finally:
        await reader.close()


async def test_deleted_file_is_read_to_its_end(tmp_path: Path) -> None:
    path = tmp_path / "cdr.csv"
    path.write_text(rows(1, 2))
    reader = LiveReader(make_source({**GENERIC, "path": str(tmp_path)}))
    try:
        assert keys_of(await reader.until_idle()) == keys(1, 2)
        append(path, rows(3) + "k4,1700000004")  # the last line never gets its newline
        path.unlink()
        got = await reader.until_idle()
        assert keys_of(got) == keys(3, 4)
        assert files_in(got[-1].checkpoint) == []
    finally:
        await reader.close()


async def test_inode_reuse_is_told_by_the_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "cdr.csv"
    path.write_text(rows(1, 2, 3))
    first = await drain(make_source({**GENERIC, "path": str(path)}))
    # The file is replaced by another one that got the same inode number: simulate it by
    # giving the new file's inode to the old checkpoint entry.
    path.unlink()
    path.write_text(rows(10, 11, 12, 13))
    doc = json.loads(first[-1].checkpoint)
    st = path.stat()
    doc["files"][0].update(dev=st.st_dev, ino=st.st_ino)
    second = await drain(make_source({**GENERIC, "path": str(path)}), json.dumps(doc))
    assert keys_of(second) == keys(10, 11, 12, 13)


async def test_content_rewritten_in_place_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "cdr.csv"
    path.write_text(rows(1, 2))
    reader = LiveReader(make_source({**GENERIC, "path": str(path)}))
    try:
        assert keys_of(await reader.until_idle()) == keys(1, 2)
        fd = os.open(path, os.O_WRONLY)  # same inode, longer, other first bytes
        os.write(fd, rows(21, 22, 23).encode())
        os.close(fd)
        assert keys_of(await reader.until_idle()) == keys(21, 22, 23)
    finally:
        await reader.close()


async def test_header_per_file_survives_a_restart(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,when\n" + "a1,1700000001\na2,1700000002\n")
    (tmp_path / "b.csv").write_text("when,id,note\n" + "1700000003,b1,x\n1700000004,b2,y\n")
    os.utime(tmp_path / "a.csv", (1, 1))  # a.csv is the older file: read first
    options = {
        "path": str(tmp_path),
        "header": True,
        "fields": {"start": "when"},
        "key": "id",
        "time_format": "epoch",
        "chunk_cdrs": 1,
    }
    first = await drain(make_source(options), stop_after=1)
    assert keys_of(first) == ["a1"]
    rest = await drain(make_source(options), first[-1].checkpoint)
    assert keys_of(rest) == ["a2", "b1", "b2"]
    assert cdrs_of(rest)[-1].extra == {"id": "b2", "note": "y"}


async def test_start_at_end_skips_existing_rows_only(tmp_path: Path) -> None:
    path = tmp_path / "cdr.csv"
    path.write_text(rows(1, 2) + "k3,17")
    reader = LiveReader(make_source({**GENERIC, "path": str(path), "start_at": "end"}))
    try:
        assert keys_of(await reader.until_idle()) == []
        append(path, "00000003\n" + rows(4) + "bad\n")
        got = await reader.until_idle()
        assert keys_of(got) == keys(3, 4)
        assert [Path(w).name for w, _ in rejected_of(got)] == ["cdr.csv:5"]
    finally:
        await reader.close()


async def test_file_created_later_and_compressed_rotations_ignored(tmp_path: Path) -> None:
    (tmp_path / "Master.csv.2.gz").write_bytes(b"\x1f\x8b\x08garbage\n")
    source = make_source({**GENERIC, "path": str(tmp_path), "pattern": "Master.csv*"})
    reader = LiveReader(source)
    try:
        assert await reader.until_idle() == []
        (tmp_path / "Master.csv").write_text(rows(1))
        got = await reader.until_idle()
        assert keys_of(got) == keys(1) and rejected_of(got) == []
    finally:
        await reader.close()


async def test_overlong_line_is_rejected_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "READ_MAX", 64)
    path = tmp_path / "cdr.csv"
    path.write_text(rows(1) + "x" * 200 + "\n" + rows(2))
    results = await drain(make_source({**GENERIC, "path": str(path)}))
    assert keys_of(results) == keys(1, 2)
    assert [(Path(w).name, r) for w, r in rejected_of(results)] == [
        ("cdr.csv:2", "line longer than 64 bytes, skipped")
    ]


async def test_rotated_file_is_forgotten_once_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renamed-away file is read to its end (even a last line without newline), then
    dropped from the checkpoint."""
    monkeypatch.setattr(follow, "ROTATED_IDLE", 0.0)
    master = tmp_path / "Master.csv"
    master.write_text(rows(1))
    reader = LiveReader(make_source({**GENERIC, "path": str(master)}))
    try:
        assert keys_of(await reader.until_idle()) == keys(1)
        append(master, "k2,1700000002")
        master.rename(tmp_path / "Master.csv.1")
        master.write_text(rows(3))
        got = await reader.until_idle()
        assert sorted(keys_of(got)) == keys(2, 3)
        assert files_in(got[-1].checkpoint) == ["Master.csv"]
    finally:
        await reader.close()


async def test_bad_checkpoint_is_a_source_error(tmp_path: Path) -> None:
    source = make_source({**GENERIC, "path": str(tmp_path)})
    for bad in ("not json", '{"v": 99}', '{"v": 1, "files": [{"path": 1}]}'):
        with pytest.raises(SourceError, match="cannot resume from checkpoint"):
            await drain(source, bad)


# --- resuming from any checkpoint ------------------------------------------------------------


def _scenario(tmp_path: Path, seed: int) -> list[str]:
    """A rotated file and a current one with good, bad, multi-line and blank rows."""
    rng = random.Random(seed)
    expected: list[str] = []
    n = 0
    for name in ("Master.csv.1", "Master.csv"):
        lines: list[str] = []
        for _ in range(rng.randint(8, 20)):
            n += 1
            kind = rng.random()
            if kind < 0.1:
                lines.append("\n")
            elif kind < 0.2:
                lines.append(f"bad{n}\n")
            elif kind < 0.3:
                lines.append(f'k{n},{1_700_000_000 + n},"multi\nline"\n')
                expected.append(f"k{n}")
            else:
                lines.append(row(n))
                expected.append(f"k{n}")
        (tmp_path / name).write_text("".join(lines))
        os.utime(tmp_path / name, (1000 + n, 1000 + n))
    append(tmp_path / "Master.csv", "k999,17000")  # partial: never part of the read
    return expected


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_resume_from_every_checkpoint_gives_exactly_the_rest(
    tmp_path: Path, seed: int
) -> None:
    expected = _scenario(tmp_path, seed)
    options = {**GENERIC, "path": str(tmp_path), "pattern": "Master.csv*", "chunk_cdrs": 3}
    full = await drain(make_source(options))
    assert keys_of(full) == expected  # oldest file first, file order, no duplicates
    for i, result in enumerate(full):
        rest = await drain(make_source(options), result.checkpoint)
        assert keys_of(rest) == keys_of(full[i + 1 :]), f"resumed after chunk {i}"
        assert rejected_of(rest) == rejected_of(full[i + 1 :])


@pytest.mark.parametrize("seed", [4, 5, 6])
@pytest.mark.parametrize("style", ["rename", "copytruncate"])
@pytest.mark.parametrize("mode", ["file", "dir"])
async def test_restart_after_every_chunk_while_files_rotate(
    tmp_path: Path, seed: int, style: str, mode: str
) -> None:
    """Stop after each chunk, let the switch write and rotate, resume: every row once."""
    rng = random.Random(seed)
    master = tmp_path / "Master.csv"
    written: list[str] = []
    n = 0
    checkpoint: str | None = None
    got: list[str] = []
    path = str(master if mode == "file" else tmp_path)
    options = {**GENERIC, "path": path, "pattern": "Master.csv*", "chunk_cdrs": 2}
    for step in range(25):
        for _ in range(rng.randint(0, 3)):
            n += 1
            append(master, row(n))
            written.append(f"k{n}")
        if rng.random() < 0.25 and master.exists():
            rotated = tmp_path / f"Master.csv.{step}"
            if style == "rename":
                master.rename(rotated)
            else:
                shutil.copyfile(master, rotated)
                os.truncate(master, 0)
        results = await drain(make_source(options), checkpoint, stop_after=1)
        if results:
            checkpoint = results[-1].checkpoint
            got += keys_of(results)
    got += keys_of(await drain(make_source(options), checkpoint))
    assert sorted(got, key=lambda k: int(k[1:])) == written
    assert len(got) == len(set(got))

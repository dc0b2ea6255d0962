"""Following CSV files as a switch appends to them: rotation, truncation, deletion, restarts.

`Follower` knows files and byte positions, not CDRs. Each `poll()` returns complete records
(a last line without newline, or a quoted value still open, waits for more data) and moves
its positions just past them, so `checkpoint()` taken after a poll is the exact place to
resume: nothing read twice, nothing skipped.

Files are known by (device, inode), not by name, plus a fingerprint (sha256 of the first
`FP_LEN` bytes) that tells a file from a later one that got the same inode number:

* **rename** (logrotate `create`, FreeSWITCH `Master.csv.<Y-m-d-H-M-S>`, Asterisk
  `Master.csv.1`): the renamed file keeps its inode, so it is read to its end under its new
  name; the new file at the path is a new inode, read from 0. A renamed file that no longer
  matches what is followed is forgotten once read and idle for `ROTATED_IDLE` seconds.
* **copytruncate**: the size drops below the position, so the file is read again from 0. The
  copy made by logrotate starts with the same bytes: when a new file's first bytes *and* the
  bytes before the old position match, reading the copy starts at the old position, which
  recovers the lines written between the last poll and the truncation.
* **deletion**: an open file is read to its end through its descriptor, then forgotten.
* **inode reuse**: a known inode whose first bytes changed is a new file, read from 0.

Reading is synchronous and bounded (at most `READ_MAX` bytes per read, `limit` records per
poll): local files are read from the page cache in microseconds.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cdrstats_agent.logs import get_logger

from .records import split_records

FP_LEN = 512
"""Bytes of a file's beginning that identify it."""
FP_MIN_MATCH = 32
"""A copy is recognised from a fingerprint of at least this many bytes, or of all that was
read of the original."""
TAIL_LEN = 512
"""Bytes before the read position that must also match to take a new file for a copy."""
READ_MAX = 1 << 20
"""Largest read, and so the longest record."""
IDLE_CLOSE = 60.0
"""Seconds without growth after which a file's descriptor is closed (reopened on growth)."""
ROTATED_IDLE = 30.0
"""Seconds a fully read file that is no longer followed (renamed away) is kept open."""
MEMO_POLLS = 120
"""Polls during which the content of a truncated file is looked for in a copy."""
RECENT_MARGIN = 2.0
"""Seconds of slack when comparing a file's modification time with the last scan."""
ROTATION_SEPARATORS = ".-_"
"""`Master.csv` + one of these + anything is a rotated generation of `Master.csv`."""

CHECKPOINT_VERSION = 1

log = get_logger("cdrstats.plugins.csv.follow")


class CheckpointError(ValueError):
    """A checkpoint string this follower did not write."""


@dataclass(frozen=True, slots=True)
class Record:
    """One complete record of one file."""

    path: str
    line: int
    data: bytes
    header: bytes | None = None
    """The header record of its file, when the follower reads headers."""
    error: str | None = None
    """Set when the record could not be read at all (a line longer than READ_MAX)."""


@dataclass(slots=True)
class _File:
    dev: int
    ino: int
    path: str
    offset: int = 0
    line: int = 0
    fp: str = ""
    fp_len: int = 0
    tail: str = ""
    tail_len: int = 0
    fd: int | None = None
    header: bytes | None = None
    size: int = -1
    mtime_ns: int = -1
    last_growth: float = 0.0
    seq: int = 0
    """Order of discovery: breaks ties between equal modification times."""
    stall: tuple[int, int] | None = None
    """(offset, size) where reading last stopped on an open quote."""
    followed: bool = True
    """Matched by `path`/`pattern` at the last scan (False: renamed away or found by inode)."""
    gone: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "dev": self.dev,
            "ino": self.ino,
            "offset": self.offset,
            "line": self.line,
            "fp": self.fp,
            "fp_len": self.fp_len,
            "tail": self.tail,
            "tail_len": self.tail_len,
        }


@dataclass(slots=True)
class _Memo:
    """What a truncated file held, so that its copy can be read from where we stopped."""

    path: str
    fp: str
    fp_len: int
    tail: str
    tail_len: int
    offset: int
    line: int
    polls_left: int = MEMO_POLLS


def matches(name: str, pattern: str, exclude: Sequence[str]) -> bool:
    """Whether a file name is followed: it matches `pattern` and none of `exclude`."""
    return fnmatch.fnmatchcase(name, pattern) and not any(
        fnmatch.fnmatchcase(name, ex) for ex in exclude
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pread(path_or_fd: str | int, length: int, offset: int) -> bytes:
    if isinstance(path_or_fd, int):
        return os.pread(path_or_fd, length, offset)
    fd = os.open(path_or_fd, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _parse_checkpoint(text: str) -> tuple[list[dict[str, Any]], float | None]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("v") != CHECKPOINT_VERSION:
        raise CheckpointError(f"not a version {CHECKPOINT_VERSION} csv checkpoint")
    files = doc.get("files")
    if not isinstance(files, list):
        raise CheckpointError("no file list")
    types = {
        "path": str,
        "dev": int,
        "ino": int,
        "offset": int,
        "line": int,
        "fp": str,
        "fp_len": int,
        "tail": str,
        "tail_len": int,
    }
    for entry in files:
        if not isinstance(entry, dict) or any(
            not isinstance(entry.get(k), t) or isinstance(entry.get(k), bool)
            for k, t in types.items()
        ):
            raise CheckpointError(f"malformed file entry {entry!r:.120}")
        if entry["offset"] < 0 or entry["line"] < 0 or entry["fp_len"] < 0:
            raise CheckpointError(f"negative position in {entry!r:.120}")
    scanned_at = doc.get("scanned_at")
    if scanned_at is not None and (
        isinstance(scanned_at, bool) or not isinstance(scanned_at, (int, float))
    ):
        raise CheckpointError(f"bad scanned_at {scanned_at!r:.40}")
    return files, None if scanned_at is None else float(scanned_at)


class Follower:
    """Follows `path`: one file, or the files matching `pattern` in a directory."""

    def __init__(
        self,
        path: str,
        *,
        pattern: str = "*.csv",
        exclude: Sequence[str] = (),
        header: bool = False,
        quote: int | None = 0x22,
        max_record_lines: int = 20,
        accept: Callable[[bytes], bool] | None = None,
        start_at: str = "beginning",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.path.abspath(path)
        self.pattern = pattern
        self.exclude = tuple(exclude)
        self.header = header
        self.quote = quote
        self.max_record_lines = max_record_lines
        self.accept = accept
        self.start_at = start_at
        self._clock = clock
        self._files: dict[tuple[int, int], _File] = {}
        self._restored: list[dict[str, Any]] | None = None
        self._memos: list[_Memo] = []
        self._first_scan = True
        self._last_scan: float | None = None
        """Wall-clock start of the previous scan (from the checkpoint after a restart)."""
        self._scan_started = time.time()
        self._stamp: tuple[str, float] | None = None
        self._forgotten: dict[tuple[int, int], _File] = {}
        """Files read to their end and dropped (bounded): not to be read again."""
        self._seq = 0
        self._fresh = True
        self.waiting = False
        """The last poll stopped at an open quote: the next one decides (not idle)."""
        self._problems: dict[str, str] = {}

    # --- checkpoints --------------------------------------------------------------------

    def restore(self, checkpoint: str | None) -> None:
        """Resume from a checkpoint (None: first start). Raises CheckpointError."""
        self._fresh = checkpoint is None
        if checkpoint is None:
            self._restored = None
            return
        self._restored, scanned_at = _parse_checkpoint(checkpoint)
        self._last_scan = scanned_at
        if scanned_at is not None:
            self._stamp = (json.dumps(self._restored, sort_keys=True), scanned_at)

    def checkpoint(self) -> str:
        """The positions reached, as JSON (see README: checkpoint format)."""
        if self._restored is not None:
            # Not scanned yet: the positions are still those we were given.
            entries = self._restored
        else:
            entries = [f.to_json() for f in self._files.values()]
        entries = sorted(entries, key=lambda e: (e["path"], e["dev"], e["ino"]))
        # `scanned_at` moves only when the positions do, so that an idle poll gives the
        # same string; it is the scan that found them (see `_scan`: rotated generations).
        state = json.dumps(entries, sort_keys=True)
        if self._stamp is None or self._stamp[0] != state:
            self._stamp = (state, round(self._scan_started, 3))
        doc = {"v": CHECKPOINT_VERSION, "scanned_at": self._stamp[1], "files": entries}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    # --- problems are logged once, until they go away ------------------------------------

    def _problem(self, path: str, message: str) -> None:
        if self._problems.get(path) != message:
            self._problems[path] = message
            log.warning("file_unreadable", path=path, problem=message)

    def _ok(self, path: str) -> None:
        if self._problems.pop(path, None) is not None:
            log.info("file_readable_again", path=path)

    # --- scanning -----------------------------------------------------------------------

    def _wanted(self, path: str) -> bool:
        return matches(os.path.basename(path), self.pattern, self.exclude)

    def _list(self, directory: str) -> dict[tuple[int, int], tuple[str, os.stat_result]]:
        found: dict[tuple[int, int], tuple[str, os.stat_result]] = {}
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        st = entry.stat()
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        found[(st.st_dev, st.st_ino)] = (entry.path, st)
        except FileNotFoundError:
            return found
        except OSError as exc:
            self._problem(directory, exc.strerror or str(exc))
            return found
        self._ok(directory)
        return found

    def _scan(self) -> None:
        scan_started = time.time()
        self._scan_started = scan_started
        try:
            root = os.stat(self.path)
            self._ok(self.path)
        except FileNotFoundError:
            self._problem(self.path, "does not exist (yet)")
            root = None
        except OSError as exc:
            self._problem(self.path, exc.strerror or str(exc))
            root = None
        dir_mode = root is not None and stat.S_ISDIR(root.st_mode)
        directory = self.path if dir_mode else os.path.dirname(self.path)
        listing: dict[tuple[int, int], tuple[str, os.stat_result]] | None = None

        def everything() -> dict[tuple[int, int], tuple[str, os.stat_result]]:
            nonlocal listing
            if listing is None:
                listing = self._list(directory)
            return listing

        followed: dict[tuple[int, int], tuple[str, os.stat_result]] = {}
        if dir_mode:
            followed = {k: v for k, v in everything().items() if self._wanted(v[0])}
        elif root is not None and stat.S_ISREG(root.st_mode):
            followed = {(root.st_dev, root.st_ino): (self.path, root)}

        if self._restored is not None:
            self._resolve_restored(self._restored, followed, everything())
            self._restored = None

        for ident, tracked in list(self._files.items()):
            if tracked.gone:
                continue
            place = followed.get(ident)
            tracked.followed = place is not None
            if place is None:
                place = everything().get(ident)
            if place is None:
                tracked.gone = True
                log.info("file_gone", path=tracked.path, offset=tracked.offset)
                continue
            tracked.path = place[0]
            self._changed(tracked, place[1])
            if not tracked.followed and self._clock() - tracked.last_growth >= ROTATED_IDLE:
                tracked.gone = True  # rotated away and idle: read what is left, then forget

        for ident, (path, st) in followed.items():
            if ident not in self._files:
                self._track_new(ident, path, st)

        if self._last_scan is not None:
            # Generations born and rotated away since the last scan (or while the agent was
            # down): untracked, named like a rotation of a followed file, written since then.
            bases = {os.path.basename(p) for p, _ in followed.values()}
            if not dir_mode:
                bases.add(os.path.basename(self.path))
            since = int((self._last_scan - RECENT_MARGIN) * 1e9)
            for ident, (path, st) in everything().items():
                if (
                    ident not in self._files
                    and st.st_mtime_ns >= since
                    and self._wanted_copy(path)
                    and self._rotation_of(os.path.basename(path), bases)
                ):
                    old = self._forgotten.get(ident)
                    if old is not None and self._head(path, old.fp_len) == old.fp:
                        if st.st_size > old.offset:  # written again after we let it go
                            del self._forgotten[ident]
                            self._track(ident, path, st, old.offset, old.line, followed=False)
                        continue
                    self._track_new(ident, path, st, followed=False)

        if self._memos:
            if not dir_mode:
                for ident, (path, st) in everything().items():
                    if ident not in self._files and self._wanted_copy(path):
                        memo = self._match_memo(path, st)
                        if memo is not None:
                            offset, line = self._copy_position(path, st, memo.offset, memo.line)
                            self._track(ident, path, st, offset, line, followed=False)
            for memo in self._memos:
                memo.polls_left -= 1
            self._memos = [m for m in self._memos if m.polls_left > 0]
        self._first_scan = False
        self._last_scan = scan_started

    @staticmethod
    def _rotation_of(name: str, bases: set[str]) -> bool:
        return any(
            len(name) > len(base)
            and name.startswith(base)
            and name[len(base)] in ROTATION_SEPARATORS
            for base in bases
        )

    def _wanted_copy(self, path: str) -> bool:
        name = os.path.basename(path)
        return not any(fnmatch.fnmatchcase(name, ex) for ex in self.exclude)

    def _head(self, source: str | int, length: int) -> str | None:
        try:
            data = _pread(source, length, 0)
        except OSError:
            return None
        return _sha(data) if len(data) == length else None

    def _tail_matches(self, source: str | int, offset: int, tail: str, tail_len: int) -> bool:
        if tail_len == 0:
            return offset == 0
        try:
            data = _pread(source, tail_len, offset - tail_len)
        except OSError:
            return False
        return len(data) == tail_len and _sha(data) == tail

    def _resolve_restored(
        self,
        entries: list[dict[str, Any]],
        followed: dict[tuple[int, int], tuple[str, os.stat_result]],
        everything: dict[tuple[int, int], tuple[str, os.stat_result]],
    ) -> None:
        places = {**everything, **followed}
        for entry in entries:
            found: tuple[tuple[int, int], str, os.stat_result] | None = None
            ident = (entry["dev"], entry["ino"])
            options: list[tuple[tuple[int, int], tuple[str, os.stat_result]]] = []
            if ident in places:
                options.append((ident, places[ident]))
            options += [(k, v) for k, v in places.items() if k[1] == entry["ino"] and k != ident]
            options += [(k, v) for k, v in places.items() if v[0] == entry["path"] and k != ident]
            for key, (path, st) in options:
                if key in self._files:
                    continue
                if self._head(path, entry["fp_len"]) == entry["fp"]:
                    found = (key, path, st)
                    break
            if found is None:
                log.info("checkpoint_file_gone", path=entry["path"], offset=entry["offset"])
                if entry["offset"]:  # its content may be in a copy (copytruncate while down)
                    self._memos.append(
                        _Memo(
                            entry["path"],
                            entry["fp"],
                            entry["fp_len"],
                            entry["tail"],
                            entry["tail_len"],
                            entry["offset"],
                            entry["line"],
                        )
                    )
                continue
            key, path, st = found
            tracked = self._track(
                key,
                path,
                st,
                entry["offset"],
                entry["line"],
                followed=key in followed,
                fp=(entry["fp"], entry["fp_len"]),
                tail=(entry["tail"], entry["tail_len"]),
            )
            if st.st_size < entry["offset"]:
                self._truncated(tracked, st)

    def _track(
        self,
        ident: tuple[int, int],
        path: str,
        st: os.stat_result,
        offset: int,
        line: int,
        *,
        followed: bool,
        fp: tuple[str, int] | None = None,
        tail: tuple[str, int] | None = None,
    ) -> _File:
        self._seq += 1
        tracked = _File(
            dev=ident[0],
            ino=ident[1],
            path=path,
            offset=offset,
            line=line,
            followed=followed,
            last_growth=self._clock(),
            seq=self._seq,
            mtime_ns=st.st_mtime_ns,
        )
        if fp is None:
            length = min(st.st_size, FP_LEN)
            fp = (self._head(path, length) or _sha(b""), length) if length else (_sha(b""), 0)
        tracked.fp, tracked.fp_len = fp
        if tail is None:
            self._update_tail(tracked, path)
        else:
            tracked.tail, tracked.tail_len = tail
        self._files[ident] = tracked
        return tracked

    def _track_new(
        self, ident: tuple[int, int], path: str, st: os.stat_result, *, followed: bool = True
    ) -> None:
        offset = line = 0
        copy = self._match_copy(ident, path, st)
        if copy is not None:
            offset, line = copy
        elif self._first_scan and self._fresh and self.start_at == "end":
            offset, line = self._end_position(path)
        log.info("file_found", path=path, offset=offset, copy_of_known=copy is not None)
        self._track(ident, path, st, offset, line, followed=followed)

    def _match_copy(
        self, ident: tuple[int, int], path: str, st: os.stat_result
    ) -> tuple[int, int] | None:
        memo = self._match_memo(path, st)
        if memo is not None:
            return self._copy_position(path, st, memo.offset, memo.line)
        for other in self._files.values():
            if (
                (other.dev, other.ino) != ident
                and other.offset > 0
                and other.fp_len >= min(FP_MIN_MATCH, other.offset)
                and self._head(path, other.fp_len) == other.fp
                and (
                    st.st_size < other.offset
                    or self._tail_matches(path, other.offset, other.tail, other.tail_len)
                )
            ):
                log.info("copy_found", path=path, copy_of=other.path, offset=other.offset)
                return self._copy_position(path, st, other.offset, other.line)
        return None

    def _copy_position(
        self, path: str, st: os.stat_result, offset: int, line: int
    ) -> tuple[int, int]:
        """Where to start in a copy of a file read up to (offset, line)."""
        if st.st_size >= offset:
            return offset, line
        # A shorter copy holds only what was already read: start at its last full line.
        return self._end_position(path)

    def _match_memo(self, path: str, st: os.stat_result) -> _Memo | None:
        for memo in self._memos:
            if (
                memo.fp_len >= min(FP_MIN_MATCH, memo.offset)
                and self._head(path, memo.fp_len) == memo.fp
                and (
                    st.st_size < memo.offset
                    or self._tail_matches(path, memo.offset, memo.tail, memo.tail_len)
                )
            ):
                self._memos.remove(memo)
                log.info("copy_found", path=path, copy_of=memo.path, offset=memo.offset)
                return memo
        return None

    def _end_position(self, path: str) -> tuple[int, int]:
        """Just after the last complete line, and the number of lines before it."""
        offset = lines = 0
        try:
            with open(path, "rb") as fh:
                pos = 0
                while block := fh.read(READ_MAX):
                    lines += block.count(b"\n")
                    last = block.rfind(b"\n")
                    if last >= 0:
                        offset = pos + last + 1
                    pos += len(block)
        except OSError as exc:
            self._problem(path, exc.strerror or str(exc))
        return offset, lines

    def _changed(self, tracked: _File, st: os.stat_result) -> None:
        if st.st_size == tracked.size and st.st_mtime_ns == tracked.mtime_ns:
            return
        if st.st_size > tracked.size:
            tracked.last_growth = self._clock()
        tracked.size, tracked.mtime_ns = st.st_size, st.st_mtime_ns
        source: str | int = tracked.fd if tracked.fd is not None else tracked.path
        if st.st_size < tracked.offset or (
            tracked.fp_len and self._head(source, tracked.fp_len) != tracked.fp
        ):
            self._truncated(tracked, st)
        elif tracked.fp_len < FP_LEN and st.st_size > tracked.fp_len:
            length = min(st.st_size, FP_LEN)
            head = self._head(source, length)
            if head is not None:
                tracked.fp, tracked.fp_len = head, length

    def _truncated(self, tracked: _File, st: os.stat_result) -> None:
        """Content replaced (copytruncate, inode reuse): read again from 0."""
        log.warning("file_truncated", path=tracked.path, offset=tracked.offset, size=st.st_size)
        if tracked.offset:
            self._memos.append(
                _Memo(
                    tracked.path,
                    tracked.fp,
                    tracked.fp_len,
                    tracked.tail,
                    tracked.tail_len,
                    tracked.offset,
                    tracked.line,
                )
            )
        tracked.offset = tracked.line = 0
        tracked.header = None
        tracked.tail, tracked.tail_len = _sha(b""), 0
        source: str | int = tracked.fd if tracked.fd is not None else tracked.path
        length = min(st.st_size, FP_LEN)
        tracked.fp, tracked.fp_len = (self._head(source, length) or _sha(b"")), length

    def _update_tail(self, tracked: _File, source: str | int) -> None:
        length = min(tracked.offset, TAIL_LEN)
        if length == 0:
            tracked.tail, tracked.tail_len = _sha(b""), 0
            return
        try:
            data = _pread(source, length, tracked.offset - length)
        except OSError:
            return
        tracked.tail, tracked.tail_len = _sha(data), len(data)

    # --- reading ------------------------------------------------------------------------

    def poll(self, limit: int) -> tuple[list[Record], bool]:
        """Up to `limit` new records; the flag says whether more may be waiting already."""
        self._scan()
        self.waiting = False
        records: list[Record] = []
        order = sorted(self._files.values(), key=lambda f: (f.mtime_ns, f.seq))
        for tracked in order:
            if len(records) >= limit:
                break
            start = tracked.offset
            try:
                self._read(tracked, limit - len(records), records)
            except OSError as exc:
                self._problem(tracked.path, exc.strerror or str(exc))
            if tracked.offset != start and tracked.fd is not None:
                self._update_tail(tracked, tracked.fd)
            self._retire(tracked)
        return records, len(records) >= limit

    def _open(self, tracked: _File) -> int | None:
        if tracked.fd is not None:
            return tracked.fd
        try:
            fd = os.open(tracked.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._problem(tracked.path, exc.strerror or str(exc))
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (tracked.dev, tracked.ino):
            os.close(fd)  # renamed in between: found again at the next scan
            return None
        self._ok(tracked.path)
        tracked.fd = fd
        return fd

    def _read(self, tracked: _File, budget: int, records: list[Record]) -> None:
        """Append up to `budget` records to `records`, moving the position past each."""
        fd = self._open(tracked)
        if fd is None:
            return
        st = os.fstat(fd)
        size = st.st_size
        if size < tracked.offset:
            self._truncated(tracked, st)
        if self.header and tracked.header is None and not self._read_header(tracked, fd, size):
            return
        budget += len(records)
        # An open quote that saw no new data since the last poll is a broken row, not a
        # record still being written: cut it (its first line alone) and go on.
        flush_quotes = tracked.stall == (tracked.offset, size)
        tracked.stall = None
        while len(records) < budget and tracked.offset < size:
            window = os.pread(fd, min(READ_MAX, size - tracked.offset), tracked.offset)
            if not window:
                break
            at_end = tracked.offset + len(window) >= size
            split = split_records(
                window,
                first_line=tracked.line + 1,
                quote=self.quote,
                max_lines=self.max_record_lines,
                final=tracked.gone and at_end,
                flush_open_quotes=flush_quotes,
                accept=self.accept,
                limit=budget - len(records),
            )
            records.extend(
                Record(tracked.path, r.line, r.data, tracked.header) for r in split.records
            )
            tracked.offset += split.consumed
            tracked.line += split.lines
            if split.open_quote:
                tracked.stall = (tracked.offset, size)
                self.waiting = True
                break
            if split.consumed == 0:
                if len(window) < READ_MAX:
                    break  # an incomplete last line: wait for the rest
                long = self._overlong(tracked, fd, window, size)
                if long is None:
                    break
                records.append(long)

    def _read_header(self, tracked: _File, fd: int, size: int) -> bool:
        window = os.pread(fd, min(READ_MAX, size), 0)
        split = split_records(
            window,
            quote=self.quote,
            max_lines=self.max_record_lines,
            final=tracked.gone and len(window) >= size,
            limit=1,
        )
        if not split.records:
            return False
        tracked.header = split.records[0].data
        if tracked.offset == 0:
            tracked.offset, tracked.line = split.consumed, split.lines
        return True

    def _overlong(self, tracked: _File, fd: int, window: bytes, size: int) -> Record | None:
        """A record bigger than READ_MAX: its first line alone, or a rejection if too long."""
        first = window.find(b"\n")
        line = tracked.line + 1
        if first >= 0:
            data = window[:first].removesuffix(b"\r")
            tracked.offset += first + 1
            tracked.line += 1
            return Record(tracked.path, line, data, tracked.header)
        pos = tracked.offset + len(window)
        while pos < size:
            block = os.pread(fd, min(READ_MAX, size - pos), pos)
            if not block:
                break
            nl = block.find(b"\n")
            if nl >= 0:
                tracked.offset = pos + nl + 1
                tracked.line += 1
                return Record(
                    tracked.path,
                    line,
                    b"",
                    tracked.header,
                    error=f"line longer than {READ_MAX} bytes, skipped",
                )
            pos += len(block)
        if tracked.gone:
            tracked.offset = size
            return Record(
                tracked.path,
                line,
                b"",
                tracked.header,
                error=f"line longer than {READ_MAX} bytes, skipped",
            )
        return None

    def _retire(self, tracked: _File) -> None:
        """Close idle descriptors; forget files that are gone once read to their end."""
        if tracked.gone:
            if self._drained(tracked) or self._open(tracked) is None:
                self._forget(tracked)
            return
        if (
            tracked.fd is not None
            and tracked.offset >= tracked.size
            and self._clock() - tracked.last_growth >= IDLE_CLOSE
        ):
            os.close(tracked.fd)
            tracked.fd = None

    def _drained(self, tracked: _File) -> bool:
        if tracked.fd is None:
            return tracked.offset >= tracked.size
        try:
            return tracked.offset >= os.fstat(tracked.fd).st_size
        except OSError:
            return True

    def _forget(self, tracked: _File) -> None:
        if tracked.fd is not None:
            os.close(tracked.fd)
            tracked.fd = None
        self._files.pop((tracked.dev, tracked.ino), None)
        self._forgotten[(tracked.dev, tracked.ino)] = tracked
        while len(self._forgotten) > 1000:
            del self._forgotten[next(iter(self._forgotten))]
        log.info("file_done", path=tracked.path, lines=tracked.line)

    def close(self) -> None:
        for tracked in self._files.values():
            if tracked.fd is not None:
                os.close(tracked.fd)
                tracked.fd = None

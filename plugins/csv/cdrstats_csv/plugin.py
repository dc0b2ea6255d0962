"""The `csv` plugin: follows CSV files and maps their rows to CDRs.

`CsvPlugin.create_source` validates the `[[source]]` table (no I/O). `CsvSource.read` polls
the files every `interval` seconds and yields `ReadResult`s of at most `chunk_cdrs` records;
each carries the checkpoint just after its last record (JSON, see follow.py and README).
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import stat
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from cdrstats_agent.errors import ConfigError, SourceError
from cdrstats_agent.logs import get_logger
from cdrstats_agent.model import CDR
from cdrstats_agent.plugin import ReadResult, Rejected

from .config import read_mapping
from .follow import CheckpointError, Follower, Record, matches
from .mapping import Mapping as CsvMapping
from .mapping import Rejection

log = get_logger("cdrstats.plugins.csv")

OPTIONS = (
    "path",
    "preset",
    "columns",
    "usegmtime",
    "template",
    "broken_quotes",
    "pattern",
    "exclude",
    "header",
    "column_names",
    "fields",
    "key",
    "time_format",
    "timezone",
    "duration_unit",
    "disposition_map",
    "country_code",
    "international_prefix",
    "national_prefix",
    "trunks",
    "delimiter",
    "quotechar",
    "max_record_lines",
    "encoding",
    "interval",
    "chunk_cdrs",
    "start_at",
)
"""Every option of a csv `[[source]]` table (besides the agent's own `name` and `plugin`)."""

COMPRESSED = ["*.gz", "*.bz2", "*.xz", "*.zst", "*.zip", "*.lz4"]
LOGGED_REJECTS_PER_CHUNK = 20

SAMPLE_CONFIG = """\
# CSV files written by a switch (Asterisk cdr_csv, FreeSWITCH mod_cdr_csv) or any CSV
# with one call per row. Every option is listed; the commented ones show their default.
[[source]]
name = "cdr-csv"
plugin = "csv"
# A file, or a directory whose files matching `pattern` are followed (required).
path = "/var/log/asterisk/cdr-csv/Master.csv"
# Built-in mapping: "asterisk", "freeswitch-example", "freeswitch-default",
# "freeswitch-template". Without a preset, map the columns with `fields` below.
preset = "asterisk"
# asterisk: force one layout (16, 18 or 21 columns); default: chosen per row.
# columns = 21
# asterisk: cdr.conf has usegmtime=yes (stamps are UTC). Default false: local time.
# usegmtime = false
# freeswitch-template: the template text from cdr_csv.conf.xml.
# template = '"${caller_id_name}","${caller_id_number}","${start_stamp}","${uuid}"'
# freeswitch presets: a row with a '"' inside a value is read when it can only be cut one
# way ("recover", counted and logged) or rejected ("reject").
# broken_quotes = "recover"
# Files followed in a directory (default "Master.csv*" with a preset, else "*.csv"),
# and names never read (compressed rotations).
# pattern = "*.csv"
# exclude = ["*.gz", "*.bz2", "*.xz", "*.zst", "*.zip", "*.lz4"]
# Without a preset: the first line of each file names the columns ...
# header = false
# ... or name them here.
# column_names = ["calldate", "src", "dst", "duration", "billsec", "disposition", "callid"]
# CDR field = column name or number (from 1), or a list: the first non-empty wins.
# Overrides or extends a preset's mapping.
# fields = { start = "calldate", caller = "src", callee = "dst", duration = "duration" }
# Natural key column(s), joined with ":"; default: the preset's, else sha256 of the row.
# key = ["callid"]
# Time formats tried in order: strptime patterns, "epoch", "epoch_ms", "epoch_us", "iso8601".
# time_format = ["%Y-%m-%d %H:%M:%S", "iso8601"]
# Zone of stamps without offset: an IANA name, or "local" (the host's zone).
# timezone = "local"
# Unit of duration, billsec and ring_time: "s", "ms" or "hms" (HH:MM:SS).
# duration_unit = "s"
# Extra disposition texts: text = ANSWERED | NO_ANSWER | BUSY | FAILED | CANCELLED.
# disposition_map = { "OK" = "ANSWERED", "NOANS" = "NO_ANSWER" }
# E.164 normalisation of caller and callee: the switch's country calling code and prefixes.
# country_code = "33"
# international_prefix = "00"
# national_prefix = "0"
# Peer names that are trunks (from channel names): sets trunk and derives direction.
# trunks = ["provider1", "provider2"]
# RFC 4180 files without preset: separator and quote characters.
# delimiter = ","
# quotechar = '"'
# A quoted value may span lines; a row longer than this many lines is broken.
# max_record_lines = 20
# File encoding; bytes that do not decode make the row rejected, not the source.
# encoding = "utf-8"
# Seconds between polls, CDRs per batch, and where to start without a checkpoint.
# interval = 1.0
# chunk_cdrs = 1000
# start_at = "beginning"   # or "end": skip what the files hold at the very first start
"""


class CsvPlugin:
    name = "csv"
    description = (
        "CSV files from any switch: Asterisk cdr_csv, FreeSWITCH mod_cdr_csv, or any CSV "
        "mapped column by column"
    )
    sample_config = SAMPLE_CONFIG

    def create_source(self, name: str, options: Mapping[str, Any]) -> CsvSource:
        table = {k: v for k, v in options.items() if k not in ("plugin", "name")}
        config, opts = read_mapping(table)
        path = opts.text("path")
        if not path.strip():
            raise ConfigError("path", "must not be empty")
        pattern = opts.text("pattern", config.pattern)
        if not pattern or "/" in pattern:
            raise ConfigError(
                "pattern", f"must be a file name pattern such as *.csv, got {pattern!r}"
            )
        exclude = opts.text_list("exclude", COMPRESSED)
        interval = opts.number("interval", 1.0, minimum=0.001)
        chunk = opts.integer("chunk_cdrs", 1000, minimum=1)
        start_at = opts.choice("start_at", ("beginning", "end"), "beginning")
        opts.finish()
        return CsvSource(
            name,
            config.mapping,
            path=path,
            pattern=pattern,
            exclude=exclude,
            interval=interval,
            chunk_cdrs=chunk,
            start_at=start_at,
        )


def _explain_denied(path: str) -> str:
    """Owner, mode and the agent's user, for a permission problem on `path`."""
    try:
        st = os.stat(path)
    except OSError:
        return "permission denied"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        me = f"uid {os.geteuid()}"
    return (
        f"permission denied (owner {owner}:{group}, mode {stat.S_IMODE(st.st_mode):04o}; "
        f"the agent runs as {me}: add it to group {group!r} or make the file readable)"
    )


class CsvSource:
    """One followed file or directory."""

    def __init__(
        self,
        name: str,
        mapping: CsvMapping,
        *,
        path: str,
        pattern: str,
        exclude: list[str],
        interval: float,
        chunk_cdrs: int,
        start_at: str,
    ) -> None:
        self.name = name
        self.mapping = mapping
        self.path = os.path.abspath(path)
        self.pattern = pattern
        self.exclude = list(exclude)
        self.interval = interval
        self.chunk_cdrs = chunk_cdrs
        self.start_at = start_at
        self.stats = {"records": 0, "cdrs": 0, "rejected": 0, "quote_recovered": 0}
        """Counters since the source was created."""
        self.idle_polls = 0
        """Polls that found nothing new (lets a caller tell that it has seen everything)."""
        self._followers: set[Follower] = set()
        self._headers: dict[bytes, tuple[str, ...] | Rejection] = {}

    # --- check --------------------------------------------------------------------------

    async def check(self) -> None:
        await asyncio.to_thread(self._check)

    def _check(self) -> None:
        path = self.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            parent = os.path.dirname(path)
            try:
                parent_st = os.stat(parent)
            except FileNotFoundError:
                raise SourceError(f"{path}: does not exist, nor does its directory") from None
            except PermissionError:
                raise SourceError(f"{parent}: {_explain_denied(parent)}") from None
            if not stat.S_ISDIR(parent_st.st_mode):
                raise SourceError(f"{path}: {parent} is not a directory") from None
            if not os.access(parent, os.R_OK | os.X_OK):
                raise SourceError(f"{parent}: {_explain_denied(parent)}") from None
            log.warning(
                "file_missing",
                source=self.name,
                path=path,
                note="will be read when the switch creates it",
            )
            return
        except PermissionError:
            raise SourceError(f"{path}: {_explain_denied(os.path.dirname(path))}") from None
        if stat.S_ISDIR(st.st_mode):
            try:
                names = sorted(os.listdir(path))
            except PermissionError:
                raise SourceError(
                    f"{path}: cannot list directory: {_explain_denied(path)}"
                ) from None
            matching = [
                os.path.join(path, n) for n in names if matches(n, self.pattern, self.exclude)
            ]
            if not matching:
                log.warning("no_file_matches", source=self.name, path=path, pattern=self.pattern)
            for file in matching:
                if os.path.isfile(file):
                    self._check_readable(file)
        elif stat.S_ISREG(st.st_mode):
            self._check_readable(path)
        else:
            raise SourceError(f"{path}: neither a regular file nor a directory")

    @staticmethod
    def _check_readable(path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError:
            raise SourceError(f"{path}: cannot read: {_explain_denied(path)}") from None
        except OSError as exc:
            raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
        os.close(fd)

    # --- read ---------------------------------------------------------------------------

    def _follower(self) -> Follower:
        mapping = self.mapping
        return Follower(
            self.path,
            pattern=self.pattern,
            exclude=self.exclude,
            header=mapping.header,
            quote=mapping.quote_byte,
            max_record_lines=mapping.max_record_lines,
            accept=mapping.plausible,
            start_at=self.start_at,
        )

    async def read(self, checkpoint: str | None) -> AsyncGenerator[ReadResult, None]:
        follower = self._follower()
        try:
            follower.restore(checkpoint)
        except CheckpointError as exc:
            raise SourceError(f"source {self.name}: cannot resume from checkpoint: {exc}") from None
        self._followers.add(follower)
        last = follower.checkpoint()
        try:
            while True:
                records, more = follower.poll(self.chunk_cdrs)
                position = follower.checkpoint()
                if records or position != last:
                    cdrs, rejected = self._map(records)
                    last = position
                    yield ReadResult(cdrs, position, rejected)
                elif not follower.waiting:
                    self.idle_polls += 1
                if not more:
                    await asyncio.sleep(self.interval)
        finally:
            follower.close()
            self._followers.discard(follower)

    def _header(self, data: bytes) -> tuple[str, ...] | Rejection:
        names = self._headers.get(data)
        if names is None:
            names = self.mapping.parse_header(data)
            if len(self._headers) > 100:
                self._headers.clear()
            self._headers[data] = names
        return names

    def _map(self, records: list[Record]) -> tuple[list[CDR], list[Rejected]]:
        cdrs: list[CDR] = []
        rejected: list[Rejected] = []
        mapping = self.mapping
        for record in records:
            where = f"{record.path}:{record.line}"
            result: CDR | Rejection
            if record.error is not None:
                result = Rejection(record.error)
            else:
                header: tuple[str, ...] | None = None
                if mapping.header:
                    parsed = self._header(record.header or b"")
                    if isinstance(parsed, Rejection):
                        rejected.append(Rejected(where, f"unusable header line: {parsed.reason}"))
                        continue
                    header = parsed
                before = mapping.quote_recovered
                try:
                    result = mapping.map_record(record.data, header)
                except Exception as exc:  # a bug must cost one row, not the file
                    log.error("map_failed", exc_info=True, source=self.name, where=where)
                    result = Rejection(f"internal error while mapping: {exc!r}")
                if mapping.quote_recovered != before:
                    self.stats["quote_recovered"] += 1
                    log.warning(
                        "quote_in_value",
                        source=self.name,
                        where=where,
                        note="read although FreeSWITCH did not escape a '\"'",
                    )
            if isinstance(result, Rejection):
                rejected.append(Rejected(where, result.reason))
            else:
                cdrs.append(result)
        self.stats["records"] += len(records)
        self.stats["cdrs"] += len(cdrs)
        self.stats["rejected"] += len(rejected)
        for item in rejected[:LOGGED_REJECTS_PER_CHUNK]:
            log.warning("row_rejected", source=self.name, where=item.where, reason=item.reason)
        if len(rejected) > LOGGED_REJECTS_PER_CHUNK:
            log.warning(
                "rows_rejected",
                source=self.name,
                not_logged=len(rejected) - LOGGED_REJECTS_PER_CHUNK,
                total=self.stats["rejected"],
            )
        return cdrs, rejected

    async def close(self) -> None:
        for follower in list(self._followers):
            follower.close()

"""mod_cdr_csv: `Master.csv` (and per-accountcode files) followed with the csv plugin's Follower.

File following (rotation by `cdr_csv rotate` / SIGHUP with `rotate-on-hup`, reopening without
it, copytruncate, restarts) is `cdrstats_csv.follow.Follower`; cutting a line with the template
is `cdrstats_csv.records.Template`. This module only turns each line's values into the
template's variables and hands them to `variables.to_cdr`.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import AsyncGenerator

from cdrstats_agent.errors import SourceError
from cdrstats_agent.logs import get_logger
from cdrstats_agent.model import CDR
from cdrstats_agent.plugin import ReadResult, Rejected
from cdrstats_csv.follow import CheckpointError, Follower, Record
from cdrstats_csv.presets import FREESWITCH_DEFAULT, FREESWITCH_EXAMPLE
from cdrstats_csv.records import RecordError, Template

from .variables import Invalid, Settings, Skipped, to_cdr

log = get_logger("cdrstats.plugins.freeswitch.csv")

TEMPLATES = {"example": FREESWITCH_EXAMPLE, "default": FREESWITCH_DEFAULT}
"""The `example` template of the vanilla cdr_csv.conf.xml and the one built into mod_cdr_csv."""
RECENT_KEYS = 100_000
"""Keys remembered to drop a CDR read twice in one run (Master.csv and <accountcode>.csv)."""
LOGGED_REJECTS = 20


class CsvSource:
    """A mod_cdr_csv directory (or one file)."""

    def __init__(
        self,
        name: str,
        *,
        path: str,
        template: Template,
        settings: Settings,
        pattern: str,
        exclude: list[str],
        broken_quotes: str,
        encoding: str,
        interval: float,
        chunk_cdrs: int,
        start_at: str,
    ) -> None:
        self.name = name
        self.path = os.path.abspath(path)
        self.template = template
        self.settings = settings
        self.pattern = pattern
        self.exclude = exclude
        self.broken_quotes = broken_quotes
        self.encoding = encoding
        self.interval = interval
        self.chunk_cdrs = chunk_cdrs
        self.start_at = start_at
        self.stats = {"records": 0, "cdrs": 0, "rejected": 0, "b_legs": 0, "quote_recovered": 0}
        self._recent: OrderedDict[str, None] = OrderedDict()
        seps = set(template.literals[1:-1])
        self._fast: tuple[str, str, str, int] | None = None
        if len(seps) == 1 and "" not in seps:
            (sep,) = seps
            head, tail = template.literals[0], template.literals[-1]
            self._fast = (head, sep, tail, len(template.names))
        self._followers: set[Follower] = set()

    async def check(self) -> None:
        await asyncio.to_thread(self._check)

    def _check(self) -> None:
        path = self.path
        if os.path.isdir(path):
            if not os.access(path, os.R_OK | os.X_OK):
                raise SourceError(f"{path}: cannot list the directory (permission denied)")
            return
        if os.path.exists(path):
            if not os.access(path, os.R_OK):
                raise SourceError(f"{path}: cannot read the file (permission denied)")
            return
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise SourceError(f"{path}: does not exist, nor does its directory")
        log.warning("file_missing", source=self.name, path=path, note="read once created")

    def _split(self, text: str) -> list[str]:
        """Template.split, with a fast path for templates whose separators are all equal
        (`","`): when the line holds exactly as many separators as the template, there is only
        one way to cut it."""
        fast = self._fast
        if fast is not None:
            head, sep, tail, count = fast
            if text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail):
                inner = text[len(head) : len(text) - len(tail)]
                values = inner.split(sep)
                if len(values) == count:
                    return values
        cut: list[str] = self.template.split(text)
        return cut

    def values(self, data: bytes) -> dict[str, str]:
        """The template's variables from one line; RecordError says why it cannot be cut."""
        try:
            text = data.decode(self.encoding)
        except UnicodeDecodeError as exc:
            bad = data[exc.start : exc.start + 1].hex()
            raise RecordError(
                f"cannot be decoded as {self.encoding} (byte 0x{bad} at position "
                f"{exc.start + 1}); set the `encoding` option"
            ) from None
        if text.startswith("\ufeff"):
            text = text[1:]
        values = self._split(text)
        if any('"' in v for v in values):
            if self.broken_quotes == "reject":
                raise RecordError(
                    "a value contains a '\"' (FreeSWITCH writes values unescaped; "
                    'broken_quotes = "reject")'
                )
            self.stats["quote_recovered"] += 1
            log.warning("quote_in_value", source=self.name, note="read: cut only one way")
        return dict(zip(self.template.names, values, strict=True))

    def map(self, records: list[Record]) -> tuple[list[CDR], list[Rejected]]:
        cdrs: list[CDR] = []
        rejected: list[Rejected] = []
        settings = self.settings
        for record in records:
            where = f"{record.path}:{record.line}"
            if record.error is not None:
                rejected.append(Rejected(where, record.error))
                continue
            try:
                result = to_cdr(self.values(record.data), settings)
            except (RecordError, Invalid) as exc:
                rejected.append(Rejected(where, str(exc)))
                continue
            if isinstance(result, Skipped):
                self.stats["b_legs"] += 1
                continue
            if result.key in self._recent:
                continue
            self._recent[result.key] = None
            if len(self._recent) > RECENT_KEYS:
                self._recent.popitem(last=False)
            cdrs.append(result)
        self.stats["records"] += len(records)
        self.stats["cdrs"] += len(cdrs)
        self.stats["rejected"] += len(rejected)
        for item in rejected[:LOGGED_REJECTS]:
            log.warning("row_rejected", source=self.name, where=item.where, reason=item.reason)
        return cdrs, rejected

    async def read(self, checkpoint: str | None) -> AsyncGenerator[ReadResult, None]:
        # Keys seen by an earlier read() may belong to results the agent never committed:
        # a restart from the checkpoint must read them again.
        self._recent.clear()
        follower = Follower(
            self.path,
            pattern=self.pattern,
            exclude=self.exclude,
            header=False,
            quote=None,  # one line per CDR: the template's quotes are not CSV quoting
            max_record_lines=1,
            start_at=self.start_at,
        )
        try:
            follower.restore(checkpoint)
        except CheckpointError as exc:
            raise SourceError(f"source {self.name}: cannot resume from checkpoint: {exc}") from None
        self._followers.add(follower)
        last = follower.checkpoint()

        def step() -> tuple[list[CDR], list[Rejected], str, bool, bool]:
            # Reading and mapping in a worker thread keep the agent's event loop free.
            records, more = follower.poll(self.chunk_cdrs)
            position = follower.checkpoint()
            cdrs, rejected = self.map(records) if records else ([], [])
            return cdrs, rejected, position, bool(records), more

        try:
            while True:
                cdrs, rejected, position, got, more = await asyncio.to_thread(step)
                if got or position != last:
                    last = position
                    yield ReadResult(cdrs, position, rejected)
                if not more:
                    await asyncio.sleep(self.interval)
        finally:
            follower.close()
            self._followers.discard(follower)

    async def close(self) -> None:
        for follower in list(self._followers):
            follower.close()

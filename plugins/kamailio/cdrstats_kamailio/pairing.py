"""Pairing of `acc` INVITE and BYE rows (and `missed_calls` rows) into CDRs. Pure, no I/O.

Kamailio's acc module writes one row per accounted transaction: the INVITE when it is answered
(200), the BYE when it completes, failed INVITEs (with `failed_transaction_flag` in `acc`, with
`db_missed_flag` in `missed_calls`). One call is the INVITE row plus the BYE row with the same
Call-ID and the same two tags; when the callee hangs up, the BYE's From is the callee, so its
`from_tag`/`to_tag` are the INVITE's swapped (unless `detect_direction` is set).

`AccPairer.feed()` takes rows in id order and returns finished CDRs and rejected rows. The
state that survives a restart (`PairState`: last ids read and the INVITEs still waiting for
their BYE) serializes to the source's checkpoint, so that an INVITE read before a restart and
its BYE read after it still make exactly one CDR.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from cdrstats_agent.model import CDR, Disposition
from cdrstats_agent.plugin import Rejected

from .records import (
    disposition_from_sip,
    extra_columns,
    mapped_fields,
    q850_from_sip,
    sip_code,
    text,
    to_utc,
)

ACC_CORE = frozenset({"id", "method", "from_tag", "to_tag", "callid", "sip_code", "time"})
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint this plugin did not write (or a newer version of it)."""


_CODES = {str(c): c for c in (200, 202, 486, 487, 480, 408, 404, 403, 500, 503, 603)}
"""The frequent sip_code values, parsed once."""


def _clean(value: Any) -> str:
    """A tag or Call-ID column as text without surrounding blanks."""
    if type(value) is str:
        return value.strip() if value[:1].isspace() or value[-1:].isspace() else value
    return text(value).strip()


def natural_key(callid: str, from_tag: str) -> str:
    """The CDR key: Call-ID and the caller's From tag (`;` cannot occur in a Call-ID)."""
    return f"{callid};{from_tag}"


@dataclass(slots=True)
class OpenCall:
    """An answered INVITE waiting for its BYE."""

    callid: str
    from_tag: str
    to_tag: str
    at: float
    """Epoch seconds of the INVITE row (the answer)."""
    acc_id: int
    code: int
    columns: dict[str, str]
    """The INVITE row's other columns (db_extra, sip_reason), as text."""

    def dump(self) -> list[Any]:
        return [
            self.callid,
            self.from_tag,
            self.to_tag,
            self.at,
            self.acc_id,
            self.code,
            self.columns,
        ]

    @classmethod
    def load(cls, item: Any) -> OpenCall:
        callid, from_tag, to_tag, at, acc_id, code, columns = item
        return cls(str(callid), str(from_tag), str(to_tag), float(at), int(acc_id), int(code),
                   {str(k): str(v) for k, v in dict(columns).items()})  # fmt: skip


@dataclass(slots=True)
class PairState:
    """What the checkpoint holds: positions in both tables, clock, and the open INVITEs."""

    acc_id: int = 0
    missed_id: int = 0
    clock: float = 0.0
    """Epoch seconds the stream has reached (newest row time, or now when caught up)."""
    open: dict[tuple[str, str], OpenCall] = field(default_factory=dict)

    def dumps(self) -> str:
        return json.dumps(
            {
                "v": CHECKPOINT_VERSION,
                "acc": self.acc_id,
                "missed": self.missed_id,
                "clock": self.clock,
                "open": [call.dump() for call in self.open.values()],
            },
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, checkpoint: str | None) -> PairState:
        if checkpoint is None:
            return cls()
        try:
            doc = json.loads(checkpoint)
            if doc.get("v") != CHECKPOINT_VERSION:
                raise CheckpointError(f"checkpoint version {doc.get('v')!r} is not supported")
            state = cls(int(doc["acc"]), int(doc["missed"]), float(doc["clock"]))
            for item in doc["open"]:
                call = OpenCall.load(item)
                state.open[(call.callid, call.from_tag)] = call
        except CheckpointError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint is not an acc checkpoint: {exc}") from None
        return state


@dataclass(frozen=True, slots=True)
class PairSettings:
    fields: Mapping[str, str]
    """CDR field -> column (db_extra)."""
    tz: tzinfo
    country_code: str | None
    failed_from: str
    """`missed_calls` (db_missed_flag) or `acc` (failed_transaction_flag)."""
    open_call_timeout_s: float
    acc_table: str = "acc"
    missed_table: str = "missed_calls"


@dataclass(slots=True)
class Fed:
    cdrs: list[CDR] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    ignored: int = 0
    """Rows that are not part of a CDR (re-INVITEs, other methods, failed BYEs...)."""


class AccPairer:
    """Turns acc / missed_calls rows into CDRs, keeping `state` up to date."""

    def __init__(self, settings: PairSettings, state: PairState | None = None) -> None:
        self.settings = settings
        self.state = state or PairState()
        self._epochs: dict[str, float] = {}

    # --- rows in ---------------------------------------------------------------------------

    def feed(
        self,
        acc_rows: Iterable[Mapping[str, Any]],
        missed_rows: Iterable[Mapping[str, Any]] = (),
        now: float | None = None,
    ) -> Fed:
        """Process rows (each table in id order); `now` (epoch) when the reader is caught up.

        Calls open for longer than `open_call_timeout_s` of stream time are closed without a
        BYE. Stream time is the newest row time, or `now` when given: a backlog being read
        after a long stop never times out a call whose BYE is further on in the backlog.
        """
        out = Fed()
        s = self.settings
        for row in acc_rows:
            self.state.acc_id = max(self.state.acc_id, int(row["id"]))
            self._acc_row(row, out)
        for row in missed_rows:
            self.state.missed_id = max(self.state.missed_id, int(row["id"]))
            if s.failed_from != "missed_calls":
                out.ignored += 1
                continue
            where = f"{s.missed_table}:{row['id']}"
            try:
                out.cdrs.append(self._failed_cdr(row, where))
            except ValueError as exc:
                out.rejected.append(Rejected(where, str(exc)))
        if now is not None:
            self.state.clock = max(self.state.clock, now)
        self._expire(out)
        return out

    def _code(self, value: Any) -> int:
        code = _CODES.get(value) if type(value) is str else None
        return code if code is not None else sip_code(value)

    def _epoch(self, value: Any) -> float:
        """Epoch seconds of a time column; text values are cached (rows share seconds)."""
        if type(value) is not str:
            return to_utc(value, self.settings.tz).timestamp()
        at = self._epochs.get(value)
        if at is None:
            if len(self._epochs) > 4096:
                self._epochs.clear()
            at = self._epochs[value] = to_utc(value, self.settings.tz).timestamp()
        return at

    def _acc_row(self, row: Mapping[str, Any], out: Fed) -> None:
        s = self.settings
        method = row.get("method")
        if method != "INVITE" and method != "BYE":  # the usual values need no cleaning
            method = text(method).strip().upper()
        try:
            callid = _clean(row.get("callid"))
            if not callid:
                raise ValueError("callid is empty")
            code = self._code(row.get("sip_code"))
            at = self._epoch(row.get("time"))
        except ValueError as exc:
            out.rejected.append(Rejected(f"{s.acc_table}:{row['id']}", str(exc)))
            return
        if at > self.state.clock:
            self.state.clock = at
        from_tag = _clean(row.get("from_tag"))
        to_tag = _clean(row.get("to_tag"))
        if method == "INVITE":
            if code >= 300:
                if s.failed_from == "acc":
                    where = f"{s.acc_table}:{row['id']}"
                    try:
                        out.cdrs.append(self._failed_cdr(row, where))
                    except ValueError as exc:
                        out.rejected.append(Rejected(where, str(exc)))
                else:
                    out.ignored += 1
                return
            if code < 200:
                out.ignored += 1  # early media (early_media=1): not a call event
                return
            if not from_tag:
                out.rejected.append(
                    Rejected(f"{s.acc_table}:{row['id']}", "INVITE without from_tag")
                )
                return
            if self._find(callid, from_tag, to_tag) is not None:
                out.ignored += 1  # a re-INVITE of an open call
                return
            columns = extra_columns(row, ACC_CORE)
            self.state.open[(callid, from_tag)] = OpenCall(
                callid, from_tag, to_tag, at, int(row["id"]), code, columns
            )
            return
        if method == "BYE":
            if code >= 300:
                out.ignored += 1  # the BYE failed; the call stays open until one succeeds
                return
            found = self._find(callid, from_tag, to_tag)
            if found is None:
                out.rejected.append(
                    Rejected(
                        f"{s.acc_table}:{row['id']}",
                        f"BYE of Call-ID {callid!r} matches no open INVITE (the INVITE was not"
                        " accounted, or the call was closed by open_call_timeout_s)",
                    )
                )
                return
            call, by = found
            del self.state.open[(call.callid, call.from_tag)]
            out.cdrs.append(self._answered_cdr(call, at, by, int(row["id"])))
            return
        out.ignored += 1

    def _find(self, callid: str, from_tag: str, to_tag: str) -> tuple[OpenCall, str] | None:
        """The open call a request with these tags belongs to, and who sent it."""
        call = self.state.open.get((callid, from_tag))
        if call is not None:
            return call, "caller"
        call = self.state.open.get((callid, to_tag)) if to_tag else None
        if call is not None and call.to_tag == from_tag:
            return call, "callee"  # tags swapped: the callee sent it
        return None

    def _expire(self, out: Fed) -> None:
        limit = self.state.clock - self.settings.open_call_timeout_s
        expired = [c for c in self.state.open.values() if c.at < limit]
        for call in expired:
            del self.state.open[(call.callid, call.from_tag)]
            out.cdrs.append(self._answered_cdr(call, None, "timeout", None))

    # --- CDRs out --------------------------------------------------------------------------

    def _answered_cdr(
        self, call: OpenCall, end_at: float | None, by: str, bye_id: int | None
    ) -> CDR:
        s = self.settings
        answer = datetime.fromtimestamp(call.at, UTC)
        end = None if end_at is None else datetime.fromtimestamp(end_at, UTC)
        seconds = 0 if end is None else max(0, round((end - answer).total_seconds()))
        extra: dict[str, Any] = dict(call.columns)
        extra.update({"to_tag": call.to_tag, "acc_id": call.acc_id, "hangup_by": by})
        if bye_id is not None:
            extra["bye_id"] = bye_id
        if end is None:
            extra["closed_after_s"] = s.open_call_timeout_s
        return CDR(
            key=natural_key(call.callid, call.from_tag),
            start=answer,
            answer=answer,
            end=end,
            duration=seconds,
            billsec=seconds,
            disposition=Disposition.ANSWERED,
            sip_code=call.code,
            hangup_cause=16,
            call_group=call.callid,
            extra=extra,
            **mapped_fields(call.columns, s.fields, s.country_code),
        )

    def _failed_cdr(self, row: Mapping[str, Any], where: str) -> CDR:
        s = self.settings
        callid = text(row.get("callid")).strip()
        from_tag = text(row.get("from_tag")).strip()
        if not callid or not from_tag:
            raise ValueError("callid or from_tag is empty")
        code = sip_code(row.get("sip_code"))
        if code < 300:
            raise ValueError(f"sip_code {code} is not a failure")
        at = to_utc(row.get("time"), s.tz)
        extra: dict[str, Any] = extra_columns(row, ACC_CORE)
        extra.update({"to_tag": text(row.get("to_tag")), "row": where})
        return CDR(
            key=natural_key(callid, from_tag),
            start=at,
            end=at,
            duration=0,
            billsec=0,
            disposition=disposition_from_sip(code),
            sip_code=code,
            hangup_cause=q850_from_sip(code),
            call_group=callid,
            extra=extra,
            **mapped_fields(row, s.fields, s.country_code),
        )

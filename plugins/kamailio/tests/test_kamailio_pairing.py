"""acc / missed_calls pairing as pure functions: rows in, CDRs out, checkpoints in between."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cdrstats_agent.model import Disposition
from cdrstats_kamailio.pairing import (
    AccPairer,
    CheckpointError,
    PairSettings,
    PairState,
    natural_key,
)

T0 = datetime(2026, 11, 20, 10, 0, 0)  # naive, as DATETIME columns come back
PARIS = ZoneInfo("Europe/Paris")


def settings(**kw: Any) -> PairSettings:
    base: dict[str, Any] = {
        "fields": {"caller": "src_user", "callee": "dst_ouser", "src_ip": "src_ip"},
        "tz": UTC,
        "country_code": None,
        "failed_from": "missed_calls",
        "open_call_timeout_s": 3600.0,
    }
    base.update(kw)
    return PairSettings(**base)


class Rows:
    """acc / missed_calls rows as Kamailio writes them (ids in order)."""

    def __init__(self) -> None:
        self.acc: list[dict[str, Any]] = []
        self.missed: list[dict[str, Any]] = []

    def _row(self, table: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        row = {
            "id": len(table) + 1,
            "method": "INVITE",
            "from_tag": "",
            "to_tag": "",
            "callid": "",
            "sip_code": "200",
            "sip_reason": "OK",
            "time": T0,
            "src_user": "1001",
            "src_ip": "192.0.2.10",
            "dst_ouser": "2002",
        }
        row.update(kw)
        table.append(row)
        return row

    def call(self, n: int, at: int, seconds: int, by: str = "caller") -> None:
        """An answered call at T0+at seconds lasting `seconds`, hung up by `by`."""
        cid, ft, tt = f"call-{n}@host", f"ft{n}", f"tt{n}"
        self._row(self.acc, callid=cid, from_tag=ft, to_tag=tt,
                  time=T0 + timedelta(seconds=at), dst_ouser=f"20{n:02d}")  # fmt: skip
        self.bye(n, at + seconds, by)

    def invite(self, n: int, at: int) -> None:
        self._row(self.acc, callid=f"call-{n}@host", from_tag=f"ft{n}", to_tag=f"tt{n}",
                  time=T0 + timedelta(seconds=at), dst_ouser=f"20{n:02d}")  # fmt: skip

    def bye(self, n: int, at: int, by: str = "caller") -> None:
        ft, tt = (f"ft{n}", f"tt{n}") if by == "caller" else (f"tt{n}", f"ft{n}")
        self._row(self.acc, method="BYE", callid=f"call-{n}@host", from_tag=ft, to_tag=tt,
                  time=T0 + timedelta(seconds=at), src_user="x", dst_ouser="y")  # fmt: skip

    def failed(self, n: int, at: int, code: str, table: str = "missed") -> None:
        target = self.missed if table == "missed" else self.acc
        self._row(target, callid=f"fail-{n}@host", from_tag=f"ff{n}", to_tag=f"ft{n}",
                  sip_code=code, sip_reason="x", time=T0 + timedelta(seconds=at))  # fmt: skip


def test_caller_and_callee_hangups_pair_into_one_cdr_each() -> None:
    rows = Rows()
    rows.invite(1, 0)
    rows.invite(2, 1)
    rows.bye(2, 31, by="callee")  # tags swapped
    rows.bye(1, 65, by="caller")
    fed = AccPairer(settings()).feed(rows.acc)
    assert fed.rejected == [] and fed.ignored == 0
    by_key = {c.key: c for c in fed.cdrs}
    assert set(by_key) == {natural_key("call-1@host", "ft1"), natural_key("call-2@host", "ft2")}
    one = by_key["call-1@host;ft1"]
    assert one.disposition == Disposition.ANSWERED and one.sip_code == 200
    assert (one.duration, one.billsec) == (65, 65)
    assert one.start == one.answer == T0.replace(tzinfo=UTC)
    assert one.end == (T0 + timedelta(seconds=65)).replace(tzinfo=UTC)
    assert (one.caller, one.callee, one.src_ip) == ("1001", "2001", "192.0.2.10")
    assert one.extra["hangup_by"] == "caller" and one.hangup_cause == 16
    two = by_key["call-2@host;ft2"]
    assert two.duration == 30 and two.extra["hangup_by"] == "callee"
    assert two.callee == "2002", "numbers come from the INVITE row, not the callee's BYE"


def test_failed_calls_from_missed_calls_by_code() -> None:
    rows = Rows()
    for n, code in enumerate(("486", "487", "480", "503", "404", "600"), 1):
        rows.failed(n, n, code)
    fed = AccPairer(settings()).feed([], rows.missed)
    got = {c.sip_code: (c.disposition, c.duration, c.hangup_cause) for c in fed.cdrs}
    assert got == {
        486: (Disposition.BUSY, 0, 17),
        487: (Disposition.CANCELLED, 0, 487),
        480: (Disposition.NO_ANSWER, 0, 18),
        503: (Disposition.FAILED, 0, 41),
        404: (Disposition.FAILED, 0, 1),
        600: (Disposition.BUSY, 0, 17),
    }
    assert all(c.answer is None and c.end == c.start for c in fed.cdrs)


def test_failed_from_chooses_one_table_so_a_failure_is_counted_once() -> None:
    rows = Rows()
    rows.failed(1, 0, "486", table="acc")  # failed_transaction_flag row
    rows.failed(1, 0, "486", table="missed")  # db_missed_flag row of the same call
    from_missed = AccPairer(settings()).feed(rows.acc, rows.missed)
    from_acc = AccPairer(settings(failed_from="acc")).feed(rows.acc, rows.missed)
    assert (
        [c.key for c in from_missed.cdrs] == [c.key for c in from_acc.cdrs] == ["fail-1@host;ff1"]
    )
    assert from_missed.ignored == from_acc.ignored == 1


def test_reinvite_is_not_a_new_call_and_failed_bye_keeps_it_open() -> None:
    rows = Rows()
    rows.invite(1, 0)
    rows.invite(1, 10)  # re-INVITE (same dialog)
    rows._row(rows.acc, method="BYE", callid="call-1@host", from_tag="ft1", to_tag="tt1",
              sip_code="481", time=T0 + timedelta(seconds=15))  # fmt: skip
    rows._row(rows.acc, method="OPTIONS", callid="o@host", from_tag="a", sip_code="200")
    rows.bye(1, 20)
    fed = AccPairer(settings()).feed(rows.acc)
    assert [(c.key, c.duration) for c in fed.cdrs] == [("call-1@host;ft1", 20)]
    assert fed.ignored == 3


def test_bad_rows_are_rejected_with_where_and_why_and_do_not_stop_the_rest() -> None:
    rows = Rows()
    rows._row(rows.acc, callid="", from_tag="x")
    rows._row(rows.acc, callid="c@h", from_tag="x", sip_code="2x0")
    rows._row(rows.acc, callid="d@h", from_tag="x", time="yesterday")
    rows.bye(9, 5)  # BYE with no INVITE
    rows.call(1, 0, 3)
    fed = AccPairer(settings()).feed(rows.acc)
    assert [c.key for c in fed.cdrs] == ["call-1@host;ft1"]
    reasons = {r.where: r.reason for r in fed.rejected}
    assert reasons["acc:1"] == "callid is empty"
    assert "sip_code '2x0'" in reasons["acc:2"]
    assert "'yesterday' is not a date" in reasons["acc:3"]
    assert "matches no open INVITE" in reasons["acc:4"]


def test_a_call_whose_bye_never_comes_is_closed_after_the_timeout() -> None:
    rows = Rows()
    rows.invite(1, 0)
    pairer = AccPairer(settings(open_call_timeout_s=600))
    assert pairer.feed(rows.acc).cdrs == []
    start = T0.replace(tzinfo=UTC).timestamp()
    assert pairer.feed([], now=start + 599).cdrs == []
    closed = pairer.feed([], now=start + 601).cdrs
    assert [(c.key, c.end, c.extra["hangup_by"]) for c in closed] == [
        ("call-1@host;ft1", None, "timeout")
    ]
    rows.bye(1, 700)  # too late: reported, not a second CDR
    late = pairer.feed(rows.acc[1:])
    assert late.cdrs == [] and "no open INVITE" in late.rejected[0].reason


def test_a_backlog_does_not_time_out_calls_whose_bye_is_further_on() -> None:
    rows = Rows()
    rows.invite(1, 0)
    rows.bye(1, 500)
    pairer = AccPairer(settings(open_call_timeout_s=600))
    assert pairer.feed(rows.acc[:1]).cdrs == []  # not caught up: no `now`
    assert [c.duration for c in pairer.feed(rows.acc[1:]).cdrs] == [500]


def test_local_time_columns_use_the_configured_zone() -> None:
    rows = Rows()
    rows.call(1, 0, 10)
    cdr = AccPairer(settings(tz=PARIS)).feed(rows.acc).cdrs[0]
    assert cdr.start == T0.replace(tzinfo=PARIS).astimezone(UTC)
    assert cdr.start.hour == 9


def test_restart_at_every_row_loses_and_doubles_nothing() -> None:
    """Cut the stream at every row, restart from the checkpoint: same CDRs, each exactly once."""
    rows = Rows()
    rows.invite(1, 0)
    rows.invite(2, 1)
    rows.failed(3, 2, "486", table="acc")
    rows.bye(1, 5, by="callee")
    rows.invite(4, 6)
    rows.bye(2, 8)
    rows.bye(4, 9, by="callee")
    rows.call(5, 10, 2)
    whole = AccPairer(settings(failed_from="acc")).feed(rows.acc).cdrs
    assert len(whole) == 5
    for cut in range(len(rows.acc) + 1):
        first = AccPairer(settings(failed_from="acc"))
        got = first.feed(rows.acc[:cut]).cdrs
        checkpoint = first.state.dumps()
        resumed = AccPairer(settings(failed_from="acc"), PairState.loads(checkpoint))
        got += resumed.feed([r for r in rows.acc if r["id"] > resumed.state.acc_id]).cdrs
        assert sorted(c.key for c in got) == sorted(c.key for c in whole), f"cut at {cut}"
        assert [c.duration for c in sorted(got, key=lambda c: c.key)] == [
            c.duration for c in sorted(whole, key=lambda c: c.key)
        ]


@pytest.mark.parametrize(
    "checkpoint",
    ['{"v": 2, "acc": 1}', "not json", '{"v": 1, "acc": "x", "missed": 0}', "[]"],
)
def test_foreign_checkpoints_are_refused(checkpoint: str) -> None:
    with pytest.raises(CheckpointError):
        PairState.loads(checkpoint)

"""Channel variables -> CDR: the normalization every FreeSWITCH store shares."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from cdrstats_agent.model import CDR, Direction, Disposition
from cdrstats_freeswitch.variables import Invalid, Settings, Skipped, a_leg_of, to_cdr
from freeswitch_testkit import PARIS, call_variables

SETTINGS = Settings(timezone=PARIS, country_code="33")


def cdr_of(variables: dict[str, str], settings: Settings = SETTINGS) -> CDR:
    result = to_cdr(variables, settings)
    assert isinstance(result, CDR)
    return result


def test_answered_call_fields() -> None:
    v = call_variables(0)
    cdr = cdr_of(v)
    assert cdr.key == v["uuid"] == cdr.call_group
    # 10:00 Paris in March (CET) is 09:00 UTC
    assert cdr.start == datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)
    assert cdr.answer == datetime(2026, 3, 1, 9, 0, 3, tzinfo=UTC)
    assert cdr.end == datetime(2026, 3, 1, 9, 0, 33, tzinfo=UTC)
    assert (cdr.duration, cdr.billsec, cdr.ring_time) == (33, 30, 3)
    assert cdr.disposition is Disposition.ANSWERED and cdr.hangup_cause == 16
    assert (cdr.caller, cdr.caller_name, cdr.callee) == ("1000", "Caller 0", "0145000000")
    assert cdr.callee_e164 == "+33145000000" and cdr.caller_e164 is None
    assert (cdr.read_codec, cdr.write_codec, cdr.accountcode) == ("PCMA", "PCMA", "acct0")
    assert cdr.extra["bleg_uuid"] == v["bleg_uuid"] and cdr.extra["context"] == "default"
    assert cdr.extra["hangup_cause"] == "NORMAL_CLEARING"
    assert "uuid" not in cdr.extra and "start_epoch" not in cdr.extra


def test_epoch_fields_win_over_local_stamps() -> None:
    v = call_variables(1)
    v["start_stamp"] = "1999-01-01 00:00:00"  # would be wrong; the epoch is preferred
    cdr = cdr_of(v)
    assert cdr.start == datetime.fromtimestamp(int(v["start_epoch"]), UTC)
    v["start_uepoch"] = str(int(v["start_epoch"]) * 1_000_000 + 250_000)
    assert cdr_of(v).start.microsecond == 250_000


def test_local_stamps_use_the_switch_timezone() -> None:
    v = call_variables(2)
    for name in ("start_epoch", "answer_epoch", "end_epoch"):
        del v[name]
    paris = cdr_of(v)
    tokyo = cdr_of(v, Settings(timezone=ZoneInfo("Asia/Tokyo")))
    assert (paris.start - tokyo.start).total_seconds() == 8 * 3600


def test_unanswered_call() -> None:
    v = call_variables(3, answered=False)
    cdr = cdr_of(v)
    assert cdr.answer is None and cdr.billsec == 0
    assert cdr.disposition is Disposition.NO_ANSWER and cdr.hangup_cause == 19
    assert cdr.ring_time == cdr.duration


@pytest.mark.parametrize(
    ("changes", "disposition", "cause", "sip"),
    [
        ({"hangup_cause": "USER_BUSY", "hangup_cause_q850": ""}, Disposition.BUSY, 17, None),
        ({"hangup_cause": "ORIGINATOR_CANCEL", "hangup_cause_q850": ""}, "CANCELLED", 487, None),
        ({"hangup_cause_q850": "", "sip_term_status": "486"}, Disposition.BUSY, 19, 486),
        ({"proto_specific_hangup_cause": "sip:487"}, Disposition.CANCELLED, 19, 487),
        ({"sip_hangup_disposition": "recv_cancel"}, Disposition.CANCELLED, 19, None),
        ({"hangup_cause": "BOGUS_CAUSE", "hangup_cause_q850": ""}, Disposition.FAILED, None, None),
    ],
)
def test_causes_and_sip_dispositions(
    changes: dict[str, str], disposition: str, cause: int | None, sip: int | None
) -> None:
    v = {**call_variables(4, answered=False), **changes}
    cdr = cdr_of(v)
    assert (cdr.disposition, cdr.hangup_cause, cdr.sip_code) == (disposition, cause, sip)


def test_network_fields() -> None:
    v = {
        **call_variables(5),
        "sip_received_ip": "192.0.2.7",
        "network_addr": "10.0.0.1",
        "sip_user_agent": "Yealink SIP-T46S",
        "sip_gateway_name": "carrier-a",
        "direction": "inbound",
        "sip_hangup_disposition": "send_bye",
    }
    cdr = cdr_of(v)
    assert (cdr.src_ip, cdr.user_agent, cdr.trunk) == ("192.0.2.7", "Yealink SIP-T46S", "carrier-a")
    assert cdr.direction is Direction.OUTBOUND  # a gateway was used
    assert cdr.extra["sip_hangup_disposition"] == "send_bye"
    del v["sip_gateway_name"], v["sip_received_ip"]
    cdr = cdr_of(v)
    assert cdr.direction is Direction.INBOUND and cdr.src_ip == "10.0.0.1"
    v["network_addr"] = "not-an-ip"
    assert cdr_of(v).src_ip is None
    # An A leg bridged to a gateway (legs = "a": the B leg's CDR is not written)
    v["bridge_channel"] = "sofia/gateway/carrier-b/0145000000"
    cdr = cdr_of(v)
    assert (cdr.trunk, cdr.direction) == ("carrier-b", Direction.OUTBOUND)
    v["bridge_channel"] = "sofia/internal/1002@10.0.0.2"
    assert cdr_of(v).trunk is None


def test_b_legs_skipped_or_kept() -> None:
    a = call_variables(6)
    b = {**call_variables(7), "call_uuid": a["uuid"]}
    assert a_leg_of(a) is None and a_leg_of(b) == a["uuid"]
    assert to_cdr(b, SETTINGS) == Skipped(a["uuid"])
    kept = cdr_of(b, Settings(timezone=PARIS, legs="ab"))
    assert kept.key == b["uuid"] and kept.call_group == a["uuid"]
    same = {**a, "call_uuid": a["uuid"]}
    assert isinstance(to_cdr(same, SETTINGS), CDR)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"uuid": ""}, "uuid: missing"),
        ({"start_epoch": "soon"}, "start_epoch: not an epoch number"),
        (
            {"start_epoch": "", "start_stamp": "01/03/2026", "answer_epoch": "", "end_epoch": ""},
            "start_stamp: not a time",
        ),
        ({"duration": "-5"}, "duration: out of range"),
        ({"billsec": "lots"}, "billsec: not a number"),
        (
            {"start_epoch": "", "start_stamp": "", "answer_epoch": "0", "end_epoch": "0"},
            "no start time",
        ),
        ({"end_epoch": "1000000000"}, "end time"),
    ],
)
def test_invalid_variables_name_the_problem(changes: dict[str, str], message: str) -> None:
    v = {**call_variables(8), **changes}
    with pytest.raises(Invalid, match=message):
        to_cdr(v, SETTINGS)


def test_stamps_in_dst_changes_follow_the_csv_rules() -> None:
    """A stamp the clock skipped is read with the offset before the jump; one it passed twice
    is the instant that agrees with the duration (cdrstats_csv.stamps)."""
    v = {
        **call_variables(9),
        "start_stamp": "2026-03-29 02:30:00",
        "answer_stamp": "",
        "end_stamp": "2026-03-29 03:31:00",
        "duration": "60",
        "billsec": "0",
    }
    for name in ("start_epoch", "answer_epoch", "end_epoch"):
        del v[name]
    cdr = cdr_of(v)
    assert cdr.start == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert cdr.end == datetime(2026, 3, 29, 1, 31, tzinfo=UTC)
    v.update(start_stamp="2026-10-25 02:59:00", end_stamp="2026-10-25 02:01:00", duration="120")
    cdr = cdr_of(v)
    assert cdr.start == datetime(2026, 10, 25, 0, 59, tzinfo=UTC)  # first 02:59 (+02:00)
    assert cdr.end == datetime(2026, 10, 25, 1, 1, tzinfo=UTC)  # second 02:01 (+01:00)


@pytest.mark.parametrize(
    ("name", "code"),
    [("GATEWAY_DOWN", 609), ("NO_PICKUP", 612), ("MANAGER_REQUEST", 503), ("LOSE_RACE", 502)],
)
def test_freeswitch_own_cause_names(name: str, code: int) -> None:
    """switch_call_cause_t values beyond Q.850 keep FreeSWITCH's numbers."""
    v = {**call_variables(10, answered=False), "hangup_cause": name, "hangup_cause_q850": ""}
    cdr = cdr_of(v)
    assert cdr.hangup_cause == code and cdr.disposition is Disposition.FAILED


def test_digits_fast_path_agrees_with_to_e164() -> None:
    import itertools

    from cdrstats_agent.normalize import to_e164
    from cdrstats_freeswitch.variables import e164_of_digits

    numbers = ["", "0", "00", "1000", "0145000000", "0033145000000", "33145000000"]
    numbers += ["011442012345678", "00" + "9" * 16, "000123456789", "0612345", "06123456"]
    numbers += ["".join(p) for p in itertools.product("01", repeat=9)]
    for number, cc, ip, np in itertools.product(
        numbers, (None, "33", "1"), ("00", "011", ""), ("0", "1", "")
    ):
        if number.isdigit():
            expected = to_e164(number, cc, international_prefix=ip, national_prefix=np)
            assert e164_of_digits(number, cc, ip, np) == expected, (number, cc, ip, np)

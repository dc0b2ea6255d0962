"""Realistic synthetic calls for the demo and the benchmarks.

Calls look like a small operator's traffic: local callers dialling national and international
destinations through a few trunks, with the usual mix of answered, unanswered, busy, failed and
cancelled calls, and Q.850 causes and ring times consistent with each outcome. The generator is
seeded, so a run is reproducible.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from .model import CDR, Direction, Disposition

# (country calling code, national significant number lengths, share of traffic)
DESTINATIONS: tuple[tuple[str, str, int, float], ...] = (
    ("FR", "33", 9, 0.30),
    ("GB", "44", 10, 0.15),
    ("US", "1", 10, 0.15),
    ("DE", "49", 10, 0.10),
    ("ES", "34", 9, 0.08),
    ("IN", "91", 10, 0.07),
    ("BR", "55", 11, 0.05),
    ("NG", "234", 10, 0.04),
    ("MA", "212", 9, 0.03),
    ("CU", "53", 8, 0.03),
)

# disposition, share, Q.850 cause
OUTCOMES: tuple[tuple[Disposition, float, int], ...] = (
    (Disposition.ANSWERED, 0.56, 16),
    (Disposition.NO_ANSWER, 0.18, 19),
    (Disposition.BUSY, 0.10, 17),
    (Disposition.FAILED, 0.10, 34),
    (Disposition.CANCELLED, 0.06, 487),
)

_ASTERISK_DISPOSITION = {
    Disposition.ANSWERED: "ANSWERED",
    Disposition.NO_ANSWER: "NO ANSWER",
    Disposition.BUSY: "BUSY",
    Disposition.FAILED: "FAILED",
    Disposition.CANCELLED: "CANCEL",
}


@dataclass(frozen=True, slots=True)
class SwitchProfile:
    name: str
    country_code: str
    trunks: tuple[str, ...]
    accountcodes: tuple[str, ...]
    src_net: str  # first three octets of the callers' addresses


DEMO_SWITCHES: tuple[SwitchProfile, ...] = (
    SwitchProfile("pbx-paris", "33", ("orange-fr", "colt-fr"), ("acme", "globex"), "10.1.1"),
    SwitchProfile("pbx-london", "44", ("bt-uk", "gamma-uk"), ("initech", "acme"), "10.2.1"),
    SwitchProfile("sbc-newyork", "1", ("lumen-us", "bandwidth-us"), ("umbrella",), "10.3.1"),
)


class CallGenerator:
    """Yields CDRs for one switch, each ending at or before the time asked for."""

    def __init__(self, switch: SwitchProfile, seed: int = 1) -> None:
        self.switch = switch
        self._rng = random.Random(f"{switch.name}:{seed}")
        self._serial = 0
        self._weights = [d[3] for d in DESTINATIONS]
        self._outcome_weights = [o[1] for o in OUTCOMES]

    def _digits(self, n: int) -> str:
        return "".join(self._rng.choice("0123456789") for _ in range(n))

    def call(self, end: datetime) -> CDR:
        rng = self._rng
        self._serial += 1
        country, cc, nsn, _ = rng.choices(DESTINATIONS, self._weights)[0]
        disposition, _, cause = rng.choices(OUTCOMES, self._outcome_weights)[0]
        national = str(rng.randint(1, 9)) + self._digits(nsn - 1)
        if cc == self.switch.country_code:
            dialled = ("" if cc == "1" else "0") + national
        else:
            dialled = ("011" if self.switch.country_code == "1" else "00") + cc + national
        ring = rng.randint(2, 25) if disposition is not Disposition.FAILED else rng.randint(0, 3)
        billsec = int(rng.expovariate(1 / 150)) + 1 if disposition is Disposition.ANSWERED else 0
        duration = ring + billsec
        start = end - timedelta(seconds=duration, microseconds=rng.randint(0, 999_999))
        answer = start + timedelta(seconds=ring) if billsec else None
        trunk = rng.choice(self.switch.trunks)
        ext = str(rng.randint(200, 299))
        uniqueid = f"{int(start.timestamp())}.{self._serial}"
        return CDR(
            key=f"{uniqueid}:0",
            start=start,
            answer=answer,
            end=start + timedelta(seconds=duration),
            duration=duration,
            billsec=billsec,
            disposition=disposition,
            direction=Direction.OUTBOUND,
            caller=ext,
            caller_name=f"Extension {ext}",
            callee=dialled,
            caller_e164=None,
            callee_e164=f"+{cc}{national}",
            accountcode=rng.choice(self.switch.accountcodes),
            hangup_cause=cause,
            sip_code={16: 200, 19: 480, 17: 486, 34: 503, 487: 487}[cause],
            ring_time=ring,
            src_ip=f"{self.switch.src_net}.{rng.randint(2, 250)}",
            read_codec=rng.choice(("PCMA", "PCMU", "G722", "opus")),
            write_codec=None,
            trunk=trunk,
            user_agent=None,
            call_group=uniqueid,
            extra={"country": country},
        )

    def calls_between(self, start: datetime, end: datetime, per_hour: float) -> Iterator[CDR]:
        """Calls ending between start and end, at an average rate, busier in office hours."""
        t = start
        while True:
            hour = t.hour
            busy = 1.6 if 8 <= hour < 19 else 0.35
            t += timedelta(seconds=self._rng.expovariate(per_hour * busy / 3600))
            if t >= end:
                return
            yield self.call(t)


def asterisk_csv_row(cdr: CDR, tz: ZoneInfo, switch: SwitchProfile) -> list[str]:
    """The 21 cdr_csv columns Asterisk writes for this call (local time of the switch)."""

    def stamp(value: datetime | None) -> str:
        return "" if value is None else value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")

    uniqueid = cdr.key.rsplit(":", 1)[0]
    channel = f"PJSIP/{cdr.caller}-{zlib.crc32(uniqueid.encode()):08x}"
    dstchannel = f"PJSIP/{cdr.trunk}-{zlib.crc32(uniqueid.encode() + b'b'):08x}"
    return [
        cdr.accountcode,
        cdr.caller,
        cdr.callee,
        "from-internal",
        f'"{cdr.caller_name}" <{cdr.caller}>',
        channel,
        dstchannel,
        "Dial",
        f"PJSIP/{cdr.callee}@{cdr.trunk},60",
        stamp(cdr.start),
        stamp(cdr.answer),
        stamp(cdr.end),
        str(cdr.duration),
        str(cdr.billsec),
        _ASTERISK_DISPOSITION[cdr.disposition],
        "DOCUMENTATION",
        uniqueid,
        "",
        "",
        uniqueid,
        "0",
    ]


_UNQUOTED = {12, 13}  # duration and billsec are written bare by cdr_csv
_DATES = {9, 10, 11}


def asterisk_csv_line(row: list[str]) -> str:
    """One Master.csv line as cdr_csv writes it: strings quoted, numbers and unset dates bare."""
    out = []
    for i, value in enumerate(row):
        if i in _UNQUOTED or (i in _DATES and not value):
            out.append(value)
        else:
            out.append('"' + value.replace('"', '""') + '"')
    return ",".join(out) + "\n"

"""Destination classification: callee number → (country, kind, dial prefix), cached.

For every stored CDR the collector decides, once at ingest, where the call went:

1. the callee's E.164 form: `callee_e164` when the agent sent one, else the callee number
   read with the switch's numbering plan (`NumberingPlan`: the switch's country, its
   international and national prefixes; `cdrstats switch set`);
2. the longest matching row of the `dial_prefix` table (`cdrstats prefix import`), which gives
   `dest_prefix` and, when set, the country and kind;
3. otherwise (or for what the row leaves empty) the `phonenumbers` library: the region of the
   number (or the main region of its country calling code when the number is not valid) and
   its type (mobile, fixed, toll free...).

Parsing with phonenumbers costs tens of µs, so what it says is cached by the country
calling code, the next `NATIONAL_DIGITS` digits and the number's length: numbers sharing
those share one answer, computed for the number made of those digits followed by fives (or
zeros when fives give no known type; the type of a number is decided by its leading digits
in practically every numbering plan). The result depends only on that key, never on which
number came first. The prefix table is a dict looked up once per distinct prefix length.
Numbers with no E.164 form (extensions, service codes) have no destination.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import phonenumbers
import psycopg
from cdrstats_agent.normalize import to_e164
from phonenumbers import PhoneMetadata, PhoneNumberType
from phonenumbers.phonenumberutil import _number_type_helper

KINDS: tuple[str, ...] = (
    "fixed",
    "mobile",
    "fixed_or_mobile",
    "toll_free",
    "premium",
    "shared_cost",
    "voip",
    "personal",
    "pager",
    "uan",
    "voicemail",
    "special",
    "unknown",
)
"""Values of `dest_kind` (and of `dial_prefix.kind`)."""

_KIND_OF_TYPE: dict[int, str] = {
    PhoneNumberType.FIXED_LINE: "fixed",
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_or_mobile",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium",
    PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.PERSONAL_NUMBER: "personal",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "uan",
    PhoneNumberType.VOICEMAIL: "voicemail",
}

NATIONAL_DIGITS = 3
CACHE_LIMIT = 100_000
_CALLING_CODES = frozenset(str(cc) for cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def _calling_code_length(lead: str) -> int:
    return next((n for n in (1, 2, 3) if lead[:n] in _CALLING_CODES), 3)


# first three digits → length of the calling code (calling codes are a prefix code)
_CC_LENGTH = {f"{i:03d}": _calling_code_length(f"{i:03d}") for i in range(1000)}

Destination = tuple[str | None, str | None, str | None]
"""(dest_country, dest_kind, dest_prefix)."""
NO_DESTINATION: Destination = (None, None, None)


class PlanError(ValueError):
    """A numbering plan or dial prefix that cannot be used; the text names the field."""


@dataclass(frozen=True, slots=True)
class NumberingPlan:
    """How one switch writes numbers: its country and dial prefixes."""

    country: str | None = None
    international_prefix: str = "00"
    national_prefix: str = "0"

    def __post_init__(self) -> None:
        if self.country is not None and self.country not in _REGIONS:
            raise PlanError(
                f"country {self.country!r} is not an ISO 3166 alpha-2 code phonenumbers knows"
                " (e.g. FR, GB, US)"
            )
        for name in ("international_prefix", "national_prefix"):
            value = getattr(self, name)
            if not (value == "" or (value.isdigit() and value.isascii() and len(value) <= 6)):
                raise PlanError(f"{name} must be up to 6 digits or empty, got {value!r}")

    @property
    def calling_code(self) -> str | None:
        if self.country is None:
            return None
        return str(phonenumbers.country_code_for_region(self.country))

    def e164(self, number: str) -> str | None:
        """The E.164 form of a number as the switch wrote it, or None."""
        return to_e164(
            number,
            self.calling_code,
            international_prefix=self.international_prefix,
            national_prefix=self.national_prefix,
        )


_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)


@dataclass(frozen=True, slots=True)
class DialPrefix:
    """One row of `dial_prefix`."""

    prefix: str
    name: str
    country: str | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        p = self.prefix
        if not (p.isascii() and p.isdigit() and 1 <= len(p) <= 15 and p[0] != "0"):
            raise PlanError(
                f"prefix {p!r} must be 1 to 15 digits of an E.164 number, country code first,"
                " without '+' (e.g. 336)"
            )
        if not self.name.strip():
            raise PlanError(f"prefix {p}: name must not be empty")
        if self.country is not None and self.country not in _REGIONS:
            raise PlanError(f"prefix {p}: country {self.country!r} is not an ISO alpha-2 code")
        if self.kind is not None and self.kind not in KINDS:
            raise PlanError(f"prefix {p}: kind {self.kind!r} is not one of {', '.join(KINDS)}")


class Classifier:
    """E.164 number → destination, with the prefix table built once and a bounded cache."""

    def __init__(self, prefixes: Iterable[DialPrefix] = ()) -> None:
        self.prefixes: dict[str, DialPrefix] = {p.prefix: p for p in prefixes}
        self._lengths = sorted({len(p) for p in self.prefixes}, reverse=True)
        self._library: dict[tuple[str, int], Destination] = {}

    def destination(self, e164: str | None) -> Destination:
        """(country, kind, prefix) of an E.164 number ("+" and digits); all None for None."""
        if e164 is None or len(e164) < 2:
            return NO_DESTINATION
        row = self._longest_match(e164[1:]) if self._lengths else None
        if row is not None and row.country is not None and row.kind is not None:
            return (row.country, row.kind, row.prefix)
        key = (e164[: 1 + _CC_LENGTH.get(e164[1:4], 3) + NATIONAL_DIGITS], len(e164))
        found = self._library.get(key)
        if found is None:
            if len(self._library) >= CACHE_LIMIT:
                self._library.clear()
            country, kind = _library_destination(key[0][1:], key[1] - 1)
            found = self._library[key] = (country, kind, None)
        if row is None:
            return found
        return (row.country or found[0], row.kind or found[1], row.prefix)

    def _longest_match(self, digits: str) -> DialPrefix | None:
        for n in self._lengths:
            if n <= len(digits):
                row = self.prefixes.get(digits[:n])
                if row is not None:
                    return row
        return None


def _library_destination(lead: str, length: int) -> tuple[str | None, str]:
    """Country and kind from phonenumbers, for `lead` padded to `length` digits.

    The padding is the first of `_PADS` that gives a number of a known type (zeros are not
    always allowed: a North American exchange cannot start with 0), else the last one tried.
    On example numbers of every region and type, 90% come out as an exact parse says.
    The number is built directly (parsing text costs more than the classification).
    """
    cc = next((n for n in (1, 2, 3) if lead[:n] in _CALLING_CODES), 0)
    if not cc:
        return None, "unknown"
    region: str | None = None
    number_type = PhoneNumberType.UNKNOWN
    for pad in _PADS:
        national = (lead + pad * max(0, length - len(lead)))[cc:]
        if not national:
            break
        zeros = len(national) - len(national.lstrip("0"))
        number = phonenumbers.PhoneNumber(
            country_code=int(lead[:cc]),
            national_number=int(national),
            italian_leading_zero=zeros > 0 or None,
            number_of_leading_zeros=zeros if zeros > 1 else None,
        )
        region = phonenumbers.region_code_for_number(number)
        # what phonenumbers.number_type does, without finding the region a second time
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(int(lead[:cc]), region or "ZZ")
        if metadata is not None:
            number_type = _number_type_helper(national, metadata)
        if number_type != PhoneNumberType.UNKNOWN:
            break
    if region is None:
        region = phonenumbers.region_code_for_country_code(int(lead[:cc]))
    country = region if region in _REGIONS else None
    return country, _KIND_OF_TYPE.get(number_type, "unknown")


_PADS = ("5", "0")


# --- loading from the database ----------------------------------------------------------------


def load_prefixes(conn: psycopg.Connection[Any]) -> list[DialPrefix]:
    rows = conn.execute(
        "SELECT prefix, name, country, kind FROM dial_prefix ORDER BY prefix"
    ).fetchall()
    return [DialPrefix(*r) for r in rows]


async def load_prefixes_async(conn: psycopg.AsyncConnection[Any]) -> list[DialPrefix]:
    cur = await conn.execute("SELECT prefix, name, country, kind FROM dial_prefix ORDER BY prefix")
    return [DialPrefix(*r) for r in await cur.fetchall()]


def plan_from_row(row: Mapping[str, Any] | tuple[Any, ...]) -> NumberingPlan:
    """A plan from (country, international_prefix, national_prefix)."""
    if isinstance(row, Mapping):
        row = (row["country"], row["international_prefix"], row["national_prefix"])
    return NumberingPlan(row[0], row[1], row[2])

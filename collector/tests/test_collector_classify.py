"""Destination classification: numbering plans, the prefix table, phonenumbers, the CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from analytics_testkit import add_agent, checked
from cdrstats_agent.model import CDR
from cdrstats_collector import cli, dialplan, store
from cdrstats_collector.classify import (
    NO_DESTINATION,
    Classifier,
    DialPrefix,
    NumberingPlan,
    PlanError,
)
from collector_testkit import NOW


@pytest.mark.parametrize(
    ("plan", "number", "e164"),
    [
        (NumberingPlan("FR"), "0612345678", "+33612345678"),
        (NumberingPlan("FR"), "0044 20 7123 4567", "+442071234567"),
        (NumberingPlan("FR"), "+1 212 555 0100", "+12125550100"),
        (NumberingPlan("FR"), "1001", None),
        (NumberingPlan(None), "0612345678", None),  # national, but no country known
        (NumberingPlan(None), "0033612345678", "+33612345678"),
        (NumberingPlan("US", "011", "1"), "011 33 6 12 34 56 78", "+33612345678"),
        (NumberingPlan("US", "011", "1"), "12125550100", "+12125550100"),
        (NumberingPlan("GB", "", ""), "00442071234567", None),  # no international prefix
    ],
)
def test_numbering_plan(plan: NumberingPlan, number: str, e164: str | None) -> None:
    assert plan.e164(number) == e164


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("XX",), "country 'XX' is not an ISO 3166 alpha-2 code"),
        (("fr",), "country 'fr' is not an ISO 3166"),
        (("FR", "+00"), "international_prefix must be up to 6 digits"),
        (("FR", "00", "0000000"), "national_prefix must be up to 6 digits"),
    ],
)
def test_bad_numbering_plan(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        NumberingPlan(*args)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+33612345678", ("FR", "mobile", None)),
        ("+33123456789", ("FR", "fixed", None)),
        ("+442071234567", ("GB", "fixed", None)),
        ("+447700900123", ("GB", "mobile", None)),
        ("+14165550123", ("CA", "fixed_or_mobile", None)),  # NANP: the area code decides
        ("+18005550100", ("US", "toll_free", None)),
        ("+999123", (None, "unknown", None)),  # no such country code
        (None, NO_DESTINATION),
        ("+", NO_DESTINATION),
    ],
)
def test_library_classification(number: str | None, expected: tuple[Any, ...]) -> None:
    assert Classifier().destination(number) == expected


def test_prefix_table_longest_match_and_overrides() -> None:
    table = [
        DialPrefix("33", "France"),
        DialPrefix("336", "France mobile", kind="mobile"),
        DialPrefix("33612", "France premium block", country="FR", kind="premium"),
        DialPrefix("44", "United Kingdom", country="GB", kind="special"),
    ]
    c = Classifier(table)
    assert c.destination("+33612345678") == ("FR", "premium", "33612")
    assert c.destination("+33698765432") == ("FR", "mobile", "336")
    assert c.destination("+33123456789") == ("FR", "fixed", "33")  # kind from phonenumbers
    assert c.destination("+447700900123") == ("GB", "special", "44")
    assert c.destination("+4915112345678") == ("DE", "mobile", None)  # no row matches


def test_cached_answer_does_not_depend_on_the_order_of_numbers() -> None:
    numbers = ["+33612345678", "+33612999999", "+336120", "+14165550123", "+14169999999"]
    forward = Classifier()
    backward = Classifier()
    a = [forward.destination(n) for n in numbers]
    b = [backward.destination(n) for n in reversed(numbers)][::-1]
    assert a == b


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("0336", "x"), "prefix '0336' must be 1 to 15 digits"),
        (("", "x"), "prefix '' must be"),
        (("33a", "x"), "must be 1 to 15 digits"),
        (("1" * 16, "x"), "must be 1 to 15 digits"),
        (("33", " "), "prefix 33: name must not be empty"),
        (("33", "x", "ZZ"), "country 'ZZ' is not"),
        (("33", "x", "FR", "cellular"), "kind 'cellular' is not one of fixed, mobile"),
    ],
)
def test_bad_dial_prefix(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        DialPrefix(*args)


def _ingest(database_url: str, agent: store.AgentRef, ingestor: store.Ingestor, seq: int,
            cdrs: list[CDR]) -> None:  # fmt: skip
    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            out = await ingestor.ingest(conn, agent, seq, bytes([seq]) * 32, checked(cdrs))
            assert isinstance(out, store.Stored)

    asyncio.run(run())


def test_ingest_classifies_with_the_switch_plan_and_the_prefix_table(
    database_url: str, tmp_path: Path, capsys: Any
) -> None:
    with psycopg.connect(database_url) as conn:
        fr = add_agent(conn, "acme", "paris", country="FR")
        us = add_agent(conn, "acme", "nyc", country="US", international_prefix="011",
                       national_prefix="1")  # fmt: skip
    ingestor = store.Ingestor()
    cdr = [
        CDR(key="a", start=NOW, callee="0612345678"),
        CDR(key="b", start=NOW, callee="0612345678", callee_e164="+442071234567"),  # agent's
        CDR(key="c", start=NOW, callee="1001"),
    ]
    _ingest(database_url, fr, ingestor, 1, cdr)
    _ingest(database_url, us, ingestor, 1, [CDR(key="a", start=NOW, callee="011441615550100")])

    prefixes = tmp_path / "prefixes.csv"
    prefixes.write_text("prefix,name,country,kind\n+336,France mobile,,\n44,UK,GB,special\n")
    url = ["--database-url", database_url]
    assert cli.main(["prefix", "import", str(prefixes), *url]) == 0
    assert "2 dial prefixes imported" in capsys.readouterr().out
    ingestor.forget()  # a running collector re-reads within CONTEXT_TTL_S
    _ingest(database_url, fr, ingestor, 2, [CDR(key="d", start=NOW, callee="0612345678")])

    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT s.name, c.key, dest_country, dest_kind, dest_prefix"
            " FROM cdr c JOIN switch s ON s.id = c.switch_id ORDER BY 1, 2"
        ).fetchall()
    assert rows == [
        ("nyc", "a", "GB", "fixed", None),
        ("paris", "a", "FR", "mobile", None),
        ("paris", "b", "GB", "fixed", None),
        ("paris", "c", None, None, None),
        ("paris", "d", "FR", "mobile", "336"),
    ]


def test_prefix_commands(database_url: str, tmp_path: Path, capsys: Any) -> None:
    url = ["--database-url", database_url]
    good = tmp_path / "good.csv"
    good.write_text("# dial codes\n33,France,FR,\n336,France mobile,FR,mobile\n\n")
    assert cli.main(["prefix", "import", str(good), *url]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("34,Spain,ES,\n3x,Broken,,\n")
    assert cli.main(["prefix", "import", str(bad), *url]) == 2
    assert f"{bad}:2: prefix '3x' must be 1 to 15 digits" in capsys.readouterr().err
    dup = tmp_path / "dup.csv"
    dup.write_text("34,Spain\n34,Spain again\n")
    assert cli.main(["prefix", "import", str(dup), *url]) == 2
    assert f"{dup}:2: prefix 34 appears twice" in capsys.readouterr().err
    wide = tmp_path / "wide.csv"
    wide.write_text("34,Spain,ES,fixed,extra\n")
    assert cli.main(["prefix", "import", str(wide), *url]) == 2
    assert "wide.csv:1: expected prefix,name[,country[,kind]], got 5" in capsys.readouterr().err
    assert cli.main(["prefix", "import", str(tmp_path / "missing.csv"), *url]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert cli.main(["prefix", "list", *url]) == 0
    assert capsys.readouterr().out == "33\tFrance\tFR\t\n336\tFrance mobile\tFR\tmobile\n"

    replace = tmp_path / "replace.csv"
    replace.write_text("49,Germany,DE\n336,Mobile FR,FR,mobile\n")
    assert cli.main(["prefix", "import", str(replace), "--replace", *url]) == 0
    capsys.readouterr()
    assert cli.main(["prefix", "list", "--starting", "3", *url]) == 0
    assert capsys.readouterr().out == "336\tMobile FR\tFR\tmobile\n"
    assert cli.main(["prefix", "delete", "336", *url]) == 0
    assert cli.main(["prefix", "delete", "336", *url]) == 2
    assert "no dial prefix '336'" in capsys.readouterr().err


def test_switch_commands(database_url: str, capsys: Any) -> None:
    with psycopg.connect(database_url) as conn:
        add_agent(conn, "acme", "pbx")
    url = ["--database-url", database_url, "--tenant", "acme"]
    assert cli.main(["switch", "set", "pbx", "--country", "us", "--international-prefix",
                     "011", "--national-prefix", "1", *url]) == 0  # fmt: skip
    assert "country US, international prefix 011, national prefix 1" in capsys.readouterr().out
    assert cli.main(["switch", "set", "pbx", "--national-prefix", "", *url]) == 0
    assert cli.main(["switch", "list", *url]) == 0
    out = capsys.readouterr().out
    assert out.endswith("pbx\tcountry=US\tinternational_prefix=011\tnational_prefix=-\n")
    assert cli.main(["switch", "set", "pbx", "--country", "XX", *url]) == 2
    assert "switch 'pbx': country 'XX' is not an ISO 3166" in capsys.readouterr().err
    assert cli.main(["switch", "set", "nope", "--country", "FR", *url]) == 2
    assert "tenant 'acme' has no switch 'nope'" in capsys.readouterr().err
    assert cli.main(["switch", "set", "pbx", "--country", "", *url]) == 0
    with psycopg.connect(database_url) as conn:
        plans = dialplan.list_switch_plans(conn, "acme")
    assert [(p.name, p.plan) for p in plans] == [("pbx", NumberingPlan(None, "011", ""))]

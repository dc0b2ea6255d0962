"""The real reference files: Asterisk testsuite Master.csv (18 columns) and CELMaster1.csv, and
rows written with FreeSWITCH's own templates (vanilla cdr_csv.conf.xml) from the variables of
a real call (mod_json_cdr document)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cdrstats_agent.model import Disposition
from cdrstats_csv.presets import FREESWITCH_DEFAULT, FREESWITCH_EXAMPLE
from csv_testkit import REFERENCE, as_json, cdrs_of, drain, make_source, rejected_of

ASTERISK = REFERENCE / "asterisk"
FREESWITCH = REFERENCE / "freeswitch"

pytestmark = pytest.mark.skipif(
    not (ASTERISK / "testsuite_self_test_Master.csv").exists(),
    reason=f"reference files not found in {REFERENCE}",
)


async def test_asterisk_testsuite_master_csv() -> None:
    source = make_source(
        {
            "preset": "asterisk",
            "timezone": "UTC",
            "path": str(ASTERISK / "testsuite_self_test_Master.csv"),
        }
    )
    results = await drain(source)
    assert rejected_of(results) == []
    cdrs = cdrs_of(results)
    assert [c.key for c in cdrs] == ["1270167992.0", "1270168442.0"]
    first = cdrs[0]
    assert first.start == datetime(2010, 4, 2, 0, 26, 32, tzinfo=UTC)
    assert first.answer == first.start and first.end == datetime(2010, 4, 2, 0, 26, 39, tzinfo=UTC)
    assert (first.duration, first.billsec, first.ring_time) == (7, 7, 0)
    assert first.disposition is Disposition.ANSWERED
    assert (first.callee, first.caller, first.trunk) == ("1", "", None)  # Console/dsp: no peer
    assert first.extra == {
        "dcontext": "default",
        "channel": "Console/dsp",
        "dstchannel": "",
        "lastapp": "Hangup",
        "lastdata": "",
        "amaflags": "DOCUMENTATION",
        "uniqueid": "1270167992.0",
        "userfield": "",
    }


async def test_asterisk_testsuite_with_forced_layouts() -> None:
    path = str(ASTERISK / "testsuite_self_test_Master.csv")
    ok = await drain(
        make_source({"preset": "asterisk", "columns": 18, "timezone": "UTC", "path": path})
    )
    assert len(cdrs_of(ok)) == 2
    wrong = await drain(
        make_source({"preset": "asterisk", "columns": 21, "timezone": "UTC", "path": path})
    )
    assert cdrs_of(wrong) == []
    assert [r for _, r in rejected_of(wrong)] == ["has 18 columns, expected 21"] * 2


async def test_a_cel_file_is_rejected_row_by_row_not_fatal() -> None:
    path = ASTERISK / "testsuite_self_test_CELMaster1.csv"
    results = await drain(make_source({"preset": "asterisk", "timezone": "UTC", "path": str(path)}))
    lines = path.read_text().count("\n")
    assert cdrs_of(results) == []
    assert len(rejected_of(results)) == lines
    assert {r for _, r in rejected_of(results)} == {"has 20 columns, expected 16, 18 or 21"}


# --- FreeSWITCH -------------------------------------------------------------------------------


def _templates() -> dict[str, str]:
    root = ET.parse(FREESWITCH / "vanilla_cdr_csv.conf.xml").getroot()
    return {t.attrib["name"]: t.text or "" for t in root.iter("template")}


def _call_variables() -> dict[str, str]:
    """What mod_cdr_csv expands for the real call of the mod_json_cdr document."""
    doc = json.loads((FREESWITCH / "json_cdr_cgrates_fscdr_test.json").read_text())
    callflow = doc["callflow"][0] if isinstance(doc["callflow"], list) else doc["callflow"]
    profile = {k: v for k, v in callflow["caller_profile"].items() if isinstance(v, str)}
    variables = {**profile, **doc["variables"]}
    # Set by mod_cdr_csv itself before expanding (see its my_on_hangup).
    variables["caller_id"] = f'"{profile["caller_id_name"]}" <{profile["caller_id_number"]}>'
    return variables


def _render(template: str, variables: dict[str, Any]) -> str:
    """FreeSWITCH-style expansion: innermost ${...} first, unknown variables empty."""
    inner = re.compile(r"\$\{([^${}]*)\}")
    text = template
    while inner.search(text):
        text = inner.sub(lambda m: str(variables.get(m.group(1), "")), text)
    return text + "\n"


def test_builtin_templates_match_the_reference_config() -> None:
    templates = _templates()
    assert templates["example"] == FREESWITCH_EXAMPLE
    # The built-in default has the same fields as the vanilla `sql` template's VALUES (...),
    # stray space before the last field included.
    sql_values = templates["sql"].split("VALUES (", 1)[1].rsplit(");", 1)[0]
    assert sql_values == FREESWITCH_DEFAULT


CALL = {
    "key": "3da8bf84-c133-4959-9e24-e72875cb33a1",
    "start": "2018-01-11T10:25:44Z",
    "answer": "2018-01-11T10:25:47Z",
    "end": "2018-01-11T10:26:55Z",
    "duration": 71,
    "billsec": 68,
    "ring_time": 3,
    "disposition": "ANSWERED",
    "hangup_cause": 16,
}


@pytest.mark.parametrize("name", ["example", "sql", "snom", "linksys", "asterisk", "opencdrrate"])
async def test_rows_written_with_each_vanilla_template(tmp_path: Path, name: str) -> None:
    template = _templates()[name]
    variables = _call_variables()
    path = tmp_path / "Master.csv"
    path.write_text(_render(template, variables) * 2)  # the same call twice: same key
    options = {
        "preset": "freeswitch-template",
        "template": template,
        # The switch ran at UTC+1: start_stamp 11:25:44 is start_epoch 1515666344.
        "timezone": "Europe/Paris",
        "path": str(path),
    }
    results = await drain(make_source(options))
    assert rejected_of(results) == []
    first, second = (as_json(c) for c in cdrs_of(results))
    assert first == second
    expected = dict(CALL)
    if name == "opencdrrate":  # no start stamp, no duration: start falls back to answer
        expected.update(
            start=CALL["answer"],
            duration=68,
            ring_time=0,
            hangup_cause=None,
            disposition="ANSWERED",
            caller="1001",
            src_ip="10.10.10.100",
        )
    else:
        expected.update(caller="1001", callee="1002")
    assert {k: first[k] for k in expected} == expected
    if name in ("example", "snom", "linksys"):
        assert (first["read_codec"], first["write_codec"]) == ("PCMU", "PCMU")
    if name in ("snom", "linksys"):
        assert first["user_agent"] == "Jitsi2.10.5550Linux"
    if name == "asterisk":
        assert first["caller_name"] == "1001"
        assert first["extra"]["last_app"] == "bridge"


async def test_example_preset_and_template_preset_agree(tmp_path: Path) -> None:
    variables = _call_variables()
    variables["caller_id_name"] = 'Jitsi "Desk" 1001'  # FreeSWITCH writes the quotes raw
    path = tmp_path / "Master.csv"
    path.write_text(_render(FREESWITCH_EXAMPLE, variables))
    base = {"timezone": "Europe/Paris", "path": str(path)}
    preset = make_source({**base, "preset": "freeswitch-example"})
    by_preset = cdrs_of(await drain(preset))
    by_template = cdrs_of(
        await drain(
            make_source(
                {**base, "preset": "freeswitch-template", "template": _templates()["example"]}
            )
        )
    )
    assert by_preset == by_template
    assert by_preset[0].caller_name == 'Jitsi "Desk" 1001'
    assert preset.stats["quote_recovered"] == 1


async def test_default_template_rows(tmp_path: Path) -> None:
    path = tmp_path / "Master.csv"
    variables = {**_call_variables(), "accountcode": "acct-9"}
    path.write_text(_render(FREESWITCH_DEFAULT, variables))
    assert ', "acct-9"' in path.read_text()
    results = await drain(
        make_source({"preset": "freeswitch-default", "timezone": "Europe/Paris", "path": str(path)})
    )
    (cdr,) = cdrs_of(results)
    assert cdr.accountcode == "acct-9" and cdr.key == CALL["key"]
    assert as_json(cdr)["start"] == CALL["start"]

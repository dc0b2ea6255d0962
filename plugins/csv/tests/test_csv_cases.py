"""Data-driven cases: `cases/<case>/config.toml` + `input.csv` -> `expected.jsonl` | `.err`.

`config.toml` holds the `[[source]]` options (without `path`: the case's input.csv is
followed). `expected.jsonl` has one JSON object per line: a CDR (every field, see
`csv_testkit.as_json`) or a rejected row `{"rejected": "input.csv:<line>", "reason": ...}`;
CDRs and rejections are each compared in file order. `expected.err` holds text that the
ConfigError raised by `create_source` must contain (the key first).

Set CSV_CASES_WRITE=1 to (re)write expected.jsonl from the current output, then review it.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cdrstats_agent.errors import ConfigError
from csv_testkit import CASES, as_json, drain, make_source

CASE_DIRS = sorted(p for p in CASES.iterdir() if p.is_dir())


def _run_config(case: Path) -> dict[str, Any]:
    config = tomllib.loads((case / "config.toml").read_text(encoding="utf-8"))
    return {"path": str(case / "input.csv"), **config}


@pytest.mark.parametrize("case", CASE_DIRS, ids=[p.name for p in CASE_DIRS])
async def test_case(case: Path) -> None:
    options = _run_config(case)
    err_file = case / "expected.err"
    if err_file.exists():
        with pytest.raises(ConfigError) as caught:
            make_source(options)
        message = err_file.read_text(encoding="utf-8").strip()
        assert message in str(caught.value)
        return

    source = make_source(options)
    results = await drain(source)
    got_cdrs = [as_json(c) for r in results for c in r.cdrs]
    got_rejected = [
        {
            "rejected": f"{Path(x.where.rsplit(':', 1)[0]).name}:{x.where.rsplit(':', 1)[1]}",
            "reason": x.reason,
        }
        for r in results
        for x in r.rejected
    ]
    expected_file = case / "expected.jsonl"
    if os.environ.get("CSV_CASES_WRITE"):
        lines = [json.dumps(x, ensure_ascii=False) for x in got_cdrs + got_rejected]
        expected_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = [
        json.loads(line)
        for line in expected_file.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    assert got_cdrs == [x for x in expected if "rejected" not in x]
    assert got_rejected == [x for x in expected if "rejected" in x]
    # Each row is either a CDR or a rejection, and the stats say so.
    assert source.stats["cdrs"] == len(got_cdrs)
    assert source.stats["rejected"] == len(got_rejected)

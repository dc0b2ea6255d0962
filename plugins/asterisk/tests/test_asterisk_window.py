"""The lookback window (window.py) as pure data: exactness rules and checkpoints."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cdrstats_asterisk.window import Window, digest, fold_guard

PARIS = ZoneInfo("Europe/Paris")
T0 = datetime(2026, 3, 2, 10, 0, 0)


def poll(window: Window, table: Sequence[tuple[Any, str]]) -> list[str]:
    """What one poll delivers: rows >= the lower bound, in cursor order, admitted once."""
    lower = window.lower_bound()
    got = []
    for value, name in sorted(table, key=lambda r: (r[0], r[1])):
        if lower is not None and value < lower:
            continue
        if window.admit(value, digest(name.encode())):
            got.append(name)
    window.settle()
    return got


def restarted(window: Window) -> Window:
    fresh = Window(window.kind, window.lookback, window.zone)
    fresh.load(json.loads(window.dumps()))
    return fresh


def test_equal_values_and_restarts_deliver_each_row_once() -> None:
    window = Window("time", 60)
    table: list[tuple[Any, str]] = [(T0, f"r{i}") for i in range(50)]
    assert len(poll(window, table)) == 50
    table += [(T0, "late-same-second"), (T0 + timedelta(seconds=1), "next")]
    window = restarted(window)
    assert poll(window, table) == ["late-same-second", "next"]
    assert poll(restarted(window), table) == []


def test_a_row_committed_late_inside_the_lookback_is_delivered() -> None:
    window = Window("time", 60)
    table: list[tuple[Any, str]] = [(T0 + timedelta(seconds=s), f"s{s}") for s in range(0, 100, 10)]
    poll(window, table)
    table.append((T0 + timedelta(seconds=45), "late-by-45s"))
    assert poll(window, table) == ["late-by-45s"]
    # Beyond the lookback it is out of reach: the documented limit of the time cursor.
    table.append((T0 + timedelta(seconds=5), "late-by-85s"))
    assert poll(window, table) == []


def test_the_seen_set_only_covers_the_window() -> None:
    window = Window("id", 10)
    poll(window, [(i, f"id{i}") for i in range(1, 101)])
    assert window.floor == 90
    assert sorted(window.seen.values()) == list(range(90, 101))


def test_ids_committed_out_of_order() -> None:
    window = Window("id", 1000)
    assert poll(window, [(1, "a"), (3, "c")]) == ["a", "c"]
    assert poll(window, [(1, "a"), (2, "b"), (3, "c")]) == ["b"]


def test_local_time_going_back_at_the_end_of_dst() -> None:
    # 2026-10-25 in Paris: 03:00 CEST -> 02:00 CET. Rows before and after the change.
    before = [(datetime(2026, 10, 25, 2, 58, s), f"cest{s}") for s in (0, 30, 59)]
    window = Window("time", 60, PARIS)
    assert len(poll(window, before)) == 3
    assert fold_guard(window.floor, PARIS) == timedelta(hours=1)  # type: ignore[arg-type]
    after = [(datetime(2026, 10, 25, 2, 5), "cet-0205"), (datetime(2026, 10, 25, 2, 59), "cet")]
    assert poll(restarted(window), before + after) == ["cet-0205", "cet"]
    # Without the zone the repeated hour would be below the floor and lost.
    naive = Window("time", 60)
    poll(naive, before)
    assert poll(naive, before + after) == ["cet"]  # 02:05 CET is lost


def test_no_guard_away_from_a_transition_or_in_utc() -> None:
    assert fold_guard(datetime(2026, 7, 1, 12), PARIS) == timedelta(0)
    assert fold_guard(datetime(2026, 3, 29, 2, 30), PARIS) == timedelta(0)  # DST start
    assert fold_guard(datetime(2026, 10, 25, 2, 30), None) == timedelta(0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "id", "floor": 3, "seen": []}, "checkpoint is for a 'id' cursor"),
        ([], "checkpoint is for a 'list' cursor"),
        ({"kind": "time", "floor": 12, "seen": []}, "12 is not a time"),
        ({"kind": "time", "floor": None, "seen": [["x"]]}, "bad seen entry"),
    ],
)
def test_bad_checkpoints_are_explained(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Window("time", 60).load(data)

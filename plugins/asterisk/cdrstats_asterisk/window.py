"""An exact read position in an append-only table that has no unique increasing key.

Asterisk's `cdr` table has no primary key and its rows are never updated, but they are not
committed in the order of any column: two channels hanging up at once insert concurrently,
batch mode (`cdr.conf` `batch=yes`) writes rows late, and an auto-increment id is allocated
before the commit that makes it visible. A plain "last value seen" checkpoint would skip a row
committed late with a smaller value. The `Window` keeps, besides that value:

* a **floor**: `top - lookback`, where `top` is the greatest cursor value read so far. Every
  poll reads `WHERE col >= floor` again, so a row committed up to `lookback` late (in the
  cursor's unit: seconds for a time column, ids for an id column) is still found;
* a **seen** set: an 8-byte digest of each row already delivered whose value is >= the floor,
  so that re-reading the window delivers nothing twice.

Rows with a value below the floor when they become visible are the only ones missed: choose
`lookback` longer than the worst commit delay (see docs/plugins/asterisk.md).

Local-time columns go back by an hour when daylight saving time ends. Near such a transition
(of the configured zone) the lower bound of the query is lowered by the size of the shift, so
the repeated hour is read and deduplicated instead of missed.

Pure: no I/O. The table reader (table.py) feeds it values and digests.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

Value = int | datetime
"""A cursor value: an id, or a timestamp (naive: local time of the switch, or aware)."""

_GUARD_SPAN = timedelta(hours=3)


def digest(raw: bytes) -> str:
    """The short fingerprint of a row kept in the seen set."""
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def fold_guard(value: datetime, zone: tzinfo | None) -> timedelta:
    """How far local time may go back near `value` (a DST end in `zone`), else zero."""
    if zone is None or value.tzinfo is not None:
        return timedelta(0)
    before = zone.utcoffset(value - _GUARD_SPAN)
    after = zone.utcoffset(value + _GUARD_SPAN)
    if before is None or after is None or before <= after:
        return timedelta(0)
    return before - after


@dataclass
class Window:
    kind: str
    """`time` (lookback in seconds) or `id` (lookback in ids)."""
    lookback: float
    zone: tzinfo | None = None
    floor: Value | None = None
    top: Value | None = None
    seen: dict[str, Value] = field(default_factory=dict)

    def lower_bound(self) -> Value | None:
        """The query reads rows with a cursor value >= this (None: the whole table)."""
        if self.floor is None:
            return None
        if isinstance(self.floor, datetime):
            return self.floor - fold_guard(self.floor, self.zone)
        return self.floor

    def admit(self, value: Value, fingerprint: str, *, move: bool = True) -> bool:
        """True the first time a row is read; False for a row already delivered.

        `move=False` remembers the row without letting its value advance the window (a
        timestamp far in the future must not push the floor past every later row)."""
        if fingerprint in self.seen:
            return False
        self.seen[fingerprint] = value
        if move and (self.top is None or value > self.top):  # type: ignore[operator]
            self.top = value
        return True

    def settle(self) -> None:
        """Advance the floor behind the greatest value read and forget rows below it."""
        if self.top is None:
            return
        if isinstance(self.top, datetime):
            floor: Value = self.top - timedelta(seconds=self.lookback)
        else:
            floor = self.top - int(self.lookback)
        if self.floor is None or floor > self.floor:  # type: ignore[operator]
            self.floor = floor
        lower = self.lower_bound()
        if lower is not None:
            self.seen = {k: v for k, v in self.seen.items() if v >= lower}  # type: ignore[operator]

    # --- checkpoint ---------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        groups: dict[Any, list[str]] = {}
        for key, value in sorted(self.seen.items(), key=lambda kv: (_text(kv[1]), kv[0])):
            groups.setdefault(_text(value), []).append(key)
        return {
            "kind": self.kind,
            "floor": None if self.floor is None else _text(self.floor),
            "top": None if self.top is None else _text(self.top),
            "seen": [[value, keys] for value, keys in groups.items()],
        }

    def load(self, data: Any) -> None:
        """Restore a dumped state; ValueError says what is wrong with it."""
        if not isinstance(data, dict) or data.get("kind") != self.kind:
            found = data.get("kind") if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"checkpoint is for a {found!r} cursor, this source uses {self.kind!r}"
            )
        self.floor = None if data.get("floor") is None else self._value(data["floor"])
        self.top = None if data.get("top") is None else self._value(data["top"])
        seen: dict[str, Value] = {}
        for item in data.get("seen", []):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], list)):
                raise ValueError(f"checkpoint: bad seen entry {item!r:.80}")
            value = self._value(item[0])
            for key in item[1]:
                seen[str(key)] = value
        self.seen = seen

    def _value(self, text: Any) -> Value:
        if self.kind == "id":
            if isinstance(text, int) and not isinstance(text, bool):
                return text
            raise ValueError(f"checkpoint: {text!r:.40} is not an id")
        if not isinstance(text, str):
            raise ValueError(f"checkpoint: {text!r:.40} is not a time")
        return datetime.fromisoformat(text)

    def dumps(self) -> str:
        return json.dumps(self.dump(), separators=(",", ":"))


def _text(value: Value) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value

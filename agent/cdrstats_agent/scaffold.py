"""`cdrstats-agent plugin new NAME`: a ready-to-edit plugin distribution for a new switch type.

    cdrstats-NAME/
      pyproject.toml           the `cdrstats.plugins` entry point NAME -> cdrstats_NAME:...Plugin
      README.md                what to change first
      cdrstats_NAME/__init__.py
      cdrstats_NAME/plugin.py  a complete source (the example of docs/plugins.md, renamed)
      tests/test_NAME_plugin.py  the contract kit (cdrstats_agent.testing) and a first test

The generated plugin reads lines `key,start_epoch,caller,callee,duration` from a file: it
works as it is (`pip install -e cdrstats-NAME && pytest cdrstats-NAME`), and docs/plugins.md
explains each part to change for the real switch's store.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import __version__

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class ScaffoldError(Exception):
    """The plugin cannot be created (bad name, folder exists); the text says why."""


def camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


PLUGIN = r'''"""A source reading lines `key,start_epoch,caller,callee,duration` from a file."""

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdrstats_agent.errors import SourceError
from cdrstats_agent.model import CDR, Disposition
from cdrstats_agent.options import Options
from cdrstats_agent.plugin import ReadResult, Rejected


class __CAMEL__Source:
    def __init__(self, name: str, path: Path, poll_s: float) -> None:
        self.name, self.path, self.poll_s = name, path, poll_s

    async def check(self) -> None:
        try:
            self.path.open("rb").close()
        except OSError as exc:
            raise SourceError(f"{self.path}: {exc.strerror}") from None

    async def read(self, checkpoint: str | None) -> AsyncIterator[ReadResult]:
        offset = json.loads(checkpoint)["offset"] if checkpoint else 0
        while True:
            data = await asyncio.to_thread(self._read_from, offset)
            end = data.rfind(b"\n") + 1  # only whole lines; a partial one waits
            if end == 0:
                await asyncio.sleep(self.poll_s)
                continue
            cdrs, rejected = [], []
            for line in data[:end].splitlines():
                where = f"{self.path}:{offset}"
                offset += len(line) + 1
                try:
                    key, start, caller, callee, duration = line.decode().split(",")
                    cdrs.append(CDR(
                        key=key,
                        start=datetime.fromtimestamp(int(start), UTC),
                        caller=caller,
                        callee=callee,
                        duration=int(duration),
                        billsec=int(duration),
                        disposition=Disposition.ANSWERED,
                    ))
                except ValueError as exc:
                    rejected.append(Rejected(where, str(exc)))
            yield ReadResult(cdrs, json.dumps({"offset": offset}), rejected)

    def _read_from(self, offset: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(offset)
            return f.read(1 << 20)

    async def close(self) -> None:
        pass


class __CAMEL__Plugin:
    name = "__NAME__"
    description = "CDRs from a file of comma-separated lines"
    sample_config = '[[source]]\nname = "pbx1"\nplugin = "__NAME__"\npath = "/var/log/cdr.txt"\n'

    def create_source(self, name: str, options: Mapping[str, Any]) -> __CAMEL__Source:
        opts = Options(options)
        path = Path(opts.text("path"))
        poll_s = opts.number("poll_s", 1.0, minimum=0.01)
        opts.finish()  # an unknown key is an error, named in the message
        return __CAMEL__Source(name, path, poll_s)
'''

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "cdrstats-__DIST__"
version = "0.1.0"
description = "CDR-Stats plugin: __NAME__"
requires-python = ">=3.11"
dependencies = ["cdrstats-agent>=__AGENT_VERSION__"]

[project.entry-points."cdrstats.plugins"]
__NAME__ = "cdrstats___NAME__.plugin:__CAMEL__Plugin"

[tool.setuptools.packages.find]
include = ["cdrstats___NAME__*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

README = """\
# cdrstats-__DIST__

A CDR-Stats agent plugin (`plugin = "__NAME__"` in a `[[source]]` table), made by
`cdrstats-agent plugin new __NAME__`. It reads lines `key,start_epoch,caller,callee,duration`
from the file given as `path`; change `cdrstats___NAME__/plugin.py` to read your switch's
store (docs/plugins.md of CDR-Stats is the tutorial), and `tests/` to write records the way
your switch does.

    pip install -e .                  # registers the entry point
    cdrstats-agent sample-config __NAME__
    python -m pytest                  # your tests and the plugin contract kit
"""

TESTS = """\
\"\"\"cdrstats-__DIST__ passes the CDR-Stats plugin contract (cdrstats_agent.testing).\"\"\"

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdrstats___NAME__.plugin import __CAMEL__Plugin
from cdrstats_agent.testing import SourceContract


class LinesFeed:
    \"\"\"Writes records as the switch would: here, lines appended to a file.\"\"\"

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "cdr.txt"
        self.path.write_text("")
        self.n = 0

    def options(self) -> dict[str, Any]:
        return {"path": str(self.path), "poll_s": 0.01}

    def append(self, n: int) -> list[str]:
        keys = [f"call-{self.n + i}" for i in range(n)]
        with self.path.open("a") as f:
            for i, key in enumerate(keys):
                f.write(f"{key},{1764064800 + self.n + i},1001,2002,{i}\\n")
        self.n += n
        return keys

    def append_bad(self) -> None:
        with self.path.open("a") as f:
            f.write("this is not a CDR\\n")


class Test__CAMEL__Contract(SourceContract):
    plugin = __CAMEL__Plugin()

    def feed(self, workdir: Path) -> LinesFeed:
        return LinesFeed(workdir)


def test_reads_the_fields(tmp_path: Path, source_reader: Any) -> None:
    feed = LinesFeed(tmp_path)
    feed.append(1)
    source = __CAMEL__Plugin().create_source("pbx1", feed.options())
    (result,) = source_reader(source, None, until=lambda results: bool(results))
    (cdr,) = result.cdrs
    assert (cdr.key, cdr.caller, cdr.callee, cdr.duration) == ("call-0", "1001", "2002", 0)
"""


def render(template: str, name: str) -> str:
    return (
        template.replace("__DIST__", name.replace("_", "-"))
        .replace("__NAME__", name)
        .replace("__CAMEL__", camel(name))
        .replace("__AGENT_VERSION__", __version__)
    )


def files(name: str) -> dict[str, str]:
    """Relative path -> content of the distribution for plugin `name`."""
    if not NAME.match(name):
        raise ScaffoldError(
            f"plugin name {name!r}: use lower-case letters, digits and '_', starting with a"
            " letter, at most 40 (it is the `plugin =` of a [[source]] and a module name)"
        )
    package = f"cdrstats_{name}"
    return {
        "pyproject.toml": render(PYPROJECT, name),
        "README.md": render(README, name),
        f"{package}/__init__.py": f'"""CDR-Stats plugin {name}."""\n',
        f"{package}/plugin.py": render(PLUGIN, name),
        f"tests/test_{name}_plugin.py": render(TESTS, name),
    }


def create(name: str, parent: Path) -> Path:
    """Write `parent/cdrstats-NAME/`; refuses to touch an existing folder."""
    content = files(name)
    root = parent / f"cdrstats-{name.replace('_', '-')}"
    if root.exists():
        raise ScaffoldError(f"{root} already exists: choose another name or remove it")
    for relative, text in content.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root

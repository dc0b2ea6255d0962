"""`cdrstats-agent plugin new NAME`: a third-party plugin that installs with pip, is found by its
entry point, passes the contract kit and delivers CDRs end to end.

The plugin is installed into a throw-away virtual environment layered over the test venv (a
.pth file adds the test venv's site-packages), so the test venv itself never changes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

from cdrstats_agent import scaffold
from cdrstats_agent.cli import main

from tests.fix_agent import stored, wait_for
from tests.fix_db import CollectorServer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 180) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=timeout,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def layered_venv(path: Path) -> Path:
    """A venv whose own site-packages come first, then the test venv's; returns its python."""
    run(sys.executable, "-m", "venv", "--without-pip", path)
    python = path / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    base = sysconfig.get_paths()["purelib"]
    Path(site, "zz_test_venv.pth").write_text(f"import site; site.addsitedir({base!r})\n")
    return python


def test_plugin_new_writes_a_distribution(tmp_path: Path, capsys: object) -> None:
    assert main(["plugin", "new", "acme_pbx", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "cdrstats-acme-pbx"
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert names == [
        "README.md",
        "cdrstats_acme_pbx/__init__.py",
        "cdrstats_acme_pbx/plugin.py",
        "pyproject.toml",
        "tests/test_acme_pbx_plugin.py",
    ]
    pyproject = (root / "pyproject.toml").read_text()
    assert 'acme_pbx = "cdrstats_acme_pbx.plugin:AcmePbxPlugin"' in pyproject
    assert 'name = "cdrstats-acme-pbx"' in pyproject
    plugin_code = (root / "cdrstats_acme_pbx" / "plugin.py").read_text()
    assert len(plugin_code.splitlines()) < 100
    # It refuses to overwrite, and bad names are refused with the rule.
    assert main(["plugin", "new", "acme_pbx", "--dir", str(tmp_path)]) == 2
    assert main(["plugin", "new", "Acme-PBX", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "already exists" in err and "use lower-case letters" in err


def test_scaffold_plugin_is_the_tutorial_example() -> None:
    """The generated plugin.py is the example docs/plugins.md explains, renamed."""
    match = re.search(r"<!-- plugin-example -->\n```python\n(.*?)\n```", DOCS.read_text(), re.S)
    assert match, "docs/plugins.md lost its plugin example"
    assert scaffold.files("lines")["cdrstats_lines/plugin.py"] == match.group(1) + "\n"


def test_third_party_plugin_installed_discovered_contract_end_to_end(
    tmp_path: Path, collector_server: CollectorServer
) -> None:
    root = scaffold.create("acme_pbx", tmp_path)
    python = layered_venv(tmp_path / "venv")
    # pip builds it in an isolated environment (setuptools from the package index or cache).
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", root)

    # Discovered by its entry point, next to the built-in plugins.
    found = run(
        python, "-c",
        "import json, cdrstats_agent.plugin as p; print(json.dumps(sorted(p.discover())))",
    )  # fmt: skip
    assert "acme_pbx" in json.loads(found) and "csv" in json.loads(found)
    sample = run(python, "-m", "cdrstats_agent.cli", "sample-config", "acme_pbx")
    assert 'plugin = "acme_pbx"' in sample

    # Its own tests, which include the contract kit, pass.
    out = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=root)
    assert re.search(r"\b7 passed\b|\b6 passed, 1 skipped\b", out), out
    assert "failed" not in out

    # End to end: written by the "switch", read by the agent, stored by the collector.
    cdr_file = tmp_path / "switch" / "cdr.txt"
    cdr_file.parent.mkdir()
    cdr_file.write_text("".join(f"k{i},{1764064800 + i},1001,2002,{i}\n" for i in range(50)))
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nspool_sync = "normal"\n\n'
        f'[collector]\nurls = ["{collector_server.url}"]\nbatch_max_age_s = 0.2\n\n'
        f'[[source]]\nname = "pbx1"\nplugin = "acme_pbx"\npath = "{cdr_file}"\npoll_s = 0.05\n'
    )
    cli: list[str | Path] = [python, "-m", "cdrstats_agent.cli"]
    token = collector_server.create_token("acme", "pbx-third-party")
    run(*cli, "enroll", "--config", config, collector_server.url, token)
    assert "OK   source pbx1: plugin acme_pbx" in run(*cli, "check", "--config", config)
    agent_id = json.loads((tmp_path / "state" / "identity.json").read_text())["agent_id"]
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen([*map(str, cli), "run", "--config", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for(lambda: stored(collector_server.database_url, agent_id).rows == 50,
                 timeout=60, what="50 CDRs of the third-party plugin",
                 diagnostics=lambda: (tmp_path / "agent.log").read_text())  # fmt: skip
        with cdr_file.open("a") as f:
            f.write("late,1764070000,1001,2002,9\nnot a record\n")
        wait_for(lambda: stored(collector_server.database_url, agent_id).rows == 51,
                 timeout=60, what="the appended record",
                 diagnostics=lambda: (tmp_path / "agent.log").read_text())  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    result = stored(collector_server.database_url, agent_id)
    assert (result.rows, result.distinct_keys) == (51, 51)
    status = run(*cli, "status", "--config", config)
    assert "source pbx1: read 51, rejected 1" in status, status

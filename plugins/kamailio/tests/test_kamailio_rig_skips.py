"""The real-Kamailio tests skip without Kamailio by hand, and fail without it under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def run_without_kamailio(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["CDRSTATS_KAMAILIO_BIN"] = str(HERE / "no-such-kamailio")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         str(HERE / "test_kamailio_real.py"), "-k", "test_block_ip_refuses_bad_input"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(("ci", "outcome"), [(None, "1 skipped"), ("true", "1 error")])
def test_missing_kamailio_skips_by_hand_and_fails_in_ci(ci: str | None, outcome: str) -> None:
    done = run_without_kamailio(ci)
    assert outcome in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert "the kamailio binary is not installed" in done.stdout

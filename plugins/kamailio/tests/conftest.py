"""Fixtures of the kamailio plugin tests: the real Kamailio rig (session-scoped).

Tests that need Kamailio and sipp skip when they are not installed, except under CI=true where
they fail: CI installs them (.ci/run), so a missing binary there is a broken build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kamailio_testkit import (
    BEHAVIOURS,
    REFERENCE,
    RUNNING_UACS,
    KamailioDB,
    KamailioProcess,
    Rig,
    Uas,
    binaries_missing,
    drop_stale_databases,
)


def require_rig() -> None:
    reason = binaries_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kamailio_reference() -> Path:
    path = REFERENCE / "kamailio"
    if not path.is_dir():
        pytest.fail(f"reference data not found at {path} (../shared/reference beside the repo)")
    drop_stale_databases()
    return path


@pytest.fixture
def scratch_db(kamailio_reference: Path) -> Iterator[KamailioDB]:
    """A fresh MariaDB database with the Kamailio schema (no Kamailio needed)."""
    db = KamailioDB(f"cdrstats_kam_t{os.getpid()}")
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture(scope="session")
def kamailio_rig(
    tmp_path_factory: pytest.TempPathFactory, kamailio_reference: Path
) -> Iterator[Rig]:
    require_rig()
    workdir = tmp_path_factory.mktemp("kamailio-rig")
    db = KamailioDB(f"cdrstats_kam_rig{os.getpid()}")
    uas = {b: Uas(workdir, b, hold_ms=2000) for b in BEHAVIOURS}
    kamailio = KamailioProcess(workdir, db, {b: u.port for b, u in uas.items()})
    try:
        for u in uas.values():
            u.start()
        kamailio.check_cfg()
        kamailio.start()
        yield Rig(db, kamailio, uas, workdir)
    finally:
        kamailio.stop()
        for u in uas.values():
            u.stop()
        db.drop()


@pytest.fixture(autouse=True)
def _kill_leftover_uacs() -> Iterator[None]:
    """A test that fails while a sipp UAC runs must not leave it running."""
    yield
    while RUNNING_UACS:
        RUNNING_UACS.pop().kill()

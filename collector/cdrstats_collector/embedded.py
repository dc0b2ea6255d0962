"""An embedded PostgreSQL 16 (the `pgserver` package) for the demo and the tests.

The data directory is kept across runs and the server keeps running after the process that
started it exits (the next `start` finds it). Production uses a real server given by URL.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

DEFAULT_DATADIR = Path("var/pg")


class EmbeddedUnavailable(Exception):
    """pgserver is not installed (install the collector with the `embedded` extra)."""


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # pgserver and platformdirs warn at import about their runtime directory.
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError:
            raise EmbeddedUnavailable(
                "the embedded PostgreSQL needs the pgserver package: "
                "pip install 'cdrstats-collector[embedded]'"
            ) from None
    return pgserver


def start(datadir: Path | str = DEFAULT_DATADIR) -> str:
    """Start (or find running) the embedded server for `datadir`; returns its database URL."""
    path = Path(datadir).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    pgserver = _pgserver()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(path, cleanup_mode=None)
        url: str = server.get_uri()
    return url


def start_embedded(datadir: Path | str = DEFAULT_DATADIR) -> tuple[Any, str]:
    """Like `start`, also returning pgserver's handle (its `cleanup()` leaves it running)."""
    path = Path(datadir).absolute()
    url = start(path)
    pgserver = _pgserver()
    return pgserver.get_server(path, cleanup_mode=None), url

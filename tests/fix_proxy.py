"""A TCP proxy that tests can cut and restore (PostgreSQL outages, network cuts).

    proxy = TcpProxy(("127.0.0.1", 5432))        # or TcpProxy("/path/to/.s.PGSQL.5432")
    proxy.start(); ... proxy.cut(); ... proxy.restore(); ... proxy.stop()

`cut` closes every open connection and stops listening (clients get "connection refused");
`restore` listens again on the same port. Fixture `pg_proxy`: a proxy to the test PostgreSQL
server of `pg_admin_url`, with `.url(dbname)` giving a URL through the proxy.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from psycopg import conninfo


class TcpProxy:
    def __init__(self, target: tuple[str, int] | str, port: int = 0) -> None:
        self.target = target
        self.port = port
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    restore = start

    def _connect_target(self) -> socket.socket:
        if isinstance(self.target, str):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.connect(self.target)
        return s

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = self._connect_target()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._conns.difference_update((src, dst))

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    stop = cut


class PgProxy(TcpProxy):
    """A proxy in front of the PostgreSQL server of an admin URL."""

    def __init__(self, admin_url: str) -> None:
        params = conninfo.conninfo_to_dict(admin_url)
        host = str(params.get("host") or "")
        port = int(params.get("port") or 5432)
        if not host and "://" in admin_url:
            host = parse_qs(urlsplit(admin_url).query).get("host", [""])[0]
        target: tuple[str, int] | str
        if host.startswith("/"):
            target = os.path.join(host, f".s.PGSQL.{port}")
        else:
            target = (host or "127.0.0.1", port)
        super().__init__(target)
        self._params = params

    def url(self, dbname: str) -> str:
        """A URL to `dbname` through the proxy."""
        params = {k: v for k, v in self._params.items() if k not in ("host", "port", "dbname")}
        return conninfo.make_conninfo(
            "", host="127.0.0.1", port=str(self.port), dbname=dbname, **params
        )


@pytest.fixture
def pg_proxy(pg_admin_url: str) -> Iterator[PgProxy]:
    proxy = PgProxy(pg_admin_url)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()

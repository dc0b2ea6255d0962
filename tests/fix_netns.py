"""Network namespaces for the firewall tests: the host's own ruleset is never touched.

    with NetnsPair.create() as pair:          # or the `netns_pair` fixture
        pair.switch    name of the namespace that plays the switch (the firewall runs there)
        pair.peer      name of the namespace that plays the remote host
        pair.peer_v4 / pair.peer_v6 / pair.other_v4   addresses of the peer (other_v4: a
                       second address of the peer, never blocked: a control)
        pair.serve_tcp()                       a TCP listener in `switch` (port returned)
        pair.can_connect(src, port)            TCP connect from the peer, bound to `src`

The two namespaces are joined by a veth pair (10.213.0.1/24 and fd00:cd5::1/64 on the switch
side). Everything runs with argv lists through `ip netns exec`. Requires root and `ip`; the
`netns_pair` fixture skips without them, except under CI=true, where it fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

SWITCH_V4, PEER_V4, OTHER_V4 = "10.213.0.1", "10.213.0.2", "10.213.0.3"
SWITCH_V6, PEER_V6 = "fd00:cd5::1", "fd00:cd5::2"


def unavailable_reason(*tools: str) -> str | None:
    """Why namespace tests cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install nftables ipset iptables iproute2)"
    return None


def require(*tools: str) -> None:
    reason = unavailable_reason(*tools)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: not skipped)")
    pytest.skip(reason)


def run(*argv: str, check: bool = True, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout)


def nsrun(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *argv, check=check)


@dataclass
class NetnsPair:
    switch: str
    peer: str
    peer_v4: str = PEER_V4
    other_v4: str = OTHER_V4
    peer_v6: str = PEER_V6
    switch_v4: str = SWITCH_V4
    switch_v6: str = SWITCH_V6
    _servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def create(cls) -> Iterator[NetnsPair]:
        tag = secrets.token_hex(3)
        pair = cls(f"cdrstats-test-{tag}", f"cdrstats-peer-{tag}")
        try:
            pair._setup(tag)
            yield pair
        finally:
            pair.close()

    def _setup(self, tag: str) -> None:
        sw, peer = self.switch, self.peer
        run("ip", "netns", "add", sw)
        run("ip", "netns", "add", peer)
        a, b = f"cds{tag}", f"cdp{tag}"
        run("ip", "-n", sw, "link", "add", a, "type", "veth", "peer", "name", b, "netns", peer)
        for ns, dev, v4, v6 in ((sw, a, SWITCH_V4, SWITCH_V6), (peer, b, PEER_V4, PEER_V6)):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", peer, "addr", "add", f"{OTHER_V4}/24", "dev", b)

    def serve_tcp(self, port: int = 5060) -> int:
        """A TCP listener on every address of the switch namespace (IPv4 and IPv6)."""
        code = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET6)\n"
            "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('::', {port})); s.listen(64); print('ready', flush=True)\n"
            "while True:\n"
            "    c, _ = s.accept(); c.close()\n"
        )
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.switch, sys.executable, "-c", code],
            stdout=subprocess.PIPE,
        )
        self._servers.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError("the test TCP listener did not start")
        return port

    def can_connect(self, src: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from the peer (source address `src`) is accepted."""
        dst = self.switch_v6 if ":" in src else self.switch_v4
        family = "AF_INET6" if ":" in src else "AF_INET"
        code = (
            "import socket, sys\n"
            f"s = socket.socket(socket.{family}); s.settimeout({timeout})\n"
            f"s.bind(({src!r}, 0))\n"
            "try:\n"
            f"    s.connect(({dst!r}, {port}))\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        done = nsrun(self.peer, sys.executable, "-c", code, check=False)
        return done.returncode == 0

    def wait_connect(self, src: str, port: int, expected: bool, timeout: float = 15.0) -> bool:
        """Probe until the connection result is `expected` (bounded); returns the last result."""
        deadline = time.monotonic() + timeout
        while True:
            ok = self.can_connect(src, port)
            if ok == expected or time.monotonic() > deadline:
                return ok
            time.sleep(0.2)

    def close(self) -> None:
        for proc in self._servers:
            proc.kill()
            proc.wait()
        for ns in (self.switch, self.peer):
            run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    require("nft")
    with NetnsPair.create() as pair:
        yield pair

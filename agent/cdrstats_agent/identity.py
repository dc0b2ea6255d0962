"""The agent's identity: its Ed25519 key pair and what enrollment told it.

Files in the state directory:
  agent.key      the private key (base64 of the 32-byte seed), mode 0600, written atomically
  identity.json  {"agent_id", "tenant", "switch", "collector_public_key", "url", "enrolled_at"}

`enroll(state_dir, url, token)` posts the public key with a one-time token to the collector
(`POST /api/v1/enroll`, docs/http-api.md) and writes identity.json. It refuses to replace an
existing identity unless `force=True`, which also makes a new key pair (a forced re-enrollment
is how an operator rotates a key that may have leaked).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from nacl.signing import SigningKey

from . import __version__, wire
from .errors import IdentityError
from .logs import get_logger
from .uplink import error_text

KEY_FILE = "agent.key"
IDENTITY_FILE = "identity.json"
ENROLL_PATH = "/api/v1/enroll"
log = get_logger("cdrstats.agent.identity")


@dataclass(frozen=True, slots=True)
class Identity:
    agent_id: str
    tenant: str
    switch: str
    collector_public_key: str
    """Base64 Ed25519 key the collector signs commands with."""
    url: str
    """The collector URL the agent enrolled with (used when `collector.urls` is empty)."""
    enrolled_at: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Identity:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        fields = ("agent_id", "tenant", "switch", "collector_public_key", "url")
        bad = [f for f in fields if not isinstance(doc.get(f), str) or not doc.get(f)]
        if bad:
            raise ValueError(f"missing or empty: {', '.join(bad)}")
        return cls(**{f: doc[f] for f in (*fields, "enrolled_at") if f in doc})


def ensure_state_dir(state_dir: Path) -> Path:
    """Create the state directory (mode 0700) if needed."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise IdentityError(f"{state_dir}: cannot create the state directory: {exc}") from None
    return state_dir


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed or (never) widened it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_key(state_dir: Path) -> SigningKey:
    path = state_dir / KEY_FILE
    try:
        text = path.read_text("ascii")
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise IdentityError(
            f"{path}: no agent key; enroll first: cdrstats-agent enroll URL TOKEN"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"{path}: cannot read the agent key: {exc}") from None
    if mode & 0o077:
        log.warning("key_file_mode", path=str(path), mode=oct(mode), expected="0o600")
    try:
        return wire.signing_key_from_text(text)
    except ValueError as exc:
        raise IdentityError(f"{path}: not a valid agent key: {exc}") from None


def write_key(state_dir: Path, key: SigningKey) -> None:
    """Store the private key atomically with mode 0600 (replacing any previous one)."""
    ensure_state_dir(state_dir)
    _write_atomic(state_dir / KEY_FILE, (wire.key_to_text(key) + "\n").encode(), 0o600)


def load_or_create_key(state_dir: Path) -> SigningKey:
    if (state_dir / KEY_FILE).exists():
        return load_key(state_dir)
    key = SigningKey.generate()
    write_key(state_dir, key)
    log.info("key_created", path=str(state_dir / KEY_FILE))
    return key


def load_identity(state_dir: Path) -> Identity | None:
    """The enrolled identity, or None if the agent is not enrolled."""
    path = state_dir / IDENTITY_FILE
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"{path}: cannot read: {exc}") from None
    try:
        return Identity.from_json(text)
    except ValueError as exc:
        raise IdentityError(f"{path}: not a valid identity file: {exc}") from None


def save_identity(state_dir: Path, identity: Identity) -> None:
    ensure_state_dir(state_dir)
    _write_atomic(state_dir / IDENTITY_FILE, identity.to_json().encode(), 0o600)


def load_agent(state_dir: Path) -> tuple[Identity, SigningKey]:
    """Identity and key of an enrolled agent; IdentityError with what to do otherwise."""
    identity = load_identity(state_dir)
    if identity is None:
        raise IdentityError(
            f"{state_dir / IDENTITY_FILE}: not enrolled; run: cdrstats-agent enroll URL TOKEN"
        )
    return identity, load_key(state_dir)


async def enroll(
    state_dir: Path,
    url: str,
    token: str,
    *,
    force: bool = False,
    timeout_s: float = 30.0,
    hostname: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Identity:
    """Enroll this agent with the collector at `url` using a one-time `token`."""
    url = url.rstrip("/")
    existing = load_identity(state_dir)
    if existing is not None and not force:
        raise IdentityError(
            f"already enrolled as agent {existing.agent_id} (tenant {existing.tenant}, switch"
            f" {existing.switch}) with {existing.url}; use --force to enroll again with a new key"
        )
    key = SigningKey.generate() if force else load_or_create_key(ensure_state_dir(state_dir))
    request = {
        "token": token,
        "public_key": wire.key_to_text(key.verify_key),
        "hostname": hostname or socket.gethostname(),
        "version": __version__,
    }
    try:
        async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
            response = await client.post(url + ENROLL_PATH, json=request)
    except httpx.HTTPError as exc:
        raise IdentityError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code == 401:
        raise IdentityError(
            f"{url} refused the enrollment token: {error_text(response)}"
            " (tokens are single-use and expire; ask for a new one)"
        )
    if response.status_code != 201:
        raise IdentityError(
            f"{url} answered {response.status_code} to the enrollment: {error_text(response)}"
        )
    identity = _identity_from(response, url)
    if force:
        write_key(ensure_state_dir(state_dir), key)
    save_identity(state_dir, identity)
    log.info("enrolled", agent=identity.agent_id, tenant=identity.tenant, switch=identity.switch)
    return identity


def _identity_from(response: httpx.Response, url: str) -> Identity:
    try:
        doc: Any = response.json()
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        names = ("agent_id", "tenant", "switch", "collector_public_key")
        bad = [k for k in names if not isinstance(doc.get(k), str) or not doc.get(k)]
        if bad:
            raise ValueError(f"missing or empty: {', '.join(bad)}")
        values: dict[str, str] = {k: doc[k] for k in names}
        wire.verify_key_from_text(values["collector_public_key"])
    except ValueError as exc:
        raise IdentityError(f"{url} answered the enrollment with a bad body: {exc}") from None
    return Identity(
        agent_id=values["agent_id"],
        tenant=values["tenant"],
        switch=values["switch"],
        collector_public_key=values["collector_public_key"],
        url=url,
        enrolled_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )

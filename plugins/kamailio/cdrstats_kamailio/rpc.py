"""A small JSON-RPC 2.0 client for Kamailio's jsonrpcs module over HTTP (xhttp)."""

from __future__ import annotations

import itertools
from typing import Any

import httpx


class RpcError(Exception):
    """Kamailio answered the call with a JSON-RPC error (bad params, unknown table...)."""

    def __init__(self, method: str, code: Any, message: str) -> None:
        self.method, self.code, self.message = method, code, message
        super().__init__(f"{method}: error {code}: {message}")


class RpcUnavailable(ConnectionError):
    """Kamailio's RPC endpoint cannot be reached or answered something that is not JSON-RPC."""


class RpcClient:
    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self._ids = itertools.count(1)
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def call(self, method: str, *params: Any) -> Any:
        body = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": next(self._ids)}
        try:
            resp = await self._client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise RpcUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not ("result" in doc or "error" in doc):
            raise RpcUnavailable(
                f"{self.url}: HTTP {resp.status_code}, not a JSON-RPC answer: {resp.text[:120]!r}"
            )
        if "error" in doc:
            err = doc["error"] if isinstance(doc["error"], dict) else {"message": doc["error"]}
            raise RpcError(method, err.get("code"), str(err.get("message", "")))
        return doc.get("result")

    async def aclose(self) -> None:
        await self._client.aclose()

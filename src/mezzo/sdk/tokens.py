"""``client.tokens``: API tokens with roles and namespace scopes (admin only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mezzo.sdk.client import Mezzo


class TokensClient:
    def __init__(self, client: Mezzo) -> None:
        self._client = client

    async def create(
        self, name: str, role: str, namespaces: list[str] | None = None, ttl: str | float | None = None
    ) -> dict[str, Any]:
        """Create a token; the plaintext is in ``["token"]`` and is never shown again."""
        body = {"name": name, "role": role, "namespaces": namespaces or ["*"], "ttl": ttl}
        return await self._client.request("POST", "/v1/tokens", json=body)  # type: ignore[no-any-return]

    async def list(self) -> list[dict[str, Any]]:
        return (await self._client.request("GET", "/v1/tokens"))["items"]  # type: ignore[no-any-return]

    async def revoke(self, id_or_name: str) -> dict[str, Any]:
        return (await self._client.request("DELETE", f"/v1/tokens/{id_or_name}"))["revoked"]  # type: ignore[no-any-return]

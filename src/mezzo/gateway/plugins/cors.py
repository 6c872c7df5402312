"""cors: answers preflight requests and adds CORS headers to responses."""

from __future__ import annotations

from pydantic import Field

from mezzo.gateway.http import Reply
from mezzo.gateway.plugins import Config, Ctx, Plugin, register


class CorsConfig(Config):
    allow_origins: list[str] = Field(default_factory=lambda: ["*"], description='"*" or exact origins')
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    allow_headers: list[str] = Field(default_factory=lambda: ["*"])
    expose_headers: list[str] = Field(default_factory=list)
    max_age: int = Field(5, ge=0)
    allow_credentials: bool = False


@register
class Cors(Plugin):
    name = "cors"
    priority = 4000
    schema = CorsConfig

    def _origin(self, ctx: Ctx) -> str | None:
        origin = ctx.request.header(b"origin")
        if origin is None:
            return None
        allowed = self.conf.allow_origins
        if "*" in allowed:
            return origin if self.conf.allow_credentials else "*"
        return origin if origin in allowed else None

    def rewrite(self, ctx: Ctx) -> Reply | None:
        origin = self._origin(ctx)
        if origin is None:
            return None
        headers = ctx.response_headers
        headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
        if origin != "*":
            headers.append((b"vary", b"Origin"))
        if self.conf.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        if self.conf.expose_headers:
            headers.append((b"access-control-expose-headers", ",".join(self.conf.expose_headers).encode()))
        request = ctx.request
        if request.method == "OPTIONS" and request.header(b"access-control-request-method"):
            asked = request.header(b"access-control-request-headers") or ""
            allow_headers = asked if "*" in self.conf.allow_headers else ",".join(self.conf.allow_headers)
            return Reply(204, b"", {
                "access-control-allow-methods": ",".join(self.conf.allow_methods),
                "access-control-allow-headers": allow_headers,
                "access-control-max-age": str(self.conf.max_age),
            })
        return None

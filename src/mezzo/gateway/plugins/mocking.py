"""mocking: answer with a fixed status, headers and body, without any upstream (design-first APIs, tests)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mezzo.gateway.http import Reply
from mezzo.gateway.plugins import Config, Ctx, Plugin, register


class MockingConfig(Config):
    status: int = Field(200, ge=100, le=599)
    content_type: str = "application/json"
    body: Any = Field(None, description="a string is sent as is; anything else as JSON")
    headers: dict[str, str] = Field(default_factory=dict)


@register
class Mocking(Plugin):
    name = "mocking"
    priority = 10900
    schema = MockingConfig

    def access(self, ctx: Ctx) -> Reply:
        body = self.conf.body if self.conf.body is not None else b""
        reply = Reply(self.conf.status, body, self.conf.headers, content_type=self.conf.content_type)
        reply.headers["x-mock-by"] = "mezzo"
        return reply

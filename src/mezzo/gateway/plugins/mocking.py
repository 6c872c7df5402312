"""mocking: answer with a fixed status, headers and body, without any upstream (design-first APIs, tests)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mezzo.gateway.http import Reply
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.proxy_rewrite import HeaderValue, ResponseHeaderName


class MockingConfig(Config):
    status: int = Field(200, ge=200, le=599, description="a final status: a 1xx would leave the client waiting")
    content_type: HeaderValue = "application/json"
    body: Any = Field(None, description="a string is sent as is; anything else as JSON")
    headers: dict[ResponseHeaderName, HeaderValue] = Field(default_factory=dict)


@register
class Mocking(Plugin):
    name = "mocking"
    # after the auth plugins and consumer-restriction (as in APISIX, where auth runs in the rewrite
    # phase before mocking's access): a mocked route keeps its access checks; before the limits
    priority = 2390
    schema = MockingConfig

    def __init__(self, conf: MockingConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.headers = {"x-mock-by": "mezzo"} | {k.lower(): v for k, v in conf.headers.items()}

    def access(self, ctx: Ctx) -> Reply:
        body = self.conf.body if self.conf.body is not None else b""
        return Reply(self.conf.status, body, self.headers, content_type=self.conf.content_type)

"""request-id: every request gets an id (kept when the client sent one), passed upstream and returned."""

from __future__ import annotations

import uuid

from pydantic import Field

from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.proxy_rewrite import HeaderName


class RequestIdConfig(Config):
    header_name: HeaderName = Field("X-Request-Id", min_length=1)
    include_in_response: bool = True


@register
class RequestId(Plugin):
    name = "request-id"
    priority = 12015
    schema = RequestIdConfig

    def __init__(self, conf: RequestIdConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.header = conf.header_name.lower().encode("latin-1")

    def rewrite(self, ctx: Ctx) -> None:
        value = ctx.request.header(self.header)
        if not value:
            value = uuid.uuid4().hex
            ctx.request.set_header(self.header, value)  # an empty one from the client is replaced, not doubled
        ctx.vars["request_id"] = value
        if self.conf.include_in_response:
            ctx.response_headers.append((self.header, value.encode("latin-1")))

    def header_filter(self, ctx: Ctx, headers: list[tuple[bytes, bytes]]) -> None:
        # an upstream that returns the header itself keeps its own (as in APISIX): never two of them
        if self.conf.include_in_response and any(name == self.header for name, _ in headers):
            ctx.response_headers[:] = [h for h in ctx.response_headers if h[0] != self.header]

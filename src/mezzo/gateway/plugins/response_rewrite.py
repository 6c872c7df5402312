"""response-rewrite: change the status and headers of upstream responses."""

from __future__ import annotations

from pydantic import Field

from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.proxy_rewrite import HeaderValue, ResponseHeaderName


class ResponseRewriteConfig(Config):
    status_code: int | None = Field(None, ge=200, le=599)
    headers: dict[ResponseHeaderName, HeaderValue] = Field(default_factory=dict,
                                                           description="set (an empty value removes)")


@register
class ResponseRewrite(Plugin):
    name = "response-rewrite"
    priority = 899
    schema = ResponseRewriteConfig

    def __init__(self, conf: ResponseRewriteConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.names = {k.lower().encode("latin-1"): v.encode("latin-1") for k, v in conf.headers.items()}

    def header_filter(self, ctx: Ctx, headers: list[tuple[bytes, bytes]]) -> None:
        if self.conf.status_code is not None:
            ctx.status = self.conf.status_code
        if self.names:
            headers[:] = [(k, v) for k, v in headers if k not in self.names]
            headers.extend((k, v) for k, v in self.names.items() if v)

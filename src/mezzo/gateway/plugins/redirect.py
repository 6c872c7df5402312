"""redirect: answer with a redirect to another URI (``{param}`` templates), or from HTTP to HTTPS."""

from __future__ import annotations

from pydantic import Field, model_validator

from mezzo.gateway.http import Reply
from mezzo.gateway.plugins import Config, Ctx, Plugin, register


class RedirectConfig(Config):
    uri: str | None = None
    http_to_https: bool = False
    ret_code: int = Field(302, ge=300, le=399)
    append_query_string: bool = False

    @model_validator(mode="after")
    def _one(self) -> RedirectConfig:
        if (self.uri is None) == (not self.http_to_https):
            raise ValueError("give either uri or httpToHttps")
        return self


@register
class Redirect(Plugin):
    name = "redirect"
    priority = 900
    schema = RedirectConfig

    def access(self, ctx: Ctx) -> Reply:
        request = ctx.request
        if self.conf.http_to_https:
            location = f"https://{request.host.split(':')[0]}{request.target}"
            return Reply(301 if self.conf.ret_code == 302 else self.conf.ret_code, b"", {"location": location})
        location = self.conf.uri or "/"
        for key, value in ctx.params.items():
            location = location.replace("{" + key + "}", value)
        if self.conf.append_query_string and request.query:
            location += ("&" if "?" in location else "?") + request.query
        return Reply(self.conf.ret_code, b"", {"location": location})

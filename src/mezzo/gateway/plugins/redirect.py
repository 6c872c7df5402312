"""redirect: answer with a redirect to another URI (``{param}`` templates), or from HTTP to HTTPS."""

from __future__ import annotations

from urllib.parse import quote

from pydantic import Field, model_validator

from mezzo.gateway.http import PATH_SAFE, Reply
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.proxy_rewrite import HeaderValue
from mezzo.gateway.router import _bare_host as bare_host


class RedirectConfig(Config):
    uri: HeaderValue | None = Field(None, min_length=1)
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

    def __init__(self, conf: RedirectConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        # httpToHttps answers 301 unless retCode was given
        self.https_code = conf.ret_code if "ret_code" in conf.model_fields_set else 301

    def access(self, ctx: Ctx) -> Reply | None:
        request = ctx.request
        if self.conf.http_to_https:
            if request.scheme == "https":
                return None  # already there: redirecting would loop
            location = f"https://{bare_host(request.host)}{request.target}"
            return Reply(self.https_code, b"", {"location": location})
        location = self.conf.uri or "/"
        for key, value in ctx.params.items():
            # the parameter was decoded from the path: encoded again, it cannot end the header (CR LF),
            # start a query or fragment, or turn the path into another host ("\\")
            location = location.replace("{" + key + "}", quote(value, safe=PATH_SAFE))
        if self.conf.append_query_string and request.query:
            location += ("&" if "?" in location else "?") + request.query
        return Reply(self.conf.ret_code, b"", {"location": location})

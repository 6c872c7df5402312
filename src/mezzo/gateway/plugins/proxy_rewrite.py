"""proxy-rewrite: change the path (plain, ``{param}`` template, or regex), host, method and headers sent upstream."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from mezzo.gateway.plugins import Config, Ctx, Plugin, register


class HeaderOps(Config):
    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class ProxyRewriteConfig(Config):
    uri: str | None = Field(None, description='new path; "{id}" takes a route path parameter')
    regex_uri: list[str] | None = Field(None, description='[pattern, replacement] applied to the path')
    host: str | None = None
    method: str | None = None
    headers: HeaderOps = Field(default_factory=HeaderOps)

    @field_validator("regex_uri")
    @classmethod
    def _pair(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if len(value) != 2:
                raise ValueError("regexUri is [pattern, replacement]")
            re.compile(value[0])
        return value


@register
class ProxyRewrite(Plugin):
    name = "proxy-rewrite"
    priority = 1008
    schema = ProxyRewriteConfig

    def __init__(self, conf: ProxyRewriteConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.regex = re.compile(conf.regex_uri[0]) if conf.regex_uri else None

    def rewrite(self, ctx: Ctx) -> None:
        request = ctx.request
        conf = self.conf
        if conf.uri is not None:
            path = conf.uri
            for key, value in ctx.params.items():
                path = path.replace("{" + key + "}", value)
            request.path, _, query = path.partition("?")
            if query:
                request.query = f"{query}&{request.query}" if request.query else query
                request._args = None
        elif self.regex is not None:
            request.path = self.regex.sub(conf.regex_uri[1].replace("$", "\\"), request.path, count=1)
        if conf.host is not None:
            request.host = conf.host
            request.set_header(b"host", conf.host)
        if conf.method is not None:
            request.method = conf.method.upper()
        for name in conf.headers.remove:
            request.set_header(name.lower().encode("latin-1"), None)
        for name, value in conf.headers.set.items():
            request.set_header(name.lower().encode("latin-1"), value)
        for name, value in conf.headers.add.items():
            request.headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))

"""cors: answers preflight requests and adds CORS headers to responses."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from mezzo.gateway.http import Reply
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.proxy_rewrite import HeaderName, Method

# the upstream's own answer to these is replaced by the gateway's when the gateway answers CORS
_ANSWERED = frozenset({b"access-control-allow-origin", b"access-control-allow-credentials",
                       b"access-control-expose-headers"})


class CorsConfig(Config):
    allow_origins: list[str] = Field(default_factory=lambda: ["*"], description='"*" or exact origins')
    allow_origins_by_regex: list[str] = Field(default_factory=list,
                                              description="regexes; an origin that matches one in full is allowed")
    allow_methods: list[Method] = Field(default_factory=lambda: ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    allow_headers: list[HeaderName] = Field(default_factory=lambda: ["*"])
    expose_headers: list[HeaderName] = Field(default_factory=list)
    max_age: int = Field(5, ge=0)
    allow_credentials: bool = False

    @field_validator("allow_origins_by_regex")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for i, pattern in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"allowOriginsByRegex[{i}] {pattern!r} is not a valid regex: {exc}") from None
        return value

    @model_validator(mode="after")
    def _origins(self) -> CorsConfig:
        if self.allow_origins_by_regex:
            if "allow_origins" not in self.model_fields_set:
                self.allow_origins = []  # the regexes alone, not beside the default "*"
            elif "*" in self.allow_origins:
                raise ValueError('allowOrigins "*" allows every origin, so allowOriginsByRegex would do nothing: '
                                 "drop one of them")
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError('allowOrigins "*" (the default) with allowCredentials: true would let any website make '
                             "credentialed requests (with its visitors' cookies) to this route: list the origins in "
                             "allowOrigins, or match them with allowOriginsByRegex")
        return self


@register
class Cors(Plugin):
    name = "cors"
    priority = 4000
    schema = CorsConfig

    def __init__(self, conf: CorsConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.any_origin = "*" in conf.allow_origins  # never with credentials: the schema refuses that
        self.origins = frozenset(conf.allow_origins)
        self.patterns = tuple(re.compile(p) for p in conf.allow_origins_by_regex)
        self.methods = None if "*" in conf.allow_methods else ",".join(conf.allow_methods)
        self.headers = None if "*" in conf.allow_headers else ",".join(conf.allow_headers)
        self.expose = ",".join(conf.expose_headers).encode("latin-1")
        self.max_age = str(conf.max_age)

    def _origin(self, origin: str) -> str | None:
        if self.any_origin:
            return "*"
        if origin in self.origins or any(p.fullmatch(origin) for p in self.patterns):
            return origin
        return None

    def rewrite(self, ctx: Ctx) -> Reply | None:
        request = ctx.request
        headers = ctx.response_headers
        origin = request.header(b"origin")
        if not self.any_origin:  # the answer depends on Origin, also when it is absent or refused: a
            headers.append((b"vary", b"Origin"))  # shared cache must not hand one origin's answer to another
        if origin is None:
            return None
        allowed = self._origin(origin)
        if allowed is None:
            return None
        headers.append((b"access-control-allow-origin", allowed.encode("latin-1")))
        if self.conf.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        if self.expose:
            headers.append((b"access-control-expose-headers", self.expose))
        method = request.header(b"access-control-request-method")
        if request.method == "OPTIONS" and method:
            # "*" answers what the browser asked: a credentialed request reads "*" literally, and even
            # without credentials "*" does not cover Authorization
            answer = {"access-control-allow-methods": self.methods or method,
                      "access-control-max-age": self.max_age}
            allow_headers = self.headers or request.header(b"access-control-request-headers")
            if allow_headers:
                answer["access-control-allow-headers"] = allow_headers
            return Reply(204, b"", answer)
        return None

    def header_filter(self, ctx: Ctx, headers: list[tuple[bytes, bytes]]) -> None:
        if any(name == b"access-control-allow-origin" for name, _ in ctx.response_headers):
            headers[:] = [(k, v) for k, v in headers if k not in _ANSWERED]

"""proxy-rewrite: change the path (plain, ``{param}`` template, or regex), host, method and headers sent upstream."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import quote

from pydantic import AfterValidator, Field, field_validator

from mezzo.gateway.http import HOP_BY_HOP
from mezzo.gateway.plugins import Config, Ctx, Plugin, register

# What may go into a header, checked when a manifest is applied (the plugins that write headers share
# these): a name or method that is not an HTTP token, or a value with a line break or beyond Latin-1,
# would garble the message on the wire or fail on every request.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NOT_IN_A_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")
_SET_BY_THE_GATEWAY = frozenset(n.decode() for n in HOP_BY_HOP) | {"content-length"}


def _token(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{value!r} is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~ only)")
    return value


def _header_value(value: str) -> str:
    if _NOT_IN_A_VALUE.search(value):
        raise ValueError(f"{value!r} cannot be sent in a header (control characters or characters beyond Latin-1)")
    return value


def _response_header(name: str) -> str:
    if name.lower() in _SET_BY_THE_GATEWAY:
        raise ValueError(f"{name} is set by the gateway, a plugin cannot set it")
    return name


HeaderName = Annotated[str, AfterValidator(_token)]
Method = Annotated[str, AfterValidator(_token)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]
ResponseHeaderName = Annotated[HeaderName, AfterValidator(_response_header)]


class HeaderOps(Config):
    set: dict[HeaderName, HeaderValue] = Field(default_factory=dict)
    add: dict[HeaderName, HeaderValue] = Field(default_factory=dict)
    remove: list[HeaderName] = Field(default_factory=list)


_GROUP = re.compile(r"\$(\d+)")  # "$1" in a replacement, as in APISIX (nginx)


def _replacement(pattern: re.Pattern[str], replacement: str) -> str:
    """``replacement`` in Python's syntax (``$1`` is ``\\g<1>``); ValueError unless it suits ``pattern``."""
    template = _GROUP.sub(r"\\g<\1>", replacement)
    names = {index: name for name, index in pattern.groupindex.items()}
    # a pattern with the same groups that matches "": expanding the template there checks every reference
    same_groups = "".join(f"(?P<{names[i]}>)" if i in names else "()" for i in range(1, pattern.groups + 1))
    try:
        re.compile(same_groups).sub(template, "", count=1)
    except (re.error, IndexError) as exc:
        raise ValueError(f"regexUri replacement {replacement!r} does not fit the pattern: {exc}") from None
    return template


class ProxyRewriteConfig(Config):
    uri: str | None = Field(None, min_length=1, description='new path; "{id}" takes a route path parameter')
    regex_uri: list[str] | None = Field(None, description="[pattern, replacement] applied to the path")
    host: HeaderValue | None = Field(None, min_length=1)
    method: Method | None = None
    headers: HeaderOps = Field(default_factory=HeaderOps)

    @field_validator("uri")
    @classmethod
    def _arguments(cls, value: str | None) -> str | None:
        _, _, query = (value or "").partition("?")
        if any(c <= " " or c > "~" or c == "#" for c in query):  # sent upstream as written
            raise ValueError(f"the arguments of {value!r} must be percent-encoded (no space, #, control or "
                             "non-ASCII character)")
        return value

    @field_validator("regex_uri")
    @classmethod
    def _pair(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if len(value) != 2:
                raise ValueError("regexUri is [pattern, replacement]")
            try:
                pattern = re.compile(value[0])
            except re.error as exc:
                raise ValueError(f"regexUri pattern {value[0]!r} is not a valid regex: {exc}") from None
            _replacement(pattern, value[1])
        return value


@register
class ProxyRewrite(Plugin):
    name = "proxy-rewrite"
    priority = 1008
    schema = ProxyRewriteConfig

    def __init__(self, conf: ProxyRewriteConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.regex = re.compile(conf.regex_uri[0]) if conf.regex_uri else None
        self.template = _replacement(self.regex, conf.regex_uri[1]) if self.regex and conf.regex_uri else ""
        # the uri's own "?" starts its arguments; one a parameter brings is data
        self.path, sep, query = (conf.uri or "").partition("?")
        self.query = query if sep else None

    def rewrite(self, ctx: Ctx) -> None:
        request = ctx.request
        conf = self.conf
        if conf.uri is not None:
            path, query = self.path, self.query
            for key, value in ctx.params.items():
                name = "{" + key + "}"
                path = path.replace(name, value)  # the decoded path: "?" or "#" in it is encoded upstream
                if query:
                    query = query.replace(name, quote(value, safe=""))
            request.path = path
            if query:
                request.query = f"{query}&{request.query}" if request.query else query
                request._args = None
        elif self.regex is not None:
            request.path = self.regex.sub(self.template, request.path, count=1)
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

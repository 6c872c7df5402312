"""Request variables by APISIX's (nginx's) names, for plugins that take them in their configuration.

``host``, ``uri`` (the path as routed), ``request_uri`` (the client's target), ``args``,
``request_method``, ``scheme``, ``remote_addr``, ``route_name``, ``consumer_name``, and the
families ``http_<header>`` (``http_x_user_id`` is the ``X-User-Id`` header), ``arg_<name>`` and
``cookie_<name>``. Names may carry a leading ``$``. An unknown name is refused when the
configuration is loaded; a variable the request lacks is ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mezzo.gateway.router import _bare_host as bare_host

Getter = Callable[[Any], "str | None"]

_SIMPLE: dict[str, Getter] = {
    "host": lambda ctx: bare_host(ctx.request.host),
    "uri": lambda ctx: ctx.request.path,
    "request_uri": lambda ctx: request_uri(ctx.request),
    "args": lambda ctx: ctx.request.query or None,
    "request_method": lambda ctx: ctx.request.method,
    "scheme": lambda ctx: ctx.request.scheme,
    "remote_addr": lambda ctx: ctx.request.client_ip,
    "route_name": lambda ctx: ctx.route.name if ctx.route is not None else None,
    "consumer_name": lambda ctx: ctx.consumer.name if ctx.consumer is not None else None,
}


def request_uri(request: Any) -> str:
    """The target as the client sent it (before any rewrite), as nginx's ``$request_uri``."""
    raw = request.raw_target
    return raw.decode("latin-1") if raw is not None else request.target  # type: ignore[no-any-return]


def getter(name: str) -> Getter:
    """A function reading variable ``name`` from a request's ``Ctx``; ValueError for an unknown name."""
    name = name.removeprefix("$")
    found = _SIMPLE.get(name)
    if found is not None:
        return found
    if name.startswith("http_") and len(name) > 5:
        header = name[5:].lower().replace("_", "-").encode("latin-1")
        return lambda ctx: ctx.request.header(header)  # type: ignore[no-any-return]
    if name.startswith("arg_") and len(name) > 4:
        arg = name[4:]
        return lambda ctx: ctx.request.args.get(arg)  # type: ignore[no-any-return]
    if name.startswith("cookie_") and len(name) > 7:
        cookie = name[7:]
        return lambda ctx: ctx.request.cookies.get(cookie)  # type: ignore[no-any-return]
    raise ValueError(f"unknown variable {name!r}: use host, uri, request_uri, args, request_method, scheme, "
                     "remote_addr, route_name, consumer_name, http_<header>, arg_<name> or cookie_<name>")


def check(names: list[str]) -> list[str]:
    """A pydantic validator's body: every name is a known variable."""
    for name in names:
        getter(name)
    return names

"""Gateway plugins: one module each, with a pydantic schema for its configuration.

A plugin may implement any of these phases (as APISIX does), each optional:

- ``rewrite(ctx)``: change the request before anything checks it (proxy-rewrite, request-id);
- ``access(ctx)``: authenticate, authorize, limit; return a ``Reply`` to answer without proxying;
- ``header_filter(ctx, status, headers)``: change the response status and headers (sync);
- ``log(ctx)``: after the response went out (metrics, tracing; sync).

``rewrite`` and ``access`` may be sync or async; a sync one costs no task switch. Plugins of
a route run in descending ``priority`` (global rules' plugins first), all rewrites before all
accesses. A plugin that raises is logged and answered 500: it never leaves a connection hanging.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from mezzo.config.secrets import PREFIX as SEALED
from mezzo.gateway.http import Reply, Request
from mezzo.node.settings import mask_url

MODULES = ("key_auth", "basic_auth", "limit_count", "prometheus", "request_id", "proxy_rewrite", "mocking",
           "cors", "ip_restriction", "response_rewrite", "fault_injection", "redirect",
           "jwt_auth", "hmac_auth", "consumer_restriction", "request_validation", "limit_req", "limit_conn",
           "api_breaker", "traffic_split", "proxy_cache", "opentelemetry")


class Config(BaseModel):
    """Base of plugin schemas: camelCase or snake_case keys, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)


class Ctx:
    """One request's way through the gateway."""

    __slots__ = (
        "bytes_sent",
        "consumer",
        "error",
        "hash_key",
        "node",
        "params",
        "reply",
        "request",
        "response_headers",
        "route",
        "runtime",
        "started",
        "status",
        "upstream",
        "vars",
    )

    def __init__(self, request: Request, runtime: Any, started: float, route: Any = None,
                 params: dict[str, str] | None = None) -> None:
        self.request = request
        self.route: Any = route
        self.params: dict[str, str] = {} if params is None else params
        self.consumer: Any = None  # the Consumer resource's compiled form, once authenticated
        self.vars: dict[str, Any] = {}
        self.upstream: Any = None if route is None else route.upstream  # the Balancer (traffic-split may change it)
        self.hash_key: str | None = None
        self.started = started
        self.status = 0
        self.node: Any = None
        self.runtime = runtime
        self.response_headers: list[tuple[bytes, bytes]] = []  # added to whatever answers
        self.reply: Reply | None = None
        self.bytes_sent = 0
        self.error: str | None = None


class Plugin:
    name: ClassVar[str]
    priority: ClassVar[int] = 0
    schema: ClassVar[type[Config]] = Config
    # fields (snake_case) holding a URL that may carry a password: such a URL is sealed at rest
    secret_urls: ClassVar[tuple[str, ...]] = ()

    def __init__(self, conf: Any, runtime: Any) -> None:
        self.conf = conf
        self.runtime = runtime

    def close(self) -> None:
        """Release what the plugin holds (timers, connections) when its route goes away."""


PLUGINS: dict[str, type[Plugin]] = {}


def register(cls: type[Plugin]) -> type[Plugin]:
    PLUGINS[cls.name] = cls
    return cls


def _load() -> None:
    # every module, even when one was imported on its own before (its import registers only itself)
    for module in MODULES:
        importlib.import_module(f"mezzo.gateway.plugins.{module}")


def validate_plugin_configs(value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    _load()
    for name, conf in value.items():
        cls = PLUGINS.get(name)
        if cls is None:
            raise ValueError(f"unknown plugin {name!r}; known: {', '.join(sorted(PLUGINS))}")
        try:
            cls.schema.model_validate(conf or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"plugin {name}: {where + ': ' if where else ''}{first['msg']}") from None
    return value


def secret_paths(plugins: Any) -> Iterator[tuple[str, str]]:
    """(plugin, key) of each secret in a ``plugins`` mapping as written (validated or not): a URL
    field of ``secret_urls`` (under its snake_case or camelCase key) that carries a password, or is
    already a ciphertext (``get -o yaml`` given back). A URL without a password stays readable."""
    if not isinstance(plugins, dict):
        return
    _load()
    for name, conf in plugins.items():
        cls = PLUGINS.get(name)
        if cls is None or not isinstance(conf, dict):
            continue
        for field in cls.secret_urls:
            for key in dict.fromkeys((field, to_camel(field))):
                value = conf.get(key)
                if isinstance(value, str) and (value.startswith(SEALED) or _has_password(value)):
                    yield name, key


def _has_password(url: str) -> bool:
    """A password before the host (``redis://:pw@host``) or in the query (``?password=pw``, which
    redis-py's ``from_url`` reads too): what the settings' URL masking hides."""
    try:
        return mask_url(url) != url
    except ValueError:
        return False


def instantiate(configs: dict[str, dict[str, Any]], runtime: Any) -> list[Plugin]:
    _load()
    out = [PLUGINS[name](PLUGINS[name].schema.model_validate(conf or {}), runtime) for name, conf in configs.items()]
    out.sort(key=lambda p: p.priority, reverse=True)
    return out


class Chain:
    """The plugins of one route, split by phase, with sync and async calls told apart up front."""

    __slots__ = ("access", "header_filter", "log", "plugins", "rewrite")

    def __init__(self, plugins: list[Plugin]) -> None:
        # bound methods, looked up once per configuration, not per request
        self.plugins = plugins
        self.rewrite = tuple((p.rewrite, inspect.iscoroutinefunction(p.rewrite)) for p in plugins if hasattr(p, "rewrite"))
        self.access = tuple((p.access, inspect.iscoroutinefunction(p.access)) for p in plugins if hasattr(p, "access"))
        self.header_filter = tuple(p.header_filter for p in plugins if hasattr(p, "header_filter"))
        self.log = tuple(p.log for p in plugins if hasattr(p, "log"))

    async def before(self, ctx: Ctx) -> Reply | None:
        for phase in (self.rewrite, self.access):
            for call, is_async in phase:
                result: Reply | Awaitable[Reply | None] | None = call(ctx)
                if is_async:
                    result = await result  # type: ignore[misc]
                if result is not None:
                    return result  # type: ignore[return-value]
        return None

    def close(self) -> None:
        for plugin in self.plugins:
            plugin.close()

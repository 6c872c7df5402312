"""The ``Cache`` kind: a cache namespace, where its keys live and how it behaves."""

from __future__ import annotations

import importlib.util
from typing import Literal
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from pydantic import Field, ValidationInfo, field_validator

from mezzo.cache.distributed.backend import HealthPolicy, NodeAddress, NodeTLS
from mezzo.resources.kinds import Column, KindSpec
from mezzo.resources.model import SpecModel
from mezzo.resources.types import ByteSize, Duration

Backend = Literal["embedded", "redis", "redis-cluster", "nodes"]
Protocol = Literal["redis", "memcached"]
DISTRIBUTED = ("redis", "redis-cluster", "nodes")
TLS_OPTIONS = ("ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile")  # of rediss:// URLs, as redis-py's
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # passwordEnv: an environment variable's name


def parse_redis_url(url: str, password_env: str | None = None) -> NodeAddress:
    """``redis://[user:password@]host[:port][/db]``, or ``rediss://...`` for TLS with redis-py's URL
    options (see ``_tls``). ``password_env`` names the variable that holds the password instead."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{_shown(url)}: use redis://host:port[/db] (rediss:// for TLS)")
    port = _port(url, parts, 6379)
    path = parts.path.strip("/")
    if path and (not path.isdigit() or int(path) > 15):
        raise ValueError(f"{_shown(url)}: the database is a number from 0 to 15")
    return NodeAddress(parts.hostname or "", port, int(path or 0), unquote(parts.password) if parts.password else None,
                       unquote(parts.username) if parts.username else None, _tls(url, parts), password_env)


def _tls(url: str, parts: SplitResult) -> NodeTLS | None:
    """``rediss``: TLS with the system's CAs and hostname verification, unless the query says
    ``ssl_ca_certs=/path`` (a CA bundle, trusted besides the system's), ``ssl_cert_reqs=none``
    (no verification at all: for tests only), ``ssl_certfile=/path[&ssl_keyfile=/path]`` (a
    client certificate). Files are paths on every Mezzo node, read when it connects."""
    if parts.scheme == "redis":
        # Its query was always ignored, malformed or not: resources stored so must still load.
        if any(name in TLS_OPTIONS for name, _ in parse_qsl(parts.query, keep_blank_values=True)):
            raise ValueError(f"{_shown(url)}: ssl_* options need TLS: use rediss://")
        return None
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"{_shown(url)}: the query is not name=value pairs") from None
    names = [name for name, _ in pairs]
    unknown = sorted(set(names) - set(TLS_OPTIONS))
    if unknown:
        raise ValueError(f"{_shown(url)}: unknown option {', '.join(unknown)} (rediss:// takes {', '.join(TLS_OPTIONS)})")
    if len(set(names)) != len(names):
        raise ValueError(f"{_shown(url)}: an option is given twice")
    options = dict(pairs)
    empty = sorted(name for name, value in options.items() if not value)
    if empty:
        raise ValueError(f"{_shown(url)}: {', '.join(empty)} is empty")
    reqs = options.get("ssl_cert_reqs", "required")
    if reqs not in ("required", "none"):
        raise ValueError(f"{_shown(url)}: ssl_cert_reqs is required (the default) or none (no verification: "
                         f"for tests only), not {reqs!r}")
    if reqs == "none" and "ssl_ca_certs" in options:
        raise ValueError(f"{_shown(url)}: ssl_ca_certs is unused with ssl_cert_reqs=none (nothing is verified)")
    if "ssl_keyfile" in options and "ssl_certfile" not in options:
        raise ValueError(f"{_shown(url)}: ssl_keyfile needs ssl_certfile (the client certificate it belongs to)")
    return NodeTLS(options.get("ssl_ca_certs"), reqs == "required", options.get("ssl_certfile"),
                   options.get("ssl_keyfile"))


def _shown(url: str) -> str:
    """``url`` quoted for an error, its password masked: errors are logged and sent back."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:  # no password (an unescaped #, / or ? in one would hide it from urlsplit)
        return repr(url)
    return repr(f"{scheme}{sep}{userinfo.split(':', 1)[0]}:****@{host}")


def _no_inline_password(urls: list[str | None]) -> None:
    for url in urls:
        if url and urlsplit(url).password is not None:
            raise ValueError(f"{_shown(url)} has a password: give it in the URL or in passwordEnv, not both "
                             "(passwordEnv keeps it out of the stored resource)")


def parse_memcached_url(url: str) -> NodeAddress:
    """``memcached://host[:port]`` (port 11211 by default): no user, password or database, which
    memcached's text protocol does not have (nor TLS: there is no ``memcacheds``)."""
    parts = urlsplit(url)
    if parts.scheme != "memcached":
        raise ValueError(f"{url!r}: use memcached://host:port")
    port = _port(url, parts, 11211)
    if parts.username or parts.password:
        raise ValueError(f"{_shown(url)}: memcached's text protocol has no authentication; give memcached://host:port")
    if parts.path.strip("/") or parts.query:
        raise ValueError(f"{url!r}: memcached has no databases; give memcached://host:port")
    return NodeAddress(parts.hostname or "", port)


def _port(url: str, parts: SplitResult, default: int) -> int:
    """The URL's port (``default`` when none), once it is known to name a host."""
    if not parts.hostname:
        raise ValueError(f"{_shown(url)} has no host")
    try:
        return parts.port or default
    except ValueError:
        raise ValueError(f"{_shown(url)} has an invalid port") from None


def node_protocol(url: str) -> Protocol:
    return "memcached" if urlsplit(url).scheme == "memcached" else "redis"


def parse_node_url(url: str, password_env: str | None = None) -> NodeAddress:
    """A node of backend ``nodes``: ``redis[s]://host:port[/db]`` or ``memcached://host:port``."""
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "memcached"):
        raise ValueError(f"{_shown(url)}: use redis://host:port[/db] (rediss:// for TLS) or memcached://host:port")
    return parse_memcached_url(url) if scheme == "memcached" else parse_redis_url(url, password_env)


class CacheNode(SpecModel):
    url: str = Field(description="redis://host:port[/db] (rediss:// for TLS) or memcached://host:port of the node "
                                 "(its primary)")
    name: str | None = Field(None, min_length=1, max_length=255,
                             description="its name on the ring (default host:port); keep it when the address moves")
    weight: int = Field(1, ge=1, le=1000, description="share of the keys, relative to the other nodes")
    replica: str | None = Field(None, description="redis://... of a replica of this Redis node that takes over when "
                                                  "it fails (memcached has no replication)")
    password_env: str | None = Field(None, max_length=255, pattern=ENV_NAME,
                                     description="environment variable holding the password of url and replica, "
                                                 "read on each Mezzo node when it connects")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parse_node_url(value)
        return value

    @field_validator("replica")
    @classmethod
    def _check_replica(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        url = info.data.get("url")
        if url is not None and node_protocol(url) == "memcached":
            raise ValueError("memcached has no replication: a memcached node cannot have a replica "
                             "(its share rehashes to the other nodes when it fails)")
        if node_protocol(value) == "memcached":
            raise ValueError("a replica is a Redis node: redis://host:port[/db]")
        parse_redis_url(value)
        return value

    @field_validator("password_env")
    @classmethod
    def _check_password_env(cls, value: str | None, info: ValidationInfo) -> str | None:
        url = info.data.get("url")
        if value is not None and url is not None and node_protocol(url) == "memcached":
            raise ValueError("memcached's text protocol has no authentication: a memcached node has no passwordEnv")
        if value is not None:
            _no_inline_password([url, info.data.get("replica")])
        return value

    @property
    def ring_name(self) -> str:
        return self.name or parse_node_url(self.url).label

    def addresses(self) -> tuple[NodeAddress, NodeAddress | None]:
        """The primary's and the replica's address (None without one), with ``password_env``."""
        replica = parse_redis_url(self.replica, self.password_env) if self.replica else None
        return parse_node_url(self.url, self.password_env), replica


class FailureDetection(SpecModel):
    timeout: Duration = Field(1.0, gt=0, le=60, description="per operation and connect")
    eject_after: int = Field(3, ge=1, le=1000, description="consecutive failures before a node is ejected")
    probe_interval: Duration = Field(0.1, gt=0, le=60, description="first probe of a failed node; doubles each time")
    probe_max_interval: Duration = Field(5.0, gt=0, le=3600, description="longest wait between probes")

    def policy(self) -> HealthPolicy:
        return HealthPolicy(self.timeout, self.eject_after, self.probe_interval,
                            max(self.probe_max_interval, self.probe_interval))


class NearCache(SpecModel):
    """Read by the SDK's near cache (stored and validated here)."""

    enabled: bool = False
    max_keys: int = Field(10_000, ge=1, le=10_000_000, description="keys held in each client process")
    max_ttl: Duration = Field(60.0, gt=0, le=86_400, alias="maxTTL", description="longest a key stays near")


class CacheSpec(SpecModel):
    backend: Backend = Field("embedded", description="where the keys live")
    url: str | None = Field(None, validate_default=True,
                            description="backend redis: redis://host:port[/db] (rediss:// for TLS)")
    urls: list[str] = Field(default_factory=list, validate_default=True,
                            description="backend redis-cluster: seed nodes, redis://host:port (rediss:// for TLS)")
    password_env: str | None = Field(None, max_length=255, pattern=ENV_NAME,
                                     description="backend redis and redis-cluster: environment variable holding the "
                                                 "password, read on each Mezzo node when it connects")
    nodes: list[CacheNode] = Field(default_factory=list, validate_default=True,
                                   description="backend nodes: independent Redis (or memcached) nodes on a ketama ring")
    database: int | None = Field(None, ge=0, le=15, description="the RESP SELECT index that reaches this namespace")
    default_ttl: Duration | None = Field(None, gt=0, alias="defaultTTL", description="TTL of writes that give none")
    max_memory: ByteSize | None = Field(None, gt=0, description="embedded: memory limit of the namespace")
    eviction: Literal["lru", "lfu", "noeviction"] = Field(
        "lru", description="embedded: what goes when maxMemory is reached (noeviction: writes that add are refused)")
    near_cache: NearCache = Field(default_factory=NearCache)
    failure_detection: FailureDetection = Field(default_factory=FailureDetection)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        _used_with("redis", value is not None, info, "required when backend is redis")
        if value is not None:
            _not_memcached(value)
            parse_redis_url(value)
        return value

    @field_validator("urls")
    @classmethod
    def _urls(cls, value: list[str], info: ValidationInfo) -> list[str]:
        _used_with("redis-cluster", bool(value), info, "give at least one seed node when backend is redis-cluster")
        for url in value:
            _not_memcached(url)
            if parse_redis_url(url).db != 0:
                raise ValueError(f"{_shown(url)}: Redis Cluster has only database 0")
        if len({parse_redis_url(url).tls for url in value}) > 1:
            raise ValueError("the seeds differ in scheme or TLS options: the cluster client uses one set for "
                             "every node of the cluster")
        return value

    @field_validator("password_env")
    @classmethod
    def _password_env(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        backend = info.data.get("backend")
        if backend not in ("redis", "redis-cluster"):
            raise ValueError(f"only used with backend redis or redis-cluster (this one is {backend}); "
                             "with backend nodes, give passwordEnv on each node")
        _no_inline_password([info.data.get("url"), *info.data.get("urls", [])])
        return value

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, value: list[CacheNode], info: ValidationInfo) -> list[CacheNode]:
        _used_with("nodes", bool(value), info, "give at least one node when backend is nodes")
        names = [n.ring_name for n in value]
        if len(set(names)) != len(names):
            raise ValueError("two nodes have the same ring name (host:port or name)")
        protocols = sorted({node_protocol(n.url) for n in value})
        if len(protocols) > 1:
            raise ValueError("the nodes of one namespace speak one protocol: these mix memcached:// and "
                             "redis:// nodes (declare a Cache for each)")
        addresses = [parse_node_url(u).label for n in value for u in (n.url, n.replica) if u]
        if len(set(addresses)) != len(addresses):
            raise ValueError("a node address appears twice (as a node or a replica)")
        return value

    @field_validator("backend")
    @classmethod
    def _client_installed(cls, value: str) -> str:
        if value in DISTRIBUTED and importlib.util.find_spec("redis") is None:
            raise ValueError(f"backend {value} needs redis-py on the node: pip install 'mezzo[redis]'")
        return value

    @property
    def distributed(self) -> bool:
        return self.backend in DISTRIBUTED

    def seeds(self) -> list[NodeAddress]:
        """backend redis: its one node; redis-cluster: the seed nodes (with ``password_env``)."""
        urls = [self.url] if self.backend == "redis" and self.url else self.urls
        return [parse_redis_url(url, self.password_env) for url in urls]

    @property
    def protocol(self) -> Protocol:
        """What its nodes speak: memcached only for ``nodes`` given as memcached:// URLs."""
        return node_protocol(self.nodes[0].url) if self.backend == "nodes" and self.nodes else "redis"


def _not_memcached(url: str) -> None:
    if node_protocol(url) == "memcached":
        raise ValueError(f"{_shown(url)}: memcached nodes are listed under nodes, with backend nodes")


def _used_with(backend: str, given: bool, info: ValidationInfo, missing: str) -> None:
    """A backend's own field: required with that backend, refused with any other."""
    actual = info.data.get("backend")
    if actual == backend and not given:
        raise ValueError(missing)
    if given and actual != backend:
        raise ValueError(f"only used with backend {backend} (this one is {actual})")


def cache_namespace(resource_namespace: str, name: str) -> str:
    """The cache namespace a Cache resource declares: its name, prefixed outside the ``default`` namespace."""
    return name if resource_namespace == "default" else f"{resource_namespace}.{name}"


CACHE_KIND = KindSpec(
    kind="Cache", spec=CacheSpec, plural="caches", short_names=("ca",),
    columns=(Column("BACKEND", "backend"), Column("DATABASE", "database")),
    description="A cache namespace: embedded, one Redis, Redis Cluster or a ketama ring of Redis or memcached nodes.",
)

"""Gateway kinds: Route, Upstream, Consumer, GlobalRule, Certificate (the user-facing shapes)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mezzo.resources.kinds import Column, KindSpec
from mezzo.resources.model import SpecModel
from mezzo.resources.types import Duration, Name

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
Plugins = dict[str, dict[str, Any]]


def check_plugins(value: Plugins) -> Plugins:
    """Every plugin named exists and its configuration matches its schema."""
    from mezzo.gateway.plugins import validate_plugin_configs

    return validate_plugin_configs(value)


class Node(SpecModel):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    weight: int = Field(1, ge=0, le=10_000)
    zone: str | None = None


class ActiveCheck(SpecModel):
    type: Literal["http", "https", "tcp"] = Field("http", description="https: the request over TLS (an https upstream's checks always are)")
    path: str = "/"
    interval: Duration = Field(5.0, gt=0)
    timeout: Duration = Field(1.0, gt=0)
    healthy_statuses: list[int] = Field(default_factory=lambda: [200, 201, 202, 204, 301, 302, 304])
    successes: int = Field(2, ge=1, le=100, description="passes in a row that bring an ejected node back")
    failures: int = Field(2, ge=1, le=100, description="failures in a row that eject a node")


class PassiveCheck(SpecModel):
    failures: int = Field(3, ge=1, le=1000, description="connect errors, timeouts or 5xx in a row that eject a node")
    statuses: list[int] = Field(default_factory=lambda: [500, 502, 503, 504])
    ejection: Duration = Field(10.0, gt=0, description="how long an ejected node is skipped before it is tried again")


class HealthCheck(SpecModel):
    active: ActiveCheck | None = None
    passive: PassiveCheck | None = Field(default_factory=PassiveCheck)


class Timeouts(SpecModel):
    connect: Duration = Field(5.0, gt=0)
    send: Duration = Field(60.0, gt=0)
    read: Duration = Field(60.0, gt=0)


class HashOn(SpecModel):
    on: Literal["header", "cookie", "arg", "consumer", "ip", "uri"] = "ip"
    key: str | None = Field(None, description="header, cookie or query argument name")

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, value: Any) -> Any:
        """``hashOn: consumer`` is ``{on: consumer}``; a ``True`` key is ``on`` (YAML 1.1 reads a bare
        ``on`` as true, so ``{on: header, key: X-User}`` arrives as ``{True: header, key: X-User}``)."""
        if isinstance(value, str):
            return {"on": value}
        if isinstance(value, dict) and True in value:
            if "on" in value:
                raise ValueError('give "on" once (a bare on in YAML is the same key as "on")')
            value = {("on" if k is True else k): v for k, v in value.items()}
        return value


class UpstreamTls(SpecModel):
    """How the gateway talks TLS to the nodes of a ``scheme: https`` upstream."""

    verify: bool = Field(True, description="check the node's certificate chain and name (APISIX's tls.verify, "
                                            "which is off by default there)")
    ca: str | None = Field(None, description="PEM certificates of the CAs to trust (default: the system's)")
    sni: str | None = Field(None, min_length=1, max_length=253,
                            description="the server name sent and checked (default: upstreamHost with passHost "
                                        "rewrite, else the node's host when it is a name)")
    client_certificate: Name | None = Field(
        None, description="a Certificate of the upstream's namespace presented to the nodes (mutual TLS)")

    @field_validator("ca")
    @classmethod
    def _ca_loads(cls, value: str | None) -> str | None:
        if value is not None:
            from mezzo.gateway.tls import check_ca

            check_ca(value)
        return value


class UpstreamSpec(SpecModel):
    nodes: list[Node] = Field(default_factory=list)
    service: Name | None = Field(None, description="take nodes from this registry service instead")
    load_balancer: Literal["roundrobin", "chash", "least_conn", "ewma"] = "roundrobin"
    hash_on: HashOn = Field(default_factory=HashOn)
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    retries: int = Field(1, ge=0, le=10, description="extra tries on another node, idempotent methods only")
    timeout: Timeouts = Field(default_factory=Timeouts)
    scheme: Literal["http", "https"] = "http"
    tls: UpstreamTls | None = Field(None, description="TLS to the nodes (scheme https; default: verify with the "
                                                      "system's CAs)")
    pass_host: Literal["pass", "node", "rewrite"] = "pass"
    upstream_host: str | None = None
    keepalive: int = Field(64, ge=0, le=10_000, description="idle connections kept per node")
    plugins: Plugins = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> UpstreamSpec:
        if bool(self.nodes) == bool(self.service):
            raise ValueError("give either nodes or service")
        if self.pass_host == "rewrite" and not self.upstream_host:
            raise ValueError("passHost rewrite needs upstreamHost")
        if self.tls is not None and self.scheme != "https":
            raise ValueError("tls applies to scheme https; set scheme: https")
        return self

    _plugins = field_validator("plugins")(classmethod(lambda cls, v: check_plugins(v)))


class Match(SpecModel):
    """A condition on a header, query argument or cookie: equals, regex, or present."""

    name: str = Field(min_length=1)
    value: str | None = None
    regex: str | None = None
    present: bool | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from None
        return value


class RouteSpec(SpecModel):
    paths: list[str] = Field(min_length=1, description='"/exact", "/prefix/*", "/users/{id}", or "~^/regex$"')
    methods: list[str] = Field(default_factory=list, description="any method when empty")
    hosts: list[str] = Field(default_factory=list, description='"api.example.com" or "*.example.com"')
    headers: list[Match] = Field(default_factory=list)
    query: list[Match] = Field(default_factory=list)
    cookies: list[Match] = Field(default_factory=list)
    priority: int = Field(0, description="higher wins among routes that match")
    upstream: Name | None = None
    plugins: Plugins = Field(default_factory=dict)
    enable_websocket: bool = True
    status: Literal["draft", "published", "deprecated", "retired"] = "published"
    api: str | None = Field(None, description="the API (OpenAPI import) this route belongs to")

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if path.startswith("~"):
                try:
                    re.compile(path[1:])
                except re.error as exc:
                    raise ValueError(f"invalid path regex {path!r}: {exc}") from None
            elif not path.startswith("/"):
                raise ValueError(f"path {path!r} must start with / (or ~ for a regex)")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        upper = [m.upper() for m in value]
        for method in upper:
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}")
        return upper

    _plugins = field_validator("plugins")(classmethod(lambda cls, v: check_plugins(v)))

    @model_validator(mode="after")
    def _target(self) -> RouteSpec:
        if self.upstream is None and not any(p in self.plugins for p in ("mocking", "redirect", "traffic-split")):
            raise ValueError("a route needs an upstream (or a mocking/redirect/traffic-split plugin)")
        return self


# the fields of each auth plugin's credential that are secrets, sealed at rest (APISIX's encrypt_fields);
# key-auth's key is the credential's id and its secret at once
CREDENTIAL_SECRETS = {"key-auth": ("key",), "basic-auth": ("password",),
                      "jwt-auth": ("secret", "privateKey", "private_key"), "hmac-auth": ("secretKey", "secret_key")}


def consumer_secrets(spec: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    credentials = spec.get("credentials")
    for plugin, fields in CREDENTIAL_SECRETS.items():
        cred = credentials.get(plugin) if isinstance(credentials, dict) else None
        if isinstance(cred, dict):
            yield from (("credentials", plugin, f) for f in fields if f in cred)


def plugin_secrets(spec: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    """A Route's, Upstream's, GlobalRule's or Api's plugin fields that hold a secret (a redisUrl with
    a password, for one), by each plugin's ``secret_urls``."""
    from mezzo.gateway.plugins import secret_paths

    yield from (("plugins", name, key) for name, key in secret_paths(spec.get("plugins")))


def certificate_secrets(spec: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    yield ("key",)


class ConsumerSpec(SpecModel):
    credentials: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                   description="per auth plugin: key-auth {key}, basic-auth {username, password}, ...")
    groups: list[str] = Field(default_factory=list, description="for consumer ACLs")
    plugins: Plugins = Field(default_factory=dict)

    @field_validator("plugins")
    @classmethod
    def _no_plugins(cls, value: Plugins) -> Plugins:
        # the runtime never runs a consumer's plugins: refuse them rather than let a limit or ACL
        # look configured while nothing enforces it
        if value:
            raise ValueError("consumer plugins are not supported: configure them on the route "
                             "(limits with key: consumer, consumer-restriction for ACLs)")
        return value

    @field_validator("credentials")
    @classmethod
    def _credentials(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # what each auth plugin needs (camelCase or snake_case), so none compares against a missing value
        required = {"key-auth": (("key",),), "basic-auth": (("username",), ("password",)), "jwt-auth": (("key",),),
                    "hmac-auth": (("keyId", "key_id", "accessKey", "access_key"), ("secretKey", "secret_key"))}
        for plugin, fields in required.items():
            cred = value.get(plugin)
            for names in fields if cred is not None else ():
                if not any(isinstance(cred.get(n), str) and cred[n] for n in names):
                    raise ValueError(f"{plugin} credential needs a non-empty {names[0]}")
        return value


class GlobalRuleSpec(SpecModel):
    plugins: Plugins = Field(default_factory=dict)

    _plugins = field_validator("plugins")(classmethod(lambda cls, v: check_plugins(v)))


class CertificateSpec(SpecModel):
    type: Literal["server", "client"] = Field(
        "server", description="server: served to clients for its snis; client: only presented to upstreams "
                              "(Upstream tls.clientCertificate), as APISIX's SSL type")
    snis: list[str] = Field(default_factory=list, validate_default=True,
                            description='"api.example.com" or "*.example.com"')
    cert: str = Field(description="PEM certificate chain")
    key: str = Field(description="PEM private key")

    @field_validator("snis")
    @classmethod
    def _served_for_names(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value and info.data.get("type", "server") == "server":
            raise ValueError("a server certificate needs at least one name (or type: client)")
        return value

    @model_validator(mode="after")
    def _loads(self) -> CertificateSpec:
        from mezzo.gateway.tls import check_pair

        check_pair(self.cert, self.key)
        return self


ROUTE_KIND = KindSpec(kind="Route", spec=RouteSpec, plural="routes", short_names=("rt",),
                      columns=(Column("PATHS", "paths"), Column("UPSTREAM", "upstream"), Column("STATUS", "status")),
                      description="Which requests the gateway takes, the plugins they pass, and where they go.",
                      secrets=plugin_secrets)
UPSTREAM_KIND = KindSpec(kind="Upstream", spec=UpstreamSpec, plural="upstreams", short_names=("us",),
                         columns=(Column("LB", "loadBalancer"), Column("SERVICE", "service")),
                         description="A set of backend nodes (static or from the registry) and how to balance them.",
                         secrets=plugin_secrets)
CONSUMER_KIND = KindSpec(kind="Consumer", spec=ConsumerSpec, plural="consumers", short_names=("cs",),
                         description="An API caller with credentials for the auth plugins.",
                         secrets=consumer_secrets)
GLOBAL_RULE_KIND = KindSpec(kind="GlobalRule", spec=GlobalRuleSpec, plural="globalrules", short_names=("gr",),
                            description="Plugins that run on every route.",
                            secrets=plugin_secrets)
CERTIFICATE_KIND = KindSpec(kind="Certificate", spec=CertificateSpec, plural="certificates", short_names=("cert",),
                            columns=(Column("TYPE", "type"), Column("SNIS", "snis")),
                            description="A TLS certificate the gateway serves for the given server names, or "
                                        "presents to upstreams (type client).",
                            secrets=certificate_secrets)
KINDS = (ROUTE_KIND, UPSTREAM_KIND, CONSUMER_KIND, GLOBAL_RULE_KIND, CERTIFICATE_KIND)

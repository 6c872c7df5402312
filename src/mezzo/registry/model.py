"""Service registry types shared by the API, the view and the SDK: instances, their checks and status."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from mezzo.resources.types import Duration

# service names and instance ids become parts of storage keys: no "/"
SERVICE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
INSTANCE_PATTERN = r"^[A-Za-z0-9\[][A-Za-z0-9_.:@%\[\]-]{0,254}$"
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")
MIN_TTL, MAX_TTL = 1.0, 86400.0
MAX_METADATA = 64
MAX_TAGS = 32

Tag = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def out(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Status(StrEnum):
    PASSING = "passing"  # routable
    CRITICAL = "critical"  # registered, but its active check fails: not routable


class Check(Model):
    """An active health check the registry runs against the instance."""

    http: str | None = Field(None, max_length=2048,
                             description="a path on the instance (\"/health\") or a full http(s) URL; "
                                         "2xx and 3xx pass")
    tcp: bool = Field(False, description="pass when a TCP connection to host:port opens")
    interval: Duration = Field(10.0, ge=0.1, le=3600, description="time between probes")
    timeout: Duration = Field(2.0, gt=0, le=60, description="a probe slower than this fails")
    failures: int = Field(3, ge=1, le=100, description="consecutive failures that make a passing instance critical")
    successes: int = Field(1, ge=1, le=100, description="consecutive passes that make a critical instance passing")
    deregister_after: Duration | None = Field(None, ge=1, le=30 * 86400,
                                              description="remove the instance once critical this long")
    initial_status: Status = Field(Status.CRITICAL, description="status until the check has decided")

    @field_validator("http")
    @classmethod
    def _path_or_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("/", "http://", "https://")):
            raise ValueError("a path starting with / or an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Check:
        if (self.http is not None) == self.tcp:
            raise ValueError("set exactly one of http (a path or URL) and tcp (true)")
        return self


class InstanceIn(Model):
    """What a client registers. ``id`` defaults to ``host:port``."""

    id: str | None = Field(None, pattern=INSTANCE_PATTERN)
    host: str = Field(min_length=1, max_length=253, description="address clients connect to")
    port: int = Field(ge=1, le=65535)
    weight: float = Field(1.0, ge=0, le=10_000, description="share of traffic relative to other instances; 0: none")
    zone: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_.-]*$", description="availability zone, region or cluster")
    version: str = Field("", max_length=64)
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    metadata: dict[str, str] = Field(default_factory=dict)
    ttl: Duration | None = Field(None, description="removed unless a heartbeat arrives within it (1s to 24h); "
                                                   "none: until deregistered")
    check: Check | None = None

    @field_validator("ttl")
    @classmethod
    def _ttl_in_range(cls, value: float | None) -> float | None:
        if value is not None and not MIN_TTL <= value <= MAX_TTL:
            raise ValueError(f"a TTL is from {MIN_TTL:g}s to {MAX_TTL / 3600:g}h (got {value:g}s)")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            pass
        if not _HOSTNAME.match(text):
            raise ValueError("a host name or an IP address")
        return text.lower()

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} entries")
        for key, item in value.items():
            if not 1 <= len(key) <= 128:
                raise ValueError(f"key {key[:32]!r}: 1 to 128 characters")
            if len(item) > 1024:
                raise ValueError(f"value of {key!r}: at most 1024 characters")
        return value

    @property
    def instance_id(self) -> str:
        return self.id or instance_id(self.host, self.port)


def instance_id(host: str, port: int) -> str:
    """The id an instance gets when it names none: ``host:port`` (``[v6]:port``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


SPEC_FIELDS = frozenset(InstanceIn.model_fields) - {"id"}


class Instance(InstanceIn):
    """A registered instance: what it registered plus the registry's view of its health.

    Shared by the view (in memory, treat as read-only), the API and the SDK."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=INSTANCE_PATTERN)
    namespace: str
    service: str
    status: Status = Status.PASSING
    status_since: datetime | None = None
    output: str = Field("", description="what the check saw when the status last changed")
    registered_at: datetime | None = None
    registered_by: str = ""
    expires_at: datetime | None = Field(None, description="when the TTL runs out unless renewed (API answers)")

    @property
    def address(self) -> str:
        return instance_id(self.host, self.port)

    @property
    def passing(self) -> bool:
        return self.status is Status.PASSING

    def same_spec(self, other: InstanceIn) -> bool:
        return self.model_dump(include=SPEC_FIELDS) == other.model_dump(include=SPEC_FIELDS)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"expires_at"})


@dataclass(frozen=True, slots=True)
class InstanceRef:
    namespace: str
    service: str
    id: str

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.service}/{self.id}"

    @classmethod
    def from_path(cls, path: str) -> InstanceRef:
        namespace, service, id_ = path.split("/", 2)
        return cls(namespace, service, id_)

"""Config center types: what is stored (drafts, releases, gray branches) and what clients read."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from mezzo.config.formats import Format

# app ids, environments, clusters and namespace names become parts of storage keys: no "/"
IDENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
MAX_KEY = 1024
MAX_VALUE = 1024 * 1024  # one value (or one yaml/json/text document)
MAX_KEYS = 10_000  # keys in one namespace


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def out(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass(frozen=True, slots=True)
class NsRef:
    app: str
    env: str
    cluster: str
    namespace: str

    @property
    def path(self) -> str:
        return f"{self.app}/{self.env}/{self.cluster}/{self.namespace}"

    def in_cluster(self, cluster: str) -> NsRef:
        return NsRef(self.app, self.env, cluster, self.namespace)

    def of_app(self, app: str) -> NsRef:
        return NsRef(app, self.env, self.cluster, self.namespace)

    @classmethod
    def from_path(cls, path: str) -> NsRef:
        app, env, cluster, namespace = path.split("/")
        return cls(app, env, cluster, namespace)


class Permissions(Model):
    """Who may edit and who may publish; empty lists mean anyone with write access to the app."""

    edit: list[str] = Field(default_factory=list)
    publish: list[str] = Field(default_factory=list)
    require_distinct_publisher: bool = False  # the publisher must not be one of the draft's editors


class NamespaceMeta(Model):
    format: Format = Format.PROPERTIES
    public: bool = False
    inherits: str | None = None  # the app owning the public namespace this one overrides
    comment: str = ""
    permissions: Permissions = Field(default_factory=Permissions)
    created_by: str = ""
    created_at: datetime | None = None


class App(Model):
    tenant: str = "default"  # the Mezzo namespace whose tokens may manage this app
    created_by: str = ""
    created_at: datetime | None = None


class Item(Model):
    value: str  # encrypted (mzenc:...) when secret
    secret: bool = False
    comment: str = ""
    by: str = ""
    at: datetime | None = None


class Draft(Model):
    items: dict[str, Item] = Field(default_factory=dict)
    editors: list[str] = Field(default_factory=list)  # who changed it since the last publish


class Stored(Model):
    """A released value."""

    value: str
    secret: bool = False


class Release(Model):
    id: int
    title: str
    message: str = ""
    author: str
    at: datetime
    kind: str = "normal"  # normal | rollback | promote
    rolled_back_to: int | None = None
    config: dict[str, Stored] = Field(default_factory=dict)


class GrayRule(Model):
    """Matches a client when every criterion it sets matches; a gray branch matches on any rule."""

    labels: dict[str, str] = Field(default_factory=dict)
    client_ids: list[str] = Field(default_factory=list)
    ips: list[str] = Field(default_factory=list)  # addresses or CIDR blocks
    percentage: int | None = Field(None, ge=0, le=100)  # of client ids, sticky by hash

    @field_validator("ips")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for block in value:
            try:
                ipaddress.ip_network(block, strict=False)
            except ValueError:
                raise ValueError(f"{block!r} is not an IP address or CIDR block") from None
        return value


class GrayRelease(Model):
    id: int
    overrides: dict[str, Stored]
    author: str
    at: datetime


class Gray(Model):
    items: dict[str, Item] = Field(default_factory=dict)  # overrides being edited
    rules: list[GrayRule] = Field(default_factory=list)
    editors: list[str] = Field(default_factory=list)  # who set or unset its keys
    release: GrayRelease | None = None
    created_by: str = ""
    created_at: datetime | None = None


class Latest(Model):
    """The pointer watchers watch: its store revision is the namespace's notification id."""

    release: int | None = None
    gray_rules: list[GrayRule] = Field(default_factory=list)
    gray_release: GrayRelease | None = None


class ClientInfo(Model):
    client_id: str = ""
    ip: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class AccessKey(Model):
    """An app's Apollo access key: Apollo clients sign requests with its secret (sealed at rest)."""

    id: str
    secret: str  # sealed with the node's keyring (mzenc:...), bound to the key's location
    enabled: bool = True
    comment: str = ""
    created_by: str = ""
    created_at: datetime | None = None

    def shown(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"secret"})

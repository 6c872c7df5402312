"""The document envelope every kind shares: apiVersion, kind, metadata, spec."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from mezzo.resources.types import Name

API_VERSION = "mezzo.dev/v1"


class SpecModel(BaseModel):
    """Base for every kind's spec: camelCase in YAML, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)


class MetadataIn(BaseModel):
    """Metadata a user writes. Server-set fields are accepted (so ``get -o yaml`` re-applies) and ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Name
    namespace: Name = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # read-only, ignored on input
    uid: str | None = None
    generation: int | None = None
    resourceVersion: int | None = None
    createdAt: datetime | None = None
    updatedAt: datetime | None = None
    createdBy: str | None = None
    updatedBy: str | None = None


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    apiVersion: Literal["mezzo.dev/v1"]
    kind: str
    metadata: MetadataIn
    spec: dict[str, Any] = Field(default_factory=dict)
    status: dict[str, Any] | None = None  # ignored on input


class Metadata(BaseModel):
    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str
    generation: int
    resourceVersion: int = 0
    createdAt: datetime
    updatedAt: datetime
    createdBy: str
    updatedBy: str


class Resource(BaseModel):
    """A stored document: what ``mezzo get`` shows and what watchers receive."""

    apiVersion: str = API_VERSION
    kind: str
    metadata: Metadata
    spec: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.metadata.namespace}/{self.metadata.name}"


class HistoryEntry(BaseModel):
    """One version of a resource; kept after the resource is deleted."""

    generation: int
    action: Literal["created", "configured", "deleted", "rolled-back"]
    revision: int = 0  # store revision; filled when read back
    at: datetime
    by: str
    labels: dict[str, str] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)
    rolledBackTo: int | None = None


class ApplyResult(BaseModel):
    kind: str
    namespace: str
    name: str
    action: Literal["created", "configured", "unchanged", "deleted", "rolled-back"]
    generation: int
    revision: int
    diff: str | None = None  # unified diff of the YAML, for diff/dry runs

"""What a service declares about each resource kind it owns."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel


@dataclass(frozen=True, slots=True)
class Column:
    """An extra column in ``mezzo get KIND`` tables: a header and a dotted path into ``spec``."""

    header: str
    path: str


@dataclass(frozen=True, slots=True)
class KindSpec:
    kind: str  # CamelCase, e.g. "Topic"
    spec: type[BaseModel]  # validates a document's ``spec``
    plural: str  # lowercase plural, e.g. "topics"
    short_names: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    description: str = ""
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        names = {self.kind.lower(), self.plural.lower(), *(s.lower() for s in self.short_names)}
        object.__setattr__(self, "names", frozenset(names))

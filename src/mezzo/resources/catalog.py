"""The kinds a node knows, looked up by kind, plural or short name, case-insensitively."""

from __future__ import annotations

from collections.abc import Iterable

from mezzo.resources.kinds import KindSpec


class UnknownKindError(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown kind {name!r}; known kinds: {', '.join(known) or 'none'}"
        )
        self.name = name


class KindCatalog:
    def __init__(self, kinds: Iterable[KindSpec] = ()) -> None:
        self._kinds: dict[str, KindSpec] = {}
        self._names: dict[str, KindSpec] = {}
        for kind in kinds:
            self.add(kind)

    def add(self, kind: KindSpec) -> None:
        if kind.kind in self._kinds:
            raise ValueError(f"kind {kind.kind} registered twice")
        for name in kind.names:
            if name in self._names:
                raise ValueError(f"name {name!r} of {kind.kind} is taken by {self._names[name].kind}")
        self._kinds[kind.kind] = kind
        self._names.update(dict.fromkeys(kind.names, kind))

    def resolve(self, name: str) -> KindSpec:
        found = self._names.get(name.lower())
        if found is None:
            raise UnknownKindError(name, sorted(self._kinds))
        return found

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._kinds.values(), key=lambda k: k.kind))

    def __len__(self) -> int:
        return len(self._kinds)

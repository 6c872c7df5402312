"""What a service declares about each resource kind it owns."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from mezzo.config.secrets import PREFIX, Keyring, SecretError

Path = tuple[str, ...]
SecretFields = Callable[[dict[str, Any]], Iterable[Path]]


class UnsealError(SecretError):
    """Secret fields whose ciphertexts do not decrypt here: the reasons name places, never values."""

    def __init__(self, failed: list[tuple[Path, str]]) -> None:
        super().__init__("; ".join(reason for _, reason in failed))
        self.failed = failed


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
    # where a spec (validated or not) holds secrets: the paths of the values kept sealed at rest
    secrets: SecretFields | None = None
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        names = {self.kind.lower(), self.plural.lower(), *(s.lower() for s in self.short_names)}
        object.__setattr__(self, "names", frozenset(names))

    # secrets at rest ----------------------------------------------------------------------

    def where(self, namespace: str, name: str, path: Path) -> str:
        """A secret's location, the associated data of its ciphertext: it decrypts nowhere else."""
        return f"{self.kind}/{namespace}/{name}:spec.{'.'.join(path)}"

    def secret_paths(self, spec: dict[str, Any], types: type | tuple[type, ...] = str) -> Iterator[Path]:
        """The paths of ``spec``'s secrets whose values are of ``types`` (the rest is left to validation)."""
        for path in self.secrets(spec) if self.secrets is not None else ():
            if isinstance(_at(spec, path), types):
                yield path

    def unseal(self, namespace: str, name: str, spec: dict[str, Any], keyring: Keyring) -> dict[str, Any]:
        """A copy of ``spec`` with its secrets in clear; a value stored before sealing passes as it is.
        Raises UnsealError for the ciphertexts that do not decrypt here."""
        paths = list(self.secret_paths(spec))
        if not paths:
            return spec
        out = copy.deepcopy(spec)
        failed = []
        for path in paths:
            try:
                _put(out, path, keyring.decrypt(_at(out, path), self.where(namespace, name, path)))
            except SecretError as exc:
                failed.append((path, str(exc)))
        if failed:
            raise UnsealError(failed)
        return out

    def seal(self, namespace: str, name: str, spec: dict[str, Any], keyring: Keyring,
             earlier: tuple[dict[str, Any] | None, ...] = ()) -> dict[str, Any]:
        """A copy of ``spec`` (secrets in clear) with its secrets encrypted for this place. A ciphertext
        of the same value under the active key in an ``earlier`` form of the spec (as written, as
        stored) is kept, so an unchanged secret keeps its ciphertext and a re-apply changes nothing.
        A number (YAML's ``secret: 123456``) is sealed as its text."""
        paths = list(self.secret_paths(spec, (str, int, float)))
        if not paths:
            return spec
        out = copy.deepcopy(spec)
        for path in paths:
            value, where = str(_at(out, path)), self.where(namespace, name, path)
            kept = next((c for c in (_at(e, path) for e in earlier if e) if _holds(keyring, c, where, value)), None)
            _put(out, path, kept if kept is not None else keyring.encrypt(value, where))
        return out


def _holds(keyring: Keyring, stored: Any, where: str, value: str) -> bool:
    """Whether ``stored`` is a ciphertext of ``value`` for ``where`` under the active key."""
    if not isinstance(stored, str) or not stored.startswith(PREFIX) or keyring.needs_rotation(stored):
        return False
    try:
        return keyring.decrypt(stored, where) == value
    except SecretError:
        return False


def _at(spec: Any, path: Path) -> Any:
    for part in path:
        if not isinstance(spec, dict):
            return None
        spec = spec.get(part)
    return spec


def _put(spec: dict[str, Any], path: Path, value: str) -> None:
    for part in path[:-1]:
        spec = spec[part]
    spec[path[-1]] = value

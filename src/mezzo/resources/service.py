"""Apply, diff, delete, history and rollback of declarative resources, all-or-nothing on the KV store."""

from __future__ import annotations

import difflib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from mezzo.config.secrets import Keyring
from mezzo.jsonutil import dumps, loads
from mezzo.node.audit import audit_put
from mezzo.resources.catalog import KindCatalog, UnknownKindError
from mezzo.resources.kinds import KindSpec, UnsealError
from mezzo.resources.manifests import ManifestError, SourceDocument, to_yaml
from mezzo.resources.model import (
    API_VERSION,
    ApplyResult,
    DocumentIn,
    HistoryEntry,
    Metadata,
    Resource,
)
from mezzo.storage.kv import Compare, ConflictError, Delete, EventType, KVStore, Op, Put

RESOURCES = "/resources/"
HISTORY = "/history/"
_ATTEMPTS = 8
BUSY = f"these resources changed {_ATTEMPTS} times while this request was applying them"


def resource_key(kind: str, namespace: str, name: str) -> str:
    return f"{RESOURCES}{kind}/{namespace}/{name}"


def history_prefix(kind: str, namespace: str, name: str) -> str:
    return f"{HISTORY}{kind}/{namespace}/{name}/"


class NotFoundError(LookupError):
    """What was not found, as a whole sentence (the API's 404 detail)."""


@dataclass(slots=True)
class Desired:
    """A validated document, ready to compare with what is stored."""

    kind: KindSpec
    namespace: str
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]  # secrets in clear: sealed when it becomes the stored document
    written: dict[str, Any] = field(default_factory=dict)  # the spec as given: its ciphertexts are kept

    @property
    def key(self) -> str:
        return resource_key(self.kind.kind, self.namespace, self.name)


@dataclass(slots=True)
class ResourceEvent:
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    revision: int
    resource: Resource


def _validation_errors(doc: SourceDocument, exc: ValidationError, prefix: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        path = prefix + tuple(err["loc"])
        out.append(doc.error(err["msg"], path))
    return out


def parse_resource(value: bytes) -> Resource:
    return Resource.model_validate(loads(value))


class ResourceService:
    def __init__(self, store: KVStore, catalog: KindCatalog, keyring: Keyring | None = None) -> None:
        self.store = store
        self.catalog = catalog
        self.keyring = keyring  # seals the secret fields kinds declare; None keeps them as given

    # validation ------------------------------------------------------------------

    def validate(self, docs: Sequence[SourceDocument]) -> list[Desired]:
        """Validate every document; raise ManifestError listing every problem found."""
        errors: list[dict[str, Any]] = []
        desired: list[Desired] = []
        seen: dict[str, SourceDocument] = {}
        for doc in docs:
            if not isinstance(doc.data, dict):
                errors.append(doc.error("a document must be a mapping with apiVersion, kind, metadata, spec"))
                continue
            try:
                envelope = DocumentIn.model_validate(doc.data)
            except ValidationError as exc:
                errors.extend(_validation_errors(doc, exc, ()))
                continue
            try:
                kind = self.catalog.resolve(envelope.kind)
            except UnknownKindError as exc:
                errors.append(doc.error(str(exc), ("kind",)))
                continue
            meta = envelope.metadata
            try:  # a ciphertext given back (``get -o yaml | apply``) validates as what it holds
                plain = self._unseal(kind, meta.namespace, meta.name, envelope.spec)
            except UnsealError as exc:
                errors.extend(doc.error(reason, ("spec", *path)) for path, reason in exc.failed)
                continue
            try:
                spec = kind.spec.model_validate(plain)
            except ValidationError as exc:
                errors.extend(_validation_errors(doc, exc, ("spec",)))
                continue
            item = Desired(
                kind, meta.namespace, meta.name, dict(meta.labels), dict(meta.annotations),
                spec.model_dump(mode="json", by_alias=True, exclude_unset=True), envelope.spec,
            )
            if item.key in seen:
                first = seen[item.key]
                errors.append(doc.error(
                    f"{kind.kind} {meta.namespace}/{meta.name} is also defined in "
                    f"{first.source} document {first.index}", ("metadata", "name"),
                ))
                continue
            seen[item.key] = doc
            desired.append(item)
        if errors:
            raise ManifestError(errors)
        return desired

    # secrets at rest ---------------------------------------------------------------------

    def _unseal(self, kind: KindSpec, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return spec if self.keyring is None else kind.unseal(namespace, name, spec, self.keyring)

    def unsealed(self, res: Resource) -> dict[str, Any]:
        """A stored resource's spec with its secrets in clear, for the data plane that uses them
        (the API never returns it). Raises UnsealError when one does not decrypt with this node's keys."""
        return self._unseal(self.catalog.resolve(res.kind), res.metadata.namespace, res.metadata.name, res.spec)

    def _sealed(self, item: Desired, stored: Resource | None) -> dict[str, Any]:
        """What a validated spec is stored as: its secrets sealed, each unchanged one keeping its
        ciphertext (as given, else as stored), so a spec that did not change equals the stored one."""
        if self.keyring is None:
            return item.spec
        return item.kind.seal(item.namespace, item.name, item.spec, self.keyring,
                              (item.written, stored.spec if stored else None))

    # writes ----------------------------------------------------------------------

    async def apply(
        self, desired: Sequence[Desired], user: str, *, dry_run: bool = False
    ) -> list[ApplyResult]:
        """Create or replace every document in one transaction, or none of them."""
        for _ in range(_ATTEMPTS):
            results: list[ApplyResult] = []
            ops: list[Op] = []
            compares: list[Compare] = []
            now = datetime.now(UTC)
            for item in desired:
                current = await self.store.get(item.key)
                old = parse_resource(current.value) if current else None
                compares.append(Compare(item.key, current.mod_revision if current else 0))
                spec = self._sealed(item, old)  # unchanged secrets keep their stored ciphertext
                if old is not None and (old.spec, old.metadata.labels, old.metadata.annotations) == (
                    spec, item.labels, item.annotations
                ):
                    results.append(self._result(old, "unchanged", current.mod_revision))  # type: ignore[union-attr]
                    continue
                generation = await self._next_generation(item, old)
                new = self._build(item, spec, old, generation, now, user)
                action: Literal["created", "configured"] = "configured" if old else "created"
                result = self._result(new, action, 0)
                result.diff = _diff(old, new)
                results.append(result)
                ops += self._write_ops(new, action, user, now)
                compares.append(Compare(_history_key(new), 0))  # never overwrite a version
            if dry_run or not ops:
                return results
            try:
                txn = await self.store.txn(ops, compares)
            except ConflictError:
                continue  # someone changed one of these meanwhile: re-read and re-plan
            for result in results:
                if result.action != "unchanged":
                    result.revision = txn.revision
            return results
        raise ConflictError(desired[0].key, 0, 0, BUSY)

    async def delete(self, kind: str, namespace: str, name: str, user: str) -> ApplyResult:
        spec = self.catalog.resolve(kind)
        key = resource_key(spec.kind, namespace, name)
        for _ in range(_ATTEMPTS):
            current = await self.store.get(key)
            if current is None:
                raise NotFoundError(f"{spec.kind} {namespace}/{name} not found")
            old = parse_resource(current.value)
            now = datetime.now(UTC)
            generation = old.metadata.generation + 1
            entry = HistoryEntry(
                generation=generation, action="deleted", at=now, by=user,
                labels=old.metadata.labels, spec=old.spec,
            )
            history_key = history_prefix(spec.kind, namespace, name) + f"{generation:010d}"
            ops: list[Op] = [
                Delete(key),
                Put(history_key, dumps(entry.model_dump(mode="json"))),
                audit_put(user, "resource.delete", kind=spec.kind, namespace=namespace, name=name,
                          detail={"generation": generation}),
            ]
            try:
                txn = await self.store.txn(ops, [Compare(key, current.mod_revision), Compare(history_key, 0)])
            except ConflictError:
                continue
            return ApplyResult(kind=spec.kind, namespace=namespace, name=name, action="deleted",
                               generation=generation, revision=txn.revision)
        raise ConflictError(key, 0, 0, BUSY)

    async def rollback(
        self, kind: str, namespace: str, name: str, user: str, to: int | None = None
    ) -> ApplyResult:
        spec = self.catalog.resolve(kind)
        history = await self.history(spec.kind, namespace, name)
        if not history:
            raise NotFoundError(f"{spec.kind} {namespace}/{name} has no history")
        latest = history[-1]
        if to is None:
            earlier = [h for h in history[:-1] if h.action != "deleted"]
            if latest.action == "deleted":
                earlier = [h for h in history if h.action != "deleted"]
            if not earlier:
                raise NotFoundError(f"{spec.kind} {namespace}/{name} has no earlier version to roll back to")
            target = earlier[-1]
        else:
            found = [h for h in history if h.generation == to]
            if not found:
                raise NotFoundError(f"{spec.kind} {namespace}/{name} has no version {to}")
            target = found[0]
            if target.action == "deleted":
                raise ValueError(f"version {to} is a deletion; roll back to a version that has a spec")
        try:
            plain = self._unseal(spec, namespace, name, target.spec)
        except UnsealError as exc:
            raise ValueError(f"version {target.generation} has secrets that do not decrypt: {exc}") from None
        try:
            checked = spec.spec.model_validate(plain)  # the kind's schema may have moved on
        except ValidationError as exc:  # the reasons and fields, never the values (they may be secrets)
            reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"version {target.generation} no longer validates: {reasons}") from None
        current = await self.get(spec.kind, namespace, name)
        item = Desired(
            spec, namespace, name, dict(target.labels),
            dict(current.metadata.annotations) if current else {},
            checked.model_dump(mode="json", by_alias=True, exclude_unset=True), target.spec,
        )
        for _ in range(_ATTEMPTS):
            stored = await self.store.get(item.key)
            old = parse_resource(stored.value) if stored else None
            sealed = self._sealed(item, old)
            if old is not None and (old.spec, old.metadata.labels) == (sealed, item.labels):
                return self._result(old, "unchanged", stored.mod_revision)  # type: ignore[union-attr]
            generation = await self._next_generation(item, old)
            now = datetime.now(UTC)
            new = self._build(item, sealed, old, generation, now, user)
            ops = self._write_ops(new, "rolled-back", user, now, rolled_back_to=target.generation)
            compares = [Compare(item.key, stored.mod_revision if stored else 0), Compare(_history_key(new), 0)]
            try:
                txn = await self.store.txn(ops, compares)
            except ConflictError:
                continue
            return self._result(new, "rolled-back", txn.revision)
        raise ConflictError(item.key, 0, 0, BUSY)

    async def _next_generation(self, item: Desired, old: Resource | None) -> int:
        if old is not None:
            return old.metadata.generation + 1
        past = await self.store.range(history_prefix(item.kind.kind, item.namespace, item.name))
        return int(past.items[-1].key.rsplit("/", 1)[1]) + 1 if past.items else 1

    @staticmethod
    def _build(item: Desired, spec: dict[str, Any], old: Resource | None, generation: int, now: datetime,
               user: str) -> Resource:
        meta = Metadata(
            name=item.name, namespace=item.namespace, labels=item.labels, annotations=item.annotations,
            uid=old.metadata.uid if old else str(uuid.uuid4()), generation=generation,
            createdAt=old.metadata.createdAt if old else now, updatedAt=now,
            createdBy=old.metadata.createdBy if old else user, updatedBy=user,
        )
        return Resource(apiVersion=API_VERSION, kind=item.kind.kind, metadata=meta, spec=spec)

    @staticmethod
    def _write_ops(
        new: Resource, action: str, user: str, now: datetime, rolled_back_to: int | None = None
    ) -> list[Op]:
        meta = new.metadata
        entry = HistoryEntry(
            generation=meta.generation, action=action, at=now, by=user,  # type: ignore[arg-type]
            labels=meta.labels, spec=new.spec, rolledBackTo=rolled_back_to,
        )
        audit_action = {"created": "resource.create", "configured": "resource.configure"}.get(action, "resource.rollback")
        detail: dict[str, Any] = {"generation": meta.generation}
        if rolled_back_to is not None:
            detail["rolledBackTo"] = rolled_back_to
        return [
            Put(resource_key(new.kind, meta.namespace, meta.name), dumps(new.model_dump(mode="json"))),
            Put(_history_key(new), dumps(entry.model_dump(mode="json"))),
            audit_put(user, audit_action, kind=new.kind, namespace=meta.namespace, name=meta.name, detail=detail),
        ]

    @staticmethod
    def _result(res: Resource, action: Any, revision: int) -> ApplyResult:
        return ApplyResult(
            kind=res.kind, namespace=res.metadata.namespace, name=res.metadata.name,
            action=action, generation=res.metadata.generation, revision=revision,
        )

    # reads -----------------------------------------------------------------------

    async def get(self, kind: str, namespace: str, name: str) -> Resource | None:
        spec = self.catalog.resolve(kind)
        kv = await self.store.get(resource_key(spec.kind, namespace, name))
        return _with_version(parse_resource(kv.value), kv.mod_revision) if kv else None

    async def list(
        self, kind: str, namespace: str | None = None, selector: dict[str, str | None] | None = None
    ) -> tuple[list[Resource], int]:
        """Resources of a kind (optionally one namespace), filtered by labels; and the read revision."""
        spec = self.catalog.resolve(kind)
        prefix = f"{RESOURCES}{spec.kind}/" + (f"{namespace}/" if namespace else "")
        snapshot = await self.store.range(prefix)
        items = [_with_version(parse_resource(kv.value), kv.mod_revision) for kv in snapshot.items]
        if selector:
            items = [r for r in items if matches(r.metadata.labels, selector)]
        return items, snapshot.revision

    async def history(self, kind: str, namespace: str, name: str) -> list[HistoryEntry]:
        spec = self.catalog.resolve(kind)
        snapshot = await self.store.range(history_prefix(spec.kind, namespace, name))
        out = []
        for kv in snapshot.items:
            entry = HistoryEntry.model_validate(loads(kv.value))
            entry.revision = kv.mod_revision
            out.append(entry)
        return out

    async def watch(
        self, kind: str | None, namespace: str | None, start: int
    ) -> AsyncIterator[ResourceEvent]:
        prefix = RESOURCES
        if kind:
            prefix += self.catalog.resolve(kind).kind + "/"
            if namespace:
                prefix += namespace + "/"
        async for event in self.store.watch(prefix, start):
            if event.type is EventType.DELETE:
                assert event.prev_value is not None
                yield ResourceEvent("DELETED", event.revision, _with_version(parse_resource(event.prev_value), event.revision))
            else:
                assert event.value is not None
                res = _with_version(parse_resource(event.value), event.revision)
                if namespace and not kind and res.metadata.namespace != namespace:
                    continue
                yield ResourceEvent("MODIFIED" if event.prev_value else "ADDED", event.revision, res)


def _history_key(res: Resource) -> str:
    return history_prefix(res.kind, res.metadata.namespace, res.metadata.name) + f"{res.metadata.generation:010d}"


def _with_version(res: Resource, revision: int) -> Resource:
    res.metadata.resourceVersion = revision
    return res


def matches(labels: dict[str, str], selector: dict[str, str | None]) -> bool:
    """``{"app": "shop"}`` needs app=shop; ``{"tier": None}`` needs the label to exist; ``{"!x": None}`` absence."""
    for key, value in selector.items():
        if key.startswith("!"):
            if key[1:] in labels:
                return False
        elif value is None:
            if key not in labels:
                return False
        elif value.startswith("!="):
            if labels.get(key) == value[2:]:
                return False
        elif labels.get(key) != value:
            return False
    return True


def parse_selector(text: str | None) -> dict[str, str | None]:
    """``app=shop,tier!=db,canary,!legacy`` to the form ``matches`` takes."""
    out: dict[str, str | None] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        if "!=" in part:
            key, value = part.split("!=", 1)
            out[key.strip()] = "!=" + value.strip()
        elif "=" in part:
            key, value = part.split("=", 1)
            out[key.strip().rstrip("=")] = value.strip()
        else:
            out[part] = None
    return out


def _doc_yaml(res: Resource | None) -> list[str]:
    if res is None:
        return []
    doc = {"apiVersion": res.apiVersion, "kind": res.kind,
           "metadata": {"name": res.metadata.name, "namespace": res.metadata.namespace,
                        **({"labels": res.metadata.labels} if res.metadata.labels else {}),
                        **({"annotations": res.metadata.annotations} if res.metadata.annotations else {})},
           "spec": res.spec}
    return to_yaml(doc).splitlines(keepends=True)


def _diff(old: Resource | None, new: Resource) -> str:
    name = f"{new.kind}/{new.metadata.namespace}/{new.metadata.name}"
    return "".join(difflib.unified_diff(
        _doc_yaml(old), _doc_yaml(new),
        fromfile=f"{name} (live)" if old else "/dev/null", tofile=f"{name} (applied)",
    ))

"""Config center semantics: namespaces, drafts, releases, rollback, permissions and audit, on the KV store.

Storage (every write is one store transaction, audited in the same transaction):

- ``/config/apps/{app}``                     the app and the Mezzo namespace (tenant) that owns it
- ``/config/meta/{app}/{env}/{cluster}/{ns}`` format, public flag, permissions
- ``/config/public/{ns}``                    which app owns the public namespace ``ns``
- ``/config/draft/{path}``                   the items being edited; its revision is the ETag
- ``/config/releases/{path}/{id}``           immutable releases, numbered from 1
- ``/config/latest/{path}``                  what clients get (release id, gray branch); its
                                             revision is the namespace's notification id
- ``/config/gray/{path}``                    the gray branch being edited (see gray.py)
- ``/config/access-keys/{app}/{id}``         an app's Apollo access keys, secrets sealed (see apollo.py)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from mezzo.config.formats import CONTENT, Format, FormatError, validate
from mezzo.config.model import (
    MAX_KEY,
    MAX_KEYS,
    MAX_VALUE,
    AccessKey,
    App,
    Draft,
    Gray,
    Item,
    Latest,
    NamespaceMeta,
    NsRef,
    Permissions,
    Release,
    Stored,
)
from mezzo.config.secrets import MASK, Keyring
from mezzo.jsonutil import dumps, loads
from mezzo.node.audit import audit_put
from mezzo.node.auth import Principal, Verb
from mezzo.node.errors import Problem, bad_request, conflict, not_found
from mezzo.storage.kv import Compare, ConflictError, Delete, KVStore, Op, Put

M = TypeVar("M", bound=BaseModel)
ROOT = "/config/"
APPS, META, PUBLIC, DRAFT = "/config/apps/", "/config/meta/", "/config/public/", "/config/draft/"
RELEASES, LATEST, GRAY = "/config/releases/", "/config/latest/", "/config/gray/"
ACCESS_KEYS = "/config/access-keys/"
AUDIT_KIND = "ConfigNamespace"
DEFAULT = "default"


def now() -> datetime:
    return datetime.now(UTC)


class Loaded:
    """A document read from the store with the revision to compare against when writing it back."""

    __slots__ = ("doc", "revision")

    def __init__(self, doc: Any, revision: int) -> None:
        self.doc, self.revision = doc, revision


class ConfigService:
    def __init__(self, store: KVStore, keyring: Keyring) -> None:
        self.store = store
        self.keyring = keyring
        self.last_write = 0  # revision of this node's latest config write

    # reading ----------------------------------------------------------------------------

    async def _load(self, key: str, model: type[M]) -> Loaded:
        kv = await self.store.get(key)
        if kv is None:
            return Loaded(None, 0)
        return Loaded(model.model_validate(loads(kv.value)), kv.mod_revision)

    async def app(self, app: str) -> App | None:
        return (await self._load(APPS + app, App)).doc  # type: ignore[no-any-return]

    async def meta(self, ref: NsRef) -> NamespaceMeta:
        meta = (await self._load(META + ref.path, NamespaceMeta)).doc
        if meta is None:
            raise not_found(f"config namespace {ref.path}")
        return meta  # type: ignore[no-any-return]

    async def release(self, ref: NsRef, release_id: int) -> Release:
        release = (await self._load(f"{RELEASES}{ref.path}/{release_id:010d}", Release)).doc
        if release is None:
            raise not_found(f"release {release_id} of {ref.path}")
        return release  # type: ignore[no-any-return]

    async def latest(self, ref: NsRef) -> Loaded:
        return await self._load(LATEST + ref.path, Latest)

    async def latest_release(self, ref: NsRef) -> Release | None:
        latest = (await self.latest(ref)).doc
        return await self.release(ref, latest.release) if latest and latest.release else None

    async def namespaces(self, app: str, env: str | None = None) -> list[dict[str, Any]]:
        prefix = f"{META}{app}/" + (f"{env}/" if env else "")
        out = []
        for kv in (await self.store.range(prefix)).items:
            ref = NsRef.from_path(kv.key[len(META):])
            meta = NamespaceMeta.model_validate(loads(kv.value))
            latest = (await self.latest(ref)).doc
            out.append({"app": ref.app, "env": ref.env, "cluster": ref.cluster, "namespace": ref.namespace,
                        "format": meta.format.value, "public": meta.public, "inherits": meta.inherits,
                        "release": latest.release if latest else None,
                        "gray": bool(latest and latest.gray_release)})
        return out

    async def apps(self) -> list[dict[str, Any]]:
        return [{"app": kv.key[len(APPS):], **App.model_validate(loads(kv.value)).out()}
                for kv in (await self.store.range(APPS)).items]

    # access -----------------------------------------------------------------------------

    async def authorize(self, caller: Principal, ref: NsRef, verb: Verb, right: str | None = None,
                        new_tenant: str = DEFAULT) -> str:
        """Check the caller may ``verb`` the app's tenant (``new_tenant``, where a write would create
        the app, when it does not exist yet) and, for ``edit``/``publish``, holds that right."""
        app = await self.app(ref.app)
        tenant = app.tenant if app else new_tenant
        if not caller.can(verb, tenant):
            raise Problem(403, "Forbidden", f"{verb.value} access to app {ref.app!r} (tenant {tenant!r}) is not granted",
                          type="forbidden")
        if right is not None and not caller.can(Verb.ADMIN, tenant):
            meta = (await self._load(META + ref.path, NamespaceMeta)).doc
            allowed = getattr(meta.permissions, right) if meta else []
            if allowed and caller.name not in allowed:
                raise Problem(403, "Forbidden", f"{caller.name!r} may not {right} {ref.path}; allowed: {allowed}",
                              type="forbidden")
        return tenant

    # namespaces -------------------------------------------------------------------------

    async def create_namespace(self, ref: NsRef, user: str, *, fmt: Format = Format.PROPERTIES, public: bool = False,
                               comment: str = "", tenant: str = DEFAULT) -> NamespaceMeta:
        ops, compares = await self._creation(ref, user, fmt, public, comment, tenant)
        if not ops:
            raise conflict(f"config namespace {ref.path} already exists")
        await self._commit(ops, compares, f"namespace {ref.path} was created concurrently")
        return await self.meta(ref)

    async def _creation(self, ref: NsRef, user: str, fmt: Format, public: bool, comment: str,
                        tenant: str) -> tuple[list[Op], list[Compare]]:
        """Ops creating the namespace (and its app) unless it exists; empty when it does."""
        if await self.store.get(META + ref.path) is not None:
            return [], []
        ops: list[Op] = []
        compares = [Compare(META + ref.path, 0)]
        app = await self._load(APPS + ref.app, App)
        if app.doc is None:
            ops.append(Put(APPS + ref.app, dumps(App(tenant=tenant, created_by=user, created_at=now()).out())))
            compares.append(Compare(APPS + ref.app, 0))
        marker = await self._load(PUBLIC + ref.namespace, _Owner)
        owner = marker.doc
        inherits = None
        if public:
            if owner is not None and owner.app != ref.app:
                raise conflict(f"public namespace {ref.namespace!r} belongs to app {owner.app!r}",
                               errors=[{"field": "public", "reason": "owned by another app"}])
            # written again by every public copy: a concurrent delete of the last other copy then conflicts
            ops.append(Put(PUBLIC + ref.namespace, dumps({"app": ref.app})))
            compares.append(Compare(PUBLIC + ref.namespace, marker.revision))
        elif owner is not None and owner.app != ref.app:
            inherits = owner.app  # this app overrides keys of the public namespace
            fmt = await self._owner_format(ref, owner.app) or fmt
        meta = NamespaceMeta(format=fmt, public=public, inherits=inherits, comment=comment,
                             created_by=user, created_at=now())
        ops.append(Put(META + ref.path, dumps(meta.out())))
        ops.append(self._audit(user, "config.namespace.create", ref, tenant, after=meta.out()))
        return ops, compares

    async def _owner_format(self, ref: NsRef, owner: str) -> Format | None:
        meta = (await self._load(f"{META}{owner}/{ref.env}/{DEFAULT}/{ref.namespace}", NamespaceMeta)).doc
        return meta.format if meta is not None else None

    async def write_format(self, ref: NsRef) -> Format:
        """The namespace's format as the store holds it, or the one a write creating it gives it
        (properties, or the owner's format for an override of another app's public namespace)."""
        meta = (await self._load(META + ref.path, NamespaceMeta)).doc
        if meta is not None:
            return meta.format  # type: ignore[no-any-return]
        owner = (await self._load(PUBLIC + ref.namespace, _Owner)).doc
        if owner is not None and owner.app != ref.app:
            return await self._owner_format(ref, owner.app) or Format.PROPERTIES
        return Format.PROPERTIES

    async def delete_namespace(self, ref: NsRef, user: str) -> None:
        meta = await self.meta(ref)
        keys = [META + ref.path, DRAFT + ref.path, LATEST + ref.path, GRAY + ref.path]
        keys += [kv.key for kv in (await self.store.range(f"{RELEASES}{ref.path}/")).items]
        ops: list[Op] = [Delete(k) for k in keys]
        compares: list[Compare] = []
        if meta.public and not await self._other_public_copies(ref):
            # the name stays the app's while a public copy is left in another environment or cluster
            marker = await self.store.get(PUBLIC + ref.namespace)
            ops.append(Delete(PUBLIC + ref.namespace))
            compares.append(Compare(PUBLIC + ref.namespace, marker.mod_revision if marker else 0))
        ops.append(self._audit(user, "config.namespace.delete", ref, await self._tenant(ref), before=meta.out()))
        await self._commit(ops, compares, f"public namespace {ref.namespace!r} changed while deleting; try again")

    async def _other_public_copies(self, ref: NsRef) -> bool:
        """Whether the app has the namespace, public, in another environment or cluster."""
        for kv in (await self.store.range(f"{META}{ref.app}/")).items:
            path = kv.key[len(META):]
            if path != ref.path and NsRef.from_path(path).namespace == ref.namespace \
                    and NamespaceMeta.model_validate(loads(kv.value)).public:
                return True
        return False

    async def set_permissions(self, ref: NsRef, permissions: Permissions, user: str) -> NamespaceMeta:
        loaded = await self._load(META + ref.path, NamespaceMeta)
        if loaded.doc is None:
            raise not_found(f"config namespace {ref.path}")
        meta = loaded.doc.model_copy(update={"permissions": permissions})
        await self._commit([Put(META + ref.path, dumps(meta.out())),
                            self._audit(user, "config.permissions", ref, await self._tenant(ref),
                                        before=loaded.doc.permissions.out(), after=permissions.out())],
                           [Compare(META + ref.path, loaded.revision)], "permissions changed concurrently")
        return meta  # type: ignore[no-any-return]

    # drafts -----------------------------------------------------------------------------

    async def draft(self, ref: NsRef) -> tuple[Draft, int]:
        await self.meta(ref)
        loaded = await self._load(DRAFT + ref.path, Draft)
        return (loaded.doc or Draft()), loaded.revision

    async def set_items(self, ref: NsRef, values: dict[str, tuple[str, bool | None, str]], user: str,
                        if_match: int | None = None, *, tenant: str = DEFAULT, action: str = "config.set") -> int:
        """Set keys to ``(value, secret, comment)`` in the draft; creates a missing namespace
        (private, properties). Returns the draft's new ETag."""
        for key, (value, _, _) in values.items():
            _check_item(key, value)

        def change(draft: Draft, meta: NamespaceMeta) -> dict[str, Any]:
            if meta.format is not Format.PROPERTIES and set(values) - {CONTENT}:
                raise bad_request(f"a {meta.format.value} namespace holds one document under the key 'content'",
                                  field="key")
            before: dict[str, Any] = {}
            for key, (value, asked, comment) in values.items():
                old = draft.items.get(key)
                before[key] = _shown(old)
                # not saying whether a key is secret keeps what it was: a secret never turns plain by accident
                secret = bool(old and old.secret) if asked is None else asked
                keep_secret = secret or bool(old and old.secret and value == MASK)
                if keep_secret and value == MASK and old is not None:
                    stored = old.value  # re-saving a masked value keeps the secret as it was
                else:
                    stored = self.keyring.encrypt(value, f"{ref.path}/{key}") if secret else value
                draft.items[key] = Item(value=stored, secret=keep_secret, comment=comment, by=user, at=now())
            if len(draft.items) > MAX_KEYS:
                raise bad_request(f"a namespace holds at most {MAX_KEYS} keys", field="key")
            return {"before": before, "after": {k: _shown(draft.items[k]) for k in values}}

        return await self._edit_draft(ref, user, if_match, change, action, tenant, create=True)

    async def unset_items(self, ref: NsRef, keys: list[str], user: str, if_match: int | None = None) -> int:
        def change(draft: Draft, meta: NamespaceMeta) -> dict[str, Any]:
            missing = [k for k in keys if k not in draft.items]
            if missing:
                raise not_found(f"key {missing[0]!r} in the draft of {ref.path}")
            return {"before": {k: _shown(draft.items.pop(k)) for k in keys}}

        return await self._edit_draft(ref, user, if_match, change, "config.unset", DEFAULT, create=False)

    async def _edit_draft(self, ref: NsRef, user: str, if_match: int | None,
                          change: Callable[[Draft, NamespaceMeta], dict[str, Any]], action: str, tenant: str,
                          create: bool) -> int:
        for _ in range(20):  # without If-Match, retry a lost race so concurrent edits of other keys both land
            ops: list[Op] = []
            compares: list[Compare] = []
            meta = (await self._load(META + ref.path, NamespaceMeta)).doc
            if meta is None:
                if not create:
                    raise not_found(f"config namespace {ref.path}")
                ops, compares = await self._creation(ref, user, Format.PROPERTIES, False, "", tenant)
                meta = NamespaceMeta.model_validate(loads(next(o.value for o in ops if isinstance(o, Put)
                                                                and o.key == META + ref.path)))
            loaded = await self._load(DRAFT + ref.path, Draft)
            if if_match is not None and loaded.revision != if_match:
                raise conflict(f"the draft of {ref.path} changed (ETag {loaded.revision}, you sent {if_match}); "
                               "read it again", etag=str(loaded.revision))
            draft: Draft = loaded.doc or Draft()
            detail = change(draft, meta)
            if user not in draft.editors:
                draft.editors.append(user)
            ops += [Put(DRAFT + ref.path, dumps(draft.out())),
                    self._audit(user, action, ref, await self._tenant(ref, tenant), **detail)]
            compares.append(Compare(DRAFT + ref.path, loaded.revision))
            try:
                result = await self._txn(ops, compares)
            except ConflictError:
                if if_match is not None:
                    raise conflict(f"the draft of {ref.path} changed; read it again") from None
                continue
            return result.revision
        raise conflict(f"the draft of {ref.path} keeps changing; try again")

    async def discard(self, ref: NsRef, user: str) -> int:
        """Reset the draft to the latest release."""
        release = await self.latest_release(ref)
        draft = Draft(items={k: Item(value=v.value, secret=v.secret, by=user, at=now())
                             for k, v in (release.config if release else {}).items()})
        loaded = await self._load(DRAFT + ref.path, Draft)
        result = await self._commit(
            [Put(DRAFT + ref.path, dumps(draft.out())),
             self._audit(user, "config.discard", ref, await self._tenant(ref),
                         before={k: _shown(v) for k, v in (loaded.doc.items if loaded.doc else {}).items()},
                         after={k: _shown(v) for k, v in draft.items.items()})],
            [Compare(DRAFT + ref.path, loaded.revision)], "the draft changed while discarding")
        return result

    def pending(self, ref: NsRef, draft: Draft, release: Release | None) -> dict[str, list[str]]:
        """Keys added, changed and removed in the draft since the release."""
        released = release.config if release else {}
        return _diff_keys({k: (v.value, v.secret) for k, v in released.items()},
                          {k: (v.value, v.secret) for k, v in draft.items.items()}, self._plain_in(ref))

    def _plain(self, where: str, value: str, secret: bool) -> str:
        return self.keyring.decrypt(value, where) if secret else value

    def _plain_in(self, ref: NsRef) -> Callable[[str, str, bool], str]:
        return lambda key, value, secret: self._plain(f"{ref.path}/{key}", value, secret)

    # releases ---------------------------------------------------------------------------

    async def publish(self, ref: NsRef, user: str, title: str = "", message: str = "", *,
                      kind: str = "normal", config: dict[str, Stored] | None = None, rolled_back_to: int | None = None,
                      extra_ops: list[Op] | None = None, extra_compares: list[Compare] | None = None,
                      clear_gray: bool = False) -> Release:
        """Release the draft (or ``config``) as a new immutable release of the whole namespace."""
        meta = await self.meta(ref)
        draft_loaded = await self._load(DRAFT + ref.path, Draft)
        draft: Draft = draft_loaded.doc or Draft()
        if meta.permissions.require_distinct_publisher and kind == "normal" and user in draft.editors:
            raise Problem(403, "Forbidden", f"{user!r} edited this draft; namespace {ref.path} requires "
                          "another user to publish it", type="forbidden",
                          errors=[{"field": "user", "reason": "edited the draft"}])
        latest = await self.latest(ref)
        previous = await self.release(ref, latest.doc.release) if latest.doc and latest.doc.release else None
        if config is None:
            if previous is not None and not any(self.pending(ref, draft, previous).values()):
                raise conflict(f"nothing to publish: the draft of {ref.path} equals release {previous.id}")
            config = {k: Stored(value=v.value, secret=v.secret) for k, v in draft.items.items()}
        if meta.format is not Format.PROPERTIES and CONTENT in config:
            self.validated(ref, meta.format, config[CONTENT])
        release_id = (previous.id if previous else 0) + 1
        release = Release(id=release_id, title=title or f"release {release_id}", message=message, author=user,
                          at=now(), kind=kind, rolled_back_to=rolled_back_to, config=config)
        old = previous.config if previous else {}
        changes = _diff_keys({k: (v.value, v.secret) for k, v in old.items()},
                             {k: (v.value, v.secret) for k, v in config.items()}, self._plain_in(ref))
        pointer = (latest.doc or Latest()).model_copy(update={"release": release_id})
        if clear_gray:
            pointer = Latest(release=release_id)
        new_draft = Draft(items={k: Item(value=v.value, secret=v.secret, by=user, at=release.at)
                                 for k, v in config.items()}) if kind != "normal" else Draft(items=draft.items)
        ops: list[Op] = [
            Put(f"{RELEASES}{ref.path}/{release_id:010d}", dumps(release.out())),
            Put(LATEST + ref.path, dumps(pointer.out())),
            Put(DRAFT + ref.path, dumps(new_draft.out())),
            self._audit(user, f"config.{'publish' if kind == 'normal' else kind}", ref, await self._tenant(ref),
                        release=release_id, title=release.title, changes=changes,
                        before={k: self.shown_stored(old[k]) for k in changes["changed"] + changes["removed"]},
                        after={k: self.shown_stored(config[k]) for k in changes["added"] + changes["changed"]}),
            *(extra_ops or []),
        ]
        compares = [Compare(LATEST + ref.path, latest.revision), Compare(DRAFT + ref.path, draft_loaded.revision),
                    *(extra_compares or [])]
        await self._commit(ops, compares, f"{ref.path} changed while publishing; try again")
        return release

    def validated(self, ref: NsRef, fmt: Format, content: Stored) -> None:
        """400 with the line and column when the document does not parse as ``fmt``."""
        try:
            validate(fmt, self._plain(f"{ref.path}/{CONTENT}", content.value, content.secret))
        except FormatError as exc:
            raise bad_request(str(exc), field="content", line=exc.line, column=exc.column) from None

    async def releases(self, ref: NsRef, limit: int = 100) -> list[Release]:
        await self.meta(ref)
        items = (await self.store.range(f"{RELEASES}{ref.path}/")).items
        return [Release.model_validate(loads(kv.value)) for kv in reversed(items[-limit:])]

    async def rollback(self, ref: NsRef, user: str, to: int | None = None, force: bool = False) -> Release:
        """A new release with the configuration of release ``to`` (default: the one before the latest)."""
        latest = await self.latest(ref)
        draft, draft_revision = await self.draft(ref)
        current = await self.release(ref, latest.doc.release) if latest.doc and latest.doc.release else None
        if current is None:
            raise conflict(f"{ref.path} has no release to roll back")
        if to is None:
            to = current.id - 1
        if to < 1 or to >= current.id:
            raise bad_request(f"roll back to a release between 1 and {current.id - 1}", field="to")
        target = await self.release(ref, to)
        changes = self.pending(ref, draft, current)
        if any(changes.values()) and not force:
            raise conflict(f"the draft of {ref.path} has unpublished changes {changes}; publish or discard them, "
                           "or roll back with force (the draft is reset to the rolled-back release)")
        # what was checked above must still hold when the release is written
        return await self.publish(ref, user, f"rollback to release {to}", kind="rollback", config=target.config,
                                  rolled_back_to=to, extra_compares=self.unchanged(ref, latest.revision, draft_revision))

    def unchanged(self, ref: NsRef, latest_revision: int, draft_revision: int) -> list[Compare]:
        """Compares that fail when the namespace's pointer or draft changed since they were read."""
        return [Compare(LATEST + ref.path, latest_revision), Compare(DRAFT + ref.path, draft_revision)]

    async def diff(self, ref: NsRef, a: int, b: int) -> dict[str, Any]:
        left, right = await self.release(ref, a), await self.release(ref, b)
        keys = _diff_keys({k: (v.value, v.secret) for k, v in left.config.items()},
                          {k: (v.value, v.secret) for k, v in right.config.items()}, self._plain_in(ref))
        return {"from": a, "to": b, **keys,
                "values": {k: {"from": self.shown_stored(left.config.get(k)),
                               "to": self.shown_stored(right.config.get(k))}
                           for k in keys["added"] + keys["changed"] + keys["removed"]}}

    def shown_stored(self, stored: Stored | None) -> str | None:
        return None if stored is None else MASK if stored.secret else stored.value

    # secrets ----------------------------------------------------------------------------

    def reveal(self, ref: NsRef, config: dict[str, Stored], clear: bool) -> dict[str, str]:
        """Values for a client: secrets decrypted when ``clear``, else masked."""
        out = {}
        for key, stored in config.items():
            if stored.secret:
                out[key] = self.keyring.decrypt(stored.value, f"{ref.path}/{key}") if clear else MASK
            else:
                out[key] = stored.value
        return out

    async def rotate_keys(self, user: str) -> int:
        """Re-encrypt every stored secret with the active key; returns how many documents changed."""
        changed = 0
        for prefix, model in ((DRAFT, Draft), (RELEASES, Release), (GRAY, Gray), (LATEST, Latest),
                              (ACCESS_KEYS, AccessKey)):
            for kv in (await self.store.range(prefix)).items:
                path = kv.key[len(prefix):]
                if prefix == RELEASES:
                    path = path.rsplit("/", 1)[0]
                current: Any = kv
                while current is not None:  # a concurrent write may keep other keys' old ciphertexts: redo it
                    doc = model.model_validate(loads(current.value))
                    if not self._rotate_doc(doc, path):
                        break
                    try:
                        await self._txn([Put(kv.key, dumps(doc.out()))], [Compare(kv.key, current.mod_revision)])
                        changed += 1
                        break
                    except ConflictError:
                        current = await self.store.get(kv.key)
        await self.store.txn([audit_put(user, "config.rotate-keys", kind=AUDIT_KIND, detail={"documents": changed,
                                                                                           "key": self.keyring.active})])
        return changed

    def _rotate_doc(self, doc: Any, path: str) -> bool:
        if isinstance(doc, AccessKey):  # sealed where it lives: access-keys/{app}/{id}
            where = ACCESS_KEYS.removeprefix(ROOT) + path
            if self.keyring.needs_rotation(doc.secret):
                doc.secret = self.keyring.rotate(doc.secret, where)
                return True
            return False
        maps: list[dict[str, Any]] = []
        for attr in ("items", "config"):
            if isinstance(getattr(doc, attr, None), dict):
                maps.append(getattr(doc, attr))
        for gray in (getattr(doc, "release", None), getattr(doc, "gray_release", None)):
            if gray is not None and hasattr(gray, "overrides"):
                maps.append(gray.overrides)
        changed = False
        for mapping in maps:
            for key, value in mapping.items():
                if value.secret and self.keyring.needs_rotation(value.value):
                    value.value = self.keyring.rotate(value.value, f"{path}/{key}")
                    changed = True
        return changed

    # plumbing ---------------------------------------------------------------------------

    async def _tenant(self, ref: NsRef, default: str = DEFAULT) -> str:
        app = await self.app(ref.app)
        return app.tenant if app else default

    def _audit(self, user: str, action: str, ref: NsRef, tenant: str, **detail: Any) -> Put:
        return audit_put(user, action, kind=AUDIT_KIND, namespace=tenant, name=ref.path,
                         detail={"app": ref.app, "env": ref.env, "cluster": ref.cluster, "namespace": ref.namespace,
                                 **detail})

    async def _txn(self, ops: list[Op], compares: list[Compare] | None = None) -> Any:
        result = await self.store.txn(ops, compares or ())
        self.last_write = max(self.last_write, result.revision)  # reads on this node wait for the hub to see it
        return result

    async def _commit(self, ops: list[Op], compares: list[Compare], message: str) -> int:
        try:
            return (await self._txn(ops, compares)).revision
        except ConflictError:
            raise conflict(message) from None


class _Owner(BaseModel):
    app: str


def _check_item(key: str, value: str) -> None:
    if not key or len(key) > MAX_KEY or any(ord(c) < 32 for c in key):
        raise bad_request(f"a key is 1 to {MAX_KEY} printable characters", field="key")
    if len(value.encode()) > MAX_VALUE:
        raise Problem(413, "Content Too Large", f"a value is at most {MAX_VALUE} bytes", type="too-large",
                      errors=[{"field": "value", "reason": "too large"}])


def _shown(item: Item | None) -> str | None:
    return None if item is None else MASK if item.secret else item.value


def _diff_keys(old: dict[str, tuple[str, bool]], new: dict[str, tuple[str, bool]],
               plain: Callable[[str, str, bool], str]) -> dict[str, list[str]]:
    """Added, changed and removed keys; secrets compare by plaintext (ciphertexts differ per write)."""
    changed = []
    for key in sorted(set(old) & set(new)):
        (a, a_secret), (b, b_secret) = old[key], new[key]
        if a == b and a_secret == b_secret:
            continue
        if a_secret != b_secret or plain(key, a, a_secret) != plain(key, b, b_secret):
            changed.append(key)
    return {"added": sorted(set(new) - set(old)), "changed": changed, "removed": sorted(set(old) - set(new))}

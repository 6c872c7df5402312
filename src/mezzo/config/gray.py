"""Gray release: a branch of a namespace with its own keys, served to the clients its rules pick.

Rules take effect the moment they are saved (they live in the namespace's ``latest`` pointer,
which watchers watch); the branch's keys take effect when the branch is published. Promote
merges the published gray keys into the main namespace as a new release; abandon drops the
branch. A percentage rule hashes the client id with the namespace, so a client stays on the
same side while the percentage does not change, and raising it only adds clients.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from mezzo.config.formats import CONTENT, Format
from mezzo.config.model import (
    ClientInfo,
    Gray,
    GrayRelease,
    GrayRule,
    Item,
    Latest,
    NamespaceMeta,
    NsRef,
    Stored,
)
from mezzo.config.secrets import MASK
from mezzo.config.service import GRAY, LATEST, ConfigService, Release, _check_item, _shown, now
from mezzo.jsonutil import dumps
from mezzo.node.errors import Problem, bad_request, conflict, not_found
from mezzo.storage.kv import Compare, Delete, Put


def bucket(client_id: str, path: str) -> int:
    """0..99, fixed for a client id and namespace."""
    return int.from_bytes(hashlib.sha256(f"{path}\0{client_id}".encode()).digest()[:4], "big") % 100


def rule_matches(rule: GrayRule, client: ClientInfo, path: str) -> bool:
    if not (rule.labels or rule.client_ids or rule.ips or rule.percentage is not None):
        return False  # an empty rule would catch every client: treat it as matching none
    if any(client.labels.get(k) != v for k, v in rule.labels.items()):
        return False
    if rule.client_ids and client.client_id not in rule.client_ids:
        return False
    if rule.ips:
        try:
            address = ipaddress.ip_address(client.ip or "")
        except ValueError:
            return False
        if not any(address in ipaddress.ip_network(block, strict=False) for block in rule.ips):
            return False
    if rule.percentage is not None:
        if not client.client_id or bucket(client.client_id, path) >= rule.percentage:
            return False
    return True


def in_gray(latest: Latest, client: ClientInfo, path: str) -> bool:
    return latest.gray_release is not None and any(rule_matches(r, client, path) for r in latest.gray_rules)


class GrayReleases:
    def __init__(self, service: ConfigService) -> None:
        self.service = service
        self.store = service.store

    async def get(self, ref: NsRef) -> Gray:
        gray = (await self.service._load(GRAY + ref.path, Gray)).doc
        if gray is None:
            raise not_found(f"gray release of {ref.path}")
        return gray  # type: ignore[no-any-return]

    def shown(self, gray: Gray) -> dict[str, Any]:
        out = gray.out()
        out["items"] = {k: {**v.out(), "value": _shown(v)} for k, v in gray.items.items()}
        if gray.release is not None:
            out["release"]["overrides"] = {k: self.service.shown_stored(v) for k, v in gray.release.overrides.items()}
        return out

    async def create(self, ref: NsRef, user: str) -> Gray:
        await self.service.meta(ref)
        if await self.service.latest_release(ref) is None:
            raise conflict(f"publish {ref.path} before creating a gray release of it")
        gray = Gray(created_by=user, created_at=now())
        await self.service._commit([Put(GRAY + ref.path, dumps(gray.out())), await self._audit(ref, user, "create")],
                                   [Compare(GRAY + ref.path, 0)], f"{ref.path} already has a gray release")
        return gray

    async def set_items(self, ref: NsRef, values: dict[str, tuple[str, bool | None, str]], user: str) -> Gray:
        for key, (value, _, _) in values.items():
            _check_item(key, value)
        fmt = (await self.service.meta(ref)).format
        if fmt is not Format.PROPERTIES and set(values) - {CONTENT}:
            raise bad_request(f"a {fmt.value} namespace holds one document under the key 'content'", field="key")

        def change(gray: Gray) -> dict[str, Any]:
            before: dict[str, Any] = {}
            for key, (value, asked, comment) in values.items():
                old = gray.items.get(key)
                before[key] = _shown(old)
                secret = bool(old and old.secret) if asked is None else asked
                if value == MASK and old is not None and old.secret:
                    stored, secret = old.value, True
                else:
                    stored = self.service.keyring.encrypt(value, f"{ref.path}/{key}") if secret else value
                gray.items[key] = Item(value=stored, secret=secret, comment=comment, by=user, at=now())
            return {"keys": sorted(values), "before": before, "after": {k: _shown(gray.items[k]) for k in values}}

        return await self._edit(ref, user, "set", change)

    async def unset_items(self, ref: NsRef, keys: list[str], user: str) -> Gray:
        def change(gray: Gray) -> dict[str, Any]:
            missing = [k for k in keys if k not in gray.items]
            if missing:
                raise not_found(f"key {missing[0]!r} in the gray release of {ref.path}")
            return {"keys": sorted(keys), "before": {k: _shown(gray.items.pop(k)) for k in keys}}

        return await self._edit(ref, user, "unset", change)

    async def set_rules(self, ref: NsRef, rules: list[GrayRule], user: str) -> Gray:
        """Replace the rules; they apply to clients at once."""
        def change(gray: Gray) -> dict[str, Any]:
            before = [r.out() for r in gray.rules]
            gray.rules = rules
            return {"before": before, "after": [r.out() for r in rules]}

        return await self._edit(ref, user, "rules", change, pointer=True)

    async def publish(self, ref: NsRef, user: str) -> Gray:
        meta = await self.service.meta(ref)

        def change(gray: Gray) -> dict[str, Any]:
            self._check_publisher(ref, meta, gray, user)
            if meta.format is not Format.PROPERTIES and CONTENT in gray.items:
                item = gray.items[CONTENT]
                self.service.validated(ref, meta.format, Stored(value=item.value, secret=item.secret))
            number = (gray.release.id if gray.release else 0) + 1
            gray.release = GrayRelease(id=number, author=user, at=now(),
                                       overrides={k: Stored(value=v.value, secret=v.secret) for k, v in gray.items.items()})
            return {"grayRelease": number, "keys": sorted(gray.items),
                    "after": {k: self.service.shown_stored(v) for k, v in gray.release.overrides.items()}}

        return await self._edit(ref, user, "publish", change, pointer=True)

    async def promote(self, ref: NsRef, user: str) -> Release:
        """Merge the published gray keys into the main namespace as a new release; the branch ends."""
        loaded = await self.service._load(GRAY + ref.path, Gray)
        if loaded.doc is None:
            raise not_found(f"gray release of {ref.path}")
        gray: Gray = loaded.doc
        if gray.release is None:
            raise conflict(f"publish the gray release of {ref.path} before promoting it")
        self._check_publisher(ref, await self.service.meta(ref), gray, user)
        latest = await self.service.latest(ref)
        draft, draft_revision = await self.service.draft(ref)
        current = await self.service.release(ref, latest.doc.release) if latest.doc and latest.doc.release else None
        if any(self.service.pending(ref, draft, current).values()):
            raise conflict(f"the draft of {ref.path} has unpublished changes; publish or discard them first")
        config = dict(current.config if current else {})
        config.update(gray.release.overrides)
        return await self.service.publish(
            ref, user, f"promote gray release {gray.release.id}", kind="promote", config=config, clear_gray=True,
            extra_ops=[Delete(GRAY + ref.path)],
            extra_compares=[Compare(GRAY + ref.path, loaded.revision),
                            *self.service.unchanged(ref, latest.revision, draft_revision)])

    async def abandon(self, ref: NsRef, user: str) -> None:
        loaded = await self.service._load(GRAY + ref.path, Gray)
        if loaded.doc is None:
            raise not_found(f"gray release of {ref.path}")
        latest = await self.service.latest(ref)
        pointer = Latest(release=latest.doc.release if latest.doc else None)
        shown = self.shown(loaded.doc)
        before = {"items": {k: v["value"] for k, v in shown["items"].items()}, "rules": shown["rules"],
                  "release": shown["release"]["overrides"] if loaded.doc.release else None}
        await self.service._commit(
            [Delete(GRAY + ref.path), Put(LATEST + ref.path, dumps(pointer.out())),
             await self._audit(ref, user, "abandon", before=before)],
            [Compare(GRAY + ref.path, loaded.revision), Compare(LATEST + ref.path, latest.revision)],
            f"the gray release of {ref.path} changed; try again")

    def _check_publisher(self, ref: NsRef, meta: NamespaceMeta, gray: Gray, user: str) -> None:
        """The distinct-publisher option covers the gray keys too: they reach clients on publish."""
        if meta.permissions.require_distinct_publisher and user in gray.editors:
            raise Problem(403, "Forbidden", f"{user!r} edited the gray release; namespace {ref.path} requires "
                          "another user to publish it", type="forbidden",
                          errors=[{"field": "user", "reason": "edited the gray release"}])

    async def _edit(self, ref: NsRef, user: str, action: str, change: Any, pointer: bool = False) -> Gray:
        loaded = await self.service._load(GRAY + ref.path, Gray)
        if loaded.doc is None:
            raise not_found(f"gray release of {ref.path}")
        gray: Gray = loaded.doc
        detail = change(gray)
        if action in ("set", "unset") and user not in gray.editors:
            gray.editors.append(user)
        ops = [Put(GRAY + ref.path, dumps(gray.out())), await self._audit(ref, user, action, **detail)]
        compares = [Compare(GRAY + ref.path, loaded.revision)]
        if pointer:
            latest = await self.service.latest(ref)
            doc = (latest.doc or Latest()).model_copy(update={"gray_rules": gray.rules, "gray_release": gray.release})
            ops.append(Put(LATEST + ref.path, dumps(doc.out())))
            compares.append(Compare(LATEST + ref.path, latest.revision))
        await self.service._commit(ops, compares, f"the gray release of {ref.path} changed; try again")
        return gray

    async def _audit(self, ref: NsRef, user: str, action: str, **detail: Any) -> Put:
        return self.service._audit(user, f"config.gray.{action}", ref, await self.service._tenant(ref), **detail)

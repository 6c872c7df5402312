"""Bearer tokens with roles and namespace scopes; stored hashed; the first start mints an admin token."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import structlog
from pydantic import BaseModel, Field

from mezzo.jsonutil import dumps, loads
from mezzo.node.audit import audit_put
from mezzo.storage.kv import CompactedError, Compare, ConflictError, Delete, EventType, KVStore, Put

TOKENS_PREFIX = "/auth/tokens/"
BOOTSTRAP_KEY = "/auth/bootstrap"
TOKEN_FILE = "admin.token"


log = structlog.get_logger("mezzo.auth")


class Role(StrEnum):
    VIEWER = "viewer"
    DEVELOPER = "developer"
    OPERATOR = "operator"
    ADMIN = "admin"


class Verb(StrEnum):
    READ = "read"  # look at resources, state, metrics
    USE = "use"  # data-plane calls: publish, consume, read config, cache ops
    WRITE = "write"  # change resources and service state
    ADMIN = "admin"  # tokens and node administration


ROLE_VERBS: dict[Role, frozenset[Verb]] = {
    Role.VIEWER: frozenset({Verb.READ}),
    Role.DEVELOPER: frozenset({Verb.READ, Verb.USE}),
    Role.OPERATOR: frozenset({Verb.READ, Verb.USE, Verb.WRITE}),
    Role.ADMIN: frozenset(Verb),
}


class TokenRecord(BaseModel):
    id: str
    name: str
    role: Role
    namespaces: list[str] = Field(default_factory=lambda: ["*"])
    hash: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None

    def public(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude={"hash"})


class Principal(BaseModel):
    name: str
    role: Role
    namespaces: list[str] = Field(default_factory=lambda: ["*"])
    token_id: str | None = None

    @property
    def all_namespaces(self) -> bool:
        return "*" in self.namespaces

    def can(self, verb: Verb, namespace: str | None = None) -> bool:
        """May this caller ``verb`` in ``namespace``? ``None`` means across every namespace."""
        if verb not in ROLE_VERBS[self.role]:
            return False
        if self.all_namespaces:
            return True
        return namespace is not None and namespace in self.namespaces

    def has_verb(self, verb: Verb) -> bool:
        """The role allows ``verb`` somewhere (callers then filter by namespace)."""
        return verb in ROLE_VERBS[self.role]


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """(id, plaintext): ``mzo_<id>_<secret>``; the id finds the record, the secret proves it."""
    token_id = secrets.token_hex(6)
    return token_id, f"mzo_{token_id}_{secrets.token_urlsafe(32)}"


class TokenError(Exception):
    pass


class TokenService:
    """Keeps an in-memory copy of all token records, refreshed by watching the store."""

    def __init__(self, store: KVStore, data_dir: Path, admin_token: str | None = None) -> None:
        self.store = store
        self.data_dir = data_dir
        self._env_admin_hash = _hash(admin_token) if admin_token else None
        self._records: dict[str, TokenRecord] = {}
        self._task: asyncio.Task[None] | None = None
        self.generated_token: str | None = None  # set on the start that minted it

    async def start(self) -> None:
        revision = await self._reload()
        if self._env_admin_hash is None:
            await self._bootstrap_admin()
        self._task = asyncio.create_task(self._follow(revision + 1), name="mezzo-auth-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _reload(self) -> int:
        snapshot = await self.store.range(TOKENS_PREFIX)
        self._records = {
            r.id: r for r in (TokenRecord.model_validate(loads(kv.value)) for kv in snapshot.items)
        }
        return snapshot.revision

    @property
    def following(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _follow(self, start: int) -> None:
        """Apply token changes from any node; a revocation must never stop propagating."""
        while True:
            try:
                async for event in self.store.watch(TOKENS_PREFIX, start):
                    token_id = event.key[len(TOKENS_PREFIX):]
                    if event.type is EventType.DELETE:
                        self._records.pop(token_id, None)
                    elif event.value is not None:
                        self._records[token_id] = TokenRecord.model_validate(loads(event.value))
                    start = event.revision + 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, CompactedError):
                    log.warning("token watch failed; re-reading tokens", error=str(exc))
                    await asyncio.sleep(1)
                with contextlib.suppress(Exception):
                    start = await self._reload() + 1

    async def _bootstrap_admin(self) -> None:
        """Mint the first admin token once per store; the token file is written before the commit."""
        if await self.store.get(BOOTSTRAP_KEY) is not None:
            return
        if any(r.role is Role.ADMIN for r in self._records.values()):
            return  # a store from before the marker existed, already bootstrapped
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / TOKEN_FILE
        partial = path.with_suffix(".new")
        token_id, plaintext = new_token()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(plaintext + "\n")
        try:
            await self.create("admin", Role.ADMIN, ["*"], None, "mezzo", minted=(token_id, plaintext),
                              extra=[Put(BOOTSTRAP_KEY, b"admin"), Compare(BOOTSTRAP_KEY, 0)])
        except ConflictError:  # another node on the same store bootstrapped first
            partial.unlink(missing_ok=True)
            return
        os.replace(partial, path)
        self.generated_token = plaintext

    def authenticate(self, token: str) -> Principal | None:
        if self._env_admin_hash is not None and hmac.compare_digest(_hash(token), self._env_admin_hash):
            return Principal(name="admin", role=Role.ADMIN)
        parts = token.split("_")
        if len(parts) < 3 or parts[0] != "mzo":
            return None
        record = self._records.get(parts[1])
        if record is None or not hmac.compare_digest(_hash(token), record.hash):
            return None
        if record.expires_at is not None and record.expires_at.timestamp() <= time.time():
            return None
        return Principal(name=record.name, role=record.role, namespaces=record.namespaces, token_id=record.id)

    def still_valid(self, principal: Principal) -> bool:
        """Is ``principal``'s token still there and unexpired? For connections authenticated once
        (RESP, SSE, WebSocket): a dict lookup, cheap enough to run per command or event."""
        if principal.token_id is None:
            return True  # MEZZO_ADMIN_TOKEN: not stored, cannot be revoked
        record = self._records.get(principal.token_id)
        return record is not None and (record.expires_at is None or record.expires_at.timestamp() > time.time())

    async def create(
        self,
        name: str,
        role: Role,
        namespaces: list[str],
        ttl_seconds: float | None,
        by: str,
        *,
        minted: tuple[str, str] | None = None,
        extra: list[Put | Compare] | None = None,
    ) -> tuple[TokenRecord, str]:
        token_id, plaintext = minted or new_token()
        now = datetime.now(UTC)
        expires = (
            datetime.fromtimestamp(now.timestamp() + ttl_seconds, UTC) if ttl_seconds else None
        )
        record = TokenRecord(
            id=token_id, name=name, role=role, namespaces=namespaces or ["*"],
            hash=_hash(plaintext), created_at=now, created_by=by, expires_at=expires,
        )
        key = TOKENS_PREFIX + token_id
        extra = extra or []
        await self.store.txn(
            [
                Put(key, dumps(record.model_dump(mode="json"))),
                audit_put(by, "token.create", kind="Token", name=name, detail={"id": token_id, "role": role.value}),
                *(x for x in extra if isinstance(x, Put)),
            ],
            [Compare(key, 0), *(x for x in extra if isinstance(x, Compare))],
        )
        self._records[token_id] = record
        return record, plaintext

    def list(self) -> list[TokenRecord]:
        return sorted(self._records.values(), key=lambda r: r.created_at)

    async def revoke(self, id_or_name: str, by: str) -> TokenRecord:
        matches = [r for r in self._records.values() if id_or_name in (r.id, r.name)]
        if not matches:
            raise TokenError(f"no token with id or name {id_or_name!r}")
        if len(matches) > 1:
            raise TokenError(f"{len(matches)} tokens are named {id_or_name!r}: revoke by id")
        record = matches[0]
        await self.store.txn(
            [
                Delete(TOKENS_PREFIX + record.id),
                audit_put(by, "token.revoke", kind="Token", name=record.name, detail={"id": record.id}),
            ]
        )
        self._records.pop(record.id, None)
        return record


def read_token_file(data_dir: Path) -> str | None:
    with contextlib.suppress(OSError):
        text = (data_dir / TOKEN_FILE).read_text().strip()
        return text or None
    return None

"""The ``auth`` module: token service plus the HTTP routes to manage tokens."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, field_validator
from starlette.requests import HTTPConnection

from mezzo.node.auth import Principal, Role, TokenError, TokenService, Verb
from mezzo.node.errors import Problem, not_found
from mezzo.node.module import Health, Module
from mezzo.resources.types import NAME_PATTERN, Duration
from mezzo.storage.kv import KVStore
from mezzo.telemetry.metrics import Metrics


class AuthModule(Module):
    name = "auth"

    async def start(self) -> None:
        settings = self.node.settings
        admin = settings.admin_token.get_secret_value() if settings.admin_token else None
        self.tokens = TokenService(self.node.service(KVStore), settings.data_dir, admin)  # type: ignore[type-abstract]
        await self.tokens.start()
        self.node.provide(TokenService, self.tokens)

    async def stop(self) -> None:
        await self.tokens.stop()

    async def health(self) -> Health:
        if not self.tokens.following:
            return Health(False, "token watch stopped: revocations would not reach this node")
        return Health(True, f"{len(self.tokens.list())} tokens")

    def routers(self) -> list[APIRouter]:
        return [router]


def bearer_token(conn: HTTPConnection) -> str | None:
    """``Authorization: Bearer TOKEN``, else Dapr's ``dapr-api-token`` header."""
    return token_in(conn.headers)


def token_in(headers: Mapping[str, str]) -> str | None:
    """The token of request headers (or gRPC metadata, keys lowercase): ``authorization: Bearer
    TOKEN``, else Dapr's ``dapr-api-token``."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("dapr-api-token") or None


def authenticate(conn: HTTPConnection, token: str | None) -> Principal | None:
    return None if token is None else conn.app.state.node.service(TokenService).authenticate(token)


async def principal(request: Request) -> Principal:
    """The ``Caller`` dependency. A coroutine on purpose: FastAPI runs a plain-function dependency in a
    worker thread, a hand-off per API request for what is a dict lookup and a hash."""
    return principal_of(request)


def principal_of(request: Request) -> Principal:
    """The caller, from ``Authorization: Bearer TOKEN`` (or Dapr's ``dapr-api-token``); 401 otherwise."""
    token = bearer_token(request)
    if token is None:
        _failures(request).labels("missing").inc()
        raise Problem(401, "Unauthorized", "missing bearer token", type="unauthorized",
                      headers={"WWW-Authenticate": 'Bearer realm="mezzo"'})
    found = authenticate(request, token)
    if found is None:
        _failures(request).labels("invalid").inc()
        raise Problem(401, "Unauthorized", "invalid, expired or revoked token", type="unauthorized",
                      headers={"WWW-Authenticate": 'Bearer realm="mezzo", error="invalid_token"'})
    return found


def _failures(request: Request) -> Any:
    return request.app.state.node.service(Metrics).counter(
        "auth", "failures", "total", "Rejected API calls by reason.", labels=("reason",))


Caller = Annotated[Principal, Depends(principal)]


def require(caller: Principal, verb: Verb, namespace: str | None = None) -> None:
    if caller.can(verb, namespace):
        return
    if not caller.has_verb(verb):
        detail = f"role {caller.role.value} does not allow {verb.value}"
    else:
        where = f"namespace {namespace!r}" if namespace else "every namespace"
        detail = f"this token is scoped to {', '.join(caller.namespaces)}; the call needs {where}"
    raise Problem(403, "Forbidden", detail, type="forbidden")


router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._@-]+$")
    role: Role
    namespaces: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    ttl: Duration | None = Field(None, gt=0, le=100 * 365 * 86400, description="lifetime, e.g. 30d; none = no expiry")

    @field_validator("namespaces")
    @classmethod
    def _namespace_names(cls, value: list[str]) -> list[str]:
        for item in value:  # a scope no namespace can match would make a token that never works
            if item != "*" and not re.match(NAME_PATTERN, item):
                raise ValueError(f"{item!r} is not a namespace name (lowercase letters, digits, '-', '.' "
                                 "and '_', starting and ending with a letter or digit) nor * (every namespace)")
        return value


@router.post("", status_code=201)
async def create_token(body: TokenCreate, caller: Caller, request: Request) -> dict[str, object]:
    require(caller, Verb.ADMIN)
    tokens: TokenService = request.app.state.node.service(TokenService)
    record, plaintext = await tokens.create(body.name, body.role, body.namespaces, body.ttl, caller.name)
    return {**record.public(), "token": plaintext}


@router.get("")
async def list_tokens(caller: Caller, request: Request) -> dict[str, object]:
    require(caller, Verb.ADMIN)
    tokens: TokenService = request.app.state.node.service(TokenService)
    return {"items": [r.public() for r in tokens.list()]}


@router.delete("/{token}")
async def revoke_token(token: str, caller: Caller, request: Request) -> dict[str, object]:
    require(caller, Verb.ADMIN)
    tokens: TokenService = request.app.state.node.service(TokenService)
    try:
        record = await tokens.revoke(token, caller.name)
    except TokenError as exc:
        if "no token" in str(exc):
            raise not_found(f"token {token!r}") from None
        raise Problem(409, "Conflict", str(exc), type="conflict") from None
    return {"revoked": record.public()}

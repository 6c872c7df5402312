"""jwt-auth: a signed JWT (HS256/384/512, RS256/384/512, ES256/384) from a header, query argument or cookie.

As in APISIX, the token's ``key`` claim names the consumer whose credential
``jwt-auth: {key, secret | publicKey, algorithm}`` verifies it; the consumer's algorithm is the
only one accepted (a token cannot choose its own). With ``jwksUri`` the route verifies tokens
against an identity provider's keys instead (by ``kid``); the key claim then picks a consumer
only if one has that key. ``exp`` and ``nbf`` are checked when present, with ``leeway``.
A missing or invalid token gets 401.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import Any, Literal

import httpx
import jwt
import orjson
import structlog
from jwt.algorithms import get_default_algorithms
from pydantic import Field, field_validator

from mezzo.gateway.http import Reply, drop_argument
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.auth import find_consumer, unauthorized
from mezzo.node.settings import mask_url
from mezzo.resources.types import Duration

log = structlog.get_logger("mezzo.gateway")
Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384"]
ASYMMETRIC: tuple[Algorithm, ...] = ("RS256", "RS384", "RS512", "ES256", "ES384")
CHALLENGE = 'Bearer realm="mezzo"'
MAX_JWKS_BYTES = 1024 * 1024
MAX_JWKS_KEYS = 100
KEY_TYPES = {"HS": "oct", "RS": "RSA", "ES": "EC"}


class JwtAuthConfig(Config):
    header: str = Field("authorization", min_length=1, description='"Bearer <token>" or the bare token')
    query: str = Field("jwt", min_length=1)
    cookie: str = Field("jwt", min_length=1)
    hide_credentials: bool = Field(False, description="do not pass the token on to the upstream")
    key_claim_name: str = Field("key", min_length=1, description="the claim that names the consumer")
    leeway: Duration = Field(0.0, ge=0, description="clock tolerance for exp and nbf")
    audience: list[str] | None = Field(None, description="when set, the aud claim must name one of these")
    issuer: str | None = Field(None, description="when set, the iss claim must equal it")
    jwks_uri: str | None = Field(None, description="verify with this JSON Web Key Set instead of consumers' secrets")
    algorithms: list[Algorithm] = Field(default_factory=lambda: list(ASYMMETRIC),
                                        description="with jwksUri: the algorithms accepted")
    jwks_cache_ttl: Duration = Field(300.0, gt=0, description="how long fetched keys are used before a refetch")
    jwks_refresh_interval: Duration = Field(10.0, ge=0, description="least time between two fetches (unknown kids)")
    jwks_timeout: Duration = Field(5.0, gt=0)

    @field_validator("jwks_uri")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("jwksUri must be an http(s) URL")
        return value


class _Jwks:
    """The keys of one JWKS URI: fetched lazily, cached for ``ttl``, refetched when a token names an
    unknown kid but at most once per ``interval`` (random kids cannot make us hammer the provider);
    concurrent misses share one fetch. A failed fetch keeps the keys we had."""

    def __init__(self, conf: JwtAuthConfig) -> None:
        self.conf = conf
        self.keys: dict[str | None, tuple[Any, str, str | None]] = {}  # kid -> (key, kty, alg)
        self.fetched = 0.0
        self.attempted = -1e18
        self.inflight: asyncio.Future[None] | None = None

    async def key(self, kid: str | None) -> tuple[Any, str, str | None] | None:
        now = time.monotonic()
        found = self._lookup(kid)
        stale = now - self.fetched >= self.conf.jwks_cache_ttl
        if (found is None or stale) and now - self.attempted >= self.conf.jwks_refresh_interval:
            await self._refresh()
            found = self._lookup(kid)
        return found

    def _lookup(self, kid: str | None) -> tuple[Any, str, str | None] | None:
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        return self.keys.get(kid)

    async def _refresh(self) -> None:
        if self.inflight is not None:
            await asyncio.shield(self.inflight)
            return
        self.attempted = time.monotonic()
        self.inflight = asyncio.get_running_loop().create_future()
        try:
            self.keys = await self._fetch()
            self.fetched = time.monotonic()
        except Exception as exc:
            log.warning("jwt-auth: cannot fetch the JWKS; keeping the keys we had", uri=mask_url(self.conf.jwks_uri or ""),
                        error=f"{type(exc).__name__}: {exc}")
        finally:
            self.inflight.set_result(None)
            self.inflight = None

    async def _fetch(self) -> dict[str | None, tuple[Any, str, str | None]]:
        assert self.conf.jwks_uri is not None
        async with httpx.AsyncClient(timeout=self.conf.jwks_timeout) as client:
            async with client.stream("GET", self.conf.jwks_uri, headers={"accept": "application/json"}) as response:
                response.raise_for_status()
                body = b""
                async for part in response.aiter_bytes():
                    body += part
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        keys: dict[str | None, tuple[Any, str, str | None]] = {}
        for item in orjson.loads(body).get("keys", [])[:MAX_JWKS_KEYS]:
            if not isinstance(item, dict) or item.get("use", "sig") != "sig":
                continue
            try:
                keys[item.get("kid")] = (jwt.PyJWK(item).key, item.get("kty", ""), item.get("alg"))
            except jwt.PyJWTError as exc:
                log.info("jwt-auth: skipping a JWK it cannot use", kid=item.get("kid"), error=str(exc))
        return keys


@register
class JwtAuth(Plugin):
    name = "jwt-auth"
    priority = 2510
    schema = JwtAuthConfig
    secret_urls = ("jwks_uri",)  # https://user:password@idp/...: sealed at rest

    def __init__(self, conf: JwtAuthConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.header = conf.header.lower().encode("latin-1")
        self.jwks = _Jwks(conf) if conf.jwks_uri else None
        self.keys: dict[tuple[str, str, str], Any] = {}  # (consumer, algorithm, secret) -> prepared key
        # consumers' secrets decide without a task switch; a JWKS may need a fetch
        self.access = self._access_jwks if self.jwks is not None else self._access_consumer  # type: ignore[method-assign]

    def access(self, ctx: Ctx) -> Reply | None:  # replaced per instance in __init__
        return self._access_consumer(ctx)

    # where the token is ------------------------------------------------------------------
    def _token(self, ctx: Ctx) -> tuple[str | None, str]:
        request = ctx.request
        value = request.header(self.header)
        if value:
            scheme, _, rest = value.strip().partition(" ")
            return (rest.strip() if scheme.lower() == "bearer" else value.strip()), "header"
        value = request.args.get(self.conf.query)
        if value:
            return value, "query"
        value = request.cookies.get(self.conf.cookie)
        return (value, "cookie") if value else (None, "")

    def _parse(self, ctx: Ctx) -> tuple[str, str, dict[str, Any], dict[str, Any]] | Reply:
        """The token, where it was, its header and claims (not verified yet); or the refusal."""
        token, where = self._token(ctx)
        if not token:
            return unauthorized("Missing JWT token in request", CHALLENGE)
        try:
            return token, where, jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return unauthorized("JWT token invalid", CHALLENGE)

    # consumers' secrets --------------------------------------------------------------------
    def _access_consumer(self, ctx: Ctx) -> Reply | None:
        parsed = self._parse(ctx)
        if isinstance(parsed, Reply):
            return parsed
        token, where, header, claims = parsed
        key = claims.get(self.conf.key_claim_name)
        if not isinstance(key, str) or not key:
            return unauthorized("Missing user key in JWT token", CHALLENGE)
        consumer = find_consumer(ctx, "jwt-auth", key)
        if consumer is None:
            return unauthorized("Invalid user key in JWT token", CHALLENGE)
        cred = consumer.spec.credentials["jwt-auth"]
        algorithm = cred.get("algorithm", "HS256")
        if header.get("alg") != algorithm:
            return unauthorized(f"JWT token algorithm {header.get('alg')!r} is not the consumer's", CHALLENGE)
        try:
            secret = self._key(consumer.ref, algorithm, cred)
        except (ValueError, TypeError, binascii.Error, jwt.PyJWTError) as exc:
            log.warning("jwt-auth: the consumer's credential is unusable", consumer=consumer.ref, error=str(exc))
            return unauthorized("Invalid user key in JWT token", CHALLENGE)
        grace = float(cred.get("lifetimeGracePeriod", cred.get("lifetime_grace_period", 0)) or 0)
        failed = self._verify(token, secret, [algorithm], max(self.conf.leeway, grace))
        if failed is not None:
            return failed
        self._accept(ctx, consumer, where)
        return None

    def _key(self, ref: str, algorithm: str, cred: dict[str, Any]) -> Any:
        if algorithm not in get_default_algorithms() or algorithm.startswith("none"):
            raise ValueError(f"unsupported algorithm {algorithm!r}")
        if algorithm.startswith("HS"):
            material = str(cred.get("secret") or "")
            if not material:
                raise ValueError("no secret")
        else:
            material = str(cred.get("publicKey") or cred.get("public_key") or "")
            if not material:
                raise ValueError("no publicKey")
        cache_key = (ref, algorithm, material)
        found = self.keys.get(cache_key)
        if found is None:
            if algorithm.startswith("HS"):
                base64_secret = cred.get("base64Secret", cred.get("base64_secret", False))
                found = base64.b64decode(material, validate=True) if base64_secret else material.encode()
            else:
                found = get_default_algorithms()[algorithm].prepare_key(material)
            if len(self.keys) >= 4096:
                self.keys.clear()
            self.keys[cache_key] = found
        return found

    def _verify(self, token: str, key: Any, algorithms: list[str], leeway: float) -> Reply | None:
        conf = self.conf
        try:
            jwt.decode(token, key, algorithms=algorithms, leeway=leeway, audience=conf.audience,
                       issuer=conf.issuer, options={"verify_aud": conf.audience is not None})
        except jwt.ExpiredSignatureError:
            return unauthorized("JWT token expired", CHALLENGE)
        except jwt.ImmatureSignatureError:
            return unauthorized("JWT token not valid yet", CHALLENGE)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            return unauthorized(f"failed to verify JWT token: {exc}", CHALLENGE)
        return None

    # a JWKS ------------------------------------------------------------------------------
    async def _access_jwks(self, ctx: Ctx) -> Reply | None:
        assert self.jwks is not None
        parsed = self._parse(ctx)
        if isinstance(parsed, Reply):
            return parsed
        token, where, header, claims = parsed
        algorithm = header.get("alg")
        if algorithm not in self.conf.algorithms:
            return unauthorized(f"JWT token algorithm {algorithm!r} is not accepted", CHALLENGE)
        found = await self.jwks.key(header.get("kid"))
        if found is None:
            return unauthorized("JWT token signed by an unknown key", CHALLENGE)
        key, kty, key_alg = found
        if KEY_TYPES[algorithm[:2]] != kty or (key_alg is not None and key_alg != algorithm):
            return unauthorized("JWT token algorithm does not match its key", CHALLENGE)
        failed = self._verify(token, key, [algorithm], self.conf.leeway)
        if failed is not None:
            return failed
        key = claims.get(self.conf.key_claim_name)
        consumer = find_consumer(ctx, "jwt-auth", key) if isinstance(key, str) else None
        self._accept(ctx, consumer, where)
        return None

    # after either ---------------------------------------------------------------------------
    def _accept(self, ctx: Ctx, consumer: Any, where: str) -> None:
        request = ctx.request
        # without a consumer the header must not be the client's own
        request.set_header(b"x-consumer-username", consumer.name if consumer is not None else None)
        if consumer is not None:
            ctx.consumer = consumer
        if self.conf.hide_credentials:
            if where == "header":
                request.set_header(self.header, None)
            elif where == "query":
                request.query = drop_argument(request.query, self.conf.query)
                request._args = None
            elif where == "cookie":
                drop_cookie(request, self.conf.cookie)


def drop_cookie(request: Any, name: str) -> None:
    """Remove one cookie from the request's Cookie headers (the others are kept)."""
    out: list[tuple[bytes, bytes]] = []
    for key, value in request.headers:
        if key == b"cookie":
            kept = [p for p in value.decode("latin-1").split(";") if p.strip().partition("=")[0] != name]
            if not any(p.strip() for p in kept):
                continue
            value = ";".join(kept).strip().encode("latin-1")
        out.append((key, value))
    request.headers = out
    request._cookies = None

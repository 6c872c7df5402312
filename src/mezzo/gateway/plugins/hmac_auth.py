"""hmac-auth: requests signed with a consumer's secret (APISIX's scheme), with a clock-skew check and anti-replay.

The client sends ``Authorization: Signature keyId="...",algorithm="hmac-sha256",headers="@request-target
date x-nonce",signature="<base64>"``. The signature is the HMAC, with the secret of the consumer
whose ``hmac-auth: {keyId, secretKey}`` credential has that key id, of the signing string: the key id,
then one line per listed header (``@request-target`` is ``METHOD /path?query`` as the client sent it,
any other is ``name: value``), each line ending in ``\\n``. ``Date`` must be within ``clockSkew``
of the gateway's clock. A nonce header (``X-Nonce``), when present (or required), must be signed and
is remembered for the skew window: the same nonce again is a replay and gets 401. Nonces are kept in
this process (bounded), or in Redis so that every gateway node sees them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections import OrderedDict
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import structlog
from pydantic import Field, model_validator

from mezzo.gateway.http import Reply, problem
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.auth import find_consumer, unauthorized
from mezzo.gateway.plugins.shared_redis import close_redis, open_redis, require_redis_url
from mezzo.gateway.plugins.vars import request_uri

log = structlog.get_logger("mezzo.gateway")
Algorithm = Literal["hmac-sha1", "hmac-sha256", "hmac-sha512"]
DIGESTS = {"hmac-sha1": hashlib.sha1, "hmac-sha256": hashlib.sha256, "hmac-sha512": hashlib.sha512}
CHALLENGE = 'Signature realm="mezzo",headers="@request-target date"'
_PARAM = re.compile(r'([A-Za-z]+)\s*=\s*"([^"]*)"')


class HmacAuthConfig(Config):
    allowed_algorithms: list[Algorithm] = Field(default_factory=lambda: ["hmac-sha1", "hmac-sha256", "hmac-sha512"],
                                                min_length=1)
    clock_skew: int = Field(300, ge=0, description="seconds the Date header may differ from our clock; 0: no check")
    signed_headers: list[str] = Field(default_factory=list, description="headers every signature must cover")
    validate_request_body: bool = Field(False, description="check the Digest header (SHA-256=<base64>) against the body")
    hide_credentials: bool = Field(False, description="do not pass the Authorization header upstream")
    nonce_header: str = Field("x-nonce", min_length=1)
    require_nonce: bool = Field(False, description="refuse requests without a nonce (else a nonce is checked if sent)")
    nonce_store: Literal["local", "redis"] = "local"
    redis_url: str | None = Field(None, description="default: the node's MEZZO_CACHE when it is redis://")
    redis_prefix: str = "mezzo:gw:nonce:"
    max_nonces: int = Field(100_000, ge=1, description="nonces this process remembers (local store)")

    @model_validator(mode="after")
    def _redis_reachable(self) -> HmacAuthConfig:
        # refused at apply time on a node without Redis, rather than a route left out at load
        if self.nonce_store == "redis":
            require_redis_url(self.redis_url, "nonceStore redis")
        return self


class Nonces:
    """Nonces seen within their window, in this process, at most ``limit`` of them.

    When full, the oldest is forgotten early, and every request dated no later than it is refused
    from then on: a replay of a forgotten nonce can never pass, whatever the load."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: OrderedDict[str, tuple[float, float]] = OrderedDict()  # nonce -> (expires, dated)
        self.horizon = 0.0  # requests dated at or before this may have been forgotten

    def add(self, nonce: str, dated: float, ttl: float, now: float) -> bool:
        """True if the nonce is new (and now remembered); False for a replay or an unprovable one."""
        seen = self.seen
        while seen:
            _, (expires, _) = next(iter(seen.items()))
            if expires > now:
                break
            seen.popitem(last=False)
        if nonce in seen or dated <= self.horizon:
            return False
        seen[nonce] = (now + ttl, dated)
        if len(seen) > self.limit:
            _, (_, forgotten) = seen.popitem(last=False)
            self.horizon = max(self.horizon, forgotten)
        return True


@register
class HmacAuth(Plugin):
    name = "hmac-auth"
    priority = 2530
    schema = HmacAuthConfig
    secret_urls = ("redis_url",)  # redis://:password@host: sealed at rest

    def __init__(self, conf: HmacAuthConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.nonce_header = conf.nonce_header.lower()
        self.required = {h.lower() for h in conf.signed_headers}
        self.nonces = Nonces(conf.max_nonces)
        self.ttl = 2.0 * conf.clock_skew if conf.clock_skew else 600.0  # a Date may be off either way
        self.client = open_redis(conf.redis_url, runtime, "hmac-auth nonceStore redis") \
            if conf.nonce_store == "redis" else None
        # a local nonce store decides without a task switch
        self.access = self._access_local if self.client is None else self._access_redis  # type: ignore[method-assign]

    def access(self, ctx: Ctx) -> Reply | None:  # replaced per instance in __init__
        return self._access_local(ctx)

    def _access_local(self, ctx: Ctx) -> Reply | None:
        checked = self._check(ctx)
        if isinstance(checked, Reply):
            return checked
        consumer, nonce, dated = checked
        if nonce is not None and not self.nonces.add(nonce, dated, self.ttl, time.time()):
            return unauthorized("Replayed request: this nonce was used already", CHALLENGE)
        self._accept(ctx, consumer)
        return None

    async def _access_redis(self, ctx: Ctx) -> Reply | None:
        checked = self._check(ctx)
        if isinstance(checked, Reply):
            return checked
        consumer, nonce, dated = checked
        if nonce is not None:
            assert self.client is not None
            try:
                fresh = await self.client.set(self.conf.redis_prefix + nonce, b"1", nx=True, ex=int(self.ttl) + 1)
            except Exception as exc:
                log.warning("hmac-auth: redis unavailable, remembering nonces in this process", error=str(exc))
                fresh = self.nonces.add(nonce, dated, self.ttl, time.time())
            if not fresh:
                return unauthorized("Replayed request: this nonce was used already", CHALLENGE)
        self._accept(ctx, consumer)
        return None

    def _check(self, ctx: Ctx) -> tuple[Any, str | None, float] | Reply:
        """The consumer, the nonce to remember (keyed by key id) and the request's date; or the refusal."""
        conf = self.conf
        request = ctx.request
        header = request.header(b"authorization")
        if not header or header[:10].lower() != "signature ":
            return unauthorized("Missing authorization in request", CHALLENGE)
        params = dict(_PARAM.findall(header[10:]))
        key_id, signature = params.get("keyId"), params.get("signature")
        algorithm = params.get("algorithm", "")
        if not key_id or not signature:
            return unauthorized("Invalid authorization: keyId and signature are required", CHALLENGE)
        if algorithm not in conf.allowed_algorithms:
            return unauthorized(f"Invalid algorithm {algorithm!r}", CHALLENGE)
        signed = params.get("headers", "").split()
        lowered = {h.lower() for h in signed}
        missing = self.required - lowered
        if missing:
            return unauthorized(f"Invalid signature: headers {', '.join(sorted(missing))} must be signed", CHALLENGE)
        consumer = find_consumer(ctx, "hmac-auth", key_id)
        secret = None
        if consumer is not None:
            cred = consumer.spec.credentials["hmac-auth"]
            secret = cred.get("secretKey") or cred.get("secret_key")
        if not secret:
            return unauthorized("Invalid keyId", CHALLENGE)
        lines = signing_lines(request, key_id, signed)
        if isinstance(lines, str):
            return unauthorized(f"Invalid signature: header {lines!r} is listed but not sent", CHALLENGE)
        expected = base64.b64encode(hmac.new(str(secret).encode(), lines, DIGESTS[algorithm]).digest())
        try:
            given = base64.b64decode(signature, validate=True)
        except binascii.Error:
            return unauthorized("Invalid signature", CHALLENGE)
        if not hmac.compare_digest(base64.b64decode(expected), given):
            return unauthorized("Invalid signature", CHALLENGE)
        dated = time.time()
        if conf.clock_skew:
            date = request.header(b"date")
            if not date:
                return unauthorized("Date header missing: failed to check the clock skew", CHALLENGE)
            try:
                dated = parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError, IndexError):
                return unauthorized("Invalid Date header", CHALLENGE)
            if abs(time.time() - dated) > conf.clock_skew:
                return unauthorized("Clock skew exceeded", CHALLENGE)
        if conf.validate_request_body:
            if "digest" not in lowered:
                return unauthorized("Invalid signature: the digest header must be signed", CHALLENGE)
            refused = self._digest(request)
            if refused is not None:
                return refused
        nonce = request.header(self.nonce_header.encode("latin-1"))
        if nonce is None:
            if conf.require_nonce:
                return unauthorized(f"Missing nonce: send a {conf.nonce_header} header and sign it", CHALLENGE)
            return consumer, None, dated
        if self.nonce_header not in lowered:
            return unauthorized(f"Invalid signature: the nonce header {conf.nonce_header} must be signed", CHALLENGE)
        if conf.clock_skew and "date" not in lowered:
            # a nonce is remembered for 2 x clockSkew: only a signed Date stops a replay after that
            return unauthorized("Invalid signature: the date header must be signed with a nonce", CHALLENGE)
        return consumer, f"{key_id}:{nonce}", dated

    def _digest(self, request: Any) -> Reply | None:
        if request.body is None:
            return problem(413, "request body too large to check its digest")
        digest = request.header(b"digest") or ""
        expected = "SHA-256=" + base64.b64encode(hashlib.sha256(request.body).digest()).decode()
        if not hmac.compare_digest(digest.strip().encode(), expected.encode()):
            return unauthorized("Invalid digest", CHALLENGE)
        return None

    def _accept(self, ctx: Ctx, consumer: Any) -> None:
        ctx.consumer = consumer
        request = ctx.request
        if self.conf.hide_credentials:
            request.set_header(b"authorization", None)
        request.set_header(b"x-consumer-username", consumer.name)

    def close(self) -> None:
        close_redis(self.client)


def signing_lines(request: Any, key_id: str, headers: list[str]) -> bytes | str:
    """The string a client signs (APISIX's): the key id, then each listed header, one per line.
    Returns the name of a listed header the request lacks instead."""
    lines = [key_id]
    for name in headers:
        if name == "@request-target":
            lines.append(f"{request.method} {request_uri(request)}")
            continue
        value = request.header(name.lower().encode("latin-1"))
        if value is None:
            return name
        lines.append(f"{name}: {value}")
    return ("\n".join(lines) + "\n").encode("latin-1")


def sign(key_id: str, secret: str, method: str, target: str | None, headers: dict[str, str],
         algorithm: Algorithm = "hmac-sha256") -> str:
    """The Authorization header for a request (for clients and tests): signs ``@request-target``
    (unless ``target`` is None) and every header given, in that order."""
    names = ([] if target is None else ["@request-target"]) + list(headers)
    lines = [key_id, *([] if target is None else [f"{method} {target}"]), *(f"{k}: {v}" for k, v in headers.items())]
    digest = hmac.new(secret.encode(), ("\n".join(lines) + "\n").encode("latin-1"), DIGESTS[algorithm]).digest()
    return (f'Signature keyId="{key_id}",algorithm="{algorithm}",headers="{" ".join(names)}",'
            f'signature="{base64.b64encode(digest).decode()}"')

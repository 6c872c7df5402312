"""Apollo's client protocol on the config center, so Apollo clients read Mezzo's config unchanged.

Apollo serves one environment per meta server; Mezzo serves environment ENV under
``/apollo/{ENV}`` on the API port: point a client's meta server (``apollo.meta``) or config
service (``apollo.config-service``) at ``http://HOST:7700/apollo/ENV``. Under that prefix:

- ``GET /services/config``: the meta server's answer; its ``homepageUrl`` is this same prefix.
- ``GET /configs/{appId}/{cluster}/{namespace}``: the configuration, 304 for an unchanged
  ``releaseKey``, 404 when nothing is released.
- ``GET /configfiles/json|raw/{appId}/{cluster}/{namespace}`` and ``/configfiles/...``
  (properties text): the same configuration as a file.
- ``GET /notifications/v2``: Apollo's long poll (60 s, then 304).

Every read goes through the config center's own client read and long poll (api.py): cluster
fallback, public namespaces, gray rules (an Apollo client's ``ip`` is also its client id, its
``label`` gives labels), secrets in clear only for callers with the ``use`` right. Callers
authenticate with a Mezzo bearer token or with an app's Apollo access key (``Authorization:
Apollo APP:SIGNATURE`` and ``Timestamp``), managed under ``/v1/config/apps/{app}/access-keys``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import weakref
from collections.abc import Iterable
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import Field

from mezzo.config.api import MAX_WAIT, _client, _resolved, _svc, _wanted, long_poll
from mezzo.config.formats import CONTENT, Format, render_properties
from mezzo.config.hub import ConfigHub, Resolved
from mezzo.config.model import IDENT_PATTERN, AccessKey, Model, NsRef
from mezzo.config.secrets import Keyring, SecretError
from mezzo.config.service import ACCESS_KEYS, AUDIT_KIND, DEFAULT, ROOT, ConfigService, now
from mezzo.jsonutil import dumps, loads
from mezzo.node.audit import audit_put
from mezzo.node.auth import Principal, Role, Verb
from mezzo.node.auth_module import Caller, principal_of, require
from mezzo.node.errors import Problem, conflict, not_found
from mezzo.storage.kv import Compare, Delete, Put

log = structlog.get_logger("mezzo.config.apollo")
router = APIRouter(prefix="/apollo/{env}", tags=["apollo"])
keys = APIRouter(prefix="/v1/config/apps/{app}/access-keys", tags=["config"])
Ident = Annotated[str, Path(pattern=IDENT_PATTERN)]
SERVICE = "APOLLO-CONFIGSERVICE"
SKEW = 60.0  # seconds a signed request's Timestamp may be off, either way (Apollo's default)
MAX_ACCESS_KEYS = 5  # per app, as Apollo allows
SUFFIXES = {"yaml": Format.YAML, "yml": Format.YAML, "json": Format.JSON, "txt": Format.TEXT, "xml": Format.TEXT}
PROPERTIES = ".properties"
OPENED_MAX = 256  # access key secrets kept decrypted per keyring (MAX_ACCESS_KEYS per app)


# who is calling ------------------------------------------------------------------------------

def _unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, type="unauthorized",
                   headers={"WWW-Authenticate": 'Bearer realm="mezzo"'})


async def _caller(request: Request, app: str) -> Principal:
    """A Mezzo bearer token's principal, or, for ``Authorization: Apollo APP:SIGNATURE``, a reader
    of ``app`` alone (the ``use`` right on its tenant: what a developer token gets) when the
    signature is made with one of the app's enabled access keys."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if not header.strip():
        raise _unauthorized(f"missing credentials: sign with an access key of app {app!r} (create one with POST "
                            f"/v1/config/apps/{app}/access-keys; Apollo's Java client: apollo.access-key.secret) "
                            "or send a Mezzo bearer token")
    if scheme.lower() != "apollo":
        return principal_of(request)
    claimed, _, signature = credentials.strip().rpartition(":")
    if claimed != app:
        raise _unauthorized(f"an Apollo signature for app {app!r} reads `Authorization: Apollo {app}:SIGNATURE`")
    stamp = request.headers.get("timestamp", "").strip()
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 15) or abs(time.time() - int(stamp) / 1000) >= SKEW:
        raise _unauthorized(f"RequestTimeTooSkewed: the Timestamp header (milliseconds since 1970) is more than "
                            f"{SKEW:g} s away from the server's clock")
    svc, _ = _svc(request)
    known = await svc.app(app)
    enabled = [key for key, _ in await _stored(svc, app) if key.enabled] if known else []
    if known is None or not enabled:
        raise _unauthorized(f"app {app!r} has no enabled access key: create one (POST /v1/config/apps/{app}/"
                            "access-keys) or call with a Mezzo bearer token")
    given = signature.encode("latin-1", "replace")
    for key in enabled:
        try:
            secret = _opened(svc.keyring, key.secret, _sealed_at(app, key.id))
        except SecretError as exc:
            log.warning("access key unreadable", app=app, key=key.id, error=str(exc))
            continue
        for signed in _signed_paths(request):
            digest = hmac.new(secret, f"{stamp}\n{signed}".encode(), hashlib.sha1).digest()
            if hmac.compare_digest(base64.b64encode(digest), given):
                return Principal(name=f"access-key:{app}:{key.id}", role=Role.DEVELOPER, namespaces=[known.tenant])
    raise _unauthorized("Unauthorized: the signature matches no enabled access key of the app")


_OPENED: weakref.WeakKeyDictionary[Keyring, dict[tuple[str, str], bytes]] = weakref.WeakKeyDictionary()


def _opened(keyring: Keyring, sealed: str, where: str) -> bytes:
    """An access key's secret in clear, decrypted once per keyring, place and ciphertext: a new or
    re-sealed secret is a new ciphertext (a miss), and a node whose keyring lacks the key (another
    keyring, even in this process) decrypts itself. Failures are not kept; the oldest entry goes first."""
    opened = _OPENED.setdefault(keyring, {})
    clear = opened.get((where, sealed))
    if clear is None:
        clear = keyring.decrypt(sealed, where).encode()
        while len(opened) >= OPENED_MAX:
            del opened[next(iter(opened))]
        opened[(where, sealed)] = clear
    return clear


def _signed_paths(request: Request) -> list[str]:
    """What a client may have signed: the path and query as sent, and, for a client that reached
    this prefix through a proxy mapping its own root onto it, the same without ``/apollo/ENV``."""
    root = request.scope.get("root_path", "")
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    inner = path[len(root):] if root and path.startswith(root) else path
    parts = inner.split("/", 3)  # "", "apollo", ENV, the rest
    paths = [path] + (["/" + parts[3]] if len(parts) == 4 else [])
    return [p + ("?" + query if query else "") for p in paths]


# Apollo's names ------------------------------------------------------------------------------

def _strip(name: str) -> str:
    """Apollo's clients may name a properties namespace ``foo.properties``: it is ``foo``."""
    return name[: -len(PROPERTIES)] if name.lower().endswith(PROPERTIES) and len(name) > len(PROPERTIES) else name


def _env(hub: ConfigHub, app: str, env: str, cluster: str, names: Iterable[str]) -> str:
    """Mezzo's environment for the one in the URL (Apollo's are upper case, ``DEV``): as written when a
    namespace asked for exists there; else the app's environment of that name in any case when just
    one matches; else in lower case."""
    if any(hub.exists(NsRef(app, env, cluster, name)) for name in names):
        return env
    wanted = env.lower()
    matches = {path.split("/", 2)[1] for path in hub.metas if path.startswith(app + "/")}
    matches = {name for name in matches if name.lower() == wanted}
    if env in matches:
        return env
    return matches.pop() if len(matches) == 1 else wanted


def _namespace(hub: ConfigHub, app: str, env: str, cluster: str, name: str) -> str:
    """Mezzo's namespace for Apollo's name: ``foo.yaml`` is the namespace ``foo.yaml`` or, when there is
    none, a yaml namespace ``foo`` (likewise ``.yml``, ``.json``, ``.txt``/``.xml`` for text)."""
    ref = NsRef(app, env, cluster, name)
    if hub.exists(ref):
        return name
    base, dot, suffix = name.rpartition(".")
    if dot and base and SUFFIXES.get(suffix.lower()) is not None:
        fallback = NsRef(app, env, cluster, base)
        meta = next((hub.metas[p.path] for p in (*hub.layers(fallback), *hub.candidates(fallback))
                     if p.path in hub.metas), None)
        if meta is not None and meta.format is SUFFIXES[suffix.lower()]:
            return base
    return name


def _cluster(hub: ConfigHub, app: str, env: str, cluster: str, name: str, data_center: str | None) -> str:
    """Apollo's order for a client in data center ``data_center`` (its ``idc``): the asked cluster's own
    release, else the data center's cluster's, else the default cluster (where the hub falls back)."""
    if cluster != DEFAULT and _released(hub, NsRef(app, env, cluster, name)):
        return cluster
    if (data_center and data_center != cluster and re.fullmatch(IDENT_PATTERN, data_center)
            and _released(hub, NsRef(app, env, data_center, name))):
        return data_center
    return cluster


def _released(hub: ConfigHub, ref: NsRef) -> bool:
    """The app has a release of the namespace (or of its typed twin) in that very cluster."""
    ref = NsRef(ref.app, ref.env, ref.cluster, _namespace(hub, ref.app, ref.env, ref.cluster, ref.namespace))
    return hub._pick(ref) == ref


def _labels(label: str | None) -> list[str]:
    """Apollo's ``label`` as Mezzo labels: ``canary`` is ``canary=true``, ``zone=eu`` stays; commas
    separate several. One with no name (``=eu``) matches no rule and is dropped: Apollo answers any
    label, so it must not make the read fail."""
    items = [item.strip() for item in (label or "").split(",") if item.strip()]
    return [item if "=" in item else f"{item}=true" for item in items if not item.startswith("=")]


def _release_key(resolved: Resolved) -> str:
    """Mezzo's release key with the notification id: release numbers restart when a namespace is
    recreated and do not say which cluster answered, so the key alone could wrongly give a 304."""
    return f"{resolved.release_key}-n{resolved.notification_id}"


async def _read(request: Request, env: Ident, app: Ident, cluster: Ident, namespace: Ident,
                ip: str | None = None, label: str | None = None,
                data_center: Annotated[str | None, Query(alias="dataCenter")] = None) -> Resolved:
    """What every configuration read of Apollo's answers from (a dependency: the path and Apollo's
    query parameters ``ip``, ``label`` and ``dataCenter``), once the caller may read ``app``."""
    caller = await _caller(request, app)
    _, hub = _svc(request)
    await hub.caught_up()
    name = _strip(namespace)
    env = _env(hub, app, env, cluster, [name])
    cluster = _cluster(hub, app, env, cluster, name, data_center)
    ref = NsRef(app, env, cluster, _namespace(hub, app, env, cluster, name))
    client = _client(request, "", ip or None, _labels(label))
    return await _resolved(request, caller, ref, client.model_copy(update={"client_id": client.ip or ""}))


Read = Annotated[Resolved, Depends(_read)]


# the meta server and the config service -----------------------------------------------------

@router.get("/services/config", summary="Apollo's meta server: where the config service is")
async def services_config(request: Request, env: Ident, app_id: Annotated[str, Query(alias="appId")] = "",
                          ip: str | None = None) -> list[dict[str, str]]:
    base = str(request.base_url).rstrip("/")
    return [{"appName": SERVICE, "instanceId": f"{request.base_url.netloc}:mezzo",
             "homepageUrl": f"{base}/apollo/{env}/"}]


@router.get("/configs/{app}/{cluster}/{namespace}", summary="Apollo: a namespace's configuration")
async def configs(resolved: Read, app: Ident, namespace: Ident,
                  release_key: Annotated[str, Query(alias="releaseKey")] = "-1",
                  messages: str | None = None) -> Response:
    """304 when ``releaseKey`` is the current one; ``messages`` (Apollo's cache hint) is not needed."""
    key = _release_key(resolved)
    if key == release_key:
        return Response(status_code=304)
    return Response(dumps({"appId": app, "cluster": resolved.cluster, "namespaceName": namespace,
                           "configurations": resolved.config, "releaseKey": key}), media_type="application/json")


@router.get("/configfiles/json/{app}/{cluster}/{namespace}", summary="Apollo: the configuration as flat JSON")
async def configfiles_json(resolved: Read) -> Response:
    return Response(dumps(resolved.config), media_type="application/json")


@router.get("/configfiles/raw/{app}/{cluster}/{namespace}", summary="Apollo: the namespace's document as it is")
async def configfiles_raw(resolved: Read, namespace: Ident) -> Response:
    if resolved.format is Format.PROPERTIES:
        return PlainTextResponse(render_properties(resolved.config))
    media = {Format.YAML: "application/yaml", Format.JSON: "application/json"}.get(resolved.format, "text/plain")
    if resolved.format is Format.TEXT and namespace.lower().endswith(".xml"):
        media = "application/xml"  # as Apollo types an .xml namespace's document
    return Response(resolved.config.get(CONTENT, ""), media_type=media)


@router.get("/configfiles/{app}/{cluster}/{namespace}", summary="Apollo: the configuration as properties")
async def configfiles(resolved: Read) -> Response:
    return PlainTextResponse(render_properties(resolved.config))


@router.get("/notifications/v2", summary="Apollo's long poll: the namespaces with a newer notification id")
async def notifications_v2(request: Request, env: Ident, notifications: str,
                           app_id: Annotated[str, Query(alias="appId", pattern=IDENT_PATTERN)],
                           cluster: Annotated[str, Query(pattern=IDENT_PATTERN)] = DEFAULT,
                           ip: str | None = None,
                           data_center: Annotated[str | None, Query(alias="dataCenter")] = None,
                           timeout: Annotated[float, Query(ge=0, le=MAX_WAIT, description="Mezzo's addition: "
                                                           "how long to hold the poll")] = MAX_WAIT) -> Response:
    caller = await _caller(request, app_id)
    wanted: dict[str, int] = {}
    for name, nid in _wanted(notifications).items():
        name = _strip(name)  # answered without the suffix, as Apollo does (its clients expect that)
        wanted[name] = min(nid, wanted.get(name, nid))
    _, hub = _svc(request)
    await hub.caught_up()
    env = _env(hub, app_id, env, cluster, wanted)
    refs = {}
    for name in wanted:
        where = _cluster(hub, app_id, env, cluster, name, data_center)
        refs[name] = NsRef(app_id, env, where, _namespace(hub, app_id, env, where, name))
    changed = await long_poll(request, caller, app_id, refs, wanted, timeout)
    if not changed:
        return Response(status_code=304)
    return Response(dumps([{"namespaceName": name, "notificationId": nid,
                            "messages": {"details": {f"{app_id}+{cluster}+{name}": nid}}} for name, nid in changed]),
                    media_type="application/json")


# access keys ---------------------------------------------------------------------------------

class AccessKeyIn(Model):
    comment: str = Field("", max_length=500)
    enabled: bool = True


def _key(app: str, key_id: str) -> str:
    return f"{ACCESS_KEYS}{app}/{key_id}"


def _sealed_at(app: str, key_id: str) -> str:
    """The associated data of a key's sealed secret: where it lives (what rotation uses too)."""
    return f"{ACCESS_KEYS.removeprefix(ROOT)}{app}/{key_id}"


async def _stored(svc: ConfigService, app: str) -> list[tuple[AccessKey, int]]:
    page = await svc.store.range(f"{ACCESS_KEYS}{app}/")
    return [(AccessKey.model_validate(loads(kv.value)), kv.mod_revision) for kv in page.items]


async def _one(svc: ConfigService, app: str, key_id: str) -> tuple[AccessKey, int]:
    kv = await svc.store.get(_key(app, key_id))
    if kv is None:
        raise not_found(f"access key {key_id!r} of app {app!r}")
    return AccessKey.model_validate(loads(kv.value)), kv.mod_revision


async def _managed(svc: ConfigService, caller: Principal, app: str, verb: Verb = Verb.WRITE) -> str:
    """The app's tenant, once the caller is known to hold ``verb`` there (write: what editing and
    publishing its config needs); 404 for an app that does not exist."""
    known = await svc.app(app)
    require(caller, verb, known.tenant if known else DEFAULT)
    if known is None:
        raise not_found(f"config app {app!r}")
    return known.tenant


def _audit(user: str, action: str, app: str, tenant: str, key: AccessKey) -> Put:
    return audit_put(user, f"config.access-key.{action}", kind=AUDIT_KIND, namespace=tenant, name=app,
                     detail={"app": app, "accessKey": key.id, "enabled": key.enabled, "comment": key.comment})


@keys.post("", status_code=201, summary="Create an Apollo access key; its secret is shown only here")
async def create_access_key(request: Request, app: Ident, caller: Caller,
                            body: AccessKeyIn = Body(default_factory=AccessKeyIn)) -> dict[str, Any]:
    svc, _ = _svc(request)
    tenant = await _managed(svc, caller, app)
    if len(await _stored(svc, app)) >= MAX_ACCESS_KEYS:
        raise conflict(f"app {app!r} has {MAX_ACCESS_KEYS} access keys, the most it may have; delete one first")
    key_id, secret = secrets.token_hex(4), secrets.token_hex(16)
    key = AccessKey(id=key_id, secret=svc.keyring.encrypt(secret, _sealed_at(app, key_id)), enabled=body.enabled,
                    comment=body.comment, created_by=caller.name, created_at=now())
    await svc._commit([Put(_key(app, key_id), dumps(key.out())), _audit(caller.name, "create", app, tenant, key)],
                      [Compare(_key(app, key_id), 0)], "an access key of that id exists; try again")
    return {**key.shown(), "secret": secret}


@keys.get("", summary="The app's Apollo access keys (never their secrets)")
async def list_access_keys(request: Request, app: Ident, caller: Caller) -> dict[str, Any]:
    svc, _ = _svc(request)
    await _managed(svc, caller, app, Verb.READ)
    return {"items": [key.shown() for key, _ in await _stored(svc, app)]}


@keys.delete("/{key_id}", status_code=204, summary="Delete an access key: its signatures stop working at once")
async def delete_access_key(request: Request, app: Ident, key_id: Ident, caller: Caller) -> None:
    svc, _ = _svc(request)
    tenant = await _managed(svc, caller, app)
    key, revision = await _one(svc, app, key_id)
    await svc._commit([Delete(_key(app, key_id)), _audit(caller.name, "delete", app, tenant, key)],
                      [Compare(_key(app, key_id), revision)], f"access key {key_id!r} changed; try again")


@keys.post("/{key_id}:enable", summary="Accept the key's signatures")
async def enable_access_key(request: Request, app: Ident, key_id: Ident, caller: Caller) -> dict[str, Any]:
    return await _set_enabled(request, app, key_id, caller, True)


@keys.post("/{key_id}:disable", summary="Refuse the key's signatures (until enabled again)")
async def disable_access_key(request: Request, app: Ident, key_id: Ident, caller: Caller) -> dict[str, Any]:
    return await _set_enabled(request, app, key_id, caller, False)


async def _set_enabled(request: Request, app: str, key_id: str, caller: Principal, enabled: bool) -> dict[str, Any]:
    svc, _ = _svc(request)
    tenant = await _managed(svc, caller, app)
    key, revision = await _one(svc, app, key_id)
    key = key.model_copy(update={"enabled": enabled})
    await svc._commit([Put(_key(app, key_id), dumps(key.out())),
                       _audit(caller.name, "enable" if enabled else "disable", app, tenant, key)],
                      [Compare(_key(app, key_id), revision)], f"access key {key_id!r} changed; try again")
    return key.shown()

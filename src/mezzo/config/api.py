"""HTTP routes of the config center: management (drafts, releases, gray, permissions, audit) and
client reads (resolved config, Apollo-style long polling, a server-sent event stream)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import Field

from mezzo.config.formats import (
    CONTENT,
    Format,
    FormatError,
    flatten,
    format_of_file,
    parse_properties,
    render_properties,
    validate,
)
from mezzo.config.gray import GrayReleases
from mezzo.config.hub import ConfigHub, Resolved
from mezzo.config.model import IDENT_PATTERN, ClientInfo, GrayRule, Model, NsRef, Permissions
from mezzo.config.secrets import SecretError
from mezzo.config.service import AUDIT_KIND, DEFAULT, ConfigService
from mezzo.jsonutil import dumps, loads
from mezzo.node.audit import AuditRecord, read_audit
from mezzo.node.auth import Principal, TokenService, Verb
from mezzo.node.auth_module import Caller, require
from mezzo.node.errors import REVOKED, Problem, bad_request, problem_event
from mezzo.resources.types import NAME_PATTERN

router = APIRouter(prefix="/v1/config", tags=["config"])
Ident = Annotated[str, Path(pattern=IDENT_PATTERN)]
# the namespace (tenant) a new app is created in: a namespace name, as resources and tokens use
Tenant = Annotated[str, Query(pattern=NAME_PATTERN, description="the namespace a new app goes in")]
BASE = "/apps/{app}/envs/{env}/clusters/{cluster}/namespaces/{namespace}"
MAX_WAIT = 60.0


def _svc(request: Request) -> tuple[ConfigService, ConfigHub]:
    node = request.app.state.node
    return node.service(ConfigService), node.service(ConfigHub)


def _ref(app: str, env: str, cluster: str, namespace: str) -> NsRef:
    return NsRef(app, env, cluster, namespace)


def _etag(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    text = if_match.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise bad_request("If-Match is the ETag of the draft, e.g. \"42\"", field="If-Match")
    return int(text)


def _client(request: Request, client_id: str, ip: str | None, label: list[str]) -> ClientInfo:
    labels = {}
    for item in label:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise bad_request(f"label {item!r} is not NAME=VALUE", field="label")
        labels[name] = value
    return ClientInfo(client_id=client_id, ip=ip or (request.client.host if request.client else None), labels=labels)


class NamespaceIn(Model):
    format: Format = Format.PROPERTIES
    public: bool = False
    comment: str = ""


class ItemIn(Model):
    value: str
    secret: bool | None = Field(None, description="absent: a key keeps whether it is secret (new keys are not)")
    comment: str = ""


class ItemsIn(Model):
    items: dict[str, ItemIn]


class PublishIn(Model):
    title: str = Field("", max_length=500)
    message: str = Field("", max_length=10_000)


class RollbackIn(Model):
    to: int | None = None
    force: bool = False


class ImportIn(Model):
    content: str
    filename: str = Field("", description="its extension gives the file's format when `format` is absent")
    format: Format | None = None
    secret_keys: list[str] = Field(default_factory=list)


class RulesIn(Model):
    rules: list[GrayRule]


# apps and namespaces ---------------------------------------------------------------------

@router.get("/apps", summary="Apps with configuration")
async def list_apps(request: Request, caller: Caller) -> dict[str, Any]:
    svc, _ = _svc(request)
    return {"items": [a for a in await svc.apps() if caller.can(Verb.READ, a["tenant"])]}


@router.get("/apps/{app}/namespaces", summary="Namespaces of an app, in every environment and cluster")
async def list_namespaces(request: Request, app: Ident, caller: Caller, env: str | None = None) -> dict[str, Any]:
    svc, _ = _svc(request)
    require(caller, Verb.READ, await _stored_tenant(svc, app))
    return {"items": await svc.namespaces(app, env)}


async def _stored_tenant(svc: ConfigService, app: str) -> str:
    """The app's tenant as the store holds it (``default`` for no app): the hub's view can lag."""
    known = await svc.app(app)
    return known.tenant if known else DEFAULT


@router.post(BASE + ":publish", summary="Release the draft")
async def publish(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, caller: Caller,
                  body: PublishIn = Body(default_factory=PublishIn)) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.WRITE, "publish")
    return _release_out(svc, await svc.publish(ref, caller.name, body.title, body.message))


@router.post(BASE + ":discard", summary="Reset the draft to the latest release")
async def discard(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident,
                  caller: Caller) -> Response:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.WRITE, "edit")
    await svc.meta(ref)
    revision = await svc.discard(ref, caller.name)
    return Response(status_code=204, headers={"ETag": f'"{revision}"'})


@router.post(BASE + ":rollback", summary="Release an earlier release's configuration again")
async def rollback(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, caller: Caller,
                   body: RollbackIn = Body(default_factory=RollbackIn)) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.WRITE, "publish")
    return _release_out(svc, await svc.rollback(ref, caller.name, body.to, body.force))


@router.post(BASE + ":import", summary="Load a .properties, .yaml or .json file into the draft")
async def import_file(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, caller: Caller,
                      body: ImportIn, tenant: Tenant = DEFAULT) -> Response:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.WRITE, "edit", new_tenant=tenant)
    fmt = body.format or format_of_file(body.filename)
    target = await svc.write_format(ref)  # the store's word: this node's view may not have the namespace yet
    try:
        if target is not Format.PROPERTIES:
            validate(target, body.content)
            values = {CONTENT: body.content}
        elif fmt is Format.PROPERTIES:
            values = parse_properties(body.content)
        elif fmt in (Format.YAML, Format.JSON):
            validate(fmt, body.content)
            try:
                document = yaml.safe_load(body.content) if fmt is Format.YAML else json.loads(body.content)
            except yaml.YAMLError:  # valid, but several documents
                raise FormatError("a yaml file imported into properties must hold one document") from None
            if not isinstance(document, dict):
                raise FormatError(f"a {fmt.value} file imported into properties must hold a mapping")
            values = flatten(document)
        else:
            raise FormatError("a properties namespace imports .properties, .yaml or .json files")
    except FormatError as exc:
        raise bad_request(str(exc), field="content", line=exc.line, column=exc.column) from None
    revision = await svc.set_items(ref, {k: (v, True if k in body.secret_keys else None, "") for k, v in values.items()},
                                   caller.name, tenant=tenant, action="config.import")
    return Response(status_code=204, headers={"ETag": f'"{revision}"'})


@router.get(BASE + ":export", summary="The released (or draft) configuration as a file")
async def export_file(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, caller: Caller,
                      draft: bool = False,
                      format: Annotated[Format | None, Query(description="properties namespaces: properties, yaml "
                                                             "or json; others: their own format")] = None) -> Response:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.READ)
    meta = await svc.meta(ref)
    if draft:
        items = (await svc.draft(ref))[0].items
        stored = {k: (v.value, v.secret) for k, v in items.items()}
    else:
        release = await svc.latest_release(ref)
        stored = {k: (v.value, v.secret) for k, v in (release.config if release else {}).items()}
    clear = caller.can(Verb.USE, await svc._tenant(ref))
    values = {k: (svc.keyring.decrypt(v, f"{ref.path}/{k}") if clear else "******") if secret else v
              for k, (v, secret) in stored.items()}
    return _exported(meta.format, format or meta.format, values)


def _exported(native: Format, wanted: Format, values: dict[str, str]) -> Response:
    """A properties namespace as a .properties, .yaml or .json file (a flat mapping of its keys, so the
    file imports back to the same keys and values); any other namespace as its own document."""
    if native is not Format.PROPERTIES:
        if wanted is not native:
            raise bad_request(f"a {native.value} namespace exports its document as {native.value}, not "
                              f"{wanted.value}", field="format")
        return PlainTextResponse(values.get(CONTENT, ""))
    ordered = dict(sorted(values.items()))
    if wanted is Format.JSON:
        return Response(json.dumps(ordered, indent=2, ensure_ascii=False) + "\n", media_type="application/json")
    if wanted is Format.YAML:
        return PlainTextResponse(yaml.safe_dump(ordered, allow_unicode=True, default_flow_style=False),
                                 media_type="application/yaml")
    if wanted is Format.TEXT:
        raise bad_request("a properties namespace exports as properties, yaml or json", field="format")
    return PlainTextResponse(render_properties(values))


@router.put(BASE, status_code=201, summary="Create a namespace")
async def create_namespace(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, caller: Caller,
                           body: NamespaceIn = Body(default_factory=NamespaceIn), tenant: Tenant = DEFAULT) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    require(caller, Verb.WRITE, (await svc.app(app)).tenant if await svc.app(app) else tenant)  # type: ignore[union-attr]
    meta = await svc.create_namespace(ref, caller.name, fmt=body.format, public=body.public, comment=body.comment,
                                      tenant=tenant)
    return meta.out()


@router.get(BASE, summary="A namespace: settings, latest release, unpublished changes")
async def get_namespace(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident,
                        caller: Caller) -> Response:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.READ)
    meta = await svc.meta(ref)
    draft, etag = await svc.draft(ref)
    release = await svc.latest_release(ref)
    body = {**meta.out(), "release": release.id if release else None, "pending": svc.pending(ref, draft, release),
            "editors": draft.editors}
    return Response(dumps(body), media_type="application/json", headers={"ETag": f'"{etag}"'})


@router.delete(BASE, status_code=204, summary="Delete a namespace with its history")
async def delete_namespace(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident,
                           caller: Caller) -> None:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.WRITE, "publish")
    await svc.delete_namespace(ref, caller.name)


@router.put(BASE + "/permissions", summary="Who may edit and who may publish")
async def set_permissions(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, caller: Caller,
                          body: Permissions) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.ADMIN)
    return (await svc.set_permissions(ref, body, caller.name)).out()


# drafts -------------------------------------------------------------------------------------

@router.get(BASE + "/items", summary="The draft (secrets masked); its ETag guards edits")
async def get_items(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident,
                    caller: Caller) -> Response:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.READ)
    draft, etag = await svc.draft(ref)
    items = {k: {**v.out(), "value": "******" if v.secret else v.value} for k, v in draft.items.items()}
    return Response(dumps({"items": items, "editors": draft.editors}), media_type="application/json",
                    headers={"ETag": f'"{etag}"'})


@router.put(BASE + "/items", summary="Set several keys in the draft")
async def set_items(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, caller: Caller,
                    body: ItemsIn, if_match: Annotated[str | None, Header()] = None, tenant: Tenant = DEFAULT) -> Response:
    return await _set(request, _ref(app, env, cluster, namespace), caller, body.items, if_match, tenant)


@router.put(BASE + "/items/{key:path}", summary="Set one key in the draft (creates the namespace if needed)")
async def set_item(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, key: str,
                   caller: Caller, body: ItemIn, if_match: Annotated[str | None, Header()] = None,
                   tenant: Tenant = DEFAULT) -> Response:
    return await _set(request, _ref(app, env, cluster, namespace), caller, {key: body}, if_match, tenant)


async def _set(request: Request, ref: NsRef, caller: Principal, items: dict[str, ItemIn], if_match: str | None,
               tenant: str) -> Response:
    svc, _ = _svc(request)
    await svc.authorize(caller, ref, Verb.WRITE, "edit", new_tenant=tenant)
    revision = await svc.set_items(ref, {k: (v.value, v.secret, v.comment) for k, v in items.items()}, caller.name,
                                   _etag(if_match), tenant=tenant)
    return Response(status_code=204, headers={"ETag": f'"{revision}"'})


@router.delete(BASE + "/items/{key:path}", summary="Remove a key from the draft")
async def unset_item(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, key: str,
                     caller: Caller, if_match: Annotated[str | None, Header()] = None) -> Response:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.WRITE, "edit")
    revision = await svc.unset_items(ref, [key], caller.name, _etag(if_match))
    return Response(status_code=204, headers={"ETag": f'"{revision}"'})


# releases -----------------------------------------------------------------------------------

def _release_out(svc: ConfigService, release: Any, values: bool = False) -> dict[str, Any]:
    out = release.out()
    config = out.pop("config")
    out["keys"] = len(config)
    if values:
        out["configurations"] = {k: svc.shown_stored(v) for k, v in release.config.items()}
    return out


@router.get(BASE + "/releases", summary="Release history, newest first")
async def list_releases(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, caller: Caller,
                        limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.READ)
    return {"items": [_release_out(svc, r) for r in await svc.releases(ref, limit)]}


@router.get(BASE + "/releases/{release}", summary="One release with its values (secrets masked)")
async def get_release(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident,
                      release: Annotated[int, Path(ge=1)], caller: Caller) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.READ)
    return _release_out(svc, await svc.release(ref, release), values=True)


@router.get(BASE + "/diff", summary="What changed between two releases")
async def diff(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, caller: Caller,
               from_: Annotated[int, Query(alias="from", ge=1)], to: Annotated[int, Query(ge=1)]) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.READ)
    return await svc.diff(ref, from_, to)


# gray release -------------------------------------------------------------------------------

def _gray(request: Request) -> GrayReleases:
    return request.app.state.node.service(GrayReleases)  # type: ignore[no-any-return]


@router.post(BASE + "/gray:publish", summary="Make the gray keys live for the clients the rules pick")
async def gray_publish(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident,
                       caller: Caller) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.WRITE, "publish")
    return _gray(request).shown(await _gray(request).publish(ref, caller.name))


@router.post(BASE + "/gray:promote", summary="Merge the published gray keys into the main release")
async def gray_promote(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident,
                       caller: Caller) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.WRITE, "publish")
    return _release_out(svc, await _gray(request).promote(ref, caller.name))


@router.put(BASE + "/gray", status_code=201, summary="Start a gray release of the namespace")
async def gray_create(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident,
                      caller: Caller) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.WRITE, "edit")
    return _gray(request).shown(await _gray(request).create(ref, caller.name))


@router.get(BASE + "/gray", summary="The gray release: keys, rules, what is published")
async def gray_get(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident,
                   caller: Caller) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.READ)
    return _gray(request).shown(await _gray(request).get(ref))


@router.delete(BASE + "/gray", status_code=204, summary="Abandon the gray release")
async def gray_abandon(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident,
                       caller: Caller) -> None:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.WRITE, "publish")
    await _gray(request).abandon(ref, caller.name)


@router.put(BASE + "/gray/rules", summary="Which clients get the gray keys (effective at once)")
async def gray_rules(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, caller: Caller,
                     body: RulesIn) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.WRITE, "publish")
    return _gray(request).shown(await _gray(request).set_rules(ref, body.rules, caller.name))


@router.put(BASE + "/gray/items/{key:path}", summary="Set a key of the gray release")
async def gray_set(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, key: str,
                   caller: Caller, body: ItemIn) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.WRITE, "edit")
    gray = await _gray(request).set_items(ref, {key: (body.value, body.secret, body.comment)}, caller.name)
    return _gray(request).shown(gray)


@router.delete(BASE + "/gray/items/{key:path}", summary="Remove a key of the gray release")
async def gray_unset(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, key: str,
                     caller: Caller) -> dict[str, Any]:
    svc, _ = _svc(request)
    ref = _ref(app, env, cluster, namespace)
    await svc.authorize(caller, ref, Verb.WRITE, "edit")
    return _gray(request).shown(await _gray(request).unset_items(ref, [key], caller.name))


# client reads -------------------------------------------------------------------------------

async def _resolved(request: Request, caller: Principal, ref: NsRef, client: ClientInfo) -> Resolved:
    _, hub = _svc(request)
    await hub.caught_up()
    tenant = hub.tenant(ref.app)
    require(caller, Verb.READ, tenant)
    if not hub.layers(ref):
        what = "has no release yet" if hub.exists(ref) else f"does not exist (nor in cluster {DEFAULT!r})"
        raise Problem(404, "Not Found", f"config namespace {ref.path} {what}", type="not-found")
    try:
        return await hub.resolve(ref, client, clear=caller.can(Verb.USE, tenant))
    except SecretError as exc:
        raise Problem(500, "Secret unreadable", str(exc), type="secret-unreadable") from None


@router.get(BASE + "/config", summary="The released configuration a client gets (gray rules applied)")
async def client_config(request: Request, app: Ident, env: Ident, cluster: Ident, namespace: Ident, caller: Caller,
                        client_id: Annotated[str, Query(alias="clientId", max_length=256)] = "",
                        ip: str | None = None, label: Annotated[list[str], Query()] = []) -> dict[str, Any]:  # noqa: B006
    resolved = await _resolved(request, caller, _ref(app, env, cluster, namespace),
                               _client(request, client_id, ip, label))
    return resolved.out()


def _wanted(notifications: str) -> dict[str, int]:
    try:
        items = loads(notifications)
        if not isinstance(items, list):
            raise ValueError
        out = {}
        for item in items:
            name = item.get("namespace", item.get("namespaceName"))
            if not isinstance(name, str) or not name:
                raise ValueError
            out[name] = int(item.get("notificationId", -1))
        if not out:
            raise ValueError  # a poll watching nothing would only ever time out
        return out
    except (ValueError, TypeError, AttributeError):
        raise bad_request('notifications is a non-empty JSON list of {"namespaceName": NAME, "notificationId": ID}',
                          field="notifications") from None


@router.get("/notifications", summary="Long poll: answers when a namespace has a newer notification id")
async def notifications(request: Request, caller: Caller, notifications: str, app: str | None = None,
                        app_id: Annotated[str | None, Query(alias="appId", description="Apollo's name for app")] = None,
                        env: str = DEFAULT, cluster: str = DEFAULT,
                        timeout: Annotated[float, Query(ge=0, le=MAX_WAIT)] = MAX_WAIT) -> Response:
    """Like Apollo's ``/notifications/v2`` (same parameters: ``appId`` or ``app``, ``cluster``,
    ``notifications``): send the ids you have (-1 for none); the answer lists the namespaces that
    changed with their new ids, or is 304 when nothing changed within ``timeout``."""
    app = app or app_id
    if not app:
        raise bad_request("app (Apollo clients: appId) is required", field="app")
    wanted = _wanted(notifications)
    changed = await long_poll(request, caller, app, {name: _ref(app, env, cluster, name) for name in wanted},
                              wanted, timeout)
    if not changed:
        return Response(status_code=304)
    return Response(dumps([{"namespace": name, "namespaceName": name, "notificationId": nid} for name, nid in changed]),
                    media_type="application/json")


async def long_poll(request: Request, caller: Principal, app: str, refs: dict[str, NsRef], wanted: dict[str, int],
                    timeout: float) -> list[tuple[str, int]]:
    """Wait up to ``timeout`` seconds until a namespace of ``app`` (``refs``: the client's name for it ->
    the namespace) has a notification id above the one the client has (``wanted``, by the same
    names); the changed ones as (name, id), or [] on timeout, disconnect or drain. Raises 401/403
    when the caller loses access while waiting."""
    _, hub = _svc(request)
    await hub.caught_up()
    require(caller, Verb.READ, hub.tenant(app))
    stopping = request.app.state.node.stopping
    tokens: TokenService = request.app.state.node.service(TokenService)
    access = _access(hub, app, caller, tokens)
    names = list(dict.fromkeys(ref.namespace for ref in refs.values()))
    started = time.monotonic()
    while True:
        if await request.is_disconnected():
            return []
        denied = access()  # revoked, expired, or the app was created meanwhile in a tenant out of reach
        if denied is not None:
            raise denied
        changed = [(name, hub.notification_id(ref)) for name, ref in refs.items()]
        changed = [(name, nid) for name, nid in changed if nid > wanted[name]]
        if changed:
            return changed
        left = timeout - (time.monotonic() - started)
        if left <= 0 or stopping.is_set() or hub.stopped:
            return []
        await hub.wait(names, min(left, 5.0))


@router.get("/stream", summary="Server-sent events: each namespace's config now and on every change")
async def stream(request: Request, caller: Caller, app: str,
                 namespace: Annotated[list[str], Query(min_length=1)],
                 env: str = DEFAULT, cluster: str = DEFAULT,
                 client_id: Annotated[str, Query(alias="clientId", max_length=256)] = "",
                 ip: str | None = None, label: Annotated[list[str], Query()] = [],  # noqa: B006
                 since: int | None = None,
                 last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Every event carries ``id`` = the store revision it reflects; reconnect with ``Last-Event-ID``
    (or ``since``) and the stream replays every change after it, in order, before going live."""
    _, hub = _svc(request)
    await hub.caught_up()
    require(caller, Verb.READ, hub.tenant(app))
    client = _client(request, client_id, ip, label)
    refs = [_ref(app, env, cluster, name) for name in dict.fromkeys(namespace)]
    start = since
    if last_event_id and last_event_id.strip().isdigit():
        start = int(last_event_id)
    tokens: TokenService = request.app.state.node.service(TokenService)
    events = _events(request, hub, refs, client, lambda: caller.can(Verb.USE, hub.tenant(app)), start,
                     _access(hub, app, caller, tokens))
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _access(hub: ConfigHub, app: str, caller: Principal, tokens: TokenService) -> Callable[[], Problem | None]:
    """Why a watch may no longer see ``app``: its token was revoked or expired, or the app, unknown (so
    counted in tenant ``default``) when the watch began, now exists in a tenant the token cannot read."""
    def denied() -> Problem | None:
        if not tokens.still_valid(caller):
            return Problem(401, "Unauthorized", REVOKED, type="unauthorized")
        tenant = hub.tenant(app)
        if not caller.can(Verb.READ, tenant):
            return Problem(403, "Forbidden", f"read access to app {app!r} (tenant {tenant!r}) is not granted",
                           type="forbidden")
        return None

    return denied


async def _events(request: Request, hub: ConfigHub, refs: list[NsRef], client: ClientInfo, clear: Callable[[], bool],
                  start: int | None, access: Callable[[], Problem | None]) -> AsyncIterator[bytes]:
    stopping = request.app.state.node.stopping
    await hub.caught_up()
    names = [r.namespace for r in refs]
    sent = start if start is not None else -1
    denied = access()  # the app may have been created in another tenant since the request was checked
    if denied is not None:
        yield problem_event(denied.status, denied.title, str(denied))
        return
    # first connect, too far behind, or ahead of this store (restored, wiped): the full state
    if start is None or start > hub.revision or hub.changes_since(start, refs) is None:
        sent = hub.revision  # taken first: what changes while resolving is replayed after
        for ref in refs:
            if hub.layers(ref):
                yield _event(await hub.resolve(ref, client, clear()), resync=start is not None)
    live = False  # ": live" once caught up: after the current state, or after the replay of a reconnect
    while not stopping.is_set() and not hub.stopped:
        # at every change and every heartbeat, before anything the hub now holds is sent
        denied = access()
        if denied is not None:
            yield problem_event(denied.status, denied.title, str(denied))  # 401: as revoked_event()
            return
        changes = hub.changes_since(sent, refs)
        if changes is None:
            sent = hub.revision
            for ref in refs:
                if hub.layers(ref):
                    yield _event(await hub.resolve(ref, client, clear()), resync=True)
            continue
        if not changes:
            if not live:
                live = True
                yield b": live\n\n"
                continue  # look again: changes may have come while this was sent
            sent = hub.revision  # nothing of ours up to here; no await until the wait below parks
            if not await hub.wait(names, 15.0):
                yield b": heartbeat\n\n"
            continue
        for ref, change in changes:
            if change.latest is None and not hub.layers(ref):  # else it now resolves elsewhere (a fallback)
                yield b"id: %d\nevent: deleted\ndata: %s\n\n" % (change.revision, dumps({"namespace": ref.namespace}))
            else:
                yield await hub.event(ref, client, clear(), change)
            sent = max(sent, change.revision)


def _event(resolved: Resolved, resync: bool = False) -> bytes:
    resolved.resync = resync
    return b"id: %d\nevent: config\ndata: %s\n\n" % (resolved.notification_id, dumps(resolved.out()))


# audit and keys -----------------------------------------------------------------------------

@router.get("/audit", summary="Every config operation: who, when, what, before and after (secrets masked)")
async def audit(request: Request, caller: Caller, app: str | None = None, namespace: str | None = None,
                user: str | None = None, since: datetime | None = None, until: datetime | None = None,
                limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
    svc, _ = _svc(request)
    store = svc.store
    if app is not None:
        require(caller, Verb.READ, await _stored_tenant(svc, app))
    elif not caller.can(Verb.ADMIN):
        raise Problem(403, "Forbidden", "audit across every app needs admin; pass app=", type="forbidden")
    from mezzo.node.api import utc

    def keep(record: AuditRecord) -> bool:
        detail = record.detail
        return record.kind == AUDIT_KIND and not ((app and detail.get("app") != app)
                                                  or (namespace and detail.get("namespace") != namespace)
                                                  or (user and record.user != user))

    return {"items": await read_audit(store, keep, utc(since), utc(until), limit)}


@router.post(":rotate-keys", summary="Re-encrypt every secret with the active key")
async def rotate_keys(request: Request, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.ADMIN)
    svc, _ = _svc(request)
    return {"reencrypted": await svc.rotate_keys(caller.name), "activeKey": svc.keyring.active}

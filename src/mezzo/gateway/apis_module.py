"""The ``apis`` module: expands Api resources into gateway routes, and serves import, state
changes and documentation pages under ``/v1/apis``."""

from __future__ import annotations

from typing import Any

import structlog
import yaml
from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from mezzo.gateway.apis import API_KIND, TRANSITIONS, ApiSpec, docs_page, operations, route_specs
from mezzo.gateway.runtime import Gateway
from mezzo.node.auth import Verb
from mezzo.node.auth_module import Caller, require
from mezzo.node.errors import Problem, bad_request, conflict, not_found
from mezzo.node.module import Health, Module
from mezzo.resources.api import invalid_manifest
from mezzo.resources.informer import Informer
from mezzo.resources.kinds import UnsealError
from mezzo.resources.manifests import ManifestError, from_objects
from mezzo.resources.model import Resource
from mezzo.resources.service import ResourceService
from mezzo.resources.types import NAME_PATTERN

log = structlog.get_logger("mezzo.gateway")
router = APIRouter(prefix="/v1/apis", tags=["gateway"])
NamePath = Path(pattern=NAME_PATTERN, max_length=253)


class ApisModule(Module):
    name = "apis"
    kinds = (API_KIND,)

    async def start(self) -> None:
        self.gateway = self.node.service(Gateway)
        self.routes: dict[str, list[str]] = {}  # api ref -> generated route names
        self.informer = Informer(self.node.service(ResourceService), API_KIND.kind, self._changed)
        await self.informer.start()

    async def stop(self) -> None:
        await self.informer.stop()

    async def health(self) -> Health:
        return Health(True, f"{len(self.routes)} APIs")

    def routers(self) -> list[APIRouter]:
        return [router]

    def _changed(self, event: str, resource: Resource) -> None:
        meta = resource.metadata
        ref = f"{meta.namespace}/{meta.name}"
        revision = meta.resourceVersion or 0
        try:  # its plugins' secrets opened for the data plane, as the gateway's own kinds are
            plain = None if event == "DELETED" else self.node.service(ResourceService).unsealed(resource)
        except UnsealError as exc:  # sealed with keys this node does not have: its routes go (fail closed)
            log.error("api's secrets do not decrypt: its routes are taken out of service", api=ref, reason=str(exc))
            plain = None
        wanted = [] if plain is None else route_specs(meta.name, ApiSpec.model_validate(plain))
        names = {name for name, _ in wanted}
        for old in self.routes.pop(ref, []):
            if old not in names:
                self.gateway.changed("Route", "DELETED", meta.namespace, old, None, revision)
        for name, spec in wanted:
            self.gateway.changed("Route", "MODIFIED", meta.namespace, name, spec, revision)
        if wanted:
            self.routes[ref] = sorted(names)


class ImportIn(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, max_length=253)
    document: str | dict[str, Any] = Field(description="the OpenAPI 3 document: YAML or JSON text, or an object")
    upstream: str = Field(pattern=NAME_PATTERN)
    base_path: str = Field("", alias="basePath")
    state: str = "draft"
    hosts: list[str] = Field(default_factory=list)
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)

    model_config = {"populate_by_name": True, "extra": "forbid"}


class TransitionIn(BaseModel):
    state: str

    model_config = {"extra": "forbid"}  # a sunset or other field here would be dropped: apply the Api for those


def _resources(request: Request) -> ResourceService:
    return request.app.state.node.service(ResourceService)  # type: ignore[no-any-return]


async def _apply(request: Request, caller: Any, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    resources = _resources(request)
    doc = {"apiVersion": "mezzo.dev/v1", "kind": "Api", "metadata": {"name": name, "namespace": namespace},
           "spec": spec}
    try:
        desired = resources.validate(from_objects([doc], "request"))
    except ManifestError as exc:
        raise invalid_manifest(exc) from None
    [result] = await resources.apply(desired, caller.name)
    return result.model_dump(mode="json")


@router.post(":import", summary="Create or replace an API from an OpenAPI 3 document")
async def import_api(request: Request, caller: Caller, body: ImportIn = Body(...),
                     namespace: str = Query("default", pattern=NAME_PATTERN)) -> dict[str, Any]:
    require(caller, Verb.WRITE, namespace)
    document = body.document
    if isinstance(document, str):
        try:
            document = yaml.safe_load(document)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise bad_request(f"document is not YAML or JSON: {exc}", field="document",
                              line=mark.line + 1 if mark else None) from None
    if not isinstance(document, dict):
        raise bad_request("document must be an OpenAPI object", field="document")
    spec = {"upstream": body.upstream, "basePath": body.base_path, "state": body.state, "hosts": body.hosts,
            "plugins": body.plugins, "document": document}
    result = await _apply(request, caller, namespace, body.name, spec)
    return {**result, "operations": len(operations(ApiSpec.model_validate(spec)))}


@router.post("/{name}:transition", summary="Move an API to another lifecycle state")
async def transition(request: Request, caller: Caller, name: str = NamePath, body: TransitionIn = Body(...),
                     namespace: str = Query("default", pattern=NAME_PATTERN)) -> dict[str, Any]:
    require(caller, Verb.WRITE, namespace)
    current = await _resources(request).get("Api", namespace, name)
    if current is None:
        raise not_found(f"API {name!r} in namespace {namespace!r}")
    state = current.spec.get("state", "draft")
    if body.state not in TRANSITIONS:
        raise bad_request(f"state is one of {', '.join(TRANSITIONS)}", field="state")
    if body.state != state and body.state not in TRANSITIONS[state]:
        allowed = ", ".join(sorted(TRANSITIONS[state])) or "none (retired is final)"
        raise conflict(f"an API cannot go from {state} to {body.state}; from {state}: {allowed}")
    return await _apply(request, caller, namespace, name, {**current.spec, "state": body.state})


async def _published(request: Request, caller: Any, namespace: str, name: str) -> ApiSpec:
    require(caller, Verb.READ, namespace)
    current = await _resources(request).get("Api", namespace, name)
    if current is None:
        raise not_found(f"API {name!r} in namespace {namespace!r}")
    spec = ApiSpec.model_validate(current.spec)
    if spec.state not in ("published", "deprecated"):
        raise Problem(404, "Not Found", f"API {name!r} is {spec.state}: documentation is for published APIs",
                      type="not-found")
    return spec


@router.get("/{name}/docs", response_class=HTMLResponse, summary="The API's documentation page")
async def docs(request: Request, caller: Caller, name: str = NamePath,
               namespace: str = Query("default", pattern=NAME_PATTERN)) -> HTMLResponse:
    spec = await _published(request, caller, namespace, name)
    return HTMLResponse(docs_page(name, spec, request.app.state.node.url("gateway")))


@router.get("/{name}/openapi.json", summary="The API's OpenAPI document, pointing at the gateway")
async def openapi(request: Request, caller: Caller, name: str = NamePath,
                  namespace: str = Query("default", pattern=NAME_PATTERN)) -> dict[str, Any]:
    spec = await _published(request, caller, namespace, name)
    gateway = request.app.state.node.url("gateway") or ""
    return {**spec.document, "servers": [{"url": gateway + spec.base_path}]}

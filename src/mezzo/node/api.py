"""The ``api`` module: one FastAPI app on the API port with probes, metrics, audit and every module's routes."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

import mezzo
from mezzo.console import mount as mount_console
from mezzo.jsonutil import dumps
from mezzo.node.audit import AuditRecord, read_audit
from mezzo.node.auth import Verb
from mezzo.node.auth_module import Caller, require
from mezzo.node.errors import install as install_errors
from mezzo.node.module import Health, Listener, Module
from mezzo.node.server import HttpListener, bind
from mezzo.resources.service import ResourceService
from mezzo.storage.kv import KVStore
from mezzo.telemetry.http import TelemetryMiddleware
from mezzo.telemetry.metrics import Metrics
from mezzo.telemetry.tracing import Tracing

PROBES = ("/healthz", "/readyz", "/metrics")


class ApiModule(Module):
    name = "api"

    async def start(self) -> None:
        settings = self.node.settings
        self.sock = bind(settings.host, settings.api_port)

    async def stop(self) -> None:
        self.sock.close()

    def listeners(self) -> list[Listener]:
        app = build_app(self.node)
        return [HttpListener("api", app, self.sock, drain_timeout=self.node.settings.drain_timeout)]

    async def health(self) -> Health:
        return Health(True, self.node.url("api") or "not listening yet")


def utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def build_app(node: Any) -> Any:
    app = FastAPI(
        title="Mezzo", version=mezzo.__version__,
        description="Cloud-native middleware platform: one API for every service.",
        # Mezzo's own middleware (telemetry/http.py) makes the server spans and metrics; FastAPI's
        # would add a second span per request whenever a global OpenTelemetry provider is set
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.node = node
    install_errors(app)

    @app.get("/healthz", tags=["probes"], summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"], summary="Every module and backend ready")
    async def readyz() -> Response:
        checks = await node.health()
        ready = node.started and all(h.ok for h in checks.values())
        body = {"status": "ready" if ready else "not ready",
                "modules": {name: {"ok": h.ok, "detail": h.detail} for name, h in checks.items()}}
        return Response(dumps(body), status_code=200 if ready else 503, media_type="application/json")

    @app.get("/metrics", tags=["probes"], summary="Prometheus metrics")
    async def metrics(request: Request) -> Response:
        await node.service(Metrics).refresh()
        body, ctype = node.service(Metrics).render(request.headers.get("accept"))
        return Response(body, media_type=ctype)

    @app.get("/v1/whoami", tags=["tokens"], summary="The caller: name, role and namespaces of the token")
    async def whoami(caller: Caller) -> dict[str, Any]:
        return {"name": caller.name, "role": caller.role.value, "namespaces": caller.namespaces,
                "tokenId": caller.token_id}

    @app.get("/v1/audit", tags=["audit"], summary="Who changed what, when")
    async def audit(
        caller: Caller, kind: str | None = None, namespace: str | None = None, name: str | None = None,
        user: str | None = None, since: datetime | None = None, until: datetime | None = None,
        limit: int = Query(100, ge=1, le=10_000),
        newest: bool = Query(False, description="the most recent records of the window, newest first"),
    ) -> dict[str, Any]:
        namespace = namespace or None  # "?namespace=" is no namespace, which needs admin
        require(caller, Verb.ADMIN if namespace is None else Verb.READ, namespace)
        since, until = utc(since), utc(until)  # a time without a zone is taken as UTC
        if kind and node.has(ResourceService):
            with contextlib.suppress(LookupError):
                kind = node.service(ResourceService).catalog.resolve(kind).kind
        def keep(record: AuditRecord) -> bool:
            return not ((kind and (record.kind or "").lower() != kind.lower())
                        or (namespace and record.namespace != namespace)
                        or (name and record.name != name) or (user and record.user != user))

        return {"items": await read_audit(node.service(KVStore), keep, since, until, limit, newest)}

    mount_console(app)
    for module in node.modules.values():
        for router in module.routers():
            app.include_router(router)
    served: Any = app
    for module in node.modules.values():  # a module may answer some requests itself, in front of FastAPI
        served = module.api_front(served, app)
    tracing = node.service(Tracing) if node.settings.tracing != "none" else None
    return TelemetryMiddleware(served, node.service(Metrics), tracing, "api", exclude_paths=PROBES)

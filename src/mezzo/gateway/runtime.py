"""The gateway's live configuration: resources in, an immutable snapshot out, swapped atomically.

Informers follow Route, Upstream, Consumer, GlobalRule and Certificate resources. Any change
schedules one rebuild (changes arriving together are folded into it); the new snapshot replaces
the old in one assignment, so a request in flight finishes on the snapshot it started with and
nothing is dropped. Plugin instances and upstream nodes whose configuration did not change are
carried over, so rate-limit windows, connection pools and health state survive unrelated edits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import structlog

from mezzo.gateway.http import Reply, Request, problem
from mezzo.gateway.model import ConsumerSpec, GlobalRuleSpec, RouteSpec, UpstreamSpec
from mezzo.gateway.plugins import Chain, Ctx, Plugin, instantiate
from mezzo.gateway.proxy import Limits, proxy
from mezzo.gateway.router import CompiledRoute, Router, compile_route
from mezzo.gateway.upstream import Balancer, NodeState, run_active_checks

log = structlog.get_logger("mezzo.gateway")


class Consumer:
    __slots__ = ("name", "namespace", "ref", "spec")

    def __init__(self, namespace: str, name: str, spec: ConsumerSpec) -> None:
        self.ref, self.namespace, self.name, self.spec = f"{namespace}/{name}", namespace, name, spec


class Snapshot:
    def __init__(self, router: Router, upstreams: dict[str, Balancer], consumers: dict[str, Consumer],
                 credentials: dict[tuple[str, str], Consumer], revision: int) -> None:
        self.router = router
        self.upstreams = upstreams
        self.consumers = consumers
        self.credentials = credentials  # (auth plugin, credential id) -> consumer
        self.revision = revision

    @classmethod
    def empty(cls) -> Snapshot:
        return cls(Router([]), {}, {}, {}, 0)


class Gateway:
    def __init__(self, limits: Limits, metrics: Any = None, registry: Any = None, redis_url: str | None = None) -> None:
        self.limits = limits
        self.metrics = metrics
        self.registry = registry  # the service registry's view, when that module runs
        self.redis_url = redis_url
        self.snapshot = Snapshot.empty()
        self.connections: set[Any] = set()
        self.items: dict[str, dict[str, tuple[str, str, Any]]] = {
            "Route": {}, "Upstream": {}, "Consumer": {}, "GlobalRule": {}, "Certificate": {}}
        self._plugins: dict[str, Plugin] = {}
        self._nodes: dict[tuple[str, str], NodeState] = {}
        self._checks: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._rebuild: asyncio.Handle | None = None
        self.revision = 0
        self.rebuilt = asyncio.Event()
        self.on_certificates: Any = None

    # configuration ------------------------------------------------------------------------

    def changed(self, kind: str, event: str, namespace: str, name: str, spec: Any, revision: int) -> None:
        ref = f"{namespace}/{name}"
        if event == "DELETED":
            self.items[kind].pop(ref, None)
        else:
            self.items[kind][ref] = (namespace, name, spec)
        self.revision = max(self.revision, revision)
        if self._rebuild is None:
            self._rebuild = asyncio.get_running_loop().call_soon(self._apply)

    def _apply(self) -> None:
        self._rebuild = None
        started = time.perf_counter()
        try:
            self.snapshot = self.build()
        except Exception:
            log.exception("gateway configuration failed to build; keeping the previous one")
            return
        self.rebuilt.set()
        self.rebuilt = asyncio.Event()
        log.debug("gateway configuration applied", revision=self.revision,
                  routes=len(self.items["Route"]), ms=round((time.perf_counter() - started) * 1000, 2))
        if self.on_certificates is not None:
            self.on_certificates(self.items["Certificate"])

    def build(self) -> Snapshot:
        used: set[str] = set()
        global_plugins: list[Plugin] = []
        for ref, (_, _, spec) in sorted(self.items["GlobalRule"].items()):
            global_plugins += self._instances(f"global/{ref}", spec.plugins, used)
        upstreams: dict[str, Balancer] = {}
        live_nodes: set[tuple[str, str]] = set()
        for ref, (_, _, spec) in self.items["Upstream"].items():
            upstreams[ref] = self._balancer(ref, spec, live_nodes)
        for key in list(self._nodes):
            if key not in live_nodes:
                self._nodes.pop(key).close()
        consumers: dict[str, Consumer] = {}
        credentials: dict[tuple[str, str], Consumer] = {}
        for ref, (namespace, name, spec) in self.items["Consumer"].items():
            consumer = consumers[ref] = Consumer(namespace, name, spec)
            for plugin, cred in spec.credentials.items():
                ident = cred.get("key") or cred.get("username") or cred.get("accessKey") or cred.get("access_key") \
                    or cred.get("keyId") or name
                credentials[(plugin, str(ident))] = consumer
        routes: list[CompiledRoute] = []
        for ref, (namespace, name, spec) in self.items["Route"].items():
            route = compile_route(namespace, name, spec)
            upstream = upstreams.get(f"{namespace}/{spec.upstream}") if spec.upstream else None
            plugins = list(global_plugins) + self._instances(f"route/{ref}", spec.plugins, used)
            if upstream is not None and upstream.spec.plugins:
                plugins += self._instances(f"upstream/{namespace}/{spec.upstream}", upstream.spec.plugins, used)
            plugins.sort(key=lambda p: p.priority, reverse=True)
            route.chain = Chain(plugins)
            route.upstream = upstream
            routes.append(route)
        for key in list(self._plugins):
            if key not in used:
                self._plugins.pop(key).close()
        self._sync_checks(upstreams)
        return Snapshot(Router(routes), upstreams, consumers, credentials, self.revision)

    def _instances(self, scope: str, configs: dict[str, Any], used: set[str]) -> list[Plugin]:
        out = []
        for name, conf in configs.items():
            key = f"{scope}/{name}/{orjson.dumps(conf, option=orjson.OPT_SORT_KEYS).decode()}"
            plugin = self._plugins.get(key)
            if plugin is None:
                plugin = self._plugins[key] = instantiate({name: conf}, self)[0]
                plugin.scope = scope  # type: ignore[attr-defined]
            used.add(key)
            out.append(plugin)
        return out

    def _balancer(self, ref: str, spec: UpstreamSpec, live: set[tuple[str, str]]) -> Balancer:
        if spec.service is not None:
            namespace = ref.split("/", 1)[0]
            found = self.registry.instances(namespace, spec.service) if self.registry is not None else []
            wanted = [(i.host, i.port, i.weight, getattr(i, "zone", None)) for i in found]
        else:
            wanted = [(n.host, n.port, n.weight, n.zone) for n in spec.nodes]
        nodes = []
        for host, port, weight, zone in wanted:
            key = (ref, f"{host}:{port}")
            node = self._nodes.get(key)
            if node is None:
                node = self._nodes[key] = NodeState(host, port, weight, zone, spec.keepalive)
            node.weight, node.zone, node.keepalive = weight, zone, spec.keepalive
            live.add(key)
            nodes.append(node)
        return Balancer(ref, spec, nodes)

    def _sync_checks(self, upstreams: dict[str, Balancer]) -> None:
        wanted = {ref: b for ref, b in upstreams.items() if b.spec.health_check.active is not None}
        for ref in list(self._checks):
            signature, task = self._checks[ref]
            balancer = wanted.get(ref)
            if balancer is None or signature != _signature(balancer):
                task.cancel()
                del self._checks[ref]
        for ref, balancer in wanted.items():
            if ref not in self._checks:
                task = asyncio.get_running_loop().create_task(run_active_checks(balancer), name=f"mezzo-check-{ref}")
                self._checks[ref] = (_signature(balancer), task)

    def registry_changed(self) -> None:
        """The registry's instances moved: rebuild so service-backed upstreams get the new nodes."""
        if any(spec.service for _, _, spec in self.items["Upstream"].values()) and self._rebuild is None:
            self._rebuild = asyncio.get_running_loop().call_soon(self._apply)

    async def close(self) -> None:
        for _, task in self._checks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for plugin in self._plugins.values():
            plugin.close()
        for node in self._nodes.values():
            node.close()

    # serving ------------------------------------------------------------------------------

    async def handle(self, client: Any, request: Request, stream: Any) -> bool:
        ctx = Ctx(request, self, time.monotonic())
        snapshot = self.snapshot
        found = snapshot.router.match(request)
        if found is None:
            ctx.status = 404
            client.write(problem(404, f"no route matches {request.method} {request.path}").encode(request.keep_alive))
            return True
        route, ctx.params = found
        ctx.route = route
        ctx.upstream = route.upstream
        status = route.spec.status
        if status != "published" and status != "deprecated":
            reply = problem(410, f"this API is retired: {route.spec.api or route.name}") if status == "retired" \
                else problem(404, f"no route matches {request.method} {request.path}")
            client.write(reply.encode(request.keep_alive))
            return True
        if status == "deprecated":
            ctx.response_headers.append((b"deprecation", b"true"))
        keep = True
        try:
            reply = await route.chain.before(ctx)
            if reply is not None:
                ctx.status = reply.status
                client.write(reply.encode(request.keep_alive, ctx.response_headers, head=request.method == "HEAD"))
            elif ctx.upstream is None:
                ctx.status = 502
                client.write(problem(502, f"route {route.name!r} has no upstream").encode(request.keep_alive))
            else:
                keep = await proxy(client, ctx, ctx.upstream, stream)
        except Exception as exc:
            log.exception("gateway request failed", route=route.ref)
            ctx.status, ctx.error = 500, str(exc)
            client.write(problem(500, "the gateway failed on this request").encode(False))
            keep = False
        for hook in route.chain.log:
            try:
                hook(ctx)
            except Exception:
                log.exception("gateway log phase failed", route=route.ref)
        return keep


def _signature(balancer: Balancer) -> str:
    return orjson.dumps([balancer.spec.health_check.model_dump(mode="json"), [n.key for n in balancer.nodes]]).decode()


def reply_for(ctx: Ctx, reply: Reply) -> Reply:
    return reply


__all__ = ["Gateway", "GlobalRuleSpec", "RouteSpec", "Snapshot"]

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
import hashlib
import ssl
import time
from typing import Any

import orjson
import structlog

from mezzo.gateway.client import Limits
from mezzo.gateway.http import Reply, Request, problem
from mezzo.gateway.model import ConsumerSpec, UpstreamSpec, UpstreamTls
from mezzo.gateway.plugins import Chain, Ctx, Plugin, instantiate
from mezzo.gateway.proxy import proxy, start_fast
from mezzo.gateway.router import CompiledRoute, Router, compile_route
from mezzo.gateway.tls import upstream_context
from mezzo.gateway.upstream import IDLE_TIMEOUT, Balancer, NodeState, run_active_checks
from mezzo.resilience.policies import PolicyRegistry

log = structlog.get_logger("mezzo.gateway")


class Consumer:
    __slots__ = ("name", "namespace", "ref", "spec")

    def __init__(self, namespace: str, name: str, spec: ConsumerSpec) -> None:
        self.ref, self.namespace, self.name, self.spec = f"{namespace}/{name}", namespace, name, spec


CREDENTIAL_IDS = {"key-auth": ("key",), "basic-auth": ("username",), "jwt-auth": ("key",),
                  "hmac-auth": ("keyId", "key_id", "accessKey", "access_key")}


def credential_id(plugin: str, cred: dict[str, Any]) -> str:
    """What identifies a credential of ``plugin`` ("" when it has none: never the consumer's name)."""
    for name in CREDENTIAL_IDS.get(plugin, ("key",)):
        value = cred.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


class Snapshot:
    def __init__(self, router: Router, upstreams: dict[str, Balancer], consumers: dict[str, Consumer],
                 credentials: dict[tuple[str, str, str], Consumer], revision: int) -> None:
        self.router = router
        self.upstreams = upstreams
        self.consumers = consumers
        self.credentials = credentials  # (namespace, auth plugin, credential id) -> consumer
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
        self._tls_contexts: dict[str, ssl.SSLContext] = {}  # upstream TLS settings' key -> their context
        self._checks: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._rebuild: asyncio.Handle | None = None
        self.revision = 0
        self.rebuilt = asyncio.Event()
        self.on_certificates: Any = None  # called with the Certificate items when they change
        self.tracing: Any = None  # the node's Tracing service, for the opentelemetry plugin (set by the module)
        self._certificates_changed = False
        self.broken: dict[str, str] = {}  # "Kind/namespace/name" -> why it failed to build (left out)
        # what keeps the whole configuration from building ("GlobalRule/namespace/name" -> why): while
        # it is there, the previous snapshot serves and no change applies; empty once a build succeeds
        self.stuck: dict[str, str] = {}
        self.seen: dict[str, int] = {}  # "Kind/namespace/name" -> revision of its latest event here
        self.policies: PolicyRegistry | None = None  # Resiliency policies for upstreams (see use_policies)
        self._unsubscribe: Any = None

    # configuration ------------------------------------------------------------------------

    def changed(self, kind: str, event: str, namespace: str, name: str, spec: Any, revision: int) -> None:
        ref = f"{namespace}/{name}"
        self.seen[f"{kind}/{ref}"] = revision
        if kind == "Certificate":
            self._certificates_changed = True
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
        except GlobalRuleError as exc:  # a global plugin left out could open every route: keep the old
            self.stuck = exc.failed
            for ref, reason in exc.failed.items():
                log.error("gateway configuration failed to build; keeping the previous one", resource=ref,
                          reason=reason, revision=self.revision,
                          hint="no gateway change applies until this global rule is fixed or deleted")
            return
        except Exception as exc:
            self.stuck = {"configuration": _reason(exc)}
            log.exception("gateway configuration failed to build; keeping the previous one", revision=self.revision)
            return
        self.stuck = {}
        self.rebuilt.set()
        self.rebuilt = asyncio.Event()
        log.debug("gateway configuration applied", revision=self.revision,
                  routes=len(self.items["Route"]), ms=round((time.perf_counter() - started) * 1000, 2))
        if self._certificates_changed and self.on_certificates is not None:
            self._certificates_changed = False
            try:
                self.on_certificates(self.items["Certificate"])
            except Exception:
                log.exception("gateway certificates failed to load; keeping the previous ones")

    def build(self) -> Snapshot:
        used: set[str] = set()
        global_plugins: list[Plugin] = []
        failed: dict[str, str] = {}
        for ref, (_, _, spec) in sorted(self.items["GlobalRule"].items()):
            try:
                global_plugins += self._instances(f"global/{ref}", spec.plugins, used)
            except Exception as exc:
                failed[f"GlobalRule/{ref}"] = _reason(exc)
        if failed:
            raise GlobalRuleError(failed)
        upstreams: dict[str, Balancer] = {}
        live_nodes: set[tuple[str, str]] = set()
        broken: dict[str, str] = {}
        for ref, (_, _, spec) in self.items["Upstream"].items():
            try:
                upstreams[ref] = self._balancer(ref, spec, live_nodes)
            except Exception as exc:
                broken[f"Upstream/{ref}"] = _reason(exc)
        for node_key in list(self._nodes):
            if node_key not in live_nodes:
                self._nodes.pop(node_key).close()
        in_use = {id(node.ssl) for node in self._nodes.values()}
        self._tls_contexts = {k: c for k, c in self._tls_contexts.items() if id(c) in in_use}
        consumers: dict[str, Consumer] = {}
        credentials: dict[tuple[str, str, str], Consumer] = {}
        ambiguous: set[tuple[str, str, str]] = set()
        for ref, (namespace, name, spec) in self.items["Consumer"].items():
            try:
                consumer = Consumer(namespace, name, spec)
                idents = [(plugin, credential_id(plugin, cred)) for plugin, cred in spec.credentials.items()]
            except Exception as exc:
                broken[f"Consumer/{ref}"] = _reason(exc)
                continue
            consumers[ref] = consumer
            for plugin, ident in idents:
                if not ident:
                    continue  # no id, no way in
                key = (namespace, plugin, ident)
                if key in credentials:
                    # two consumers with one key: neither may be told from the other, so neither gets in
                    log.error("gateway: two consumers share a credential; both refused", plugin=plugin,
                              consumers=[credentials[key].ref, ref])
                    ambiguous.add(key)
                credentials[key] = consumer
        for key in ambiguous:
            del credentials[key]
        routes: list[CompiledRoute] = []
        for ref, (namespace, name, spec) in self.items["Route"].items():
            upstream = upstreams.get(f"{namespace}/{spec.upstream}") if spec.upstream else None
            try:
                route = compile_route(namespace, name, spec)
                plugins = list(global_plugins) + self._instances(f"route/{ref}", spec.plugins, used)
                if upstream is not None and upstream.spec.plugins:
                    plugins += self._instances(f"upstream/{namespace}/{spec.upstream}", upstream.spec.plugins, used)
            except Exception as exc:  # this route is left out (404), the others still change
                broken[f"Route/{ref}"] = _reason(exc)
                continue
            plugins.sort(key=lambda p: p.priority, reverse=True)
            route.chain = Chain(plugins)
            route.body_filters = tuple(p.body_filter for p in plugins if hasattr(p, "body_filter"))
            route.lean = not route.chain.header_filter and not route.body_filters
            route.async_chain = any(is_async for _, is_async in (*route.chain.rewrite, *route.chain.access))
            route.upstream = upstream
            route.direct = upstream is not None and spec.status == "published" and not route.async_chain \
                and not route.chain.rewrite and not route.chain.access
            routes.append(route)
        for key in list(self._plugins):
            if key not in used:
                self._plugins.pop(key).close()
        self._sync_checks(upstreams)
        for ref in broken.keys() - self.broken.keys():
            log.error("gateway resource failed to build: left out of service", resource=ref, reason=broken[ref])
        self.broken = broken
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
        tls, tls_key = self._upstream_tls(ref, spec)
        sni = (spec.tls.sni if spec.tls is not None else None) or (
            spec.upstream_host if spec.pass_host == "rewrite" else None)
        nodes = []
        for host, port, weight, zone in wanted:
            name = (sni or host) if tls is not None else None
            # other TLS settings or another server name: a new node, a new pool
            key = (ref, f"{host}:{port}{tls_key}@{name}" if tls is not None else f"{host}:{port}")
            node = self._nodes.get(key)
            if node is None:
                node = self._nodes[key] = NodeState(host, port, weight, zone, spec.keepalive)
                node.ssl, node.server_hostname = tls, name
            node.weight, node.zone, node.keepalive = weight, zone, spec.keepalive
            live.add(key)
            nodes.append(node)
        policy = None
        if self.policies is not None:  # resolved here, once per build: requests never look it up
            namespace, name = ref.split("/", 1)
            policy = self.policies.policy_for("upstreams", name, namespace)
        return Balancer(ref, spec, nodes, policy)

    def _upstream_tls(self, ref: str, spec: UpstreamSpec) -> tuple[ssl.SSLContext | None, str]:
        """The SSL context of an https upstream (shared by every upstream with the same settings) and a
        key that changes with them (and with its client certificate's PEMs); (None, "") for http."""
        if spec.scheme != "https":
            return None, ""
        tls = spec.tls or UpstreamTls()
        client = None
        if tls.client_certificate is not None:
            found = self.items["Certificate"].get(f"{ref.split('/', 1)[0]}/{tls.client_certificate}")
            if found is None:
                raise ValueError(f"tls.clientCertificate: no Certificate {tls.client_certificate!r} in its namespace")
            client = (found[2].cert, found[2].key)
        signature = orjson.dumps([tls.model_dump(mode="json"), client], option=orjson.OPT_SORT_KEYS)
        key = "#tls:" + hashlib.sha256(signature).hexdigest()[:16]
        context = self._tls_contexts.get(key)
        if context is None:
            context = self._tls_contexts[key] = upstream_context(tls.verify, tls.ca, client)
        return context, key

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

    def covers(self, revisions: dict[str, int]) -> bool:
        """Is every resource (``"Kind/namespace/name"`` -> revision) served at that revision or later?
        One apply writes all its resources at one revision but each kind has its own watch, so the
        snapshot's revision alone does not tell that every kind's event has arrived. Other kinds
        (a Topic applied in the same manifest) are not the gateway's and are left out."""
        mine = {ref: rev for ref, rev in revisions.items() if ref.split("/", 1)[0] in self.items}
        return self._rebuild is None and all(self.seen.get(ref, 0) >= rev for ref, rev in mine.items()) \
            and self.snapshot.revision >= max(mine.values(), default=0)

    def registry_changed(self) -> None:
        """The registry's instances moved: rebuild so service-backed upstreams get the new nodes."""
        if any(spec.service for _, _, spec in self.items["Upstream"].values()) and self._rebuild is None:
            self._rebuild = asyncio.get_running_loop().call_soon(self._apply)

    def use_policies(self, registry: PolicyRegistry) -> None:
        """Apply the Resiliency policies that target upstreams, and follow their changes."""
        self.policies = registry
        self._unsubscribe = registry.subscribe(self.policies_changed)
        if self.items["Upstream"]:  # at once: no request meets an upstream without its policy
            if self._rebuild is not None:
                self._rebuild.cancel()
            self._apply()

    def policies_changed(self, namespace: str) -> None:
        """A Resiliency changed in ``namespace``: rebuild so that namespace's upstreams get their policies."""
        prefix = f"{namespace}/"
        if self._rebuild is None and any(ref.startswith(prefix) for ref in self.items["Upstream"]):
            self._rebuild = asyncio.get_running_loop().call_soon(self._apply)

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for _, task in self._checks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for plugin in self._plugins.values():
            plugin.close()
        for node in self._nodes.values():
            node.close()

    # serving ------------------------------------------------------------------------------

    def serve(self, client: Any, request: Request, stream: Any) -> None:
        """Answer one request: match, run the plugins' request phases, proxy, run the log phase.

        Synchronous as far as it can go: sync plugins, then a pooled upstream connection, take no task;
        an async plugin, a new upstream connection or a streamed body continue in one. Every way
        ends in ``complete``, which tells the client connection."""
        found = self.snapshot.router.match(request)
        if found is None:
            client.answer(problem(404, f"no route matches {request.method} {request.path}"), request)
            client.finished(not request.upgrade)
            return
        route = found[0]
        ctx = Ctx(request, self, time.monotonic(), route, found[1])
        if route.direct and stream is None and not request.upgrade:  # the common case, in fewest steps
            started, first = start_fast(client, ctx, route.upstream)
            if not started:
                self.resume(client, ctx, proxy(client, ctx, route.upstream, None, first=first))
            return
        status = route.spec.status
        if status != "published":
            if status != "deprecated":
                gone = problem(410, f"this API is retired: {route.spec.api or route.name}") if status == "retired" \
                    else problem(404, f"no route matches {request.method} {request.path}")
                client.answer(gone, request)
                client.finished(not request.upgrade)
                return
            ctx.response_headers.append((b"deprecation", b"true"))
        if route.async_chain:
            self.resume(client, ctx, self._serve_async(client, ctx, stream))
            return
        try:
            reply: Reply | None = None
            chain = route.chain
            for call, _ in chain.rewrite:
                reply = call(ctx)
                if reply is not None:
                    break
            else:
                for call, _ in chain.access:
                    reply = call(ctx)
                    if reply is not None:
                        break
            keep = self._answer_without_upstream(client, ctx, reply)
            if keep is None:
                first = None
                if stream is None and not request.upgrade:
                    started, first = start_fast(client, ctx, ctx.upstream)
                    if started:
                        return  # the exchange's end completes the request
                self.resume(client, ctx, proxy(client, ctx, ctx.upstream, stream, first=first))
                return
        except Exception as exc:
            keep = self._failed(client, ctx, exc)
        self.complete(client, ctx, keep)

    async def _serve_async(self, client: Any, ctx: Ctx, stream: Any) -> bool:
        chain = ctx.route.chain
        reply = None
        for phase in (chain.rewrite, chain.access):
            for call, is_async in phase:
                reply = call(ctx)
                if is_async:
                    reply = await reply
                if reply is not None:
                    break
            if reply is not None:
                break
        keep = self._answer_without_upstream(client, ctx, reply)
        if keep is None:
            keep = await proxy(client, ctx, ctx.upstream, stream)
        return keep

    def _answer_without_upstream(self, client: Any, ctx: Ctx, reply: Reply | None) -> bool | None:
        """Answer a plugin's reply or a request the route cannot proxy; None: go upstream."""
        request = ctx.request
        route = ctx.route
        if reply is not None:
            ctx.status = reply.status
            client.answer(reply, request, ctx.response_headers)
            return not request.upgrade
        if request.upgrade and not route.spec.enable_websocket:
            ctx.status = 400
            client.answer(problem(400, f"route {route.name!r} does not take websocket upgrades"), request)
            return False
        if ctx.upstream is None:
            ctx.status = 502
            client.answer(problem(502, self._no_upstream(route)), request)
            return not request.upgrade
        return None

    def _no_upstream(self, route: CompiledRoute) -> str:
        """Why a route has no upstream to proxy to: its upstream is missing, or out of service."""
        name = route.spec.upstream
        if name is None:
            return f"route {route.name!r} has no upstream"
        if f"Upstream/{route.namespace}/{name}" in self.broken:  # its reason is in the log and /readyz
            return f"upstream {name!r} in namespace {route.namespace!r} is out of service: it failed to build"
        return f"upstream {name!r} does not exist in namespace {route.namespace!r}"

    def resume(self, client: Any, ctx: Ctx, work: Any) -> None:
        """Finish the request in a task: ``work`` is a coroutine that answers it and says whether to keep."""
        asyncio.get_running_loop().create_task(self._finish_async(client, ctx, work))

    async def _finish_async(self, client: Any, ctx: Ctx, work: Any) -> None:
        try:
            keep = await work
        except Exception as exc:
            keep = self._failed(client, ctx, exc)
        self.complete(client, ctx, keep)

    def _failed(self, client: Any, ctx: Ctx, exc: Exception) -> bool:
        log.exception("gateway request failed", route=ctx.route.ref if ctx.route else None)
        ctx.status, ctx.error = 500, str(exc)
        client.write(problem(500, "the gateway failed on this request").encode(False))
        return False

    def complete(self, client: Any, ctx: Ctx, keep: bool) -> None:
        """The request is answered: run the log phase, then let the connection go on."""
        for hook in ctx.route.chain.log:
            try:
                hook(ctx)
            except Exception:
                log.exception("gateway log phase failed", route=ctx.route.ref)
        client.finished(keep)

    def expire_idle(self) -> None:
        """Close pooled upstream connections idle for longer than IDLE_TIMEOUT."""
        before = time.monotonic() - IDLE_TIMEOUT
        for balancer in self.snapshot.upstreams.values():
            balancer.expire(before)


def _signature(balancer: Balancer) -> str:
    # the nodes themselves: a node made anew (other TLS settings) is probed anew
    return orjson.dumps([balancer.spec.health_check.model_dump(mode="json"),
                         [f"{n.key}@{id(n)}" for n in balancer.nodes]]).decode()


class GlobalRuleError(Exception):
    """Global rules whose plugins failed to build (``"GlobalRule/namespace/name"`` -> why): the whole
    configuration is kept as it was, since leaving a global plugin out could open every route."""

    def __init__(self, failed: dict[str, str]) -> None:
        super().__init__("; ".join(f"{ref}: {reason}" for ref, reason in failed.items()))
        self.failed = failed


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"

"""``client.registry``: register instances, keep them alive, find and watch a service's instances,
and ``registered(app, ...)``: an ASGI app registered while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx

from mezzo.registry.model import Check, Instance, instance_id
from mezzo.sdk.errors import APIError, ConnectError, NotFound

if TYPE_CHECKING:
    from mezzo.sdk.client import Mezzo

log = logging.getLogger("mezzo.sdk.registry")
DEFAULT = "default"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _path(service: str, instance: str | None = None, verb: str = "") -> str:
    path = f"/v1/registry/services/{quote(service, safe='')}/instances"
    if instance is not None:
        path += "/" + quote(instance, safe=":@")
    return path + (f":{verb}" if verb else "")


class RegistryClient:
    def __init__(self, client: Mezzo) -> None:
        self._client = client

    async def register(
        self, service: str, *, host: str, port: int, id: str | None = None, ttl: float | str | None = None,
        check: Check | dict[str, Any] | None = None, weight: float = 1.0, zone: str = "", version: str = "",
        tags: list[str] | None = None, metadata: dict[str, str] | None = None, namespace: str = DEFAULT,
    ) -> Instance:
        """Register (or replace) an instance; ``id`` defaults to ``host:port``. With ``ttl`` it is
        removed unless ``heartbeat`` is called within it (``registration`` does that for you).
        ``check``: ``{"http": "/health"}`` or ``{"tcp": True}``, with ``interval``, ``timeout``,
        ``failures``, ``successes``, ``deregisterAfter``."""
        body: dict[str, Any] = {"host": host, "port": port, "weight": weight, "zone": zone, "version": version,
                                "tags": tags or [], "metadata": metadata or {}}
        if id is not None:
            body["id"] = id
        if ttl is not None:
            body["ttl"] = ttl
        if check is not None:
            body["check"] = check.out() if isinstance(check, Check) else check
        data = await self._client.request("PUT", _path(service), json=body, params={"namespace": namespace})
        return Instance.model_validate(data)

    async def heartbeat(self, service: str, id: str, *, namespace: str = DEFAULT) -> datetime | None:
        """Renew the instance's TTL; its new expiry. Raises NotFound when the registry no longer
        has it (it lapsed): register it again."""
        data = await self._client.request("POST", _path(service, id, "heartbeat"), params={"namespace": namespace})
        return datetime.fromisoformat(data["expiresAt"]) if data.get("expiresAt") else None

    async def deregister(self, service: str, id: str, *, namespace: str = DEFAULT, missing_ok: bool = True) -> bool:
        """Remove the instance; False when it was not registered (NotFound unless ``missing_ok``)."""
        try:
            await self._client.request("DELETE", _path(service, id), params={"namespace": namespace})
        except NotFound:
            if not missing_ok:
                raise
            return False
        return True

    async def instance(self, service: str, id: str, *, namespace: str = DEFAULT) -> Instance:
        return Instance.model_validate(
            await self._client.request("GET", _path(service, id), params={"namespace": namespace}))

    async def instances(self, service: str, *, healthy: bool = False, zone: str | None = None,
                        tag: str | None = None, namespace: str = DEFAULT) -> list[Instance]:
        """The service's instances; ``healthy=True``: only those passing with a live TTL."""
        data = await self._client.request("GET", _path(service), params=_filters(namespace, healthy, zone, tag))
        return [Instance.model_validate(i) for i in data["instances"]]

    async def services(self, *, namespace: str = DEFAULT) -> list[dict[str, Any]]:
        """``[{"name", "instances", "passing", "critical", "index"}]`` for every service with instances."""
        return (await self._client.request("GET", "/v1/registry/services",  # type: ignore[no-any-return]
                                           params={"namespace": namespace}))["items"]

    async def watch(self, service: str, *, healthy: bool = False, zone: str | None = None, tag: str | None = None,
                    namespace: str = DEFAULT, wait: float = 30.0,
                    reconnect_delay: float = 1.0) -> AsyncIterator[list[Instance]]:
        """The service's instances now, then again after every change, for as long as you iterate
        (blocking queries: each request waits up to ``wait`` seconds for a change). Rides out
        server restarts and lost connections; raises on errors of the request itself (403, 400)."""
        from mezzo.sdk.client import decode

        index = 0
        params = {k: v for k, v in _filters(namespace, healthy, zone, tag).items() if v is not None}
        while True:
            try:
                response = await self._client._http.get(
                    _path(service), params={**params, "index": index, "wait": f"{wait:g}s"},
                    timeout=httpx.Timeout(wait + 15, connect=5.0))
                data = decode(response)
            except (httpx.TransportError, APIError) as exc:
                if isinstance(exc, APIError) and exc.status < 500:
                    raise
                await asyncio.sleep(reconnect_delay)
                continue
            if data["index"] != index:
                index = data["index"]  # a smaller one (another registry) starts over from it
                yield [Instance.model_validate(i) for i in data["instances"]]

    def registration(self, service: str, *, port: int, host: str | None = None, ttl: float = 10.0,
                     namespace: str = DEFAULT, **options: Any) -> Registration:
        """Keep an instance registered while ``async with`` runs: register on enter, heartbeat every
        third of ``ttl`` (registering again if the registry lost it), deregister on exit. ``host``
        defaults to this machine's address on the route to Mezzo. Options as for ``register``."""
        return Registration(self, service, port=port, host=host, ttl=ttl, namespace=namespace, options=options)


def _filters(namespace: str, healthy: bool, zone: str | None, tag: str | None) -> dict[str, Any]:
    return {"namespace": namespace, "healthy": "true" if healthy else None, "zone": zone, "tag": tag}


def local_address(url: str) -> str:
    """This machine's address on the route to ``url``: what the registry (and the gateway next
    to it) can reach back. No packet is sent."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    try:
        family = socket.getaddrinfo(host, parts.port or 80, type=socket.SOCK_DGRAM)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, parts.port or 80))
            return str(sock.getsockname()[0])
    except OSError:
        return "127.0.0.1"


class Registration:
    """One instance kept registered (see ``RegistryClient.registration``)."""

    def __init__(self, api: RegistryClient, service: str, *, port: int, host: str | None, ttl: float,
                 namespace: str, options: dict[str, Any]) -> None:
        self._api = api
        self.service, self.port, self.host, self.ttl, self.namespace = service, port, host, ttl, namespace
        self.options = options
        self.instance: Instance | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        assert self.host is not None, "not started"
        if self.instance is not None:  # the registry's own (it normalises, e.g. lowercases hosts)
            return self.instance.id
        return self.options.get("id") or instance_id(self.host, self.port)

    async def start(self) -> Instance:
        if self.host is None:
            self.host = await asyncio.to_thread(local_address, self._api._client.url)
        await self._register()
        self._task = asyncio.create_task(self._beat(), name=f"mezzo-registration-{self.service}")
        return self.instance  # type: ignore[return-value]

    async def stop(self) -> None:
        """Stop the heartbeats and deregister (best effort: a TTL removes it anyway)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.instance is not None:
            try:
                await self._api.deregister(self.service, self.instance.id, namespace=self.namespace)
            except (ConnectError, APIError) as exc:
                log.warning("deregistering %s/%s failed: %s", self.service, self.instance.id, exc)
            self.instance = None

    async def _register(self) -> None:
        self.instance = await self._api.register(self.service, host=self.host, port=self.port,  # type: ignore[arg-type]
                                                 ttl=self.ttl, namespace=self.namespace, **self.options)

    async def _beat(self) -> None:
        interval = self.ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._api.heartbeat(self.service, self.id, namespace=self.namespace)
                interval = self.ttl / 3
            except NotFound:  # it lapsed (a pause longer than the TTL, or the registry lost it)
                with contextlib.suppress(ConnectError, APIError):
                    await self._register()
            except (ConnectError, APIError) as exc:
                log.warning("heartbeat for %s/%s failed: %s", self.service, self.id, exc)
                interval = min(self.ttl / 3, 1.0)  # try again soon: the TTL is running

    async def __aenter__(self) -> Registration:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def registered(app: ASGIApp, *, service: str, port: int, host: str | None = None, ttl: float = 10.0,
               client: Mezzo | None = None, namespace: str = DEFAULT, **options: Any) -> ASGIApp:
    """Wrap an ASGI app so it is registered while it runs: after its own startup completes it is
    registered (and kept alive by heartbeats); on shutdown it is deregistered before the app's
    own shutdown runs, so traffic stops first. ``client`` defaults to ``Mezzo()`` from the
    environment (``MEZZO_URL``, ``MEZZO_TOKEN``). Options as for ``RegistryClient.register``::

        app = registered(FastAPI(), service="orders", port=8000, ttl=10,
                         check={"http": "/healthz", "interval": "5s"})
    """
    return _Registered(app, dict(service=service, port=port, host=host, ttl=ttl, namespace=namespace, **options),
                       client)


class _Registered:
    def __init__(self, app: ASGIApp, settings: dict[str, Any], client: Mezzo | None) -> None:
        self.app = app
        self.settings = settings
        self.client = client
        self.registration: Registration | None = None
        self._own_client: Mezzo | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        received = False

        async def receive_wrapped() -> Message:
            nonlocal received
            received = True
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self._stop()
            return message

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self._start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": f"registering failed: {exc}"})
                    return
            await send(message)

        try:
            await self.app(scope, receive_wrapped, send_wrapped)
        except Exception:
            if received:
                raise
            await self._own_lifespan(receive, send)  # the app does not speak lifespan: do it for it

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": f"registering failed: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self) -> None:
        client = self.client
        if client is None:
            from mezzo.sdk.client import Mezzo

            client = self._own_client = Mezzo()
        self.registration = client.registry.registration(**self.settings)
        await self.registration.start()

    async def _stop(self) -> None:
        if self.registration is not None:
            await self.registration.stop()
            self.registration = None
        if self._own_client is not None:
            await self._own_client.aclose()
            self._own_client = None

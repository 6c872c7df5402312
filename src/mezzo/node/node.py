"""A Mezzo node: starts its modules in dependency order, serves, drains and stops in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from mezzo.node.graph import MODULES, resolve
from mezzo.node.module import Health, Module
from mezzo.node.settings import Settings

T = TypeVar("T")
log = structlog.get_logger("mezzo.node")


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.order = resolve(settings.targets)
        self.modules: dict[str, Module] = {}
        self.listeners: list[Any] = []
        self._closing: list[Any] = []
        self._services: dict[type, object] = {}
        self._stopping = asyncio.Event()
        self.started = False

    # services modules share ------------------------------------------------------

    def provide(self, kind: type[T], service: T) -> None:
        self._services[kind] = service

    def service(self, kind: type[T]) -> T:
        try:
            return self._services[kind]  # type: ignore[return-value]
        except KeyError:
            raise LookupError(f"{kind.__name__} is not running on this node") from None

    def has(self, kind: type) -> bool:
        return kind in self._services

    # lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        try:
            for name in self.order:
                module = MODULES[name].cls(self)
                await module.start()
                self.modules[name] = module
                log.debug("module started", module=name)
            for module in self.modules.values():
                for listener in module.listeners():
                    await listener.start()
                    self.listeners.append(listener)
        except BaseException:
            await self.stop()
            raise
        self.started = True
        log.info("node started", modules=self.order, listeners={x.name: x.url for x in self.listeners})

    async def stop(self) -> None:
        """Stop accepting, drain in-flight work, then stop modules in reverse order."""
        self.started = False
        self._stopping.set()
        listeners, self.listeners = self.listeners, []
        self._closing = listeners  # what a second stop signal cuts
        # the node's own collectors close last: the requests drained first leave spans it sends itself
        last = [x for x in listeners if getattr(x, "closes_last", False)]
        await asyncio.gather(*(x.close() for x in reversed(listeners) if x not in last), return_exceptions=True)
        for name in reversed(list(self.modules)):
            try:
                await self.modules[name].quiesce()
            except Exception:
                log.exception("module failed to quiesce", module=name)
        await asyncio.gather(*(x.close() for x in last), return_exceptions=True)
        for name in reversed(list(self.modules)):
            try:
                await self.modules[name].stop()
            except Exception:
                log.exception("module failed to stop", module=name)
        self.modules.clear()
        log.info("node stopped")

    async def health(self) -> dict[str, Health]:
        async def check(module: Module) -> Health:
            try:
                return await asyncio.wait_for(module.health(), 5)
            except Exception as exc:
                return Health(False, f"{type(exc).__name__}: {exc}")

        names = list(self.modules)
        results = await asyncio.gather(*(check(self.modules[n]) for n in names))
        return dict(zip(names, results, strict=True))

    def url(self, listener: str) -> str | None:
        return next((x.url for x in self.listeners if x.name == listener), None)

    async def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Start, wait for SIGTERM/SIGINT (or ``request_stop``), then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        self._stopping.clear()
        await self.start()
        if on_started is not None:
            on_started()
        await self._stopping.wait()
        await self.stop()

    @property
    def stopping(self) -> asyncio.Event:
        """Set when shutdown begins: long-lived streams end themselves so the drain is quick."""
        return self._stopping

    def request_stop(self) -> None:
        """First signal: graceful stop. Second signal: stop waiting for in-flight work."""
        if self._stopping.is_set():
            log.warning("second stop signal: cutting in-flight work")
            for listener in self.listeners or self._closing:
                listener.force()
        self._stopping.set()

"""Blocking access to the async SDK: one private event loop on a thread, every call forwarded to it."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mezzo-sdk", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _iterate(runner: _Loop, stream: AsyncIterator[Any]) -> Iterator[Any]:
    try:
        while True:
            try:
                yield runner.run(stream.__anext__())
            except StopAsyncIteration:
                return
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            runner.run(aclose())


class _Proxy:
    def __init__(self, target: Any, runner: _Loop) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if inspect.iscoroutinefunction(value):
            return lambda *a, **kw: self._runner.run(value(*a, **kw))
        if inspect.isasyncgenfunction(value):
            return lambda *a, **kw: _iterate(self._runner, value(*a, **kw))
        if callable(value) or isinstance(value, str | int | float | bool | type(None) | dict | list):
            return value
        return _Proxy(value, self._runner)  # a sub-client


class SyncProxy(_Proxy):
    def __init__(self, factory: Callable[[], Any]) -> None:
        runner = _Loop()

        async def make() -> Any:
            return factory()

        super().__init__(runner.run(make()), runner)

    def close(self) -> None:
        if self._runner.thread.is_alive():
            try:
                self._runner.run(self._target.aclose())
            finally:
                self._runner.stop()

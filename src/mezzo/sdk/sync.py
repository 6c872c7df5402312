"""Blocking access to the async SDK: one private event loop on a thread, every call forwarded to it."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from pydantic import BaseModel


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


_PLAIN = (str, bytes, int, float, bool, type(None), dict, tuple, BaseModel)


def _is_async(value: Any) -> bool:
    """An object whose interface is coroutines (a sub-client, a subscription, a message)."""
    kind = type(value)
    return hasattr(kind, "__aiter__") or hasattr(kind, "__aenter__") or any(
        inspect.iscoroutinefunction(getattr(kind, name, None)) for name in dir(kind) if not name.startswith("__"))


def _wrap(value: Any, runner: _Loop) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list):
        return [_wrap(v, runner) for v in value]
    return _Proxy(value, runner) if _is_async(value) else value


class _Proxy:
    def __init__(self, target: Any, runner: _Loop) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if inspect.iscoroutinefunction(value):
            return lambda *a, **kw: _wrap(self._runner.run(value(*a, **kw)), self._runner)
        if inspect.isasyncgenfunction(value):
            return lambda *a, **kw: (_wrap(v, self._runner) for v in _iterate(self._runner, value(*a, **kw)))
        if callable(value):
            return lambda *a, **kw: _wrap(value(*a, **kw), self._runner)
        return _wrap(value, self._runner)

    def __iter__(self) -> Iterator[Any]:
        for item in _iterate(self._runner, self._target.__aiter__()):
            yield _wrap(item, self._runner)

    def __enter__(self) -> Any:
        return _wrap(self._runner.run(self._target.__aenter__()), self._runner)

    def __exit__(self, *exc: Any) -> None:
        self._runner.run(self._target.__aexit__(*exc))


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

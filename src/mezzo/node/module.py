"""What every module of a node looks like: start, stop, health, and what it adds to the node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from fastapi import APIRouter

    from mezzo.node.node import Node
    from mezzo.resources.kinds import KindSpec


@dataclass(slots=True)
class Health:
    ok: bool
    detail: str = ""


class Listener(Protocol):
    """A socket a module serves once every module has started (closed first at shutdown).

    A listener with a true ``closes_last`` attribute (the node's own trace collector) closes after
    the others and after every module's ``quiesce``.
    """

    name: str  # e.g. "api"
    url: str

    async def start(self) -> None:
        """Begin accepting connections."""

    async def close(self) -> None:
        """Stop accepting, let in-flight work finish up to the drain timeout, then cut it."""

    def force(self) -> None:
        """Cut in-flight work now (a second stop signal)."""


class Module:
    """Base class for modules. Subclasses set ``name`` and override what they need."""

    name: ClassVar[str]
    kinds: ClassVar[tuple[KindSpec, ...]] = ()

    def __init__(self, node: Node) -> None:
        self.node = node

    async def start(self) -> None:
        """Acquire resources; other modules this one depends on have started."""

    async def stop(self) -> None:
        """Release resources; modules that depend on this one have stopped."""

    async def quiesce(self) -> None:
        """At stop, once the listeners other than ``closes_last`` ones have drained: send what the
        node sends to itself (its own spans) while its collectors still listen."""

    async def health(self) -> Health:
        return Health(True)

    def routers(self) -> list[APIRouter]:
        """HTTP routes this module adds to the API."""
        return []

    def api_front(self, app: Any, api: Any) -> Any:
        """An ASGI app answering some API requests itself, in front of ``app`` (``api``: the FastAPI
        app); ``app`` when the module has none."""
        return app

    def listeners(self) -> list[Listener]:
        """Sockets this module serves on its own ports."""
        return []

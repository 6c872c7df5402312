"""Mezzo: a cloud-native middleware platform in one Python runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Mezzo", "MezzoSync", "__version__"]

if TYPE_CHECKING:
    from mezzo.sdk.client import Mezzo, MezzoSync


def __getattr__(name: str) -> Any:
    # The SDK is imported on first use so that the server and tools do not pay for it.
    if name in ("Mezzo", "MezzoSync"):
        from mezzo.sdk import client

        return getattr(client, name)
    raise AttributeError(f"module 'mezzo' has no attribute {name!r}")

"""How a message is stored: a small JSON header (content type, tags, attributes, times) then the raw data."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

_LEN = struct.Struct("<I")


@dataclass(slots=True)
class Envelope:
    id: str
    data: bytes
    content_type: str | None = None
    key: str | None = None
    tags: list[str] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)
    published_ms: int = 0
    expires_ms: int | None = None

    def encode(self) -> bytes:
        meta: dict[str, Any] = {"id": self.id, "pub": self.published_ms}
        if self.content_type:
            meta["ct"] = self.content_type
        if self.key is not None:
            meta["key"] = self.key
        if self.tags:
            meta["tags"] = self.tags
        if self.attributes:
            meta["attrs"] = self.attributes
        if self.expires_ms is not None:
            meta["exp"] = self.expires_ms
        head = orjson.dumps(meta)
        return _LEN.pack(len(head)) + head + self.data

    @classmethod
    def decode(cls, payload: bytes) -> Envelope:
        (size,) = _LEN.unpack_from(payload, 0)
        meta = orjson.loads(payload[4 : 4 + size])
        return cls(
            id=meta["id"], data=payload[4 + size :], content_type=meta.get("ct"), key=meta.get("key"),
            tags=meta.get("tags", []), attributes=meta.get("attrs", {}),
            published_ms=meta.get("pub", 0), expires_ms=meta.get("exp"),
        )


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    base = content_type.split(";")[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


def data_fields(data: bytes, content_type: str | None) -> dict[str, Any]:
    """``data`` as JSON when the content type says so, as text when it is UTF-8, else ``dataBase64``."""
    if is_json(content_type):
        try:
            return {"data": orjson.loads(data) if data else None}
        except orjson.JSONDecodeError:
            pass
    try:
        return {"data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"dataBase64": base64.b64encode(data).decode()}

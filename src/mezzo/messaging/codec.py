"""How a message is encoded: stored as an envelope (a small JSON header, then the raw data), and
carried in binary frames on the wire (publish bodies, pull responses, WebSocket messages).

Frames (content type ``application/vnd.mezzo.frames``; integers little-endian) let producers and
consumers move raw bytes without JSON or base64 per message:

- a *publish frame* is ``u32 head length | head | u32 data length | data``; the head is empty or
  a JSON object of the JSON API's message options (``id``, ``key``, ``tags``, ``attributes``,
  ``contentType``, ``delay``, ``deliverAt``, ``ttl``); without ``contentType`` the data is
  ``application/octet-stream``.
- a *delivery frame* is ``u32 partition | u64 offset | u32 attempt | u16 receipt length |
  u32 envelope length | receipt (ASCII) | envelope``, and the envelope is the stored one:
  ``u32 header length | header | data`` where the header is a JSON object with ``id``, ``pub``
  (publish time, ms since the epoch) and, when set, ``ct`` (content type), ``key``, ``tags``,
  ``attrs`` and ``exp`` (expiry, ms).

A request or response body is its frames back to back; an empty body is no messages.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

FRAMES = "application/vnd.mezzo.frames"
_LEN = struct.Struct("<I")
DELIVERY_HEAD = struct.Struct("<IQIHI")  # partition, offset, attempt, receipt length, envelope length


class FrameError(ValueError):
    """A frames body that does not parse; ``index`` is the frame at fault."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"frame {index}: {reason}")
        self.index = index


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
        return cls.from_meta(orjson.loads(payload[4 : 4 + size]), payload[4 + size :])

    @classmethod
    def from_meta(cls, meta: dict[str, Any], data: bytes) -> Envelope:
        return cls(
            id=meta["id"], data=data, content_type=meta.get("ct"), key=meta.get("key"),
            tags=meta.get("tags", []), attributes=meta.get("attrs", {}),
            published_ms=meta.get("pub", 0), expires_ms=meta.get("exp"),
        )


def split_envelope(payload: bytes) -> tuple[bytes, bytes]:
    """The stored envelope's JSON header and data, undecoded."""
    (size,) = _LEN.unpack_from(payload, 0)
    return payload[4 : 4 + size], payload[4 + size :]


def plain_envelope(payload: bytes) -> bool:
    """True when a stored envelope has no attributes and no expiry, judged from its header's bytes.

    Inside a JSON string every quote is escaped, so ``"attrs":`` and ``"exp":`` can only be
    keys; a key of that name inside ``attrs`` makes this False, which is merely slower."""
    end = 4 + _LEN.unpack_from(payload)[0]
    return payload.find(b'"attrs":', 4, end) < 0 and payload.find(b'"exp":', 4, end) < 0


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


# -- wire frames -------------------------------------------------------------------------


def encode_publish_frame(data: bytes, head: dict[str, Any] | None = None) -> bytes:
    """One publish frame: ``data`` with the JSON API's message options in ``head``."""
    meta = orjson.dumps(head) if head else b""
    return _LEN.pack(len(meta)) + meta + _LEN.pack(len(data)) + data


def decode_publish_frames(body: bytes) -> Iterator[tuple[dict[str, Any] | None, bytes]]:
    """``(options or None, data)`` per publish frame; raises FrameError on a malformed body."""
    pos, end, index = 0, len(body), 0
    unpack = _LEN.unpack_from
    while pos < end:
        if pos + 4 > end:
            raise FrameError(index, "truncated head length")
        (hlen,) = unpack(body, pos)
        pos += 4
        if pos + hlen + 4 > end:
            raise FrameError(index, "truncated head or data length")
        head = None
        if hlen:
            try:
                head = orjson.loads(body[pos : pos + hlen])
            except orjson.JSONDecodeError as exc:
                raise FrameError(index, f"head is not valid JSON: {exc}") from None
            if not isinstance(head, dict):
                raise FrameError(index, "head is not a JSON object")
            pos += hlen
        (dlen,) = unpack(body, pos)
        pos += 4
        if pos + dlen > end:
            raise FrameError(index, "truncated data")
        yield head, body[pos : pos + dlen]
        pos += dlen
        index += 1


def encode_delivery_frame(partition: int, offset: int, attempt: int, receipt: str, envelope: bytes) -> bytes:
    r = receipt.encode()
    return DELIVERY_HEAD.pack(partition, offset, attempt, len(r), len(envelope)) + r + envelope


@dataclass(slots=True)
class DeliveryFrame:
    """A delivery frame as a consumer reads it; ``meta`` is the envelope's JSON header, undecoded."""

    partition: int
    offset: int
    attempt: int
    receipt: str
    meta: bytes
    data: bytes

    def header(self) -> dict[str, Any]:
        """``id``, ``pub`` and, when set, ``ct``, ``key``, ``tags``, ``attrs``, ``exp``."""
        return orjson.loads(self.meta)  # type: ignore[no-any-return]


def decode_delivery_frames(body: bytes) -> list[DeliveryFrame]:
    out: list[DeliveryFrame] = []
    pos, end = 0, len(body)
    unpack, hsize = DELIVERY_HEAD.unpack_from, DELIVERY_HEAD.size
    while pos < end:
        if pos + hsize > end:
            raise FrameError(len(out), "truncated frame header")
        partition, offset, attempt, rlen, elen = unpack(body, pos)
        pos += hsize
        receipt = body[pos : pos + rlen].decode()
        pos += rlen
        if pos + elen > end or elen < 4:
            raise FrameError(len(out), "truncated envelope")
        (mlen,) = _LEN.unpack_from(body, pos)
        if 4 + mlen > elen:
            raise FrameError(len(out), "envelope header overruns the envelope")
        out.append(DeliveryFrame(partition, offset, attempt, receipt, body[pos + 4 : pos + 4 + mlen],
                                 body[pos + 4 + mlen : pos + elen]))
        pos += elen
    return out

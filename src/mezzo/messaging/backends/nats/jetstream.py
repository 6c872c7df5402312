"""The JetStream calls on the broker's hot path, as thin functions over one nats-py connection.

nats-py's own helpers cover management (streams, consumers); these add what the
broker needs and the library does not expose directly: compare-and-set publishes
that report the actual last sequence, direct gets that return None when absent,
deletes without erasing, and no-wait pulls on a private inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from typing import Any

import nats.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import APIError

WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed Nats-Expected-Last-Subject-Sequence
NO_MESSAGE = 10057
CONSUMER_NOT_FOUND = 10014
STREAM_NOT_FOUND = 10059
_ACTUAL = re.compile(r"wrong last sequence: (\d+)")


class BrokerUnavailable(ConnectionError):
    """NATS did not answer in time, or the connection is closed."""


class WrongLastSequence(Exception):
    """A compare-and-set publish lost: ``actual`` is the subject's last sequence when the server says it."""

    def __init__(self, actual: int | None) -> None:
        super().__init__(f"wrong last sequence (now {actual})")
        self.actual = actual


@dataclass(slots=True)
class StoredMsg:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]


class JetStream:
    """Raw JetStream requests with one timeout; every failure to reach NATS becomes BrokerUnavailable."""

    def __init__(self, nc: Client, timeout: float) -> None:
        self.nc = nc
        self.timeout = timeout
        self.manager = nc.jetstream(timeout=timeout)

    async def request(self, subject: str, data: bytes = b"", headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> Msg:
        try:
            return await self.nc.request(subject, data, timeout=timeout or self.timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise LookupError(f"no JetStream stream or service answers {subject[:120]!r} (deleted?)") from None
        except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError, nats.errors.StaleConnectionError, TimeoutError) as exc:
            raise BrokerUnavailable(f"NATS did not answer {subject.split('.', 3)[-1][:80]!r}: "
                                    f"{type(exc).__name__}") from exc

    async def api(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """``$JS.API.<subject>``; raises nats-py's APIError for an error answer."""
        msg = await self.request(f"$JS.API.{subject}", orjson.dumps(body) if body is not None else b"")
        resp: dict[str, Any] = orjson.loads(msg.data)
        if "error" in resp:
            APIError.from_error(resp["error"])  # raises the matching subclass
        return resp

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, bool]:
        """Store a message; (sequence, duplicate). A duplicate reports the original's sequence."""
        msg = await self.request(subject, data, headers=headers)
        resp = orjson.loads(msg.data)
        error = resp.get("error")
        if error is not None:
            if error.get("err_code") == WRONG_LAST_SEQUENCE:
                found = _ACTUAL.search(error.get("description", ""))
                raise WrongLastSequence(int(found.group(1)) if found else None)
            APIError.from_error(error)
        return int(resp["seq"]), bool(resp.get("duplicate"))

    async def last(self, stream: str, subject: str) -> StoredMsg | None:
        """The last message on ``subject`` (a direct get), or None."""
        return _stored(await self.request(f"$JS.API.DIRECT.GET.{stream}.{subject}"))

    async def at(self, stream: str, seq: int) -> StoredMsg | None:
        return _stored(await self.request(f"$JS.API.DIRECT.GET.{stream}", orjson.dumps({"seq": seq})))

    async def next_on(self, stream: str, subject: str, seq: int) -> StoredMsg | None:
        """The first message on ``subject`` at or after ``seq``, or None."""
        return _stored(await self.request(f"$JS.API.DIRECT.GET.{stream}",
                                          orjson.dumps({"seq": seq, "next_by_subj": subject})))

    async def delete(self, stream: str, seq: int) -> bool:
        """Remove one message (no tombstone); False when it was already gone: a compare-and-delete."""
        try:
            await self.api(f"STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True})
        except APIError as exc:
            if exc.err_code == NO_MESSAGE:
                return False
            raise
        return True

    async def purge(self, stream: str, subject: str) -> None:
        await self.api(f"STREAM.PURGE.{stream}", {"filter": subject})

    async def pull(self, stream: str, consumer: str, batch: int) -> list[Msg] | None:
        """Up to ``batch`` messages ready now; None when the consumer did not answer (deleted)."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        out: list[Msg] = []
        try:
            await self.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                                  orjson.dumps({"batch": batch, "no_wait": True}), reply=inbox)
            while len(out) < batch:
                try:
                    msg = await sub.next_msg(timeout=self.timeout if out else min(self.timeout, 2.0))
                except (nats.errors.TimeoutError, TimeoutError):
                    if out:
                        break
                    if not self.nc.is_connected:
                        raise BrokerUnavailable("NATS connection lost during a pull") from None
                    return None
                if msg.headers and "Status" in msg.headers and not msg.data:
                    break  # 404 no messages, 408 request done, 409 consumer deleted or limits
                out.append(msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out

    async def reply(self, ack_subject: str, body: bytes) -> bool:
        """Ack or nack a delivery and wait until the server has applied it; False when its consumer is gone."""
        try:
            await self.nc.request(ack_subject, body, timeout=self.timeout)
        except nats.errors.NoRespondersError:
            return False
        except (nats.errors.TimeoutError, TimeoutError, nats.errors.ConnectionClosedError) as exc:
            raise BrokerUnavailable(f"NATS did not confirm an ack: {type(exc).__name__}") from exc
        return True

    async def wait_ready(self) -> bool:
        if not self.nc.is_connected:
            return False
        try:
            await asyncio.wait_for(self.nc.flush(), self.timeout)
        except Exception:
            return False
        return True


def _stored(msg: Msg) -> StoredMsg | None:
    headers = dict(msg.headers or {})
    status = headers.get("Status")
    if status == "404":
        return None
    if status:
        raise APIError(code=int(status), description=headers.get("Description", ""))
    return StoredMsg(int(headers["Nats-Sequence"]), headers.get("Nats-Subject", ""), msg.data, headers)


EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
MSG_ID = "Nats-Msg-Id"
TIMESTAMP = "Mezzo-Ts"  # the record's timestamp_ms
PREVIOUS = "Mezzo-Prev"  # sequence of the previous record with the same key in the partition (0: none)

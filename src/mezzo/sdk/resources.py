"""``client.resources``: apply, get, list, delete, diff, history, rollback and watch of manifests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mezzo.jsonutil import loads
from mezzo.resources.model import ApplyResult, HistoryEntry, Resource
from mezzo.sdk.errors import APIError, ConnectError, Gone, api_error

if TYPE_CHECKING:
    from mezzo.sdk.client import Mezzo

Manifests = str | Path | dict[str, Any] | Iterable[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED
    revision: int
    resource: Resource
    id: str = ""  # the SSE event id, "REVISION.INDEX"; empty for events from a re-list


def manifest_files(path: Path) -> list[Path]:
    """A file, or every .yaml/.yml/.json file under a directory, in name order."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
    return [path]


def _body(manifests: Manifests) -> dict[str, Any]:
    if isinstance(manifests, Path):
        files = manifest_files(manifests)
        return {"manifests": [{"source": str(p), "text": p.read_text()} for p in files]}
    if isinstance(manifests, str):
        return {"manifests": [{"source": "input", "text": manifests}]}
    if isinstance(manifests, dict):
        return {"documents": [manifests]}
    return {"documents": list(manifests)}


class ResourcesClient:
    def __init__(self, client: Mezzo) -> None:
        self._client = client

    async def apply(self, manifests: Manifests, *, dry_run: bool = False) -> list[ApplyResult]:
        """Apply YAML text, a file or directory (``Path``), or document dicts — all or nothing."""
        data = await self._client.request(
            "POST", "/v1/resources:apply", json=_body(manifests), params={"dryRun": str(dry_run).lower()}
        )
        return [ApplyResult.model_validate(item) for item in data["items"]]

    async def diff(self, manifests: Manifests) -> list[ApplyResult]:
        data = await self._client.request("POST", "/v1/resources:diff", json=_body(manifests))
        return [ApplyResult.model_validate(item) for item in data["items"]]

    async def get(self, kind: str, name: str, namespace: str = "default") -> Resource:
        data = await self._client.request("GET", f"/v1/resources/{kind}/{name}", params={"namespace": namespace})
        return Resource.model_validate(data)

    async def list(
        self, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> list[Resource]:
        data = await self._client.request(
            "GET", f"/v1/resources/{kind}", params={"namespace": namespace, "selector": selector}
        )
        return [Resource.model_validate(item) for item in data["items"]]

    async def delete(self, kind: str, name: str, namespace: str = "default") -> ApplyResult:
        data = await self._client.request("DELETE", f"/v1/resources/{kind}/{name}", params={"namespace": namespace})
        return ApplyResult.model_validate(data)

    async def history(self, kind: str, name: str, namespace: str = "default") -> list[HistoryEntry]:
        data = await self._client.request(
            "GET", f"/v1/resources/{kind}/{name}/history", params={"namespace": namespace}
        )
        return [HistoryEntry.model_validate(item) for item in data["items"]]

    async def rollback(
        self, kind: str, name: str, namespace: str = "default", to: int | None = None
    ) -> ApplyResult:
        data = await self._client.request(
            "POST", f"/v1/resources/{kind}/{name}:rollback", params={"namespace": namespace, "to": to}
        )
        return ApplyResult.model_validate(data)

    async def kinds(self) -> list[dict[str, Any]]:
        return (await self._client.request("GET", "/v1/kinds"))["items"]  # type: ignore[no-any-return]

    async def stream(
        self, kind: str, namespace: str | None = None, from_revision: int | None = None,
        *, last_event_id: str | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Raw changes from ``from_revision`` (default: from now), or right after the event whose
        ``id`` is ``last_event_id``. Raises Gone when that history was compacted."""
        event_type, event_id, data = None, "", []
        headers = {"Last-Event-ID": last_event_id} if last_event_id and from_revision is None else None
        async for line in self._client.stream_lines(
            f"/v1/resources/{kind}:watch", {"namespace": namespace, "fromRevision": from_revision}, headers
        ):
            if line.startswith("event:"):
                event_type = line[6:].strip()
            elif line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                payload = loads("\n".join(data))
                if event_type == "error":
                    status = int(payload.get("status", 503))
                    raise Gone(status, payload) if status == 410 else api_error(status, payload)
                yield WatchEvent(payload["type"], payload["revision"],
                                 Resource.model_validate(payload["object"]), event_id)
                event_type, event_id, data = None, "", []

    async def watch(
        self, kind: str, namespace: str | None = None, *, reconnect_delay: float = 1.0
    ) -> AsyncIterator[WatchEvent]:
        """Current resources as ADDED, then every change, for as long as you iterate.

        Reconnects after a dropped connection exactly where it left off (even inside a
        multi-document revision), and re-lists by itself when that history was compacted,
        so a consumer applying these events always converges on the server's state.
        """
        known: dict[str, Resource] = {}
        start: int | None = None
        last_id: str | None = None
        while True:
            try:
                if start is None:
                    data = await self._client.request(
                        "GET", f"/v1/resources/{kind}", params={"namespace": namespace}
                    )
                    fresh = {r.ref: r for r in (Resource.model_validate(i) for i in data["items"])}
                    revision = data["revision"]
                    for ref, gone in known.items():
                        if ref not in fresh:
                            yield WatchEvent("DELETED", revision, gone)
                    for ref, res in fresh.items():
                        old = known.get(ref)
                        if old is None or old.metadata.resourceVersion != res.metadata.resourceVersion:
                            yield WatchEvent("MODIFIED" if old else "ADDED", revision, res)
                    known, start, last_id = fresh, revision + 1, None
                resume = {"last_event_id": last_id} if last_id else {}
                async for event in self.stream(kind, namespace, None if last_id else start, **resume):
                    if event.type == "DELETED":
                        known.pop(event.resource.ref, None)
                    else:
                        known[event.resource.ref] = event.resource
                    last_id = event.id or None
                    start = event.revision + 1
                    yield event
            except Gone:
                start = None
            except (ConnectError, APIError) as exc:
                if isinstance(exc, APIError) and exc.status < 500:
                    raise
                await asyncio.sleep(reconnect_delay)

"""``client.config``: configuration read live (``watch``: typed reads, change callbacks and iteration,
pydantic binding, a local cache for when Mezzo is unreachable) and managed (drafts, releases,
rollback, gray releases, permissions, audit, Apollo access keys)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload
from urllib.parse import quote

import httpx

from mezzo.config.model import GrayRule, Permissions
from mezzo.jsonutil import dumps
from mezzo.sdk.config_view import (
    DEFAULT,
    SYNC_INTERVAL,
    Binding,
    ConfigChange,
    ConfigValueError,
    ConfigView,
    KeyChange,
    default_cache_dir,
)
from mezzo.sdk.errors import ConnectError

if TYPE_CHECKING:
    from mezzo.sdk.client import Mezzo

log = logging.getLogger("mezzo.sdk.config")


def _rule(rule: GrayRule | Mapping[str, Any]) -> dict[str, Any]:
    return rule.out() if isinstance(rule, GrayRule) else dict(rule)  # the server validates either


class ConfigClient:
    def __init__(self, client: Mezzo) -> None:
        self._client = client
        self._views: set[ConfigView] = set()

    # watching ---------------------------------------------------------------------------------

    async def watch(
        self, app: str, namespace: str, *, env: str = DEFAULT, cluster: str = DEFAULT,
        labels: Mapping[str, str] | None = None, client_id: str | None = None, ip: str | None = None,
        cache_dir: str | Path | None = None, cache: bool = True, missing_ok: bool = False,
        sync_interval: float = SYNC_INTERVAL, max_backoff: float = 30.0,
    ) -> ConfigView:
        """A live view of the namespace's released configuration as this client gets it (gray rules
        match ``labels``, ``client_id`` — default: the host name — and ``ip``).

        Every update is first written to ``cache_dir/APP+ENV+CLUSTER+NAMESPACE.json`` (default
        ``~/.cache/mezzo/config``; ``cache=False`` for none). When Mezzo is unreachable, the view
        starts from that file and reconnects in the background (backoff up to ``max_backoff``
        seconds); without a cache it raises ConnectError. A namespace without a release raises
        NotFound, unless ``missing_ok``: then the view starts empty and fills on the first release.
        """
        params = {"app": app, "namespace": [namespace], "env": env, "cluster": cluster,
                  "clientId": client_id if client_id is not None else socket.gethostname(), "ip": ip,
                  "label": [f"{k}={v}" for k, v in (labels or {}).items()] or None}
        name = "+".join(quote(part, safe="") for part in (app, env, cluster, namespace)) + ".json"
        path = Path(cache_dir or default_cache_dir()) / name if cache else None
        view = ConfigView(self, app, namespace, env, cluster, params=params, cache_path=path,
                          sync_interval=sync_interval, max_backoff=max_backoff)
        await view._start(missing_ok)
        self._views.add(view)
        return view

    async def aclose(self) -> None:
        """Close every view (``Mezzo.aclose`` does)."""
        for view in list(self._views):
            await view.aclose()

    # reading ----------------------------------------------------------------------------------

    async def read(self, app: str, namespace: str, *, env: str = DEFAULT, cluster: str = DEFAULT,
                   client_id: str | None = None, labels: Mapping[str, str] | None = None,
                   ip: str | None = None) -> dict[str, Any]:
        """What a client gets: ``configurations``, ``releaseKey``, ``notificationId``, ``format``, ``cluster``."""
        params = {"clientId": client_id, "ip": ip, "label": [f"{k}={v}" for k, v in (labels or {}).items()] or None}
        return await self._client.request("GET", _base(app, env, cluster, namespace) + "/config", params=params)  # type: ignore[no-any-return]

    @overload
    async def get(self, app: str, namespace: str, key: None = None, *, env: str = ..., cluster: str = ...,
                  client_id: str | None = ..., labels: Mapping[str, str] | None = ...,
                  ip: str | None = ...) -> dict[str, str]: ...
    @overload
    async def get(self, app: str, namespace: str, key: str, *, env: str = ..., cluster: str = ...,
                  client_id: str | None = ..., labels: Mapping[str, str] | None = ...,
                  ip: str | None = ...) -> str | None: ...

    async def get(self, app: str, namespace: str, key: str | None = None, *, env: str = DEFAULT,
                  cluster: str = DEFAULT, client_id: str | None = None, labels: Mapping[str, str] | None = None,
                  ip: str | None = None) -> dict[str, str] | str | None:
        """The released values as a client sees them; one value (None when absent) with ``key``."""
        values = (await self.read(app, namespace, env=env, cluster=cluster, client_id=client_id, labels=labels,
                                  ip=ip))["configurations"]
        return values if key is None else values.get(key)

    async def apps(self) -> list[dict[str, Any]]:
        return (await self._client.request("GET", "/v1/config/apps"))["items"]  # type: ignore[no-any-return]

    async def namespaces(self, app: str, env: str | None = None) -> list[dict[str, Any]]:
        """Namespaces of an app in every environment and cluster (or one environment)."""
        data = await self._client.request("GET", f"/v1/config/apps/{_q(app)}/namespaces", params={"env": env})
        return data["items"]  # type: ignore[no-any-return]

    async def namespace(self, app: str, namespace: str, *, env: str = DEFAULT, cluster: str = DEFAULT) -> dict[str, Any]:
        """Settings, latest ``release``, ``pending`` draft changes, ``editors`` and the draft's ``etag``."""
        response = await self._send("GET", _base(app, env, cluster, namespace))
        return {**response.json(), "etag": _etag(response)}

    # namespaces -------------------------------------------------------------------------------

    async def create_namespace(self, app: str, namespace: str, *, format: str = "properties", public: bool = False,
                               comment: str = "", env: str = DEFAULT, cluster: str = DEFAULT,
                               tenant: str | None = None) -> dict[str, Any]:
        """Create a namespace (``format``: properties, yaml, json, text); Conflict when it exists."""
        body = {"format": format, "public": public, "comment": comment}
        return await self._client.request("PUT", _base(app, env, cluster, namespace), json=body,  # type: ignore[no-any-return]
                                          params={"tenant": tenant})

    async def delete_namespace(self, app: str, namespace: str, *, env: str = DEFAULT, cluster: str = DEFAULT) -> None:
        await self._client.request("DELETE", _base(app, env, cluster, namespace))

    async def set_permissions(self, app: str, namespace: str, *, edit: Iterable[str] = (), publish: Iterable[str] = (),
                              require_distinct_publisher: bool = False, env: str = DEFAULT,
                              cluster: str = DEFAULT) -> dict[str, Any]:
        """Who may edit and who may publish (empty: anyone with write access); returns the settings."""
        body = Permissions(edit=list(edit), publish=list(publish),
                           require_distinct_publisher=require_distinct_publisher).out()
        return await self._client.request("PUT", _base(app, env, cluster, namespace) + "/permissions", json=body)  # type: ignore[no-any-return]

    # drafts -----------------------------------------------------------------------------------

    async def items(self, app: str, namespace: str, *, env: str = DEFAULT, cluster: str = DEFAULT) -> dict[str, Any]:
        """The draft: ``items`` (key -> value, secret, comment, by, at; secrets masked), ``editors``,
        and ``etag`` to pass as ``if_match``."""
        response = await self._send("GET", _base(app, env, cluster, namespace) + "/items")
        return {**response.json(), "etag": _etag(response)}

    async def set(self, app: str, namespace: str, key: str, value: str, *, secret: bool | None = None, comment: str = "",
                  env: str = DEFAULT, cluster: str = DEFAULT, if_match: str | int | None = None,
                  tenant: str | None = None) -> str:
        """Set a key in the draft (a missing namespace is created: private, properties); returns the
        draft's new ETag. With ``if_match``, Conflict when the draft changed since that ETag."""
        body: dict[str, Any] = {"value": value, "comment": comment}
        if secret is not None:  # unsaid: the key keeps whether it is secret
            body["secret"] = secret
        response = await self._send("PUT", _base(app, env, cluster, namespace) + f"/items/{_q(key)}", json=body,
                                    params={"tenant": tenant}, headers=_if_match(if_match))
        return _etag(response)

    async def set_many(self, app: str, namespace: str, values: Mapping[str, str], *, secret_keys: Iterable[str] = (),
                       env: str = DEFAULT, cluster: str = DEFAULT, if_match: str | int | None = None,
                       tenant: str | None = None) -> str:
        """Set several keys in one draft edit; returns the new ETag."""
        secrets = set(secret_keys)
        body = {"items": {k: {"value": v, **({"secret": True} if k in secrets else {})} for k, v in values.items()}}
        response = await self._send("PUT", _base(app, env, cluster, namespace) + "/items", json=body,
                                    params={"tenant": tenant}, headers=_if_match(if_match))
        return _etag(response)

    async def unset(self, app: str, namespace: str, key: str, *, env: str = DEFAULT, cluster: str = DEFAULT,
                    if_match: str | int | None = None) -> str:
        """Remove a key from the draft; returns the new ETag."""
        response = await self._send("DELETE", _base(app, env, cluster, namespace) + f"/items/{_q(key)}",
                                    headers=_if_match(if_match))
        return _etag(response)

    async def discard(self, app: str, namespace: str, *, env: str = DEFAULT, cluster: str = DEFAULT) -> str:
        """Reset the draft to the latest release; returns the new ETag."""
        return _etag(await self._send("POST", _base(app, env, cluster, namespace) + ":discard"))

    async def import_file(self, app: str, namespace: str, path: str | Path | None = None, *, content: str | None = None,
                          filename: str = "", format: str | None = None, secret_keys: Iterable[str] = (),
                          env: str = DEFAULT, cluster: str = DEFAULT, tenant: str | None = None) -> str:
        """Load a .properties, .yaml or .json file (``path``, or ``content`` with ``filename`` or
        ``format``) into the draft; yaml/json mappings become dotted keys. Returns the new ETag."""
        if path is not None:
            content, filename = Path(path).read_text(), filename or Path(path).name  # noqa: ASYNC240 - one small file
        if content is None:
            raise ValueError("import_file needs a path or content")
        body = {"content": content, "filename": filename, "format": format, "secretKeys": list(secret_keys)}
        response = await self._send("POST", _base(app, env, cluster, namespace) + ":import",
                                    json={k: v for k, v in body.items() if v is not None}, params={"tenant": tenant})
        return _etag(response)

    async def export(self, app: str, namespace: str, *, draft: bool = False, format: str | None = None,
                     env: str = DEFAULT, cluster: str = DEFAULT) -> str:
        """The released (or draft) configuration as a file: a properties namespace as .properties text, or
        with ``format`` "yaml" or "json" as a flat mapping of its keys; any other namespace as its document."""
        response = await self._send("GET", _base(app, env, cluster, namespace) + ":export",
                                    params={"draft": "true" if draft else None, "format": format})
        return response.text

    # releases ---------------------------------------------------------------------------------

    async def publish(self, app: str, namespace: str, *, title: str = "", message: str = "", env: str = DEFAULT,
                      cluster: str = DEFAULT) -> dict[str, Any]:
        """Release the draft; returns the release (``id``, ``title``, ``keys``, ...). Conflict when
        the draft equals the latest release."""
        return await self._client.request("POST", _base(app, env, cluster, namespace) + ":publish",  # type: ignore[no-any-return]
                                          json={"title": title, "message": message})

    async def releases(self, app: str, namespace: str, *, limit: int = 100, env: str = DEFAULT,
                       cluster: str = DEFAULT) -> list[dict[str, Any]]:
        """Release history, newest first."""
        data = await self._client.request("GET", _base(app, env, cluster, namespace) + "/releases",
                                          params={"limit": limit})
        return data["items"]  # type: ignore[no-any-return]

    async def release(self, app: str, namespace: str, release_id: int, *, env: str = DEFAULT,
                      cluster: str = DEFAULT) -> dict[str, Any]:
        """One release with its ``configurations`` (secrets masked)."""
        return await self._client.request("GET", _base(app, env, cluster, namespace) + f"/releases/{int(release_id)}")  # type: ignore[no-any-return]

    async def diff(self, app: str, namespace: str, a: int, b: int, *, env: str = DEFAULT,
                   cluster: str = DEFAULT) -> dict[str, Any]:
        """Keys ``added``, ``changed`` and ``removed`` from release ``a`` to ``b``, with ``values``."""
        return await self._client.request("GET", _base(app, env, cluster, namespace) + "/diff",  # type: ignore[no-any-return]
                                          params={"from": a, "to": b})

    async def rollback(self, app: str, namespace: str, *, to: int | None = None, force: bool = False,
                       env: str = DEFAULT, cluster: str = DEFAULT) -> dict[str, Any]:
        """A new release with release ``to``'s configuration (default: the one before the latest).
        Conflict when the draft has unpublished changes, unless ``force`` (the draft is then reset)."""
        return await self._client.request("POST", _base(app, env, cluster, namespace) + ":rollback",  # type: ignore[no-any-return]
                                          json={"to": to, "force": force})

    # gray release -----------------------------------------------------------------------------

    async def gray_create(self, app: str, namespace: str, *, env: str = DEFAULT, cluster: str = DEFAULT) -> dict[str, Any]:
        """Start a gray release (the namespace needs a release)."""
        return await self._client.request("PUT", _base(app, env, cluster, namespace) + "/gray")  # type: ignore[no-any-return]

    async def gray_get(self, app: str, namespace: str, *, env: str = DEFAULT, cluster: str = DEFAULT) -> dict[str, Any]:
        """The gray release: ``items`` being edited, ``rules``, the published ``release``."""
        return await self._client.request("GET", _base(app, env, cluster, namespace) + "/gray")  # type: ignore[no-any-return]

    async def gray_set(self, app: str, namespace: str, key: str, value: str, *, secret: bool | None = None,
                       comment: str = "", env: str = DEFAULT, cluster: str = DEFAULT) -> dict[str, Any]:
        return await self._client.request("PUT", _base(app, env, cluster, namespace) + f"/gray/items/{_q(key)}",  # type: ignore[no-any-return]
                                          json={"value": value, "comment": comment,
                                                **({} if secret is None else {"secret": secret})})

    async def gray_unset(self, app: str, namespace: str, key: str, *, env: str = DEFAULT,
                         cluster: str = DEFAULT) -> dict[str, Any]:
        return await self._client.request("DELETE", _base(app, env, cluster, namespace) + f"/gray/items/{_q(key)}")  # type: ignore[no-any-return]

    async def gray_rules(self, app: str, namespace: str, rules: Iterable[GrayRule | Mapping[str, Any]], *,
                         env: str = DEFAULT, cluster: str = DEFAULT) -> dict[str, Any]:
        """Replace the rules (effective at once). A client is in the gray release when any rule
        matches; a rule (``labels``, ``client_ids``/``clientIds``, ``ips``, ``percentage``)
        matches when all it sets match."""
        return await self._client.request("PUT", _base(app, env, cluster, namespace) + "/gray/rules",  # type: ignore[no-any-return]
                                          json={"rules": [_rule(r) for r in rules]})

    async def gray_publish(self, app: str, namespace: str, *, env: str = DEFAULT, cluster: str = DEFAULT) -> dict[str, Any]:
        """Make the gray keys live for the clients the rules pick."""
        return await self._client.request("POST", _base(app, env, cluster, namespace) + "/gray:publish")  # type: ignore[no-any-return]

    async def gray_promote(self, app: str, namespace: str, *, env: str = DEFAULT, cluster: str = DEFAULT) -> dict[str, Any]:
        """Merge the published gray keys into a new main release (returned); the gray release ends."""
        return await self._client.request("POST", _base(app, env, cluster, namespace) + "/gray:promote")  # type: ignore[no-any-return]

    async def gray_abandon(self, app: str, namespace: str, *, env: str = DEFAULT, cluster: str = DEFAULT) -> None:
        await self._client.request("DELETE", _base(app, env, cluster, namespace) + "/gray")

    # audit and keys ---------------------------------------------------------------------------

    async def audit(self, app: str | None = None, *, namespace: str | None = None, user: str | None = None,
                    since: datetime | None = None, until: datetime | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
        """Config operations, oldest first: who, when, the action, before and after (secrets masked).
        Without ``app`` it needs an admin token."""
        params = {"app": app, "namespace": namespace, "user": user, "limit": limit,
                  "since": since.isoformat() if since else None, "until": until.isoformat() if until else None}
        return (await self._client.request("GET", "/v1/config/audit", params=params))["items"]  # type: ignore[no-any-return]

    async def rotate_keys(self) -> dict[str, Any]:
        """Re-encrypt every secret with the active key (admin)."""
        return await self._client.request("POST", "/v1/config:rotate-keys")  # type: ignore[no-any-return]

    # Apollo access keys -----------------------------------------------------------------------

    async def create_access_key(self, app: str, *, comment: str = "", enabled: bool = True) -> dict[str, Any]:
        """A new access key for Apollo clients of ``app``: ``id``, ``enabled``, ... and its ``secret``,
        which only this answer shows (Apollo's Java client: ``apollo.access-key.secret``)."""
        return await self._client.request("POST", _keys(app), json={"comment": comment, "enabled": enabled})  # type: ignore[no-any-return]

    async def access_keys(self, app: str) -> list[dict[str, Any]]:
        """The app's access keys, without their secrets."""
        return (await self._client.request("GET", _keys(app)))["items"]  # type: ignore[no-any-return]

    async def enable_access_key(self, app: str, key_id: str) -> dict[str, Any]:
        return await self._client.request("POST", f"{_keys(app)}/{_q(key_id)}:enable")  # type: ignore[no-any-return]

    async def disable_access_key(self, app: str, key_id: str) -> dict[str, Any]:
        return await self._client.request("POST", f"{_keys(app)}/{_q(key_id)}:disable")  # type: ignore[no-any-return]

    async def delete_access_key(self, app: str, key_id: str) -> None:
        await self._client.request("DELETE", f"{_keys(app)}/{_q(key_id)}")

    # plumbing ---------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                    headers: dict[str, str] | None = None) -> httpx.Response:
        """As ``Mezzo.request``, for the answers that matter by their headers (ETag) or are plain text."""
        from mezzo.sdk.client import decode

        headers = dict(headers or {})
        content = None
        if json is not None:
            content, headers["Content-Type"] = dumps(json), "application/json"
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = await self._client._http.request(method, path, content=content, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise ConnectError(f"cannot reach Mezzo at {self._client.url}: {exc}") from exc
        decode(response)
        return response


def _q(part: str) -> str:
    return quote(part, safe="")


def _base(app: str, env: str, cluster: str, namespace: str) -> str:
    return f"/v1/config/apps/{_q(app)}/envs/{_q(env)}/clusters/{_q(cluster)}/namespaces/{_q(namespace)}"


def _keys(app: str) -> str:
    return f"/v1/config/apps/{_q(app)}/access-keys"


def _etag(response: httpx.Response) -> str:
    return response.headers.get("ETag", "").removeprefix("W/").strip('"')


def _if_match(etag: str | int | None) -> dict[str, str] | None:
    return None if etag is None else {"If-Match": f'"{str(etag).strip(chr(34))}"'}


__all__ = ["Binding", "ConfigChange", "ConfigClient", "ConfigValueError", "ConfigView", "KeyChange"]

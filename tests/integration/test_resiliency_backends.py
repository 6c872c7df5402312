"""``targets.backends`` of a Resiliency was accepted and applied by nothing. Apply now refuses it; a
document an older Mezzo stored with it still loads, its other targets applied and ``backends`` ignored."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mezzo.jsonutil import dumps
from mezzo.resilience.policies import PolicyRegistry
from mezzo.resources.service import resource_key
from mezzo.sdk.errors import APIError
from mezzo.storage.kv import KVStore, Put
from mezzo.testing.fixtures import start_node, wait_for

SPEC: dict[str, Any] = {"policies": {"timeouts": {"quick": "1s"}},
                        "targets": {"subscriptions": {"orders": {"timeout": "quick"}},
                                    "backends": {"redis": {"timeout": "quick"}}}}


async def test_backends_are_refused_at_apply_and_ignored_when_stored(tmp_path: Path) -> None:
    running = await start_node(tmp_path / "data", targets=["resilience", "api"])
    try:
        async with running.client() as client:
            with pytest.raises(APIError) as refused:
                await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "Resiliency",
                                              "metadata": {"name": "edge"}, "spec": SPEC})
            assert refused.value.status == 400 and "spec.targets.backends" in str(refused.value)
        now = datetime.now(UTC).isoformat()
        stored = {"apiVersion": "mezzo.dev/v1", "kind": "Resiliency", "spec": SPEC,
                  "metadata": {"name": "old", "namespace": "default", "labels": {}, "annotations": {},
                               "uid": "u-old", "generation": 1, "createdAt": now, "updatedAt": now,
                               "createdBy": "admin", "updatedBy": "admin"}}
        store = running.node.service(KVStore)  # type: ignore[type-abstract]
        await store.txn([Put(resource_key("Resiliency", "default", "old"), dumps(stored))])
        registry = running.node.service(PolicyRegistry)
        await wait_for(lambda: not registry.policy_for("subscriptions", "orders").is_noop)
    finally:
        await running.node.stop()

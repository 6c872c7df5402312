"""Active health checks: HTTP GET or TCP connect against each instance that declares a ``check``.

Each node probes the instances it owns (members.py), one task per instance, and writes the
instance's status only when the verdict changes: ``failures`` consecutive failed probes turn a
passing instance critical, ``successes`` consecutive passes turn a critical one passing. The
write compares the instance's revision, so a verdict on an instance that was re-registered or
judged by another node meanwhile is dropped and judged again on the next probe.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import structlog

from mezzo.registry.members import Membership
from mezzo.registry.metrics import RegistryMetrics
from mezzo.registry.model import Check, Instance, InstanceRef, Status
from mezzo.registry.service import RegistryService
from mezzo.registry.view import RegistryView

log = structlog.get_logger("mezzo.registry")
RECONCILE_EVERY = 1.0  # also notices members joining and leaving


async def probe(http: httpx.AsyncClient, instance: Instance, check: Check) -> tuple[bool, str]:
    """(passed, what was seen)."""
    if check.tcp:
        return await _probe_tcp(instance, check.timeout)
    url = check.http if check.http and not check.http.startswith("/") else f"http://{instance.address}{check.http}"
    try:
        response = await http.get(url, timeout=check.timeout, follow_redirects=False)
    except httpx.TimeoutException:
        return False, f"GET {url}: no answer within {check.timeout:g}s"
    except httpx.HTTPError as exc:
        return False, f"GET {url}: {type(exc).__name__}: {exc}"
    return 200 <= response.status_code < 400, f"GET {url}: HTTP {response.status_code}"


async def _probe_tcp(instance: Instance, timeout: float) -> tuple[bool, str]:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(instance.host, instance.port)
    except TimeoutError:
        return False, f"TCP {instance.address}: no connection within {timeout:g}s"
    except OSError as exc:
        return False, f"TCP {instance.address}: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await writer.wait_closed()
    return True, f"TCP {instance.address}: connected"


class Checker:
    def __init__(self, service: RegistryService, view: RegistryView, members: Membership,
                 http: httpx.AsyncClient, metrics: RegistryMetrics) -> None:
        self.service = service
        self.view = view
        self.members = members
        self.http = http
        self.metrics = metrics
        self._tasks: dict[str, tuple[Check, asyncio.Task[None]]] = {}  # instance path -> its probe loop
        self._dirty: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()

    @property
    def running(self) -> int:
        return len(self._tasks)

    def _on_change(self, namespace: str, service: str) -> None:
        self._dirty.add((namespace, service))
        self._wake.set()

    async def run(self) -> None:
        unsubscribe = self.view.subscribe(self._on_change)
        seen_members: list[str] = []
        try:
            while True:
                members = self.members.live()
                if members != seen_members:
                    seen_members, self._dirty = members, set(self.view.all_services()) | self._dirty
                dirty, self._dirty = self._dirty, set()
                self._wake.clear()
                for namespace, service in dirty:
                    self._reconcile(namespace, service, members)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RECONCILE_EVERY):
                        await self._wake.wait()
        finally:
            unsubscribe()
            tasks = [task for _, task in self._tasks.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.clear()

    def _reconcile(self, namespace: str, service: str, members: list[str]) -> None:
        """Start, restart or stop the probe loops of one service's instances."""
        wanted: dict[str, Instance] = {}
        for instance in self.view.instances(namespace, service, healthy_only=False):
            path = f"{namespace}/{service}/{instance.id}"
            if instance.check is not None and self.members.owns(path, members):
                wanted[path] = instance
        prefix = f"{namespace}/{service}/"
        for path in [p for p in self._tasks if p.startswith(prefix) and p not in wanted]:
            self._tasks.pop(path)[1].cancel()
        for path, instance in wanted.items():
            current = self._tasks.get(path)
            if current is not None and current[0] == instance.check and not current[1].done():
                continue
            if current is not None:
                current[1].cancel()
            ref = InstanceRef(namespace, service, instance.id)
            task = asyncio.create_task(self._loop(ref, instance.check), name=f"mezzo-check-{path}")  # type: ignore[arg-type]
            self._tasks[path] = (instance.check, task)  # type: ignore[assignment]

    async def _loop(self, ref: InstanceRef, check: Check) -> None:
        successes = failures = 0
        while True:
            known = self.view.known(ref)
            if known is None:
                return
            passed, output = await probe(self.http, known.instance, check)
            self.metrics.probe(ref.namespace, ref.service, passed)
            successes, failures = (successes + 1, 0) if passed else (0, failures + 1)
            known = self.view.known(ref)  # as it is now, after the probe
            if known is None:
                return
            status = known.instance.status
            target = None
            if status is Status.CRITICAL and passed and successes >= check.successes:
                target = Status.PASSING
            elif status is Status.PASSING and not passed and failures >= check.failures:
                target = Status.CRITICAL
            elif status is Status.CRITICAL and not passed and failures == check.failures and not known.instance.output:
                # critical from registration (initialStatus) and failing: say why once, keep its status_since
                target = Status.CRITICAL
            if target is not None:
                try:
                    if await self.service.set_status(known, target, output):
                        log.info("instance status changed", instance=ref.path, status=target.value, output=output)
                        await self.view.caught_up()
                except Exception as exc:  # the store is unreachable: judge again next round
                    log.warning("recording a check result failed", instance=ref.path, error=str(exc))
            await asyncio.sleep(check.interval)

"""Tail sampling in the collector: hold each trace for ``decisionWait``, then keep it if it has an
error, if it is slower than ``slowerThan``, or within a baseline of ``baselinePerSecond`` traces;
drop the rest.

While a TailSamplingPolicy exists, spans are acknowledged when they are buffered, not when they
are stored (as in the OpenTelemetry Collector's tail sampling processor): spans of undecided
traces are lost if the node stops. Spans arriving after their trace was decided follow the
decision (remembered for a while). Memory is bounded: past ``maxTraces`` buffered traces the
oldest are decided early.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from typing import Any

import structlog
from pydantic import Field

from mezzo.resources.kinds import Column, KindSpec
from mezzo.resources.model import SpecModel
from mezzo.resources.types import Duration
from mezzo.tracing.model import STATUS_ERROR, Span

log = structlog.get_logger("mezzo.tracing")


class TailSamplingSpec(SpecModel):
    decision_wait: Duration = Field(5.0, gt=0, le=600, description="how long a trace is held before deciding")
    keep_errors: bool = True
    slower_than: Duration | None = Field(1.0, gt=0, description="keep traces whose longest span is slower")
    baseline_per_second: float = Field(10.0, ge=0, description="keep up to this many other traces per second")
    max_traces: int = Field(50_000, ge=100, le=10_000_000)


TAIL_SAMPLING_KIND = KindSpec(kind="TailSamplingPolicy", spec=TailSamplingSpec, plural="tailsamplingpolicies",
                              short_names=("tsp",),
                              columns=(Column("WAIT", "decisionWait"), Column("SLOWER", "slowerThan"),
                                       Column("BASELINE", "baselinePerSecond")),
                              description="Keep errors, slow traces and a baseline; drop the rest (collector side).")


class _Pending:
    __slots__ = ("first_seen", "spans")

    def __init__(self, now: float) -> None:
        self.first_seen = now
        self.spans: list[Span] = []


class TailSampler:
    def __init__(self, spec: TailSamplingSpec, write: Any, metrics: Any = None) -> None:
        self.spec = spec
        self.write = write  # async (spans) -> None: the store
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self.decided: OrderedDict[str, bool] = OrderedDict()
        self.tokens = spec.baseline_per_second
        self.refilled = time.monotonic()
        self.kept = self.dropped = 0
        self._task: asyncio.Task[None] | None = None
        self.decisions = metrics.counter("tracing", "tail_decisions", "total", "Traces kept or dropped.",
                                         labels=("decision", "reason")) if metrics is not None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mezzo-tail-sampling")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def offer(self, spans: list[Span]) -> None:
        now = time.monotonic()
        late: list[Span] = []
        for span in spans:
            verdict = self.decided.get(span.trace_id)
            if verdict is not None:
                if verdict:
                    late.append(span)
                continue
            entry = self.pending.get(span.trace_id)
            if entry is None:
                entry = self.pending[span.trace_id] = _Pending(now)
            entry.spans.append(span)
        if late:
            await self.write(late)
        while len(self.pending) > self.spec.max_traces:  # bounded memory: decide the oldest now
            trace_id, entry = self.pending.popitem(last=False)
            await self._decide(trace_id, entry)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.spec.decision_wait / 4))
            try:
                await self.flush(time.monotonic() - self.spec.decision_wait)
            except Exception:
                log.exception("tail sampling failed to store kept traces")

    async def flush(self, seen_before: float) -> None:
        """Decide every trace first seen before ``seen_before``."""
        due = []
        for trace_id, entry in self.pending.items():
            if entry.first_seen > seen_before:
                break  # ordered by first sight
            due.append(trace_id)
        keep: list[Span] = []
        for trace_id in due:
            entry = self.pending.pop(trace_id)
            if self._verdict(trace_id, entry):
                keep += entry.spans
        if keep:
            await self.write(keep)

    async def _decide(self, trace_id: str, entry: _Pending) -> None:
        if self._verdict(trace_id, entry):
            await self.write(entry.spans)

    def _verdict(self, trace_id: str, entry: _Pending) -> bool:
        spans = entry.spans
        reason = "baseline"
        keep = False
        if self.spec.keep_errors and any(s.status == STATUS_ERROR for s in spans):
            keep, reason = True, "error"
        elif self.spec.slower_than is not None and max(s.duration_us for s in spans) >= self.spec.slower_than * 1e6:
            keep, reason = True, "slow"
        else:
            now = time.monotonic()
            rate = self.spec.baseline_per_second
            self.tokens = min(max(rate, 1.0), self.tokens + (now - self.refilled) * rate)
            self.refilled = now
            if self.tokens >= 1:
                self.tokens -= 1
                keep = True
            else:
                reason = "sampled-out"
        self.decided[trace_id] = keep
        if len(self.decided) > 4 * self.spec.max_traces:
            self.decided.popitem(last=False)
        if keep:
            self.kept += 1
        else:
            self.dropped += 1
        if self.decisions is not None:
            self.decisions.labels("keep" if keep else "drop", reason).inc()
        return keep

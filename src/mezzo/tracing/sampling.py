"""Head sampling, configured per service and operation and served to SDKs as Jaeger's remote
sampling document (``GET /sampling?service=NAME`` on the OTLP port, ``/api/sampling`` too), which
OpenTelemetry's Jaeger remote sampler and Jaeger clients poll.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mezzo.resources.kinds import Column, KindSpec
from mezzo.resources.model import SpecModel


class OperationRate(SpecModel):
    operation: str = Field(min_length=1)
    probability: float = Field(ge=0, le=1)


class SamplingSpec(SpecModel):
    service: str = Field(min_length=1, description='the service.name it applies to ("*" for every other service)')
    type: Literal["probabilistic", "ratelimiting"] = "probabilistic"
    probability: float = Field(1.0, ge=0, le=1, description="for probabilistic: the share of traces kept")
    traces_per_second: float = Field(10.0, gt=0, description="for ratelimiting: at most this many new traces/s")
    operations: list[OperationRate] = Field(default_factory=list, description="per operation probabilities")
    lower_bound_per_second: float = Field(0.0, ge=0, description="each operation gets at least this many traces/s")

    @model_validator(mode="after")
    def _ops_need_probabilistic(self) -> SamplingSpec:
        if self.operations and self.type != "probabilistic":
            raise ValueError("per-operation rates go with type probabilistic")
        return self


SAMPLING_KIND = KindSpec(kind="SamplingStrategy", spec=SamplingSpec, plural="samplingstrategies", short_names=("ss",),
                         columns=(Column("SERVICE", "service"), Column("TYPE", "type"),
                                  Column("PROBABILITY", "probability")),
                         description="Head sampling for a service, served to SDKs as a remote sampling document.")


class Strategies:
    """The SamplingStrategy resources in force, by namespace/name. A service gets the first of its own
    (by namespace/name), else the first for "*": deleting one of two strategies for a service leaves
    the other in force."""

    def __init__(self) -> None:
        self.by_ref: dict[str, SamplingSpec] = {}

    def set(self, spec: SamplingSpec | None, ref: str) -> None:
        if spec is None:
            self.by_ref.pop(ref, None)
        else:
            self.by_ref[ref] = spec

    def _for(self, service: str) -> SamplingSpec | None:
        for wanted in (service, "*"):
            for ref in sorted(self.by_ref):
                if self.by_ref[ref].service == wanted:
                    return self.by_ref[ref]
        return None

    def document(self, service: str) -> dict[str, Any]:
        spec = self._for(service)
        if spec is None:
            return {"strategyType": "PROBABILISTIC", "probabilisticSampling": {"samplingRate": 1.0}}
        if spec.type == "ratelimiting":
            # the document carries a whole number (int32): a fraction rounds down, but never to 0 (none)
            return {"strategyType": "RATE_LIMITING",
                    "rateLimitingSampling": {"maxTracesPerSecond": max(1, int(spec.traces_per_second))}}
        doc: dict[str, Any] = {"strategyType": "PROBABILISTIC",
                               "probabilisticSampling": {"samplingRate": spec.probability}}
        if spec.operations:
            doc["operationSampling"] = {
                "defaultSamplingProbability": spec.probability,
                "defaultLowerBoundTracesPerSecond": spec.lower_bound_per_second,
                "perOperationStrategies": [{"operation": o.operation,
                                            "probabilisticSampling": {"samplingRate": o.probability}}
                                           for o in spec.operations]}
        return doc

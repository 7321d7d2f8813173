"""What an LLMService should run on, for the workload it serves: `pdserve plan` on the observed
workload at the service's own targets, beside what its current pods cost. Pure: the operator
passes the planner's Prometheus inputs and the current replicas."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pdserve.api.spec import LLMServiceSpec
from pdserve.planning.catalog import Accelerator, default_catalog
from pdserve.planning.observed import Observed, observed_workload
from pdserve.planning.search import Candidate, Targets, candidates, pod_shapes
from pdserve.planning.shapes import ModelShape, PlanInputError, builtin_shape, shape_of_uri

ATTAINMENT = 0.9
# An Event tells the user when another configuration is at least this much cheaper.
NOTABLE_SAVING = 0.2
# How often the operator plans (a search over every kind: seconds of CPU; workloads drift
# slowly).
DEFAULT_INTERVAL_SECONDS = 600.0


@dataclass(frozen=True)
class Recommendation:
    candidate: Candidate
    current_cost_per_hour: float
    observed: Observed

    @property
    def saving(self) -> float:
        """The share of today's cost the recommendation saves (negative: it costs more, as
        when today's pods cannot meet the targets)."""
        if self.current_cost_per_hour <= 0:
            return 0.0
        return 1 - self.candidate.cost_per_hour / self.current_cost_per_hour


def service_shape(spec: LLMServiceSpec) -> ModelShape:
    source = spec.model.source
    if source.builtin is not None:
        return builtin_shape(source.builtin)
    shape = shape_of_uri(source.uri) if source.uri is not None else None
    if shape is None:
        raise PlanInputError("the model's shape is unknown to the operator (a builtin model or "
                             "an hf:// source of a known shape is needed: see pdserve plan "
                             "--model DIR for others)")
    return shape


def current_cost_per_hour(spec: LLMServiceSpec, replicas: Mapping[str, int],
                          catalog: Mapping[str, Accelerator]) -> float:
    total = 0.0
    for role, pool in (("prefill", spec.prefill), ("decode", spec.decode)):
        accelerator = catalog[pool.accelerator.kind]
        total += (replicas.get(role, 0) * pool.accelerator.devices_per_replica
                  * accelerator.price_per_chip_hour)
    return total


def recommend(spec: LLMServiceSpec, values: Mapping[str, float], replicas: Mapping[str, int],
              service: str) -> Recommendation:
    """PlanInputError (its message for status) when nothing can be recommended."""
    shape = service_shape(spec)
    observed = observed_workload(values, service)
    slo = spec.autoscaling.slo
    targets = Targets(slo.ttft_milliseconds / 1e3, slo.tpot_milliseconds / 1e3, ATTAINMENT)
    catalog = default_catalog()
    dtype = "float32" if spec.model.dtype == "float32" else "bfloat16"
    found = candidates(pod_shapes(catalog, shape, dtype, observed.workload), observed.workload,
                       observed.rate, targets, "auto", None)
    if not found:
        raise PlanInputError(f"no configuration of the catalogue meets TTFT "
                             f"{slo.ttft_milliseconds} ms and TPOT {slo.tpot_milliseconds} ms "
                             f"at the observed {observed.rate:.3g} req/s")
    return Recommendation(found[0], current_cost_per_hour(spec, replicas, catalog), observed)

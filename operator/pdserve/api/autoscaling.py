"""What the planner may do: targets, bounds and budget (the planner is pdserve.autoscaler)."""

from __future__ import annotations

from pydantic import ConfigDict, Field, model_validator

from pdserve.api.base import ApiModel, cel


class SloSpec(ApiModel):
    """Latency targets the planner steers towards."""

    ttft_milliseconds: int = Field(
        default=2000, ge=1, le=600_000, description="Target time to first token, in ms.",
    )
    tpot_milliseconds: int = Field(
        default=100, ge=1, le=60_000,
        description="Target time per output token (inter-token latency), in ms.",
    )


class ReplicaBounds(ApiModel):
    """The replica range the planner keeps a role in."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas"),
    ]})

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Fewest pods of the role.")
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Most pods of the role.")

    @model_validator(mode="after")
    def _min_not_above_max(self) -> ReplicaBounds:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self


class AutoscalingSpec(ApiModel):
    """Metrics-driven rebalancing of prefill and decode replicas within an accelerator budget."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!self.enabled || has(self.prometheusUrl)",
            "prometheusUrl is required when autoscaling is enabled"),
    ]})

    enabled: bool = Field(default=False, description="Let the planner set the replicas.")
    prometheus_url: str | None = Field(
        default=None, max_length=2048, pattern=r"^https?://[^\s]+$",
        description="Base URL of the Prometheus that scrapes the workers "
        "(e.g. http://prometheus.monitoring:9090).",
    )
    interval_seconds: int = Field(
        default=30, ge=5, le=3600, description="Seconds between two planner decisions.",
    )
    slo: SloSpec = Field(default_factory=SloSpec, description="Latency targets.")
    prefill: ReplicaBounds = Field(
        default_factory=ReplicaBounds, description="Replica range of the prefill pool.",
    )
    decode: ReplicaBounds = Field(
        default_factory=ReplicaBounds, description="Replica range of the decode pool.",
    )
    accelerator_budget: int | None = Field(
        default=None, ge=1, le=100_000,
        description="Most accelerators (replicas x accelerator.count x accelerator.nodes, "
        "summed over prefill and decode; a cpu pod counts 1) the planner may allocate, "
        "including pods starting or draining. Unset: only the replica ranges bound it.",
    )
    scale_up_stabilization_seconds: int = Field(
        default=60, ge=0, le=3600,
        description="A role grows only after needing more replicas for this long.",
    )
    scale_down_stabilization_seconds: int = Field(
        default=300, ge=0, le=7200,
        description="A role shrinks only after needing fewer replicas for this long.",
    )
    max_step: int = Field(
        default=2, ge=1, le=100, description="Most replicas a role changes by per decision.",
    )

    @model_validator(mode="after")
    def _needs_prometheus(self) -> AutoscalingSpec:
        if self.enabled and self.prometheus_url is None:
            raise ValueError("prometheusUrl is required when autoscaling is enabled")
        return self

"""Pod-level overrides shared by every role: placement and compute resources."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from pdserve.api.accelerators import ACCELERATOR_RESOURCES
from pdserve.api.base import ApiModel, cel

Quantity = int | str

_ACCELERATOR_LIST = ", ".join(f"'{name}'" for name in ACCELERATOR_RESOURCES)


class Toleration(ApiModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=316, description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Exists matches any value; Equal matches `value`.",
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value to match.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects.",
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0,
        description="How long a NoExecute taint is tolerated before eviction.",
    )


class ResourceRequirements(ApiModel):
    """CPU and memory of the main container (core/v1 ResourceRequirements, without claims)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel(f"!has(self.requests) || !self.requests.exists(k, k in [{_ACCELERATOR_LIST}])",
            "accelerators are requested with accelerator.kind and accelerator.count, "
            "not in resources.requests"),
        cel(f"!has(self.limits) || !self.limits.exists(k, k in [{_ACCELERATOR_LIST}])",
            "accelerators are requested with accelerator.kind and accelerator.count, "
            "not in resources.limits"),
    ]})

    requests: dict[str, Quantity] | None = Field(
        default=None, max_length=16,
        description="Minimum resources (e.g. cpu: \"4\", memory: 32Gi).",
    )
    limits: dict[str, Quantity] | None = Field(
        default=None, max_length=16, description="Maximum resources (e.g. memory: 32Gi).",
    )

    @model_validator(mode="after")
    def _no_accelerators(self) -> ResourceRequirements:
        for kind, given in (("requests", self.requests), ("limits", self.limits)):
            if any(name in ACCELERATOR_RESOURCES for name in given or {}):
                raise ValueError("accelerators are requested with accelerator.kind and "
                                 f"accelerator.count, not in resources.{kind}")
        return self


class PodOverrides(ApiModel):
    """Where the pods of a role run and what they may use, on top of the accelerator's own
    node labels and tolerations."""

    node_selector: dict[str, str] | None = Field(
        default=None, max_length=32,
        description="Extra node labels the pods require (merged over the accelerator's labels).",
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=32,
        description="Extra tolerations (added to the accelerator's own).",
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="A core/v1 Affinity for the pods, passed through unchanged.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="CPU and memory requests/limits; accelerator counts come from accelerator.",
    )

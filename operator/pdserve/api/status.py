"""The observed state of an LLMService, written only by the operator (and its planner)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pdserve.api.base import ApiModel

ConditionType = Literal["Ready", "Progressing", "Degraded", "ScalingLimited", "KVTransferHealthy"]
CONDITION_TYPES: tuple[str, ...] = (
    "Ready", "Progressing", "Degraded", "ScalingLimited", "KVTransferHealthy",
)


class Condition(ApiModel):
    """A metav1.Condition."""

    type: str = Field(
        max_length=316,
        description="Ready, Progressing, Degraded, ScalingLimited or KVTransferHealthy.",
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed for.",
    )
    last_transition_time: str = Field(
        description="When status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    reason: str = Field(
        max_length=1024, description="CamelCase reason for the status, for programs.",
    )
    message: str = Field(default="", max_length=32768, description="Explanation for humans.")


class RoleStatus(ApiModel):
    """Replica counts of one role's Deployment."""

    desired_replicas: int = Field(default=0, ge=0, description="Replicas asked for.")
    ready_replicas: int = Field(default=0, ge=0, description="Replicas passing readiness.")
    summary: str = Field(default="0/0", max_length=32, description="ready/desired, for kubectl.")


class AutoscalingStatus(ApiModel):
    """The planner's last decision."""

    last_decision_time: str | None = Field(
        default=None, description="When the planner last decided (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    prefill_replicas: int | None = Field(
        default=None, ge=0, description="Prefill replicas decided; the operator renders them.",
    )
    decode_replicas: int | None = Field(
        default=None, ge=0, description="Decode replicas decided; the operator renders them.",
    )
    reason: str | None = Field(default=None, max_length=4096, description="Why, for humans.")
    inputs: dict[str, float | str] | None = Field(
        default=None, max_length=64,
        description="The measurements the decision used (numbers or strings by name).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class LLMServiceStatus(ApiModel):
    """What the operator observed."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation the status reflects.",
    )
    conditions: list[Condition] | None = Field(
        default=None, max_length=16,
        description="Ready, Progressing, Degraded, ScalingLimited and KVTransferHealthy.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    prefill: RoleStatus | None = Field(default=None, description="The prefill pool.")
    decode: RoleStatus | None = Field(default=None, description="The decode pool.")
    router: RoleStatus | None = Field(default=None, description="The router.")
    endpoint: str | None = Field(
        default=None, max_length=1024,
        description="In-cluster URL of the OpenAI-compatible router (http://NAME-router.NS.svc:8080).",
    )
    autoscaling: AutoscalingStatus | None = Field(
        default=None, description="The planner's last decision.",
    )

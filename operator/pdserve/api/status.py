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


class RolePlan(ApiModel):
    """One role of a recommended configuration."""

    accelerator: str = Field(max_length=63, description="Accelerator kind of each pod.")
    count: int = Field(ge=1, le=64, description="Chips of each pod (tensor parallel).")
    replicas: int = Field(ge=0, le=100_000, description="Pods (0: aggregated, no prefill).")


class ObservedWorkload(ApiModel):
    """The workload the recommendation plans for, as Prometheus saw it."""

    rate_rps: float = Field(ge=0, description="Requests per second arriving at the router.")
    mean_input_tokens: float = Field(ge=0, description="Mean prompt tokens of a request.")
    mean_output_tokens: float = Field(ge=0, description="Mean generated tokens of a request.")
    prefix_hit: float = Field(ge=0, le=1, description="Share of prompt tokens found cached.")


class RecommendationStatus(ApiModel):
    """`pdserve plan` on the served workload at the LLMService's targets. Advice only: the
    operator never changes the spec."""

    computed_time: str | None = Field(
        default=None, description="When it was computed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    prefill: RolePlan | None = Field(default=None, description="The recommended prefill pool.")
    decode: RolePlan | None = Field(default=None, description="The recommended decode pool.")
    disaggregated: bool | None = Field(default=None, description="Prefill/decode or one pool.")
    short_prompt_threshold: int | None = Field(
        default=None, ge=0, description="router.shortPromptThreshold of the recommendation.",
    )
    cost_per_hour: float | None = Field(
        default=None, ge=0, description="Its projected cost per hour (catalogue list prices).",
    )
    current_cost_per_hour: float | None = Field(
        default=None, ge=0, description="What the current pods cost per hour, at those prices.",
    )
    saving: float | None = Field(
        default=None, description="Share of the current cost it saves (negative: it costs "
        "more, as when the current pods cannot meet the targets).",
    )
    observed: ObservedWorkload | None = Field(
        default=None, description="The workload planned for.",
    )
    message: str = Field(default="", max_length=4096,
                         description="The recommendation in words, or why there is none.")


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
    recommendation: RecommendationStatus | None = Field(
        default=None, description="The cheapest configuration meeting the targets for the "
        "served workload (autoscaling LLMServices only).",
    )

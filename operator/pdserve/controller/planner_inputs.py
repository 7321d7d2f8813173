"""Pure mapping between Kubernetes objects and the planner: the spec into PlannerConfig, the
Deployments and pods into replica counts, the decision into status. No I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pdserve.api.spec import LLMServiceSpec
from pdserve.autoscaler import (
    CapacityPrior,
    Decision,
    PlannerConfig,
    Replicas,
    RoleBounds,
    RoleReplicas,
)
from pdserve.autoscaler.priors import capacity_prior

Obj = Mapping[str, Any]
CONDITION = "ScalingLimited"
# Reasons that mean "the planner could not do its job", reported as ScalingLimited too.
HOLDING_REASONS = ("PrometheusUnavailable", "MetricsMissing", "InvalidConfig")


def planner_config(spec: LLMServiceSpec) -> PlannerConfig:
    auto = spec.autoscaling
    pre, dec = spec.prefill.accelerator, spec.decode.accelerator
    seqs = spec.decode.engine.max_num_seqs
    prefill_prior = capacity_prior(pre.kind, pre.devices_per_replica, dec.devices_per_replica,
                                   seqs, prefill_nodes=pre.nodes, decode_nodes=dec.nodes)
    decode_prior = capacity_prior(dec.kind, pre.devices_per_replica, dec.devices_per_replica,
                                  seqs, prefill_nodes=pre.nodes, decode_nodes=dec.nodes)
    return PlannerConfig(
        ttft_target_seconds=auto.slo.ttft_milliseconds / 1000.0,
        itl_target_seconds=auto.slo.tpot_milliseconds / 1000.0,
        prefill=RoleBounds(auto.prefill.min_replicas, auto.prefill.max_replicas,
                           pre.devices_per_replica),
        decode=RoleBounds(auto.decode.min_replicas, auto.decode.max_replicas,
                          dec.devices_per_replica),
        capacity=CapacityPrior(prefill_prior.prefill_tokens_per_second,
                               decode_prior.decode_tokens_per_second,
                               decode_prior.decode_max_sequences),
        accelerator_budget=auto.accelerator_budget,
        class_ttft_targets={c.name: c.ttft_target_seconds
                            for c in spec.router.priority_classes or []
                            if c.ttft_target_seconds is not None},
        interval_seconds=float(auto.interval_seconds),
        scale_up_stabilization_seconds=float(auto.scale_up_stabilization_seconds),
        scale_down_stabilization_seconds=float(auto.scale_down_stabilization_seconds),
        max_step=auto.max_step,
        hold_seconds=max(float(auto.scale_down_stabilization_seconds),
                         2.0 * auto.interval_seconds),
    )


def _timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _condition(pod: Obj, kind: str) -> Obj | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition  # type: ignore[no-any-return]
    return None


def pod_phase(pod: Obj) -> str:
    """terminating | pending (not scheduled) | ready | starting."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "terminating"
    scheduled = _condition(pod, "PodScheduled")
    if scheduled is None or scheduled.get("status") != "True":
        return "pending"
    ready = _condition(pod, "Ready")
    if ready is not None and ready.get("status") == "True":
        return "ready"
    return "starting"


def role_replicas(deployment: Obj | None, pods: Sequence[Obj], now: datetime) -> RoleReplicas:
    desired = int(((deployment or {}).get("spec") or {}).get("replicas") or 0)
    phases = [pod_phase(p) for p in pods]
    created = [_timestamp((p.get("metadata") or {}).get("creationTimestamp"))
               for p, phase in zip(pods, phases, strict=True) if phase == "pending"]
    oldest = min((c for c in created if c is not None), default=None)
    return RoleReplicas(
        desired=desired,
        ready=phases.count("ready"),
        starting=phases.count("starting"),
        pending=phases.count("pending"),
        terminating=phases.count("terminating"),
        pending_seconds=(now - oldest).total_seconds() if oldest else 0.0,
    )


def replicas_from_cluster(deployments: Mapping[str, Obj], pods: Sequence[Obj],
                          role_label: str, now: datetime) -> Replicas:
    def of(role: str) -> list[Obj]:
        return [p for p in pods
                if ((p.get("metadata") or {}).get("labels") or {}).get(role_label) == role]

    return Replicas(role_replicas(deployments.get("prefill"), of("prefill"), now),
                    role_replicas(deployments.get("decode"), of("decode"), now))


def autoscaling_status(decision: Decision, when: str, detail: str = "") -> dict[str, Any]:
    reason = f"{decision.reason}: {decision.message}" + (f" ({detail})" if detail else "")
    if decision.limited:
        reason += f"; limited: {decision.limited}"
    return {
        "lastDecisionTime": when,
        "prefillReplicas": decision.prefill_replicas,
        "decodeReplicas": decision.decode_replicas,
        "reason": reason[:4096],
        "inputs": dict(list(decision.inputs.items())[:64]),
    }


def limited_condition(decision: Decision, detail: str = "") -> tuple[bool, str, str]:
    """(status, reason, message) of ScalingLimited for this decision."""
    if decision.reason in HOLDING_REASONS:
        message = decision.message + (f": {detail}" if detail else "")
        return True, decision.reason, message
    if decision.limited:
        return True, "ScalingLimited", decision.limited
    return False, "WithinLimits", ""


def scaling_limited(previous: Obj | None, status: bool, reason: str, message: str,
                    generation: int | None, when: str) -> dict[str, Any]:
    """The ScalingLimited condition (its transition time kept while its status holds)."""
    value = "True" if status else "False"
    since = previous.get("lastTransitionTime") if previous and previous.get(
        "status") == value else None
    entry: dict[str, Any] = {"type": CONDITION, "status": value, "reason": reason,
                             "message": message[:32768], "lastTransitionTime": since or when}
    if generation is not None:
        entry["observedGeneration"] = generation
    return entry

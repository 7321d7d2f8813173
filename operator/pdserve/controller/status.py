"""Status of an LLMService computed from its children (pure: objects in, status out).

This is the reconciler's share of the status, written by server-side apply under its own field
manager: the planner owns `autoscaling` and the ScalingLimited condition while autoscaling is on,
the recommender `recommendation`, the KV health job (kv_health_job.py) KVTransferHealthy; the
apiserver merges them by condition type, so no writer overwrites another's conditions from a
stale read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pdserve.api.spec import ROUTER_HTTP_PORT
from pdserve.controller.names import LABEL_FOLLOWER_OF, LABEL_ROLE, ROLES, router_service_name

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Observation:
    """What the operator saw of one LLMService and its children."""

    name: str
    namespace: str
    generation: int
    autoscaling_enabled: bool
    desired: Mapping[str, int]
    workloads: Mapping[str, Obj | None]  # by role: Deployment or LeaderWorkerSet
    pods: Sequence[Obj] = ()
    previous: Obj = field(default_factory=dict)
    problem: tuple[str, str] | None = None  # (reason, message): invalid spec or failed apply
    # Whether this pass applied the children of `generation` (or found its spec invalid): only
    # then does observedGeneration reach it, so that Argo CD and kubectl wait see the new spec
    # served, not merely read.
    applied: bool = True


def _get(obj: Obj | None, *path: str, default: Any = None) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def _role_status(deployment: Obj | None, fallback_desired: int) -> dict[str, Any]:
    desired = int(_get(deployment, "spec", "replicas", default=fallback_desired))
    ready = int(_get(deployment, "status", "readyReplicas", default=0) or 0)
    return {"desiredReplicas": desired, "readyReplicas": ready, "summary": f"{ready}/{desired}"}


def _rolling(workload: Obj | None) -> bool:
    if workload is None:
        return True
    desired = int(_get(workload, "spec", "replicas", default=1))
    status = workload.get("status") or {}
    if _get(workload, "spec", "leaderWorkerTemplate") is not None:
        # A LeaderWorkerSet counts groups and reports no observedGeneration.
        updating = any(c.get("type") == "UpdateInProgress" and c.get("status") == "True"
                       for c in status.get("conditions") or [])
        return (updating or int(status.get("updatedReplicas", 0) or 0) < desired
                or int(status.get("readyReplicas", 0) or 0) < desired
                or int(status.get("replicas", 0) or 0) > desired)
    deployment = workload
    return (
        int(status.get("observedGeneration", 0)) < int(_get(deployment, "metadata", "generation",
                                                             default=0))
        or int(status.get("updatedReplicas", 0) or 0) < desired
        or int(status.get("availableReplicas", 0) or 0) < desired
        or int(status.get("replicas", 0) or 0) > desired
    )


def unschedulable_messages(pods: Sequence[Obj]) -> list[str]:
    """One line per role whose pods the scheduler cannot place, quoting the scheduler."""
    by_role: dict[str, list[str]] = {}
    for pod in pods:
        if _get(pod, "metadata", "deletionTimestamp"):
            continue
        for condition in _get(pod, "status", "conditions", default=[]) or []:
            if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                    and condition.get("reason") == "Unschedulable"):
                labels = _get(pod, "metadata", "labels", default={}) or {}
                role = labels.get(LABEL_ROLE) or (
                    f"{labels[LABEL_FOLLOWER_OF]} (other nodes of a replica)"
                    if LABEL_FOLLOWER_OF in labels else "unknown")
                by_role.setdefault(role, []).append(condition.get("message") or "unschedulable")
    lines = []
    for role, messages in sorted(by_role.items()):
        distinct = sorted(set(messages))
        count = len(messages)
        lines.append(f"{role}: {count} pod{'s' if count > 1 else ''} unschedulable: "
                     + "; ".join(distinct))
    return lines


def _replica_failures(workloads: Mapping[str, Obj | None]) -> list[str]:
    lines = []
    for role in ROLES:
        for condition in _get(workloads.get(role), "status", "conditions", default=[]) or []:
            failed = condition.get("type") == "ReplicaFailure" and condition.get("status") == "True"
            stuck = (condition.get("type") == "Progressing"
                     and condition.get("reason") == "ProgressDeadlineExceeded")
            if failed or stuck:
                lines.append(f"{role}: {condition.get('message') or condition.get('reason')}")
    return lines


def _condition(kind: str, ok: bool | None, reason: str, message: str) -> dict[str, Any]:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {"type": kind, "status": status, "reason": reason, "message": message}


def compute_status(seen: Observation, now: str) -> dict[str, Any]:
    """The whole operator-owned status (status.autoscaling is the planner's and left out)."""
    roles: dict[str, dict[str, Any]] = {
        role: _role_status(seen.workloads.get(role), seen.desired.get(role, 0))
        for role in ROLES
    }
    not_ready = [f"{role} {s['summary']}" for role, s in roles.items()
                 if s["readyReplicas"] < 1 or s["readyReplicas"] < s["desiredReplicas"]]
    missing = [role for role in ROLES if seen.workloads.get(role) is None]
    rolling = [role for role in ROLES if _rolling(seen.workloads.get(role))]
    degraded_lines = (
        ([seen.problem[1]] if seen.problem else [])
        + unschedulable_messages(seen.pods) + _replica_failures(seen.workloads)
    )
    if seen.problem:
        degraded_reason = seen.problem[0]
    elif unschedulable_messages(seen.pods):
        degraded_reason = "Unschedulable"
    elif degraded_lines:
        degraded_reason = "ReplicaFailure"
    else:
        degraded_reason = "AsExpected"
    conditions = [
        _condition("Ready", not not_ready and not missing,
                   "AllRolesReady" if not not_ready and not missing else "RolesNotReady",
                   "ready/desired: " + ", ".join(f"{r} {s['summary']}" for r, s in roles.items())),
        _condition("Progressing", bool(rolling),
                   "RollingOut" if rolling else "RolloutComplete",
                   f"rolling out: {', '.join(rolling)}" if rolling else "all roles rolled out"),
        _condition("Degraded", bool(degraded_lines), degraded_reason, "\n".join(degraded_lines)),
    ]
    if not seen.autoscaling_enabled:  # otherwise the planner's
        conditions.append(_condition("ScalingLimited", False, "AutoscalingDisabled",
                                     "autoscaling is off"))
    observed = seen.generation if seen.applied else int(
        _get(seen.previous, "observedGeneration", default=0) or 0)
    return {
        "observedGeneration": observed,
        "conditions": [_stamped(c, seen, now, observed) for c in conditions],
        **roles,
        "endpoint": f"http://{router_service_name(seen.name)}.{seen.namespace}.svc:"
                    f"{ROUTER_HTTP_PORT}",
    }


def _previous(seen: Observation, kind: str) -> Obj | None:
    for condition in _get(seen.previous, "conditions", default=[]) or []:
        if condition.get("type") == kind:
            return condition  # type: ignore[no-any-return]
    return None


def _stamped(condition: dict[str, Any], seen: Observation, now: str,
             observed: int) -> dict[str, Any]:
    previous = _previous(seen, condition["type"])
    unchanged = previous is not None and previous.get("status") == condition["status"]
    since = previous.get("lastTransitionTime") if unchanged and previous else None
    return {**condition, "observedGeneration": observed, "lastTransitionTime": since or now}


def status_changed(current: Obj | None, computed: Obj) -> bool:
    """Whether applying `computed` (one writer's share) over `current` would change anything;
    conditions are compared by type, the other writers' left out."""
    current = current or {}
    for key, value in computed.items():
        if key == "conditions":
            mine = {c["type"]: c for c in value}
            theirs = {c.get("type"): c for c in current.get("conditions") or []
                      if c.get("type") in mine}
            if theirs != mine:
                return True
        elif current.get(key) != value:
            return True
    return False

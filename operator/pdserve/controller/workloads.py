"""Which object runs each role (pure): the router and single-node worker roles run as
Deployments, a worker role whose replicas span several nodes as a LeaderWorkerSet. A role that
changed between the two leaves an object of the other kind behind, which the operator deletes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pdserve.api.spec import LLMServiceSpec
from pdserve.controller.names import LABEL_ROLE, WORKER_ROLES

Obj = Mapping[str, Any]
DEPLOYMENT = "Deployment"
LEADER_WORKER_SET = "LeaderWorkerSet"


def workload_kinds(spec: LLMServiceSpec | None) -> dict[str, str]:
    """The kind of each role's workload (without a valid spec: Deployments)."""
    kinds = {"router": DEPLOYMENT}
    for role in WORKER_ROLES:
        multi_node = spec is not None and getattr(spec, role).accelerator.nodes > 1
        kinds[role] = LEADER_WORKER_SET if multi_node else DEPLOYMENT
    return kinds


def _role(obj: Obj) -> str | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    role = labels.get(LABEL_ROLE)
    return role if isinstance(role, str) else None


def by_role(found: Iterable[tuple[str, Obj]], kinds: Mapping[str, str]) -> dict[str, Obj]:
    """Each role's workload of the wanted kind, from (kind, object) pairs."""
    return {role: obj for kind, obj in found
            if (role := _role(obj)) is not None and kinds.get(role) == kind}


def stale(found: Iterable[tuple[str, Obj]], kinds: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(kind, name, role) of the worker workloads of the kind a role no longer uses."""
    return [(kind, obj["metadata"]["name"], role) for kind, obj in found
            if (role := _role(obj)) in WORKER_ROLES and kinds.get(role) != kind]


def scaled_by(workload: Obj | None, field_manager: str) -> bool:
    """Whether `field_manager` owns the workload's spec.replicas (it set them, through the
    scale subresource or otherwise, after anyone else did)."""
    for entry in (workload or {}).get("metadata", {}).get("managedFields") or []:
        fields = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        if entry.get("manager") == field_manager and "f:replicas" in fields:
            return True
    return False

"""One level-based pass over an LLMService: render, apply, observe, compute status.

Every trigger (create, update, resume, the periodic timer, a child's event) runs the same
pass, so a child deleted or edited by hand is restored by the next one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from pydantic import ValidationError

from pdserve import __version__
from pdserve.api.spec import LLMServiceSpec
from pdserve.controller import metrics
from pdserve.controller.context import Owner, desired_replicas
from pdserve.controller.kube import Kube
from pdserve.controller.kv_auth import kv_auth_secret
from pdserve.controller.names import (
    PLANNER_FIELD_MANAGER,
    kv_auth_secret_name,
    ranks_policy_name,
    workers_service_name,
)
from pdserve.controller.render import render_children
from pdserve.controller.status import Observation, compute_status
from pdserve.controller.workloads import (
    LEADER_WORKER_SET,
    by_role,
    scaled_by,
    stale,
    workload_kinds,
)

IMAGE_ENV = "PDSERVE_IMAGE"
# Children are independent objects: applying them concurrently cuts a pass's latency to
# roughly one round trip instead of one per child.
_APPLIER = ThreadPoolExecutor(max_workers=12, thread_name_prefix="pdserve-apply")


def default_image() -> str:
    """The operator's own image (PDSERVE_IMAGE, set by the chart), else pdserve:<version>."""
    return os.environ.get(IMAGE_ENV) or f"pdserve:{__version__}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one human line per problem, with Kubernetes field paths."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"])
        lines.append(f"spec.{where}: {problem['msg']}" if where else f"spec: {problem['msg']}")
    return "; ".join(lines)


def _api_message(exc: client.ApiException) -> str:
    return f"{exc.status} {exc.reason}: {(exc.body or '')[:500]}"


def reconcile(kube: Kube, body: Mapping[str, Any], *, apply: bool,
              trigger: str) -> dict[str, Any]:
    """Bring the children in line with the spec (when `apply`) and return the new status."""
    started = time.monotonic()
    meta = body["metadata"]
    owner = Owner(meta["name"], meta["namespace"], meta["uid"])
    status: Mapping[str, Any] = body.get("status") or {}
    problem: tuple[str, str] | None = None
    desired: dict[str, int] = {}
    spec: LLMServiceSpec | None = None
    try:
        spec = LLMServiceSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        problem = ("InvalidSpec", f"the spec cannot be served: {validation_message(exc)}")
    if spec is not None:
        decided = status.get("autoscaling")
        desired = {"prefill": desired_replicas(spec, "prefill", decided),
                   "decode": desired_replicas(spec, "decode", decided),
                   "router": spec.router.replicas}
        if apply:
            problem = _apply_all(kube, spec, owner, decided)
    kinds = workload_kinds(spec)
    found = kube.workloads(owner.namespace, owner.name)
    if apply and spec is not None:
        _delete_stale(kube, owner, found, kinds)
    pods = kube.pods(owner.namespace, owner.name)
    seen = Observation(
        name=owner.name, namespace=owner.namespace, generation=int(meta.get("generation", 0)),
        autoscaling_enabled=bool(spec and spec.autoscaling.enabled), desired=desired,
        workloads=by_role(found, kinds), pods=pods, previous=status, problem=problem,
        applied=apply and (problem is None or problem[0] == "InvalidSpec"),
    )
    computed = compute_status(seen, _now())
    metrics.RECONCILES.labels(trigger, "problem" if problem else "ok").inc()
    metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
    for condition in computed["conditions"]:
        metrics.CONDITION_TRUE.labels(owner.namespace, owner.name, condition["type"]).set(
            1 if condition["status"] == "True" else 0)
    return computed


def _delete_stale(kube: Kube, owner: Owner, found: list[tuple[str, dict[str, Any]]],
                  kinds: Mapping[str, str]) -> None:
    """A role moved between one and several nodes a replica: remove its old workload (and
    the policy that opened the old replicas' ranks to each other)."""
    for kind, name, role in stale(found, kinds):
        kube.delete(kind, owner.namespace, name)
        if kind == LEADER_WORKER_SET:
            kube.delete("NetworkPolicy", owner.namespace,
                        ranks_policy_name(owner.name, role))  # type: ignore[arg-type]


def _apply_one(kube: Kube, child: Mapping[str, Any]) -> str | None:
    try:
        kube.apply(child)
    except client.ApiException as exc:
        metrics.APPLY_ERRORS.labels(child["kind"]).inc()
        return f"{child['kind']} {child['metadata']['name']}: {_api_message(exc)}"
    return None


def _apply_all(kube: Kube, spec: LLMServiceSpec, owner: Owner,
               decided: Mapping[str, Any] | None) -> tuple[str, str] | None:
    planner_scaled: set[str] = set()
    if spec.autoscaling.enabled:  # roles whose replicas the planner already set itself
        current = by_role(kube.workloads(owner.namespace, owner.name), workload_kinds(spec))
        planner_scaled = {role for role, workload in current.items()
                          if scaled_by(workload, PLANNER_FIELD_MANAGER)}
    children = render_children(spec, owner, spec.image or default_image(),
                               dict(decided) if decided else None, planner_scaled)
    try:  # before the pods that mount it
        kube.create_if_absent(kv_auth_secret(owner))
    except client.ApiException as exc:
        metrics.APPLY_ERRORS.labels("Secret").inc()
        return ("ApplyFailed", f"Secret {kv_auth_secret_name(owner.name)}: {_api_message(exc)}")
    failures = [failure for failure in _APPLIER.map(lambda child: _apply_one(kube, child), children)
                if failure]
    if not spec.network_policy.enabled:
        for role in ("prefill", "decode"):
            kube.delete("NetworkPolicy", owner.namespace, workers_service_name(owner.name, role))
            if getattr(spec, role).accelerator.nodes > 1:
                kube.delete("NetworkPolicy", owner.namespace, ranks_policy_name(owner.name, role))
    if failures:
        return ("ApplyFailed", "children the apiserver refused: " + "; ".join(failures))
    return None

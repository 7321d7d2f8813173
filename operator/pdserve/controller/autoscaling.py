"""The planner's loop: a periodic job (periodic.py) per LLMService with autoscaling enabled.

Each interval it queries Prometheus, runs the pure planner, records the decision in
status.autoscaling (which the operator renders into the Deployments), sets the Deployments'
replicas through the scale subresource under its own field manager (never the LLMService spec,
which Argo CD would fight), annotates pods with pod-deletion-cost before a scale-down, and
reports the decision as an Event, the ScalingLimited condition and operator metrics."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from pydantic import ValidationError

from pdserve.api.spec import LLMServiceSpec
from pdserve.autoscaler import Decision, PlannerState, Replicas, plan
from pdserve.autoscaler.deletion_cost import DELETION_COST_ANNOTATION, deletion_costs
from pdserve.autoscaler.prometheus_source import PrometheusSource, PrometheusUnavailable, Selector
from pdserve.controller import periodic
from pdserve.controller import planner_metrics as metrics
from pdserve.controller.kube import Kube
from pdserve.controller.names import (
    LABEL_ROLE,
    PLANNER_FIELD_MANAGER,
    WORKER_ROLES,
    deployment_name,
)
from pdserve.controller.planner_inputs import CONDITION as LIMITED_CONDITION
from pdserve.controller.planner_inputs import (
    autoscaling_status,
    limited_condition,
    planner_config,
    replicas_from_cluster,
    scaling_limited,
)
from pdserve.controller.workloads import DEPLOYMENT, by_role, workload_kinds

# The timer ticks often; each LLMService is planned every spec.autoscaling.intervalSeconds.
TICK_SECONDS = 5.0
MIN_RATE_WINDOW_SECONDS = 60


def autoscaling_enabled(spec: Mapping[str, Any], **_: Any) -> bool:
    return bool((spec.get("autoscaling") or {}).get("enabled"))


def now() -> tuple[float, datetime, str]:
    moment = datetime.now(UTC)
    return time.time(), moment, moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def live_spec(body: Mapping[str, Any], spec: Mapping[str, Any],
              namespace: str | None) -> LLMServiceSpec | None:
    """The parsed spec of a namespaced LLMService not being deleted; None otherwise (an invalid
    spec: the reconcile handler reports InvalidSpec)."""
    if namespace is None or body.get("metadata", {}).get("deletionTimestamp"):
        return None
    try:
        return LLMServiceSpec.model_validate(dict(spec))
    except ValidationError:
        return None


@periodic.job("autoscaling", TICK_SECONDS, autoscaling_enabled)
def autoscale(body: Mapping[str, Any], spec: Mapping[str, Any], name: str, namespace: str | None,
              memo: Any, **_: Any) -> None:
    parsed = live_spec(body, spec, namespace)
    if parsed is None or namespace is None:
        return
    clock, moment, stamp = now()
    last = memo.get("planner_last_run")
    if last is not None and clock - last < parsed.autoscaling.interval_seconds:
        return
    memo["planner_last_run"] = clock
    kube: Kube = memo.kube
    kinds = workload_kinds(parsed)
    workloads = by_role(kube.workloads(namespace, name), kinds)
    if not all(role in workloads for role in WORKER_ROLES):
        return  # the operator has not created them yet
    replicas = replicas_from_cluster(workloads, kube.pods(namespace, name), LABEL_ROLE, moment)
    url = parsed.autoscaling.prometheus_url or ""
    source = prometheus_source(memo, url)
    selector = Selector(namespace, name, max(MIN_RATE_WINDOW_SECONDS,
                                             4 * parsed.autoscaling.interval_seconds))
    detail = ""
    # Exported at 0 from the first run, so that rate() and increase() of it are 0, not empty.
    errors = metrics.PROMETHEUS_ERRORS.labels(namespace, name)
    try:
        snapshot = source.snapshot(selector, clock)
    except PrometheusUnavailable as exc:
        snapshot, detail = None, f"{url}: {exc}"[:512]
        errors.inc()
    state = memo.get("planner_state") or PlannerState()
    decision = plan(snapshot, replicas, planner_config(parsed), state, clock)
    memo["planner_state"] = decision.state
    _record(kube, body, decision, detail, stamp)
    if decision.changes(replicas):
        _scale(kube, namespace, name, kinds, replicas, decision, source, selector)
    _announce(kube, body, memo, decision, replicas, detail, stamp)
    _export(namespace, name, decision)


def prometheus_source(memo: Any, url: str) -> PrometheusSource:
    """The object's Prometheus client, kept in its memo (shared by the planner and the
    recommendation)."""
    cached = memo.get("planner_source")
    if cached is None or cached[0] != url:
        cached = (url, PrometheusSource(url))
        memo["planner_source"] = cached
    source: PrometheusSource = cached[1]
    return source


def _record(kube: Kube, body: Mapping[str, Any], decision: Decision, detail: str,
            stamp: str) -> None:
    """status.autoscaling first: the operator renders replicas from it, so a reconcile racing
    the scale below already renders the new numbers."""
    meta = body.get("metadata", {})
    limited, reason, message = limited_condition(decision, detail)
    condition = scaling_limited(_previous_limited(body), limited, reason, message,
                                meta.get("generation"), stamp)
    kube.apply_status(meta["namespace"], meta["name"], {
        "autoscaling": autoscaling_status(decision, stamp, detail),
        "conditions": [condition],
    }, PLANNER_FIELD_MANAGER)


def _previous_limited(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition.get("type") == LIMITED_CONDITION:
            return condition  # type: ignore[no-any-return]
    return None


def _scale(kube: Kube, namespace: str, name: str, kinds: Mapping[str, str], replicas: Replicas,
           decision: Decision, source: PrometheusSource, selector: Selector) -> None:
    core = client.CoreV1Api(kube.api)
    wanted = ((replicas.prefill.desired, decision.prefill_replicas),
              (replicas.decode.desired, decision.decode_replicas))
    for role, (before, after) in zip(WORKER_ROLES, wanted, strict=True):
        # A LeaderWorkerSet removes its highest-numbered groups: deletion costs do not apply.
        if after < before and kinds[role] == DEPLOYMENT:
            _mark_deletion_costs(core, namespace, source, selector, role)
        if after != before:
            kube.scale(kinds[role], namespace, deployment_name(name, role), after,
                       PLANNER_FIELD_MANAGER)


def _mark_deletion_costs(core: client.CoreV1Api, namespace: str, source: PrometheusSource,
                         selector: Selector, role: str) -> None:
    """Annotate pods so the ReplicaSet removes the least busy first (best effort: without
    per-pod figures the ReplicaSet's own order applies)."""
    try:
        in_flight = source.in_flight_by_pod(selector, role)
    except PrometheusUnavailable:
        return
    for pod, cost in deletion_costs(in_flight).items():
        patch = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost}}}
        try:
            core.patch_namespaced_pod(pod, namespace, patch, field_manager=PLANNER_FIELD_MANAGER)
        except client.ApiException as exc:
            if exc.status != 404:  # a pod gone since the scrape is fine
                raise


def _announce(kube: Kube, body: Mapping[str, Any], memo: Any, decision: Decision,
              replicas: Replicas, detail: str, stamp: str) -> None:
    """An Event per scaling action, and one when the planner starts holding or is limited."""
    if decision.changes(replicas):
        _event(kube, body, "Normal", decision.reason, decision.message, stamp)
    limited, reason, message = limited_condition(decision, detail)
    previous = memo.get("planner_last_limited")
    if limited and previous != reason:
        _event(kube, body, "Warning", reason, message, stamp)
    memo["planner_last_limited"] = reason if limited else None


def _event(kube: Kube, body: Mapping[str, Any], kind: str, reason: str, message: str,
           stamp: str) -> None:
    kube.post_event(body, kind, reason, message, component=PLANNER_FIELD_MANAGER, stamp=stamp)


def _export(namespace: str, name: str, decision: Decision) -> None:
    metrics.PLANNER_DECISIONS.labels(namespace, name, decision.reason).inc()
    metrics.PLANNER_REPLICAS.labels(namespace, name, "prefill").set(decision.prefill_replicas)
    metrics.PLANNER_REPLICAS.labels(namespace, name, "decode").set(decision.decode_replicas)
    for role in WORKER_ROLES:
        need = decision.inputs.get(f"{role}Need")
        if isinstance(need, float | int):
            metrics.PLANNER_NEED.labels(namespace, name, role).set(need)
    limited, _, _ = limited_condition(decision)
    metrics.PLANNER_LIMITED.labels(namespace, name).set(1 if limited else 0)

"""status.recommendation: for an LLMService with autoscaling on, `pdserve plan` on the workload
it serves (the planner's Prometheus inputs) at its own targets, at a slow interval, and an
Event when another configuration would be at least 20% cheaper. Advice only: the spec is the
user's (or Argo CD's), never changed here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pdserve.api.status import ObservedWorkload, RecommendationStatus, RolePlan
from pdserve.autoscaler.prometheus_source import PrometheusUnavailable, Selector
from pdserve.controller import periodic
from pdserve.controller.autoscaling import (
    MIN_RATE_WINDOW_SECONDS,
    TICK_SECONDS,
    autoscaling_enabled,
    live_spec,
    now,
    prometheus_source,
)
from pdserve.controller.kube import Kube
from pdserve.controller.names import (
    PLANNER_FIELD_MANAGER,
    RECOMMENDER_FIELD_MANAGER,
    WORKER_ROLES,
)
from pdserve.planning.recommend import (
    DEFAULT_INTERVAL_SECONDS,
    NOTABLE_SAVING,
    Recommendation,
    recommend,
)
from pdserve.planning.shapes import PlanInputError

CHEAPER_REASON = "CheaperConfiguration"


def _role_plan(recommendation: Recommendation, role: str) -> RolePlan:
    candidate = recommendation.candidate
    shape = candidate.decode_shape
    replicas = candidate.deployment.decode_replicas if role == "decode" else 0
    if role == "prefill" and candidate.prefill_shape is not None:
        shape, replicas = candidate.prefill_shape, candidate.deployment.prefill_replicas
    return RolePlan(accelerator=shape.accelerator.kind, count=shape.perf.chips,
                    replicas=replicas)


def _pods(plan: RolePlan) -> str:
    return f"{plan.replicas} x {plan.accelerator} x{plan.count}"


def recommendation_status(recommendation: Recommendation, stamp: str) -> RecommendationStatus:
    prefill, decode = (_role_plan(recommendation, role) for role in WORKER_ROLES)
    deployment = recommendation.candidate.deployment
    observed = recommendation.observed
    cost = recommendation.candidate.cost_per_hour
    layout = (f"prefill {_pods(prefill)}, decode {_pods(decode)}" if deployment.disaggregated
              else f"aggregated on {_pods(decode)}")
    message = (f"{layout}: ${cost:.2f}/hour vs ${recommendation.current_cost_per_hour:.2f} "
               f"now ({recommendation.saving:+.0%} saving) for {observed.rate:.3g} req/s of "
               f"{observed.mean_input_tokens:.0f} prompt / {observed.mean_output_tokens:.0f} "
               "generated tokens")
    return RecommendationStatus(
        computed_time=stamp, prefill=prefill, decode=decode,
        disaggregated=deployment.disaggregated,
        short_prompt_threshold=deployment.short_prompt_threshold, cost_per_hour=round(cost, 4),
        current_cost_per_hour=round(recommendation.current_cost_per_hour, 4),
        saving=round(recommendation.saving, 4),
        observed=ObservedWorkload(rate_rps=round(observed.rate, 4),
                                  mean_input_tokens=round(observed.mean_input_tokens, 1),
                                  mean_output_tokens=round(observed.mean_output_tokens, 1),
                                  prefix_hit=round(observed.workload.prefix_hit, 4)),
        message=message[:4096])


def _as_status(status: RecommendationStatus) -> dict[str, Any]:
    """The recommender's share; fields it leaves out (None) are removed by the apply."""
    dumped: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


def _current_replicas(body: Mapping[str, Any]) -> dict[str, int]:
    status = body.get("status") or {}
    return {role: int((status.get(role) or {}).get("desiredReplicas") or 0)
            for role in WORKER_ROLES}


@periodic.job("recommendation", TICK_SECONDS, autoscaling_enabled)
def recommend_configuration(body: Mapping[str, Any], spec: Mapping[str, Any], name: str,
                            namespace: str | None, memo: Any, **_: Any) -> None:
    parsed = live_spec(body, spec, namespace)
    if parsed is None or namespace is None:
        return
    clock, _when, stamp = now()
    interval = float(memo.get("recommendation_interval_seconds") or DEFAULT_INTERVAL_SECONDS)
    last = memo.get("recommendation_last_run")
    if last is not None and clock - last < interval:
        return
    memo["recommendation_last_run"] = clock
    url = parsed.autoscaling.prometheus_url or ""
    selector = Selector(namespace, name, max(MIN_RATE_WINDOW_SECONDS,
                                             4 * parsed.autoscaling.interval_seconds))
    kube: Kube = memo.kube
    found: Recommendation | None = None
    try:
        values = prometheus_source(memo, url).values(selector)
        found = recommend(parsed, values, _current_replicas(body), f"{namespace}/{name}")
        status = recommendation_status(found, stamp)
    except PrometheusUnavailable as down:
        status = RecommendationStatus(computed_time=stamp, message=f"{url}: {down}"[:4096])
    except PlanInputError as none:
        status = RecommendationStatus(computed_time=stamp, message=str(none)[:4096])
    kube.apply_status(namespace, name, {"recommendation": _as_status(status)},
                      RECOMMENDER_FIELD_MANAGER)
    if found is not None and found.saving >= NOTABLE_SAVING:
        kube.post_event(body, "Normal", CHEAPER_REASON, status.message,
                        component=PLANNER_FIELD_MANAGER, stamp=stamp)

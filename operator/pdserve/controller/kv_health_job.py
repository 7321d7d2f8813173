"""KVTransferHealthy from the data plane: a periodic job (periodic.py) per LLMService, the
condition's one writer (field manager pdserve-kv-health, owning that condition only).

Every `--kv-health-interval` seconds it reads the counters of the last two intervals from the
Prometheus the planner reads (spec.autoscaling.prometheusUrl, enabled or not, by the same label
contract), or, where none is named, from the router pods' own /metrics between two reads; judges
them (kv_health.assess, pure); applies the condition; posts an Event when its status changes;
and exports it as pdserve_operator_llmservice_condition."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pdserve.api.resolve import initial_replicas
from pdserve.api.spec import LLMServiceSpec
from pdserve.autoscaler.prometheus_source import PrometheusUnavailable, Selector
from pdserve.controller import kv_health, periodic, router_counters
from pdserve.controller import metrics as operator_metrics
from pdserve.controller.autoscaling import live_spec, now, prometheus_source
from pdserve.controller.kube import Kube
from pdserve.controller.kv_health import CONDITION, DEFAULT_INTERVAL_SECONDS, Verdict
from pdserve.controller.names import KV_HEALTH_FIELD_MANAGER

TICK_SECONDS = 1.0
# The window is two intervals: the default 60 s holds four samples of the usual 15 s scrape
# (increase() needs two); a short interval (tests) still needs a fast scrape.
MIN_WINDOW_SECONDS = 10
ROUTER_SOURCE = "the router pods' counters: the LLMService names no Prometheus"


@periodic.job("kv-transfer-health", TICK_SECONDS)
def kv_transfer_health(body: Mapping[str, Any], spec: Mapping[str, Any], name: str,
                       namespace: str | None, uid: str | None, memo: Any, **_: Any) -> None:
    parsed = live_spec(body, spec, namespace)
    if parsed is None or namespace is None:
        return
    clock, _moment, stamp = now()
    interval = float(memo.get("kv_health_interval_seconds") or DEFAULT_INTERVAL_SECONDS)
    # The first run at a per-object offset within one interval: LLMServices found at startup
    # are judged spread over the interval, not all in one burst.
    due = memo.get("kv_health_due")
    if due is None:
        due = clock + periodic.start_offset(uid or name, interval)
    if clock < due:
        memo["kv_health_due"] = due
        return
    memo["kv_health_due"] = clock + interval
    kube: Kube = memo.kube
    verdict = kv_health.no_transfer_intended(_prefill_replicas(body, parsed))
    if verdict is None and parsed.autoscaling.prometheus_url:
        verdict = _from_prometheus(memo, parsed.autoscaling.prometheus_url, namespace, name,
                                   max(MIN_WINDOW_SECONDS, round(2 * interval)))
    elif verdict is None:
        verdict = _from_routers(kube, memo, namespace, name, clock)
    previous = _previous(body)
    entry = kv_health.condition(verdict, memo.get("kv_health_applied") or previous,
                                (body.get("metadata") or {}).get("generation"), stamp)
    if entry != memo.get("kv_health_applied"):  # hundreds of idle LLMServices write nothing
        if not kube.apply_status(namespace, name, {"conditions": [entry]},
                                 KV_HEALTH_FIELD_MANAGER):
            return  # deleted meanwhile
        memo["kv_health_applied"] = entry
    _announce(kube, body, memo, verdict, previous, stamp)
    operator_metrics.CONDITION_TRUE.labels(namespace, name, CONDITION).set(
        1 if verdict.status == "True" else 0)


def _prefill_replicas(body: Mapping[str, Any], spec: LLMServiceSpec) -> int:
    """The replicas the reconciler last rendered for prefill (the planner's decision
    included), else the spec's."""
    desired = ((body.get("status") or {}).get("prefill") or {}).get("desiredReplicas")
    return int(desired) if isinstance(desired, int) else initial_replicas(spec, "prefill")


def _from_prometheus(memo: Any, url: str, namespace: str, name: str, window: int) -> Verdict:
    selector = Selector(namespace, name, window)
    source = prometheus_source(memo, url)
    try:
        results = {figure: source.series(promql)
                   for figure, promql in kv_health.queries(selector).items()}
    except PrometheusUnavailable as exc:
        return kv_health.prometheus_unavailable(f"{url}: {exc}")
    return kv_health.assess(kv_health.figures_from(results, window), f"Prometheus {url}")


def _from_routers(kube: Kube, memo: Any, namespace: str, name: str, clock: float) -> Verdict:
    """The routers' decisions since the last read (kept in the memo)."""
    counters = router_counters.read(kube.pods(namespace, name))
    previous = memo.get("kv_health_router_counters")
    memo["kv_health_router_counters"] = (clock, counters)
    if not counters:
        return kv_health.not_reported("no ready router pod answered /metrics, and the "
                                      "LLMService names no Prometheus "
                                      "(spec.autoscaling.prometheusUrl)")
    figures = None if previous is None else kv_health.figures_between(
        previous[1], counters, clock - previous[0])
    if figures is None:
        return kv_health.not_reported("first read of these router pods' counters; judged "
                                      "over the next interval")
    return kv_health.assess(figures, ROUTER_SOURCE)


def _previous(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for found in (body.get("status") or {}).get("conditions") or []:
        if found.get("type") == CONDITION:
            return found  # type: ignore[no-any-return]
    return None


def _announce(kube: Kube, body: Mapping[str, Any], memo: Any, verdict: Verdict,
              previous: Mapping[str, Any] | None, stamp: str) -> None:
    """An Event on each change of the condition's status or reason (a new cause of a False
    one too); the memo remembers the last one applied: the indexed body can lag it."""
    before = memo.get("kv_health_last") or (
        (previous.get("status"), previous.get("reason")) if previous else None)
    memo["kv_health_last"] = (verdict.status, verdict.reason)
    if before == memo["kv_health_last"] or (before is None and verdict.status == "Unknown"):
        return
    kube.post_event(body, "Warning" if verdict.status == "False" else "Normal",
                    verdict.reason, f"{CONDITION} {verdict.status}: {verdict.message}",
                    component=KV_HEALTH_FIELD_MANAGER, stamp=stamp)

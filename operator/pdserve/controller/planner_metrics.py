"""The planner's operator metrics (exported with the operator's own /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from pdserve.autoscaler.scrape_labels import LLMSERVICE, NAMESPACE, ROLE

# The LLMService a series describes, under the names its pods' series carry.
_LABELS = [NAMESPACE, LLMSERVICE]

PLANNER_REPLICAS = Gauge(
    "pdserve_operator_planner_replicas", "Replicas the planner decided, by role.",
    [*_LABELS, ROLE],
)
PLANNER_NEED = Gauge(
    "pdserve_operator_planner_need_replicas",
    "Replicas the planner estimated each role needs (fractional, before bounds and budget).",
    [*_LABELS, ROLE],
)
PLANNER_DECISIONS = Counter(
    "pdserve_operator_planner_decisions_total", "Planner decisions by reason.",
    [*_LABELS, "reason"],
)
PLANNER_LIMITED = Gauge(
    "pdserve_operator_planner_scaling_limited", "1 while ScalingLimited is True.", _LABELS,
)
PROMETHEUS_ERRORS = Counter(
    "pdserve_operator_planner_prometheus_errors_total", "Planner queries Prometheus failed.",
    _LABELS,
)

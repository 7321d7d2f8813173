"""The operator's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from pdserve.autoscaler.scrape_labels import LLMSERVICE, NAMESPACE

RECONCILES = Counter(
    "pdserve_operator_reconciles_total", "LLMService reconciliations.", ["trigger", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "pdserve_operator_reconcile_seconds", "Time to render, apply and observe one LLMService.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
APPLY_ERRORS = Counter(
    "pdserve_operator_apply_errors_total", "Children the apiserver refused.", ["kind"],
)
STATUS_PATCHES = Counter(
    "pdserve_operator_status_patches_total", "Status updates written to LLMServices.",
)
CONDITION_TRUE = Gauge(
    "pdserve_operator_llmservice_condition", "1 when the condition is True.",
    [NAMESPACE, LLMSERVICE, "condition"],
)

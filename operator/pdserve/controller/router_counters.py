"""The router pods' disaggregation counters read from their own /metrics: KVTransferHealthy's
data where an LLMService names no Prometheus (each pod is read, not the Service, which would
answer from one replica only)."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pdserve.api.spec import ROUTER_HTTP_PORT
from pdserve.controller.kv_health import DECISIONS_METRIC
from pdserve.controller.names import LABEL_ROLE
from pdserve.controller.planner_inputs import pod_phase

TIMEOUT_SECONDS = 2.0


def decisions(page: str) -> dict[str, float]:
    """reason -> cumulative count, from one /metrics page."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == DECISIONS_METRIC:
                reason = sample.labels.get("reason", "")
                found[reason] = found.get(reason, 0.0) + sample.value
    return found


def ready_router_addresses(pods: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """pod name -> its /metrics URL, for the LLMService's ready router pods."""
    found = {}
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        ip = (pod.get("status") or {}).get("podIP")
        if labels.get(LABEL_ROLE) == "router" and ip and pod_phase(pod) == "ready":
            host = f"[{ip}]" if ":" in ip else ip
            found[pod["metadata"]["name"]] = f"http://{host}:{ROUTER_HTTP_PORT}/metrics"
    return found


def read(pods: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """pod -> reason -> count, for every ready router pod that answered."""
    counters = {}
    for pod, url in ready_router_addresses(pods).items():
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as resp:
                counters[pod] = decisions(resp.read().decode())
        except (OSError, ValueError):  # a pod that does not answer is left out this time
            continue
    return counters

"""The planner as users run it: in the in-cluster operator, reading the Prometheus that found
the pods by itself, scaling a real decode Deployment up under a story load and down when the
load falls, with every request answered while pods drain; the Grafana dashboard's panels all
show data meanwhile."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest

from e2e.autoscaling_load import Load
from e2e.cluster.session import Cluster
from e2e.grafana_dashboard import concrete, panel_queries
from e2e.operator_harness import Api, wait_until
from e2e.real_node import Placement
from e2e.real_stack import (
    RECOMMENDATION_INTERVAL_S,
    ClusterPrometheus,
    apply_and_wait_ready,
    cpu_service_spec,
    pod_ready,
    role_pods,
)
from pdserve.api.spec import ROUTER_HTTP_PORT

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.prometheus, pytest.mark.slow]

NAME = "story"
INTERVAL_S = 5


def _story_spec(placement: Placement, prometheus_url: str) -> dict[str, Any]:
    return cpu_service_spec(placement, autoscaling={
        "enabled": True, "prometheusUrl": prometheus_url, "intervalSeconds": INTERVAL_S,
        "slo": {"ttftMilliseconds": 2000, "tpotMilliseconds": 200},
        "prefill": {"minReplicas": 1, "maxReplicas": 1},
        "decode": {"minReplicas": 1, "maxReplicas": 3},
        "acceleratorBudget": 4, "scaleUpStabilizationSeconds": 0,
        "scaleDownStabilizationSeconds": 20, "maxStep": 2,
    })


def _decode_replicas(api: Api, namespace: str) -> int:
    replicas: int = api.apps.read_namespaced_deployment(f"{NAME}-decode", namespace).spec.replicas
    return replicas


def _empty_panels(prometheus: ClusterPrometheus, namespace: str) -> list[str]:
    values = {"namespace": namespace, "llmservice": NAME, "__rate_interval": "1m"}
    empty = []
    for query in panel_queries():
        params = urllib.parse.urlencode({"query": concrete(query.expr, values)})
        with urllib.request.urlopen(f"{prometheus.server.url}/api/v1/query?{params}",
                                    timeout=10) as resp:
            result = json.load(resp)["data"]["result"]
        if not any(math.isfinite(float(s["value"][1])) for s in result):
            empty.append(f"{query.panel} ({query.ref_id})")
    return empty


@pytest.mark.timeout(1500)
def test_planner_scales_real_decode_pods_and_they_drain(
        cluster: Cluster, placement: Placement, real_release: str,
        cluster_prometheus: ClusterPrometheus) -> None:
    api = Api(cluster)
    apply_and_wait_ready(cluster, api, real_release, NAME,
                         _story_spec(placement, cluster_prometheus.in_cluster_url), pods=3)
    router = cluster.get("service", f"{NAME}-router", "-n", real_release)
    base_url = f"http://{router['spec']['clusterIP']}:{ROUTER_HTTP_PORT}"
    with Load(base_url, "stories", rate=3.0, story_tokens=160).running() as load:
        wait_until(lambda: _decode_replicas(api, real_release) >= 2, 420,
                   "the planner to grow decode under the story load")
        wait_until(lambda: sum(pod_ready(p) for p in role_pods(api, real_release, NAME,
                                                                  "decode")) >= 2,
                   300, "a second decode pod Ready")
        deadline = time.monotonic() + 120
        while (empty := _empty_panels(cluster_prometheus, real_release)) and (
                time.monotonic() < deadline):
            time.sleep(5)
        assert empty == [], f"dashboard panels with no data under load: {empty}"
        recommendation = wait_until(lambda: _recommendation(api, real_release),
                                    3 * RECOMMENDATION_INTERVAL_S + 60,
                                    "status.recommendation for the story load")
        grown = _decode_replicas(api, real_release)

        load.switch("stories", rate=0.2)
        wait_until(lambda: _decode_replicas(api, real_release) < grown, 420,
                   f"the planner to shrink decode from {grown} as the load falls")
        wait_until(lambda: len(role_pods(api, real_release, NAME, "decode"))
                   == _decode_replicas(api, real_release), 180,
                   "the removed decode pods to drain and go")
        answered, failed = load.sent, load.failed
    assert answered > 0
    assert failed == 0, f"{failed} of {answered} requests failed while decode scaled"
    status = api.llmservice(real_release, NAME)
    assert status is not None and status["status"]["autoscaling"]["lastDecisionTime"]
    # The operator's advice on the workload it served under load, from the same inputs.
    observed = recommendation["observed"]
    assert observed["rateRps"] > 0 and observed["meanOutputTokens"] > 10, recommendation
    assert recommendation["decode"]["replicas"] >= 1 and recommendation["costPerHour"] > 0
    assert recommendation["currentCostPerHour"] > 0 and "/hour" in recommendation["message"]


def _recommendation(api: Api, namespace: str) -> dict[str, Any] | None:
    """status.recommendation once it plans for observed traffic."""
    service = api.llmservice(namespace, NAME) or {}
    found: dict[str, Any] | None = (service.get("status") or {}).get("recommendation")
    return found if found and found.get("observed") else None

"""Prometheus finds pdserve's pods by itself: manifests/prometheus/scrape-config.yaml against
the real apiserver (pod discovery with a ServiceAccount token), scraping real pods under the
labels the planner queries; every planner query and every Grafana panel returns data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.autoscaling_load import Load
from e2e.cluster.session import Cluster
from e2e.operator_harness import Api, wait_until
from e2e.real_stack import ClusterPrometheus, role_pods
from pdserve.api.spec import ROUTER_HTTP_PORT
from pdserve.autoscaler.prometheus_source import KV_SEQUENCES_MIN_USAGE, Selector, queries
from pdserve.autoscaler.scrape_labels import LLMSERVICE, NAMESPACE, POD, ROLE

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.prometheus, pytest.mark.slow]


def _api(prometheus: ClusterPrometheus, path: str, **params: str) -> Any:
    url = f"{prometheus.server.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]


def _query(prometheus: ClusterPrometheus, promql: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = _api(prometheus, "query", query=promql)["result"]
    return result


def _finite(result: list[dict[str, Any]]) -> bool:
    return bool(result) and all(math.isfinite(float(s["value"][1])) for s in result)


@pytest.fixture(scope="module")
def load(cluster: Cluster, real_release: str, chat_service: str) -> Iterator[Load]:
    """Summaries through the router's Service (long prompts: prefill, a handoff, decode)."""
    router = cluster.get("service", f"{chat_service}-router", "-n", real_release)
    base_url = f"http://{router['spec']['clusterIP']}:{ROUTER_HTTP_PORT}"
    with Load(base_url, "summaries", rate=1.0, summary_words=200).running() as running:
        yield running


def test_prometheus_discovers_every_pod_under_the_planner_labels(
        api: Api, real_release: str, chat_service: str,
        cluster_prometheus: ClusterPrometheus) -> None:
    pods = {p["metadata"]["name"]: p for p in role_pods(api, real_release, chat_service)}

    def discovered() -> dict[str, dict[str, str]] | None:
        active = _api(cluster_prometheus, "targets", state="active")["activeTargets"]
        found = {t["labels"].get(POD, ""): t for t in active if t["health"] == "up"}
        return found if set(pods) <= set(found) else None

    found = wait_until(discovered, 90, f"Prometheus to scrape the pods {sorted(pods)}")
    for name, pod in pods.items():
        labels = found[name]["labels"]
        assert labels[NAMESPACE] == real_release
        assert labels[LLMSERVICE] == chat_service
        assert labels[ROLE] == pod["metadata"]["labels"]["pdserve.dev/role"]
        assert found[name]["scrapeUrl"].startswith(f"http://{pod['status']['podIP']}:")


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Api:
    return Api(cluster)


def test_every_planner_query_returns_data_for_a_serving_llmservice(
        real_release: str, chat_service: str, cluster_prometheus: ClusterPrometheus,
        load: Load) -> None:
    selector = Selector(real_release, chat_service, window_seconds=30)
    wanted = queries(selector)

    def low_kv_usage() -> bool:
        usage = _query(cluster_prometheus, wanted["decode_kv_usage"])
        return _finite(usage) and float(usage[0]["value"][1]) < KV_SEQUENCES_MIN_USAGE

    def missing() -> list[str] | None:
        empty = [name for name, promql in wanted.items()
                 if not _finite(_query(cluster_prometheus, promql))]
        if "decode_kv_sequences" in empty and low_kv_usage():  # empty by design (see the query)
            empty.remove("decode_kv_sequences")
        return empty or None

    deadline = time.monotonic() + 120
    left = missing()
    while left and time.monotonic() < deadline:
        time.sleep(3)
        left = missing()
    assert not left, f"planner queries with no data for a serving LLMService: {left}"
    assert load.sent > 0 and load.failed == 0


@pytest.mark.timeout(180)
def test_plan_reads_the_served_workload_from_prometheus(
        real_release: str, chat_service: str, cluster_prometheus: ClusterPrometheus,
        load: Load) -> None:
    """`pdserve plan --from-prometheus` on the real scrape: summaries at ~1 req/s with answers
    of at most 4 tokens come back as that workload, and a plan for it."""
    command = [sys.executable, "-m", "pdserve", "plan", "--model", "qwen3-0.6b",
               "--ttft-ms", "2000", "--tpot-ms", "100", "--output", "json",
               "--from-prometheus", cluster_prometheus.server.url, "--window-seconds", "30",
               "--llmservice", f"{real_release}/{chat_service}"]

    def planned() -> dict[str, Any] | None:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode in (0, 2), done.stderr
        found: dict[str, Any] = json.loads(done.stdout) if done.returncode == 0 else {}
        # Until the 30 s window holds the load (it starts with this module).
        return found if found and found["observed"]["rate_rps"] >= 0.5 else None

    plan = wait_until(planned, 120, "a plan for the observed summaries")
    observed = plan["observed"]
    assert observed["rate_rps"] <= 3.0, observed
    assert 0 < observed["mean_output_tokens"] <= 4.5, observed
    assert observed["mean_input_tokens"] > 100, observed
    assert plan["candidates"] and plan["rate_rps"] == pytest.approx(observed["rate_rps"], abs=1e-3)

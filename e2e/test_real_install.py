"""Install by `kubectl apply --server-side -f manifests/install.yaml` with the operator as its
Deployment's pod (placed on the real node, as a user would with a kustomize patch): it runs
under its ServiceAccount, answers on its health and metrics ports, and reconciles a sample onto
the KWOK GPU pool. Afterwards the Deployment is scaled back to 0 for the tests that run the
operator as a local process."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from e2e.cluster.session import Cluster
from e2e.operator_harness import (
    OPERATOR,
    SAMPLES,
    SYSTEM_NAMESPACE,
    Api,
    delete_llmservices,
    install_manifests,
    is_true,
    observed_current,
    wait_until,
)
from e2e.real_node import Placement
from e2e.real_stack import pod_ready

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.slow]

SELECTOR = "app.kubernetes.io/name=pdserve,app.kubernetes.io/component=operator"
GPU_SAMPLE = next(path for path in SAMPLES if "gpu" in path.name)


def _operator_pods(api: Api) -> list[dict[str, Any]]:
    return api.pods(SYSTEM_NAMESPACE, SELECTOR)


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Api:
    return Api(cluster)


@pytest.fixture(scope="module")
def operator_pod(cluster: Cluster, api: Api, placement: Placement, pdserve_image: str
                 ) -> Iterator[dict[str, Any]]:
    install_manifests(cluster)  # leaves the Deployment at 0 replicas
    patch = {"spec": {"replicas": 1, "template": {"spec": placement.apply({})}}}
    cluster.kubectl("-n", SYSTEM_NAMESPACE, "patch", f"deployment/{OPERATOR}", "--type=merge",
                    "-p", json.dumps(patch))
    try:
        cluster.kubectl("-n", SYSTEM_NAMESPACE, "rollout", "status", f"deployment/{OPERATOR}",
                        "--timeout=300s", timeout=320)
        pods = wait_until(lambda: [p for p in _operator_pods(api) if pod_ready(p)] or None, 60,
                          "the operator pod Ready")
        yield pods[0]
    finally:
        cluster.kubectl("-n", SYSTEM_NAMESPACE, "scale", f"deployment/{OPERATOR}",
                        "--replicas=0")
        wait_until(lambda: not _operator_pods(api), 120, "the operator pod to go")


def test_operator_pod_runs_with_its_service_account(
        cluster: Cluster, placement: Placement, operator_pod: dict[str, Any]) -> None:
    assert operator_pod["spec"]["serviceAccountName"] == OPERATOR
    if placement.node_selector:
        labels = ",".join(f"{k}={v}" for k, v in placement.node_selector.items())
        nodes = cluster.get("nodes", "-l", labels)["items"]
        assert operator_pod["spec"]["nodeName"] == nodes[0]["metadata"]["name"]
    assert operator_pod["status"]["containerStatuses"][0]["restartCount"] == 0
    ip = operator_pod["status"]["podIP"]
    with urllib.request.urlopen(f"http://{ip}:8080/healthz", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"http://{ip}:8081/metrics", timeout=5) as resp:
        assert b"pdserve_" in resp.read()


@pytest.mark.timeout(420)
def test_in_cluster_operator_reconciles_a_sample(
        cluster: Cluster, api: Api, operator_pod: dict[str, Any]) -> None:
    name = yaml.safe_load(GPU_SAMPLE.read_text())["metadata"]["name"]
    with cluster.namespace("real-install") as namespace:
        cluster.kubectl("apply", "-n", namespace, "-f", str(GPU_SAMPLE))

        def ready() -> dict[str, Any] | None:
            service = api.llmservice(namespace, name)
            ok = service is not None and observed_current(service) and is_true(service, "Ready")
            return service if ok else None

        wait_until(ready, 240, f"{name} Ready, reconciled by the in-cluster operator")
        for role in ("prefill", "decode", "router"):
            assert api.apps.read_namespaced_deployment(f"{name}-{role}", namespace)
        delete_llmservices(api, namespace)

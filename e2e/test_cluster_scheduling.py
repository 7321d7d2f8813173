"""The simulated accelerator pools schedule like real ones: resources, taints, Pending."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.cluster.processes import wait_for
from e2e.cluster.session import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def accelerator_deployment(
    name: str, namespace: str, resource: str, per_pod: int, replicas: int
) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": PAUSE_IMAGE,
                            "resources": {"limits": {resource: str(per_pod)}},
                        }
                    ],
                    "tolerations": [
                        {"key": resource, "operator": "Exists", "effect": "NoSchedule"}
                    ],
                },
            },
        },
    }


def pods(cluster: Cluster, namespace: str, app: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get("pods", "-n", namespace, "-l", f"app={app}")["items"]
    return items


def nodes_with(cluster: Cluster, resource: str) -> set[str]:
    return {
        node["metadata"]["name"]
        for node in cluster.get("nodes")["items"]
        if int(node["status"].get("allocatable", {}).get(resource, "0")) > 0
    }


def running_pods(cluster: Cluster, namespace: str, app: str, replicas: int) -> list[Any]:
    found: list[Any] = []

    def all_running() -> bool:
        found[:] = pods(cluster, namespace, app)
        return len(found) == replicas and all(p["status"].get("phase") == "Running" for p in found)

    wait_for(all_running, 90, f"{replicas} Running pods of {app}")
    return found


@pytest.mark.parametrize(
    ("resource", "per_pod", "replicas", "pool_label"),
    [
        ("nvidia.com/gpu", 1, 3, ("cloud.google.com/gke-accelerator", "nvidia-h100-80gb")),
        ("google.com/tpu", 4, 2, ("cloud.google.com/gke-tpu-accelerator", "tpu-v5-lite-podslice")),
    ],
    ids=["gpu", "tpu"],
)
def test_accelerator_pods_run_on_their_pool_only(
    cluster: Cluster,
    namespace: str,
    resource: str,
    per_pod: int,
    replicas: int,
    pool_label: tuple[str, str],
) -> None:
    pool_nodes = nodes_with(cluster, resource)
    assert pool_nodes, f"the cluster has no node with {resource}"
    cluster.apply([accelerator_deployment("accel", namespace, resource, per_pod, replicas)])

    placed = running_pods(cluster, namespace, "accel", replicas)

    nodes = {p["spec"]["nodeName"] for p in placed}
    assert nodes <= pool_nodes
    for node in nodes:
        labels = cluster.get("node", node)["metadata"]["labels"]
        assert labels.get(pool_label[0]) == pool_label[1]


def test_more_gpus_than_any_node_has_stays_pending(cluster: Cluster, namespace: str) -> None:
    largest = max(
        int(node["status"]["allocatable"].get("nvidia.com/gpu", "0"))
        for node in cluster.get("nodes")["items"]
    )
    cluster.apply([accelerator_deployment("toobig", namespace, "nvidia.com/gpu", largest + 1, 1)])

    events: list[Any] = []

    def failed_scheduling() -> bool:
        events[:] = cluster.get(
            "events", "-n", namespace, "--field-selector", "reason=FailedScheduling"
        )["items"]
        return bool(events)

    wait_for(failed_scheduling, 60, "a FailedScheduling event")
    assert "nvidia.com/gpu" in events[0]["message"]
    (pod,) = pods(cluster, namespace, "toobig")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_untolerated_taints_keep_pods_off_accelerator_nodes(
    cluster: Cluster, namespace: str
) -> None:
    plain = accelerator_deployment("plain", namespace, "cpu", 1, 2)
    plain["spec"]["template"]["spec"]["tolerations"] = []
    cluster.apply([plain])

    placed = running_pods(cluster, namespace, "plain", 2)

    tainted = {
        node["metadata"]["name"]
        for node in cluster.get("nodes")["items"]
        if node["spec"].get("taints")
    }
    assert not {p["spec"]["nodeName"] for p in placed} & tainted

"""The clients later tests rely on work against the cluster: helm, and the Python client."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client, config

from e2e.cluster.processes import wait_for
from e2e.cluster.session import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_helm_installs_a_chart_whose_pods_run(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    created = cluster.helm("create", str(tmp_path / "hello"))
    assert created.returncode == 0, created.stderr

    installed = cluster.helm(
        "install", "hello", str(tmp_path / "hello"), "-n", namespace, "--wait", "--timeout", "90s"
    )

    assert installed.returncode == 0, installed.stderr
    pods = cluster.get("pods", "-n", namespace, "-l", "app.kubernetes.io/instance=hello")
    assert [p["status"]["phase"] for p in pods["items"]] == ["Running"]
    assert cluster.helm("uninstall", "hello", "-n", namespace, "--wait").returncode == 0


def test_python_client_reads_the_kubeconfig(cluster: Cluster, namespace: str) -> None:
    api = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))

    api.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="hello"), data={"k": "v"})
    )

    wait_for(
        lambda: api.read_namespaced_config_map("hello", namespace).data == {"k": "v"},
        10,
        "the ConfigMap",
    )
    gpu_nodes = api.list_node(label_selector="pdserve.dev/pool=gpu").items
    assert gpu_nodes
    assert all(n.status.allocatable["nvidia.com/gpu"] == "8" for n in gpu_nodes)

"""The control plane behaves like a real one: garbage collection and server-side apply."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from e2e.cluster.processes import wait_for
from e2e.cluster.session import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def config_map(name: str, namespace: str, data: dict[str, str], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "data": data,
    }


def exists(cluster: Cluster, *args: str) -> bool:
    return cluster.kubectl("get", *args, check=False).returncode == 0


def test_deleting_an_owner_garbage_collects_its_children(cluster: Cluster, namespace: str) -> None:
    cluster.apply([config_map("owner", namespace, {"role": "owner"})])
    owner = cluster.get("configmap", "owner", "-n", namespace)
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    children = [
        config_map(f"child-{i}", namespace, {"role": "child"}, ownerReferences=[reference])
        for i in range(2)
    ]
    cluster.apply(children)

    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)

    wait_for(
        lambda: (
            not any(
                exists(cluster, "configmap", c, "-n", namespace) for c in ("child-0", "child-1")
            )
        ),
        60,
        "the garbage collector to delete the children",
    )


def test_deleting_a_deployment_removes_its_replicaset_and_pods(
    cluster: Cluster, namespace: str
) -> None:
    labels = {"app": "web"}
    cluster.apply(
        [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "namespace": namespace},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]
                        },
                    },
                },
            }
        ]
    )
    wait_for(
        lambda: len(cluster.get("pods", "-n", namespace, "-l", "app=web")["items"]) == 2,
        60,
        "2 pods of the Deployment",
    )

    cluster.kubectl("delete", "deployment", "web", "-n", namespace, "--wait=false")

    def all_gone() -> bool:
        left = cluster.get("replicasets,pods", "-n", namespace, "-l", "app=web")["items"]
        return not left

    wait_for(all_gone, 90, "the ReplicaSet and pods to be garbage collected")


def test_server_side_apply_tracks_field_managers(cluster: Cluster, namespace: str) -> None:
    first = config_map("ssa", namespace, {"a": "1"})
    cluster.apply([first], "--server-side", "--field-manager=e2e-first")
    cluster.apply(
        [config_map("ssa", namespace, {"a": "1", "b": "2"})],
        "--server-side",
        "--field-manager=e2e-first",
    )

    applied = cluster.get("configmap", "ssa", "-n", namespace, "--show-managed-fields")
    assert applied["data"] == {"a": "1", "b": "2"}
    managers = {(m["manager"], m["operation"]) for m in applied["metadata"]["managedFields"]}
    assert ("e2e-first", "Apply") in managers

    conflicting = config_map("ssa", namespace, {"a": "changed"})
    proc = cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=e2e-second",
        "-f",
        "-",
        input=yaml.safe_dump(conflicting),
        check=False,
    )
    assert proc.returncode != 0
    assert "conflict" in proc.stderr.lower()

    cluster.apply([conflicting], "--server-side", "--field-manager=e2e-second", "--force-conflicts")
    assert cluster.get("configmap", "ssa", "-n", namespace)["data"]["a"] == "changed"

"""The local cluster's real node: a kubelet on containerd that runs pods, with pod networking,
Services through kube-proxy, cluster DNS, and the host left as it was."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.node import configs, identity
from e2e.cluster.node.lifecycle import host_values_file
from e2e.cluster.session import Cluster
from e2e.operator_harness import wait_until
from e2e.real_node import Placement

pytestmark = [pytest.mark.e2e, pytest.mark.node]

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _local_node(cluster: Cluster) -> Path:
    if cluster.node is None:
        pytest.skip("a cluster named by KUBECONFIG has no pdserve real node to inspect")
    return cluster.node.state


def _pod(name: str, image: str, command: list[str], placement: Placement,
         **extra: Any) -> dict[str, Any]:
    spec = placement.apply({
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                        "command": command, "securityContext": RESTRICTED_CONTAINER, **extra}],
    })
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": spec}


def _phase(cluster: Cluster, namespace: str, name: str) -> str:
    pod = cluster.get("pod", name, "-n", namespace)
    return str(pod.get("status", {}).get("phase", ""))


def test_node_is_ready_with_its_identity(cluster: Cluster) -> None:
    _local_node(cluster)
    node = cluster.get("node", identity.NODE_NAME)
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"
    assert node["metadata"]["labels"][identity.LABEL[0]] == identity.LABEL[1]
    assert identity.TAINT in [{k: t[k] for k in ("key", "value", "effect")}
                              for t in node["spec"].get("taints", [])]
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == identity.NODE_IP
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.37.2"
    assert info["containerRuntimeVersion"].startswith("containerd://2.")


def test_host_sysctls_and_tables_are_untouched(cluster: Cluster) -> None:
    """The kubelet's kernel tunables were written to stand-ins, kube-proxy's rules live in the
    node's namespace: the host reads what it read before the node started."""
    _local_node(cluster)
    assert cluster.node is not None
    before = json.loads(host_values_file(cluster.node).read_text())
    assert set(before) >= {"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"}
    for sysctl, value in before.items():
        assert (Path("/proc/sys") / sysctl).read_text() == value, sysctl
    host_nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True,
                              check=True).stdout
    assert "KUBE-SERVICES" not in host_nat


def test_sandbox_pod_runs(cluster: Cluster, namespace: str, placement: Placement) -> None:
    """The node's own pause image, imported at start, runs as a pod's only container."""
    pod = _pod("pause", configs.PAUSE_IMAGE, ["/pause"], placement)
    pod["spec"]["restartPolicy"] = "Always"
    cluster.apply([pod], "-n", namespace)
    wait_until(lambda: _phase(cluster, namespace, "pause") == "Running", 90, "pause Running")


def test_pods_reach_services_dns_and_the_api(cluster: Cluster, namespace: str,
                                             placement: Placement, pdserve_image: str) -> None:
    server = _pod("echo", pdserve_image, ["python", "-m", "http.server", "8000",
                                          "--directory", "/tmp"], placement,
                  ports=[{"name": "http", "containerPort": 8000}],
                  readinessProbe={"tcpSocket": {"port": 8000}, "periodSeconds": 1})
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
               "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80,
                                                                 "targetPort": "http"}]}}
    # kube-proxy programs a new Service's rules a moment after its endpoint is Ready: the
    # client retries a refused connection for a bounded while, as any client of a new Service.
    probe = f"""
import json, socket, ssl, time, urllib.request
def retried(url):
    deadline = time.monotonic() + 30
    while True:
        try:
            return urllib.request.urlopen(url, timeout=5).status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
print(json.dumps({{
    "dns": socket.gethostbyname("echo.{namespace}.svc.cluster.local"),
    "service": retried("http://echo/"),
    "api": json.load(urllib.request.urlopen(
        "https://kubernetes.default.svc/version", timeout=5,
        context=ssl.create_default_context(
            cafile="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")))["gitVersion"],
}}))
"""
    client = _pod("client", pdserve_image, ["python", "-c", probe], placement)
    cluster.apply([server, service], "-n", namespace)
    wait_until(lambda: cluster.get("pod", "echo", "-n", namespace)["status"].get(
        "containerStatuses", [{}])[0].get("ready", False), 180, "echo Ready")
    cluster.apply([client], "-n", namespace)
    wait_until(lambda: _phase(cluster, namespace, "client") in ("Succeeded", "Failed"), 120,
               "client to finish")
    logs = cluster.kubectl("logs", "client", "-n", namespace).stdout
    assert _phase(cluster, namespace, "client") == "Succeeded", logs
    seen = json.loads(logs.strip().splitlines()[-1])
    echo_ip = cluster.get("service", "echo", "-n", namespace)["spec"]["clusterIP"]
    assert seen == {"dns": echo_ip, "service": 200, "api": "v1.37.2"}

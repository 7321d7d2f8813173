"""pdserve installed as users install it, on pods that really run: the chart's release with
its operator in-cluster, LLMServices placed on the real node, their pods' metrics, and the
Prometheus that finds those pods through the apiserver. The session fixtures in conftest.py
are built from these."""

from __future__ import annotations

import base64
import contextlib
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.node import identity
from e2e.cluster.session import Cluster
from e2e.kubernetes_scrape import scrape_configs
from e2e.operator_harness import CHART, Api, condition, llmservice_manifest, wait_until
from e2e.prometheus import PrometheusServer, running_prometheus_for
from e2e.real_node import Placement
from pdserve.api.spec import WORKER_HTTP_PORT
from pdserve.controller.names import LABEL_ROLE, LABEL_SERVICE

RELEASE = "pdserve"
READY_S = 420
SMALL = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}}
MONITORING = "monitoring"
# Where the in-cluster planner finds Prometheus: a Service in front of the one run here.
PROMETHEUS_SERVICE_URL = f"http://prometheus.{MONITORING}.svc:9090"


def helm_ok(cluster: Cluster, *args: str) -> str:
    done = cluster.helm(*args, timeout=600)
    assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


RECOMMENDATION_INTERVAL_S = 20
# KVTransferHealthy judged every KV_HEALTH_INTERVAL_S (over twice that), not every 30 s.
KV_HEALTH_INTERVAL_S = 5


@contextlib.contextmanager
def release(cluster: Cluster, placement: Placement, workdir: Path) -> Iterator[str]:
    """`helm install` of the chart (namespaced RBAC), its operator running as the
    Deployment's pod; yields the release's namespace and uninstalls it afterwards."""
    namespace = f"pdserve-real-{uuid.uuid4().hex[:6]}"
    values = workdir / "values.yaml"
    chart_values = placement.helm_values()
    # status.recommendation every RECOMMENDATION_INTERVAL_S, not every 10 minutes.
    chart_values["operator"]["extraArgs"] = [
        f"--recommendation-interval={RECOMMENDATION_INTERVAL_S}",
        f"--kv-health-interval={KV_HEALTH_INTERVAL_S}"]
    values.write_text(yaml.safe_dump({"rbac": {"namespaced": True}, **chart_values}))
    helm_ok(cluster, "install", RELEASE, str(CHART), "-n", namespace, "--create-namespace",
            "-f", str(values), "--wait", "--timeout", "300s")
    try:
        yield namespace
    finally:
        # While the operator runs: it removes its finalizers from the LLMServices.
        cluster.kubectl("delete", "llmservices", "--all", "-n", namespace, "--timeout=120s",
                        check=False, timeout=150)
        cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s")
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions", []))


def role_pods(api: Api, namespace: str, service: str, role: str | None = None
              ) -> list[dict[str, Any]]:
    selector = f"{LABEL_SERVICE}={service}" + (f",{LABEL_ROLE}={role}" if role else "")
    return api.pods(namespace, selector)


def cpu_service_spec(placement: Placement, **extra: Any) -> dict[str, Any]:
    """An LLMService of the builtin tiny model with every role on `placement`."""
    worker = {"replicas": 1, "accelerator": {"kind": "cpu"}, "resources": SMALL,
              "engine": {"enablePrefixCaching": True}}
    spec: dict[str, Any] = {
        "model": {"servedName": "tiny", "source": {"builtin": "tiny"}, "dtype": "float32"},
        "prefill": placement.apply(worker),
        "decode": placement.apply(worker),
        # always: the tests check the KV handoff, which conditional mode skips when idle
        "router": placement.apply({"replicas": 1, "resources": SMALL,
                                   "disaggregation": "always"}),
        "kvTransfer": {"transport": "tcp"},
    }
    spec.update(extra)
    return spec


def apply_and_wait_ready(cluster: Cluster, api: Api, namespace: str, name: str,
                         spec: dict[str, Any], pods: int) -> dict[str, Any]:
    """Applies the LLMService and waits until it is Ready; every Ready=True seen on the way
    was seen with all its pods Ready too (Ready is only said of a service that serves)."""
    cluster.apply([llmservice_manifest(name, spec)], "-n", namespace)
    early: list[str] = []

    def ready() -> dict[str, Any] | None:
        service = api.llmservice(namespace, name)
        found = condition(service, "Ready")
        if found is None or found["status"] != "True":
            return None
        current = role_pods(api, namespace, name)
        if len(current) < pods or not all(pod_ready(p) for p in current):
            states = [(p["metadata"]["name"], pod_ready(p)) for p in current]
            early.append(f"Ready while the pods are {states}")
        return service

    service = wait_until(ready, READY_S, f"LLMService {name} Ready")
    assert not early, early
    return service


def worker_metric(pod: dict[str, Any], name: str) -> float:
    """Sum of a metric's samples on one worker pod, read from its /metrics directly."""
    url = f"http://{pod['status']['podIP']}:{WORKER_HTTP_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


@dataclass(frozen=True)
class ClusterPrometheus:
    server: PrometheusServer
    in_cluster_url: str


def _prometheus_account(cluster: Cluster, workdir: Path) -> tuple[Path, Path]:
    """A ServiceAccount that may discover pods, as a Prometheus in the cluster would run with;
    returns its token file and the cluster's CA file."""
    cluster.kubectl("create", "namespace", MONITORING, check=False)
    cluster.apply([
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "prometheus", "namespace": MONITORING}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "pdserve-e2e-prometheus"},
         "rules": [{"apiGroups": [""], "resources": ["pods"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "pdserve-e2e-prometheus"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "pdserve-e2e-prometheus"},
         "subjects": [{"kind": "ServiceAccount", "name": "prometheus",
                       "namespace": MONITORING}]},
    ])
    token = cluster.kubectl("create", "token", "prometheus", "-n", MONITORING,
                            "--duration=4h").stdout.strip()
    token_file = workdir / "token"
    token_file.write_text(token)
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    ca_file = workdir / "ca.crt"
    ca_file.write_bytes(base64.b64decode(
        config["clusters"][0]["cluster"]["certificate-authority-data"]))
    return token_file, ca_file


def _prometheus_service(cluster: Cluster, host: str, port: int) -> None:
    """prometheus.monitoring:9090 in front of the Prometheus running on this machine."""
    cluster.apply([
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "prometheus", "namespace": MONITORING},
         "spec": {"ports": [{"name": "web", "port": 9090, "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "prometheus-host", "namespace": MONITORING,
                      "labels": {"kubernetes.io/service-name": "prometheus"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [host]}],
         "ports": [{"name": "web", "port": port}]},
    ])


@contextlib.contextmanager
def cluster_prometheus(cluster: Cluster, namespaces: list[str], workdir: Path
                       ) -> Iterator[ClusterPrometheus]:
    """Prometheus with manifests/prometheus/scrape-config.yaml: it finds the pods by itself
    through the apiserver, with a ServiceAccount token, as it would in the cluster."""
    token_file, ca_file = _prometheus_account(cluster, workdir)
    server_url = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"][
        "server"]
    configs = scrape_configs(server_url, token_file, ca_file, namespaces)
    with running_prometheus_for(configs, 1.0, listen_host="0.0.0.0") as server:
        _prometheus_service(cluster, identity.HOST_IP, server.port)
        try:
            yield ClusterPrometheus(server, PROMETHEUS_SERVICE_URL)
        finally:
            cluster.kubectl("delete", "namespace", MONITORING, "--wait=false", check=False)
            cluster.kubectl("delete", "clusterrolebinding,clusterrole", "pdserve-e2e-prometheus",
                            check=False)

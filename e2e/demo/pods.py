"""Sections 3 and 4 on the real node: the agentic sample's router Service and worker pods as
the demo's serving stack, and a Prometheus that finds those pods itself through the apiserver
(manifests/prometheus/scrape-config.yaml with a ServiceAccount token)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster.session import Cluster
from e2e.demo import report
from e2e.demo.serving import Stack
from e2e.operator_harness import Api
from e2e.real_stack import cluster_prometheus
from pdserve.api.spec import ROUTER_HTTP_PORT, WORKER_HTTP_PORT
from pdserve.controller.names import LABEL_ROLE, LABEL_SERVICE


@dataclass(frozen=True)
class PodEndpoint:
    name: str
    url: str


def stack(cluster: Cluster, namespace: str, service: str, model: str) -> Stack:
    """Every worker pod by its IP, the router by its Service's ClusterIP; `model` is the
    LLMService's served model name."""
    api = Api(cluster)

    def workers(role: str) -> list[PodEndpoint]:
        pods = api.pods(namespace, f"{LABEL_SERVICE}={service},{LABEL_ROLE}={role}")
        return [PodEndpoint(p["metadata"]["name"],
                            f"http://{p['status']['podIP']}:{WORKER_HTTP_PORT}")
                for p in sorted(pods, key=lambda p: p["metadata"]["name"])]

    router = cluster.get("service", f"{service}-router", "-n", namespace)
    return Stack(workers("prefill"), workers("decode"),
                 PodEndpoint(f"service/{service}-router",
                             f"http://{router['spec']['clusterIP']}:{ROUTER_HTTP_PORT}"),
                 model)


@contextlib.contextmanager
def prometheus(cluster: Cluster, namespace: str, workdir: Path) -> Iterator[str]:
    with cluster_prometheus(cluster, [namespace], workdir) as running:
        report.say(f"Prometheus {running.server.url} finds the pods of {namespace} through the "
                   f"apiserver (kubernetes_sd_configs, manifests/prometheus/scrape-config.yaml) "
                   f"and scrapes them every second under the labels the planner queries.")
        yield running.server.url

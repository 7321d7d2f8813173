"""pdserve as users run it: the chart installed with `helm install`, its operator in-cluster
under its ServiceAccount, and an LLMService's router, prefill and decode as real pods from the
image built here, answering the `openai` client through the router's Service."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml

from e2e.cluster.session import Cluster
from e2e.operator_harness import CHART, Api, condition, llmservice_manifest, wait_until
from e2e.real_node import Placement
from pdserve.api.spec import ROUTER_HTTP_PORT, WORKER_HTTP_PORT
from pdserve.controller.names import LABEL_ROLE, LABEL_SERVICE

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.slow]

RELEASE = "pdserve"
SERVICE = "chat"
READY_S = 420
SMALL = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}}


def helm_ok(cluster: Cluster, *args: str) -> str:
    done = cluster.helm(*args, timeout=600)
    assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def release(cluster: Cluster, placement: Placement, pdserve_image: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A namespaced release whose operator runs as its Deployment's pod; yields its namespace."""
    namespace = f"pdserve-real-{uuid.uuid4().hex[:6]}"
    values = tmp_path_factory.mktemp("release") / "values.yaml"
    values.write_text(yaml.safe_dump({"rbac": {"namespaced": True}, **placement.helm_values()}))
    helm_ok(cluster, "install", RELEASE, str(CHART), "-n", namespace, "--create-namespace",
            "-f", str(values), "--wait", "--timeout", "300s")
    try:
        yield namespace
    finally:
        cluster.kubectl("delete", "llmservices", "--all", "-n", namespace, "--timeout=120s",
                        check=False, timeout=150)
        cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s")
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Api:
    return Api(cluster)


def _pods(api: Api, namespace: str, selector: str) -> list[dict[str, Any]]:
    return api.pods(namespace, selector)


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions", []))


def chat_spec(placement: Placement) -> dict[str, Any]:
    worker = {"replicas": 1, "accelerator": {"kind": "cpu"}, "resources": SMALL,
              "engine": {"enablePrefixCaching": True}}
    return {
        "model": {"servedName": "tiny", "source": {"builtin": "tiny"}, "dtype": "float32"},
        "prefill": placement.apply(worker),
        "decode": placement.apply(worker),
        "router": placement.apply({"replicas": 1, "resources": SMALL}),
        "kvTransfer": {"transport": "tcp"},
    }


@pytest.fixture(scope="module")
def chat(cluster: Cluster, api: Api, release: str, placement: Placement) -> dict[str, Any]:
    """The LLMService applied, watched until Ready: every sample of Ready=True is taken while
    all its pods are Ready too (Ready is only said of a service that serves)."""
    cluster.apply([llmservice_manifest(SERVICE, chat_spec(placement))], "-n", release)
    selector = f"{LABEL_SERVICE}={SERVICE}"
    early: list[str] = []

    def ready() -> dict[str, Any] | None:
        service = api.llmservice(release, SERVICE)
        found = condition(service, "Ready")
        if found is None or found["status"] != "True":
            return None
        pods = _pods(api, release, selector)
        if len(pods) < 3 or not all(_ready(p) for p in pods):
            states = [(p["metadata"]["name"], _ready(p)) for p in pods]
            early.append(f"Ready while the pods are {states}")
        return service

    service = wait_until(ready, READY_S, f"LLMService {SERVICE} Ready")
    assert not early, early
    return service


def test_operator_runs_in_cluster(cluster: Cluster, api: Api, release: str,
                                  placement: Placement) -> None:
    pods = _pods(api, release, "app.kubernetes.io/name=pdserve,app.kubernetes.io/instance=pdserve")
    assert len(pods) == 1 and _ready(pods[0])
    pod = pods[0]
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-operator"
    if placement.node_selector:
        assert pod["spec"]["nodeName"] == cluster.get("nodes", "-l", ",".join(
            f"{k}={v}" for k, v in placement.node_selector.items()))["items"][0]["metadata"]["name"]
    ip = pod["status"]["podIP"]
    with urllib.request.urlopen(f"http://{ip}:8080/healthz", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"http://{ip}:8081/metrics", timeout=5) as resp:
        assert b"pdserve_" in resp.read()


def test_rendered_pods_run_as_rendered(api: Api, release: str, chat: dict[str, Any]) -> None:
    for role in ("prefill", "decode", "router"):
        pods = _pods(api, release, f"{LABEL_SERVICE}={SERVICE},{LABEL_ROLE}={role}")
        assert len(pods) == 1, role
        pod = pods[0]
        assert pod["status"]["phase"] == "Running" and _ready(pod)
        main = pod["spec"]["containers"][0]
        security = main["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["runAsNonRoot"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        assert main["readinessProbe"] and main["livenessProbe"]
        assert main["command"][0] == "pdserve"
        if role != "router":
            assert "/dev/shm" in {m["mountPath"] for m in main["volumeMounts"]}
        restarts = pod["status"]["containerStatuses"][0]["restartCount"]
        assert restarts == 0, f"{role} restarted {restarts} times"


def _worker_metric(api: Api, namespace: str, role: str, name: str) -> float:
    pod = _pods(api, namespace, f"{LABEL_SERVICE}={SERVICE},{LABEL_ROLE}={role}")[0]
    url = f"http://{pod['status']['podIP']}:{WORKER_HTTP_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_openai_client_streams_through_the_router_service(
        cluster: Cluster, api: Api, release: str, chat: dict[str, Any]) -> None:
    router = cluster.get("service", f"{SERVICE}-router", "-n", release)
    base_url = f"http://{router['spec']['clusterIP']}:{ROUTER_HTTP_PORT}/v1"
    moved_before = _worker_metric(api, release, "decode", "pdserve_kv_transfer_bytes_total")
    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=120)
    notes = " ".join(f"note {i} says hello." for i in range(80))
    prompt = f"Summarize the following notes. {notes}"
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=24,
        temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces).strip(), "an empty answer"
    assert len(pieces) > 1, "not streamed"
    assert time.monotonic() - started < 120
    moved = _worker_metric(api, release, "decode", "pdserve_kv_transfer_bytes_total")
    assert moved > moved_before, "no KV was handed from the prefill pod to the decode pod"

"""pdserve as users run it: the chart installed with `helm install`, its operator in-cluster
under its ServiceAccount, and an LLMService's router, prefill and decode as real pods from the
image built here, answering the `openai` client through the router's Service."""

from __future__ import annotations

import json
import time
import urllib.request

import openai
import pytest

from e2e import real_stack
from e2e.cluster.session import Cluster
from e2e.local_processes import metric_by_label
from e2e.operator_harness import Api
from e2e.real_node import Placement
from e2e.real_stack import RELEASE, pod_ready, role_pods, worker_metric
from pdserve.api.spec import ROUTER_HTTP_PORT

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.slow]


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Api:
    return Api(cluster)


def test_operator_runs_in_cluster(cluster: Cluster, api: Api, real_release: str,
                                  placement: Placement) -> None:
    pods = api.pods(real_release, f"app.kubernetes.io/name=pdserve,"
                                  f"app.kubernetes.io/instance={RELEASE}")
    assert len(pods) == 1 and pod_ready(pods[0])
    pod = pods[0]
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-operator"
    if placement.node_selector:
        labels = ",".join(f"{k}={v}" for k, v in placement.node_selector.items())
        nodes = cluster.get("nodes", "-l", labels)["items"]
        assert pod["spec"]["nodeName"] == nodes[0]["metadata"]["name"]
    ip = pod["status"]["podIP"]
    with urllib.request.urlopen(f"http://{ip}:8080/healthz", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"http://{ip}:8081/metrics", timeout=5) as resp:
        assert b"pdserve_" in resp.read()


def test_rendered_pods_run_as_rendered(api: Api, real_release: str, chat_service: str) -> None:
    for role in ("prefill", "decode", "router"):
        pods = role_pods(api, real_release, chat_service, role)
        assert len(pods) == 1, role
        pod = pods[0]
        assert pod["status"]["phase"] == "Running" and pod_ready(pod)
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


def test_openai_client_streams_through_the_router_service(
        cluster: Cluster, api: Api, real_release: str, chat_service: str) -> None:
    router = cluster.get("service", f"{chat_service}-router", "-n", real_release)
    base_url = f"http://{router['spec']['clusterIP']}:{ROUTER_HTTP_PORT}/v1"
    decode = role_pods(api, real_release, chat_service, "decode")[0]
    moved_before = worker_metric(decode, "pdserve_kv_transfer_bytes_total")
    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=120)
    notes = " ".join(f"note {i} says hello." for i in range(80))
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": f"Summarize: {notes}"}],
        max_tokens=24, temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces).strip(), "an empty answer"
    assert len(pieces) > 1, "not streamed"
    assert time.monotonic() - started < 120
    moved = worker_metric(decode, "pdserve_kv_transfer_bytes_total")
    assert moved > moved_before, "no KV was handed from the prefill pod to the decode pod"


def test_forced_tool_call_through_the_pods_is_valid(cluster: Cluster, real_release: str,
                                                     chat_service: str) -> None:
    """Constrained decoding inside the image (xgrammar), the grammar resumed by the decode pod
    after the prefill pod's first token."""
    router = cluster.get("service", f"{chat_service}-router", "-n", real_release)
    client = openai.OpenAI(base_url=f"http://{router['spec']['clusterIP']}:{ROUTER_HTTP_PORT}/v1",
                           api_key="none", max_retries=0, timeout=120)
    unit = {"enum": ["celsius", "fahrenheit"]}
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                         "unit": unit}, "required": ["city", "unit"]}}}
    notes = " ".join(f"note {i} says hello." for i in range(80))  # long: through both tiers
    result = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": f"Weather? {notes}"}],
        tools=[tool], tool_choice="required", parallel_tool_calls=False, max_tokens=256,
        temperature=0)
    [call] = result.choices[0].message.tool_calls
    arguments = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and len(arguments["city"]) <= 12
    assert arguments["unit"] in unit["enum"] and result.choices[0].finish_reason == "tool_calls"


def test_kv_moves_between_pods_over_nixl(cluster: Cluster, api: Api, real_release: str,
                                         placement: Placement) -> None:
    """kvTransfer.transport nixl from the image: NIXL's UCX finds its way between two pods
    (their own PID, IPC and network namespaces: TCP over the pod network) under the restricted
    security context and read-only root filesystem. This service's router keeps the API's
    default disaggregation, conditional: the first long prompt (no prefill measured yet) goes
    through the prefill pod, the next one, to an idle decode pod, stays there."""
    name = "chat-nixl"
    spec = real_stack.cpu_service_spec(placement, kvTransfer={"transport": "nixl"})
    del spec["router"]["disaggregation"]
    real_stack.apply_and_wait_ready(cluster, api, real_release, name, spec, pods=3)
    try:
        router = cluster.get("service", f"{name}-router", "-n", real_release)
        client = openai.OpenAI(
            base_url=f"http://{router['spec']['clusterIP']}:{ROUTER_HTTP_PORT}/v1",
            api_key="none", max_retries=0, timeout=120)
        [prefill] = role_pods(api, real_release, name, "prefill")
        [decode] = role_pods(api, real_release, name, "decode")
        notes = " ".join(f"note {i} says hello." for i in range(80))  # long: through both tiers
        for turn in range(2):
            answer = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"Summarize {turn}: {notes}"}],
                max_tokens=8, temperature=0)
            assert answer.choices[0].message.content
        assert worker_metric(decode, "pdserve_kv_transfer_bytes_total") > 0
        assert worker_metric(prefill, "pdserve_kv_transfer_failures_total") == 0
        assert worker_metric(decode, "pdserve_kv_transfer_fallbacks_total") == 0
        [router_pod] = role_pods(api, real_release, name, "router")
        decisions = metric_by_label(f"http://{router_pod['status']['podIP']}:{ROUTER_HTTP_PORT}",
                                    "pdserve_router_disaggregation_total", "reason")
        assert (decisions["handoff"], decisions["local_cheaper"]) == (1, 1), decisions
    finally:
        cluster.kubectl("delete", "llmservice", name, "-n", real_release, "--wait=false")

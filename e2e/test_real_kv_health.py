"""KVTransferHealthy as users see it: the in-cluster operator judges real pods' KV handoff from
the Prometheus that found them. Under a load of long prompts it is True; a KV path broken the
way a botched rotation breaks it (the `<name>-kv-auth` Secret replaced, the prefill pods
restarted with the new secret while decode keeps the old: every handoff is refused at
authentication and decode recomputes) turns it False within two intervals, naming failing
transfers; restarting decode on the same secret mends it, and it turns True again."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest

from e2e.autoscaling_load import Load
from e2e.cluster.session import Cluster
from e2e.operator_harness import Api, condition, wait_until
from e2e.real_node import Placement
from e2e.real_stack import (
    KV_HEALTH_INTERVAL_S,
    ClusterPrometheus,
    apply_and_wait_ready,
    cpu_service_spec,
    pod_ready,
    role_pods,
    worker_metric,
)
from pdserve.api.spec import ROUTER_HTTP_PORT
from pdserve.controller.names import LABEL_ROLE, LABEL_SERVICE, kv_auth_secret_name

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.prometheus, pytest.mark.slow]

NAME = "handoff"
# From the first refused (or completed) transfer: Prometheus scrapes every second, the test
# polls the pods' counters and the condition.
SLACK_S = 3


def _kv_condition(api: Api, namespace: str) -> dict[str, Any]:
    return condition(api.llmservice(namespace, NAME), "KVTransferHealthy") or {}


def _reason(api: Api, namespace: str, reason: str) -> dict[str, Any] | None:
    found = _kv_condition(api, namespace)
    return found if found.get("reason") == reason else None


def _restart(cluster: Cluster, api: Api, namespace: str, role: str) -> float:
    """Deletes the role's pods; returns when its new pod turned Ready (monotonic)."""
    old = {p["metadata"]["name"] for p in role_pods(api, namespace, NAME, role)}
    cluster.kubectl("delete", "pod", "-n", namespace, "--wait=false",
                    "-l", f"{LABEL_SERVICE}={NAME},{LABEL_ROLE}={role}")

    def replaced() -> bool:
        pods = role_pods(api, namespace, NAME, role)
        return bool(pods) and all(p["metadata"]["name"] not in old and pod_ready(p)
                                  for p in pods)

    wait_until(replaced, 300, f"a new {role} pod Ready")
    return time.monotonic()


def _counted(pod: dict[str, Any], metric: str, before: float = 0.0) -> float:
    """When the pod's counter first exceeds `before` (monotonic)."""
    wait_until(lambda: worker_metric(pod, metric) > before, 120, f"{metric} to grow")
    return time.monotonic()


@pytest.mark.timeout(1500)
def test_kv_transfer_healthy_turns_false_on_a_broken_kv_path_and_true_when_mended(
        cluster: Cluster, placement: Placement, real_release: str,
        cluster_prometheus: ClusterPrometheus) -> None:
    api, namespace = Api(cluster), real_release
    # Autoscaling off: the condition reads the Prometheus named all the same.
    spec = cpu_service_spec(placement, autoscaling={
        "enabled": False, "prometheusUrl": cluster_prometheus.in_cluster_url})
    apply_and_wait_ready(cluster, api, namespace, NAME, spec, pods=3)
    router = cluster.get("service", f"{NAME}-router", "-n", namespace)
    base_url = f"http://{router['spec']['clusterIP']}:{ROUTER_HTTP_PORT}"
    limit = 2 * KV_HEALTH_INTERVAL_S + SLACK_S
    with Load(base_url, "summaries", rate=1.0, summary_words=150).running():
        moving = wait_until(lambda: _reason(api, namespace, "KVMoving"), 240,
                            "KVTransferHealthy True under long prompts")
        assert moving["status"] == "True" and "with their KV" in moving["message"]

        cluster.kubectl("patch", "secret", kv_auth_secret_name(NAME), "-n", namespace,
                        "--type=merge", "-p",
                        json.dumps({"stringData": {"secret": secrets.token_hex(32)}}))
        prefill_ready = _restart(cluster, api, namespace, "prefill")
        [prefill] = role_pods(api, namespace, NAME, "prefill")
        broken_at = _counted(prefill, "pdserve_kv_transfer_failures_total")
        failing = wait_until(lambda: _reason(api, namespace, "KVTransferFailing"), 120,
                             "KVTransferHealthy False once the handoffs are refused")
        to_false = time.monotonic() - broken_at
        assert failing["status"] == "False"
        assert "KV transfers from prefill to decode fail" in failing["message"], failing

        moved = worker_metric(prefill, "pdserve_kv_transfer_seconds_count")
        decode_ready = _restart(cluster, api, namespace, "decode")
        mended_at = _counted(prefill, "pdserve_kv_transfer_seconds_count", moved)
        wait_until(lambda: _reason(api, namespace, "KVMoving"), 120,
                   "KVTransferHealthy True once decode holds the new secret")
        to_true = time.monotonic() - mended_at
    print(f"\nKVTransferHealthy (interval {KV_HEALTH_INTERVAL_S} s): False {to_false:.1f} s "
          f"after the first refused transfer ({broken_at - prefill_ready:.1f} s after the new "
          f"prefill pod turned Ready): {failing['message']}\nTrue {to_true:.1f} s after the "
          f"first completed transfer ({mended_at - decode_ready:.1f} s after the new decode "
          "pod turned Ready)")
    events = api.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={NAME}").items
    reasons = [e.reason for e in events if e.source and e.source.component == "pdserve-kv-health"]
    assert "KVTransferFailing" in reasons and "KVMoving" in reasons, reasons
    assert to_false <= limit, f"False {to_false:.1f} s after the break (limit {limit} s)"
    assert to_true <= limit, f"True {to_true:.1f} s after the mend (limit {limit} s)"

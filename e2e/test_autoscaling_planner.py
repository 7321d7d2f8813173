"""The planner end to end: a real Prometheus (Debian's package) scrapes real router, prefill and
decode processes under generated load; the LLMService lives in the local control plane with its
Deployments on KWOK nodes, and the operator (with the planner's timer) runs here.

The local processes stand for the LLMService's pods through Prometheus labels (namespace,
llmservice, role, pod), the same labels in-cluster relabeling gives pods, so the planner's
queries are the ones it runs in a real cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.autoscaling_load import Load
from e2e.cluster.session import Cluster
from e2e.local_processes import Process, router, running, worker
from e2e.operator_harness import (
    Api,
    OperatorProcess,
    condition,
    delete_llmservices,
    install_manifests,
    installed_operator,
    wait_until,
)
from e2e.prometheus import PrometheusServer, Target, running_prometheus

pytestmark = [pytest.mark.e2e, pytest.mark.prometheus, pytest.mark.slow]

BUDGET = 5
INTERVAL_S = 5


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    """The chart's install with the operator run here under its ServiceAccount (no kubelet
    behind KWOK nodes): the planner's RBAC is the chart's."""
    install_manifests(cluster)
    with installed_operator(cluster, tmp_path_factory.mktemp("planner-operator")) as found:
        yield found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, Process, Process]]:
    logs = tmp_path_factory.mktemp("planner-stack")
    prefill = worker("prefill", "builtin:tiny", logs)
    decode = worker("decode", "builtin:tiny", logs)
    gateway = router([prefill], [decode], logs)
    with running(prefill, decode, gateway):
        yield prefill, decode, gateway


@pytest.fixture
def api(cluster: Cluster) -> Api:
    return Api(cluster)


@pytest.fixture
def llm_namespace(cluster: Cluster, operator: OperatorProcess, api: Api,
                  request: pytest.FixtureRequest) -> Iterator[str]:
    with cluster.namespace(request.node.originalname) as name:
        yield name
        delete_llmservices(api, name, operator)


def targets(stack: tuple[Process, Process, Process], namespace: str, service: str
            ) -> list[Target]:
    prefill, decode, gateway = stack
    return [Target(p.address, {"namespace": namespace, "llmservice": service, "role": role,
                               "pod": f"{service}-{role}-{p.port}"})
            for p, role in ((prefill, "prefill"), (decode, "decode"), (gateway, "router"))]


def llmservice(name: str, prometheus_url: str, decode_cpu: str = "100m",
               **autoscaling: Any) -> dict[str, Any]:
    small = {"requests": {"cpu": "100m", "memory": "64Mi"}}
    settings: dict[str, Any] = {
        "enabled": True, "prometheusUrl": prometheus_url, "intervalSeconds": INTERVAL_S,
        "slo": {"ttftMilliseconds": 2000, "tpotMilliseconds": 200},
        "prefill": {"minReplicas": 1, "maxReplicas": 4},
        "decode": {"minReplicas": 1, "maxReplicas": 4},
        "acceleratorBudget": BUDGET, "scaleUpStabilizationSeconds": 0,
        "scaleDownStabilizationSeconds": 20, "maxStep": 2,
    }
    settings.update(autoscaling)
    return {"apiVersion": "pdserve.dev/v1alpha1", "kind": "LLMService",
            "metadata": {"name": name},
            "spec": {"model": {"source": {"builtin": "tiny"}},
                     "prefill": {"resources": small},
                     "decode": {"resources": {"requests": {"cpu": decode_cpu,
                                                           "memory": "64Mi"}}},
                     "router": {"replicas": 1, "resources": small},
                     "autoscaling": settings}}


class Watch:
    """Reads the Deployments' replicas as the planner set them, checking the budget each time."""

    def __init__(self, api: Api, namespace: str, name: str, budget: int) -> None:
        self.api, self.namespace, self.name, self.budget = api, namespace, name, budget
        self.largest = 0

    def replicas(self) -> tuple[int, int]:
        found = [self.api.apps.read_namespaced_deployment(f"{self.name}-{role}",
                                                          self.namespace).spec.replicas
                 for role in ("prefill", "decode")]
        self.largest = max(self.largest, sum(found))
        assert sum(found) <= self.budget, f"over budget: {found}"
        return found[0], found[1]

    def service(self) -> dict[str, Any]:
        found = self.api.llmservice(self.namespace, self.name)
        assert found is not None
        return found

    def reason(self) -> str:
        return str((self.service().get("status") or {}).get("autoscaling", {}).get("reason", ""))


@pytest.mark.timeout(1200)
def test_mix_shift_rebalances_within_budget_and_holds_safely(
    cluster: Cluster, api: Api, operator: OperatorProcess, llm_namespace: str,
    stack: tuple[Process, Process, Process],
) -> None:
    name = "shift"
    with running_prometheus(targets(stack, llm_namespace, name), 1.0) as prometheus, \
            Load(stack[2].url).running() as load:
        cluster.apply([llmservice(name, prometheus.url)], "-n", llm_namespace)
        watch = Watch(api, llm_namespace, name, BUDGET)
        wait_until(lambda: watch.service().get("status", {}).get("autoscaling"), 120,
                   "a first planner decision", operator)
        generation = watch.service()["metadata"]["generation"]

        load.switch("summaries", rate=4.0)
        summaries = wait_until(lambda: (r := watch.replicas())[0] >= 2 and r, 300,
                               "prefill to grow under summaries", operator)
        load.switch("stories", rate=2.5)
        stories = wait_until(
            lambda: (r := watch.replicas())[1] > summaries[1] and r[0] < summaries[0] and r,
            420, f"decode to grow and prefill to shrink from {summaries}", operator)
        assert sum(stories) <= BUDGET and watch.largest <= BUDGET

        service = watch.service()
        assert service["metadata"]["generation"] == generation  # never the spec
        decided = service["status"]["autoscaling"]
        assert decided["lastDecisionTime"] and decided["inputs"]
        assert (decided["prefillReplicas"], decided["decodeReplicas"]) == stories
        events = api.core.list_namespaced_event(
            llm_namespace, field_selector=f"involvedObject.name={name}").items
        assert {"Rebalance", "ScaleUp", "ScaleDown"} & {e.reason for e in events}

        load.switch("idle")
        wait_until(lambda: watch.reason().startswith("NoTraffic"), 240,
                   "the planner to see zero traffic", operator)
        wait_until(lambda: watch.replicas() == (1, 1), 240,
                   "zero traffic to decay to the minimums", operator)

        check_outage(prometheus, watch, operator)
        assert watch.service()["metadata"]["generation"] == generation


def check_outage(prometheus: PrometheusServer, watch: Watch, operator: OperatorProcess) -> None:
    before = watch.replicas()
    prometheus.stop()
    wait_until(lambda: watch.reason().startswith("PrometheusUnavailable"), 120,
               "the planner to report the Prometheus outage", operator)
    limited = condition(watch.service(), "ScalingLimited")
    assert limited is not None and limited["status"] == "True"
    assert limited["reason"] == "PrometheusUnavailable"
    time.sleep(3 * INTERVAL_S)
    assert watch.replicas() == before  # held
    prometheus.start()
    wait_until(lambda: not watch.reason().startswith("PrometheusUnavailable"), 120,
               "the planner to recover from the outage", operator)


@pytest.mark.timeout(900)
def test_unschedulable_scale_up_is_limited_not_counted(
    cluster: Cluster, api: Api, operator: OperatorProcess, llm_namespace: str,
    stack: tuple[Process, Process, Process],
) -> None:
    """Decode pods that ask for 12 CPUs: the 16-CPU pool nodes fit one each, so growing decode
    leaves pods Pending. They are not capacity: ScalingLimited says so and decode stops growing."""
    name = "pending"
    with running_prometheus(targets(stack, llm_namespace, name), 1.0) as prometheus, \
            Load(stack[2].url, "stories", rate=4.0).running():
        cluster.apply([llmservice(name, prometheus.url, decode_cpu="12", acceleratorBudget=8,
                                  decode={"minReplicas": 1, "maxReplicas": 6})],
                      "-n", llm_namespace)
        watch = Watch(api, llm_namespace, name, 8)

        def limited_by_pending() -> dict[str, Any] | None:
            found = condition(watch.service(), "ScalingLimited")
            return found if found and "Pending" in found.get("message", "") else None

        found = wait_until(limited_by_pending, 420, "ScalingLimited for Pending pods", operator)
        assert found["status"] == "True"
        held = watch.replicas()[1]
        time.sleep(4 * INTERVAL_S)
        assert watch.replicas()[1] <= held  # Pending replicas are not grown further
        pods = api.pods(llm_namespace, f"pdserve.dev/llmservice={name},pdserve.dev/role=decode")
        assert any(p["status"].get("phase") == "Pending" for p in pods)

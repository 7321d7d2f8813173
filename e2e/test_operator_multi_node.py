"""A role whose replicas span nodes, on the real apiserver with the LeaderWorkerSet controller
(e2e/cluster starts it): the operator renders a LeaderWorkerSet, whose controller creates each
group's leader and other pods on the KWOK GPU nodes with the rendezvous environment the worker
reads; status counts groups; back to one node a replica, the LeaderWorkerSet gives way to a
Deployment. On a cluster without the LeaderWorkerSet API the test is skipped, saying so."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.cluster.session import Cluster
from e2e.operator_harness import (
    LWS_GROUP,
    Api,
    OperatorProcess,
    llmservice_manifest,
    wait_until,
)
from e2e.prometheus import running_prometheus
from e2e.test_operator_install import (  # noqa: F401 - the module's fixtures
    CONVERGE_S,
    api,
    converged,
    cpu_spec,
    installed,
    llm_namespace,
    operator,
    wait_converged,
)
from pdserve.api.accelerators import GPU_RESOURCE
from pdserve.controller.names import (
    LABEL_FOLLOWER_OF,
    LABEL_ROLE,
    LABEL_SERVICE,
    PLANNER_FIELD_MANAGER,
)

pytestmark = [pytest.mark.e2e]

LWS_NAME = "leaderworkerset.sigs.k8s.io/name"


def _multi_node_decode(nodes: int) -> dict[str, Any]:
    return cpu_spec(decode={"replicas": 1, "accelerator": {"kind": "nvidia-h100", "count": 8,
                                                            "nodes": nodes}})


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in pod["spec"]["containers"][0]["env"]}


@pytest.mark.timeout(420)
def test_a_replica_over_two_nodes_runs_as_a_leaderworkerset_group(
    cluster: Cluster, llm_namespace: str, api: Api, operator: OperatorProcess  # noqa: F811
) -> None:
    if not api.serves(LWS_GROUP):
        pytest.skip("the LeaderWorkerSet API is not installed in this cluster "
                    "(install LWS to run multi-node replicas)")
    cluster.apply([llmservice_manifest("big", _multi_node_decode(2))], "-n", llm_namespace)
    service = wait_converged(api, operator, llm_namespace, "big")
    assert service["status"]["decode"]["summary"] == "1/1"  # groups
    children = api.children(llm_namespace, "big")
    assert ("Deployment", "big-decode") not in children
    lws = children[("LeaderWorkerSet", "big-decode")]
    assert lws["status"]["readyReplicas"] == 1

    pods = api.pods(llm_namespace, f"{LWS_NAME}=big-decode")
    assert len(pods) == 2
    leader = next(p for p in pods if p["metadata"]["labels"].get(LABEL_ROLE) == "decode")
    follower = next(p for p in pods if p["metadata"]["labels"].get(LABEL_FOLLOWER_OF))
    labels = api.node_labels()
    for pod in (leader, follower):
        node = pod["spec"]["nodeName"]
        assert labels[node]["pdserve.dev/pool"] == "gpu", node
        assert pod["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "8"
    assert leader["spec"]["nodeName"] != follower["spec"]["nodeName"]
    # The environment the worker's --num-nodes/--node-rank/--rendezvous are expanded from.
    address = f"{leader['metadata']['name']}.big-decode.{llm_namespace}"
    for pod, index in ((leader, "0"), (follower, "1")):
        env = _env(pod)
        assert env["LWS_GROUP_SIZE"] == "2" and env["LWS_WORKER_INDEX"] == index
        assert env["LWS_LEADER_ADDRESS"] == address
    # The role's Service selects the leader only: the router never sends requests elsewhere.
    selected = api.pods(llm_namespace, f"{LABEL_SERVICE}=big,{LABEL_ROLE}=decode")
    assert [p["metadata"]["name"] for p in selected] == [leader["metadata"]["name"]]

    cluster.kubectl("patch", "llmservice", "big", "-n", llm_namespace, "--type=merge", "-p",
                    '{"spec": {"decode": {"accelerator": {"nodes": 1}}}}')

    def decode_runs_as(kind: str) -> bool:
        """Converged with the decode role's workload of `kind` only."""
        kinds = {found for found, name in api.children(llm_namespace, "big")
                 if name == "big-decode" and found in ("Deployment", "LeaderWorkerSet")}
        return converged(api, llm_namespace, "big") is not None and kinds == {kind}

    wait_until(lambda: decode_runs_as("Deployment"), CONVERGE_S,
               "the LeaderWorkerSet to give way", operator)
    wait_until(lambda: not api.pods(llm_namespace, f"{LABEL_FOLLOWER_OF}=decode"),
               CONVERGE_S, "the other nodes' pods to go", operator)

    # And over two nodes again: the Deployment gives way to a LeaderWorkerSet.
    cluster.kubectl("patch", "llmservice", "big", "-n", llm_namespace, "--type=merge", "-p",
                    '{"spec": {"decode": {"accelerator": {"nodes": 2}}}}')

    wait_until(lambda: decode_runs_as("LeaderWorkerSet"), CONVERGE_S,
               "the Deployment to give way", operator)


@pytest.mark.prometheus
@pytest.mark.timeout(300)
def test_the_planner_scales_a_multi_node_role_through_its_leaderworkerset(
    cluster: Cluster, llm_namespace: str, api: Api, operator: OperatorProcess  # noqa: F811
) -> None:
    """With no load metrics the planner decays the role to its minimum, through the
    LeaderWorkerSet's scale subresource under the planner's field manager."""
    if not api.serves(LWS_GROUP):
        pytest.skip("the LeaderWorkerSet API is not installed in this cluster")
    with running_prometheus([]) as prometheus:  # answers, with no load metrics
        spec = _multi_node_decode(2)
        spec["decode"]["replicas"] = 2
        spec["autoscaling"] = {
            "enabled": True, "prometheusUrl": prometheus.url, "intervalSeconds": 5,
            "scaleDownStabilizationSeconds": 0,
            "prefill": {"minReplicas": 1, "maxReplicas": 1},
            "decode": {"minReplicas": 1, "maxReplicas": 2}}
        cluster.apply([llmservice_manifest("planned", spec)], "-n", llm_namespace)

        def scaled_by_planner() -> bool:
            found = api.children(llm_namespace, "planned").get(
                ("LeaderWorkerSet", "planned-decode"))
            if found is None or found["spec"]["replicas"] != 1:
                return False
            managers = {entry["manager"] for entry in found["metadata"]["managedFields"]
                        if entry.get("subresource") == "scale"}
            return PLANNER_FIELD_MANAGER in managers

        wait_until(scaled_by_planner, CONVERGE_S,
                   "the planner to scale the LeaderWorkerSet to its minimum", operator)

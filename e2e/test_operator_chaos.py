"""The operator SIGKILLed 20 times at random points (while it starts, and while LLMServices are
created, changed and deleted, some of it while it is down): afterwards every LLMService
converges to exactly its children, owned once, with its whole status; the deleted ones leave
nothing behind. The operator is the one of install.yaml, run here with its ServiceAccount's
token (e2e/operator_harness.py)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.cluster.session import Cluster
from e2e.operator_harness import (
    Api,
    OperatorProcess,
    delete_llmservices,
    expected_children,
    install_manifests,
    installed_operator,
    is_true,
    llmservice_manifest,
    observed_current,
    wait_until,
)
from e2e.test_operator_install import converged as converged_one
from pdserve.api.resource import GROUP, PLURAL, VERSION
from pdserve.controller.names import LABEL_MANAGED_BY, LABEL_ROLE, LABEL_SERVICE, MANAGED_BY

pytestmark = [pytest.mark.e2e]

KILLS = int(os.environ.get("PDSERVE_CHAOS_KILLS", "20"))
SEED = 18
NAMES = [f"chaos-{index}" for index in range(4)]
# Most seconds the operator works before a kill, and the most it stays down.
MAX_RUN_S = 3.0
MAX_DOWN_S = 1.5
CONVERGE_S = 240


def spec(decode_replicas: int, prefill_cpu: str) -> dict[str, Any]:
    small = {"requests": {"cpu": "50m", "memory": "64Mi"}}
    return {
        "model": {"source": {"builtin": "tiny"}},
        "prefill": {"replicas": 1, "resources": {"requests": {"cpu": prefill_cpu,
                                                              "memory": "64Mi"}}},
        "decode": {"replicas": decode_replicas, "resources": small},
        "router": {"replicas": 1, "resources": small},
    }


class Workload:
    """Random creates, spec changes and deletes of a few LLMServices, remembered so that the
    end state can be checked against what was asked last."""

    def __init__(self, cluster: Cluster, api: Api, namespace: str, rng: random.Random) -> None:
        self.cluster, self.api, self.namespace, self.rng = cluster, api, namespace, rng
        self.wanted: dict[str, dict[str, Any]] = {}
        self.deleted: set[str] = set()
        self.counts = {"create": 0, "change": 0, "delete": 0}

    def step(self) -> None:
        name = self.rng.choice(NAMES)
        if name not in self.wanted:
            action = "create"
        else:
            action = self.rng.choice(["change", "change", "delete"])
        self.counts[action] += 1
        if action == "delete":
            self.api.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name)
            del self.wanted[name]
            self.deleted.add(name)
            return
        wanted = spec(self.rng.choice([1, 2]), self.rng.choice(["50m", "60m", "70m"]))
        self.cluster.apply([llmservice_manifest(name, wanted)], "-n", self.namespace)
        self.wanted[name] = wanted
        self.deleted.discard(name)


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> Cluster:
    install_manifests(cluster)
    return cluster


@pytest.fixture
def chaos(installed: Cluster, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[OperatorProcess, Api, str]]:
    api = Api(installed)
    with installed.namespace("chaos") as namespace, \
            installed_operator(installed, tmp_path_factory.mktemp("chaos")) as operator:
        yield operator, api, namespace
        if not operator.alive():
            operator.start()
        delete_llmservices(api, namespace, operator)


def owned_once(child: dict[str, Any], uids: dict[str, str]) -> bool:
    owners = child["metadata"].get("ownerReferences") or []
    return len(owners) == 1 and owners[0]["uid"] in uids.values()


@pytest.mark.timeout(900)
def test_operator_killed_twenty_times_converges(
    chaos: tuple[OperatorProcess, Api, str], installed: Cluster
) -> None:
    operator, api, namespace = chaos
    rng = random.Random(SEED)
    work = Workload(installed, api, namespace, rng)
    kills = {"starting": 0, "working": 0}
    for _ in range(KILLS):
        for _ in range(rng.randint(1, 3)):
            work.step()
        if rng.random() < 0.25:
            # While it starts: before or while kopf lists and handles what it finds.
            operator.kill()
            operator.start(wait=False)
            time.sleep(rng.uniform(0.0, 2.0))
            kills["starting"] += 1
        else:
            time.sleep(rng.uniform(0.0, MAX_RUN_S))
            kills["working"] += 1
        operator.kill()
        if rng.random() < 0.5:
            work.step()  # a change made while no operator runs
        time.sleep(rng.uniform(0.0, MAX_DOWN_S))
        operator.start(wait=rng.random() < 0.5)
    if not operator.alive():
        operator.start()
    wait_until(operator.healthy, 60, "the operator's /healthz", operator)

    def converged() -> dict[str, dict[str, Any]] | None:
        found = {item["metadata"]["name"]: item for item in api.llmservices(namespace)}
        if set(found) != set(work.wanted):
            return None
        for name, service in found.items():
            if not _same_spec(service, work.wanted[name]):
                return None
            if not observed_current(service) or not is_true(service, "Ready"):
                return None
            if set(api.children(namespace, name)) != expected_children(service):
                return None
        return found

    services = wait_until(converged, CONVERGE_S, f"{sorted(work.wanted)} to converge", operator)
    uids = {name: service["metadata"]["uid"] for name, service in services.items()}

    # Each child owned once, by its own LLMService; pods as many as asked (a duplicate
    # ReplicaSet left scaled up would add some).
    for name in services:
        for child in api.children(namespace, name).values():
            assert owned_once(child, {name: uids[name]}), child["metadata"]
        for role, replicas in (("prefill", 1), ("decode", work.wanted[name]["decode"]["replicas"]),
                               ("router", 1)):
            selector = f"{LABEL_SERVICE}={name},{LABEL_ROLE}={role}"

            def live_pods(selector: str = selector, replicas: int = replicas) -> bool:
                pods = api.pods(namespace, selector)
                return len([p for p in pods if not p["metadata"].get("deletionTimestamp")]
                           ) == replicas

            wait_until(live_pods, CONVERGE_S, f"{replicas} live {role} pods of {name}", operator)

    # Nothing of the deleted ones left (the garbage collector follows the owner references),
    # and nothing of ours without a live owner.
    def no_orphans() -> bool:
        ours = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        listers = (api.core.list_namespaced_config_map, api.core.list_namespaced_service,
                   api.core.list_namespaced_secret, api.apps.list_namespaced_deployment,
                   api.policy.list_namespaced_pod_disruption_budget,
                   api.networking.list_namespaced_network_policy)
        for lister in listers:
            for item in lister(namespace, label_selector=ours).items:
                owners = item.metadata.owner_references or []
                if [o.uid for o in owners if o.uid in uids.values()] != [o.uid for o in owners] \
                        or not owners:
                    return False
        return True

    wait_until(no_orphans, CONVERGE_S, "the deleted LLMServices' children to be collected",
               operator)

    # No lost status: each survivor carries every condition a quiet reconcile writes.
    control = "chaos-control"
    installed.apply([llmservice_manifest(control, spec(1, "50m"))], "-n", namespace)
    quiet = wait_until(lambda: converged_one(api, namespace, control), CONVERGE_S,
                       "a quiet LLMService to be Ready", operator)
    expected_types = {c["type"] for c in quiet["status"]["conditions"]}
    for name, service in services.items():
        assert {c["type"] for c in service["status"]["conditions"]} == expected_types, name
        for key in ("prefill", "decode", "router"):
            assert key in service["status"] or key not in quiet["status"], (name, key)
    print(f"chaos: {KILLS} SIGKILLs ({kills}), operations {work.counts}, "
          f"{len(services)} LLMServices converged, {len(work.deleted)} deleted")


def _same_spec(service: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """The stored spec holds the apiserver's defaults beside what was applied."""
    def within(small: Any, large: Any) -> bool:
        if isinstance(small, dict):
            return isinstance(large, dict) and all(within(v, large.get(k))
                                                   for k, v in small.items())
        return bool(small == large)

    return within(wanted, service["spec"])

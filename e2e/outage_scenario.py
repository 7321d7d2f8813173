"""etcd and kube-apiserver stopped and started again while the operator runs, briefly and for
ten minutes, on a control plane of the scenario's own (KWOK nodes only; the session's cluster
is never hit). After each outage, drift made as soon as the API answers (children deleted, one
scaled by hand) must be repaired within 70 s, by the same operator process.

It runs in a thread started when the session's collection ends (e2e/conftest.py), so that its
ten idle minutes pass beside the other tests; e2e/test_control_plane_outage.py waits for it."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from e2e.cluster import controlplane
from e2e.cluster.session import Cluster, local_cluster
from e2e.cluster.versions import bin_dir
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
from pdserve.controller.names import children_selector, deployment_name

OUTAGES_S = (20.0, float(os.environ.get("PDSERVE_OUTAGE_S", "600")))
REPAIR_S = 70.0
CONVERGE_S = 180.0
NAME = "outage"
OUTAGE = ("kube-apiserver", "etcd")
# Generous: cluster start, the outages, the repairs, on a machine busy with the other tests.
DEADLINE_S = 420.0 + sum(OUTAGES_S) + len(OUTAGES_S) * REPAIR_S


# The session's scenario: {"scenario": OutageScenario, "started": monotonic} or {"skipped": why}.
RUNNING: dict[str, Any] = {}


def start() -> None:
    why = OutageScenario.can_run()
    if why is not None:
        RUNNING["skipped"] = why
        return
    scenario = OutageScenario()
    RUNNING.update(scenario=scenario, started=time.monotonic())
    scenario.start()


def stop(grace_s: float = 60.0) -> None:
    """At the end of the session: a scenario still running stops and cleans up."""
    scenario = RUNNING.get("scenario")
    if scenario is not None and scenario.is_alive():
        scenario.stop()
        scenario.join(grace_s)


class Stopped(Exception):
    pass


class OutageScenario(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="control-plane-outage", daemon=True)
        self.stopping = threading.Event()
        self.figures: list[tuple[float, float]] = []  # (outage s, repaired after s)
        self.error: str | None = None
        self.skipped: str | None = None

    @staticmethod
    def can_run() -> str | None:
        """Why the scenario cannot run here, or None."""
        if not (bin_dir() / "kube-apiserver").exists():
            return "the local control plane is not built (make cluster-build)"
        return None

    def stop(self) -> None:
        """Ends the scenario early (the session ends): its cleanup still runs."""
        self.stopping.set()

    def _sleep(self, seconds: float) -> None:
        if self.stopping.wait(seconds):
            raise Stopped

    def run(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="pdserve-outage-"))
        try:
            # One real node per machine: the session's.
            state = controlplane.up(workdir / "cluster", quiet=True, tie_to_parent=True,
                                    real_node=False)
            try:
                cluster = local_cluster(state)
                install_manifests(cluster)
                with installed_operator(cluster, workdir) as operator:
                    self._outages(cluster, state, operator)
            finally:
                controlplane.down(workdir / "cluster", quiet=True)
        except Stopped:
            self.error = "stopped before it ended (the session ended first)"
        except BaseException:
            self.error = traceback.format_exc()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _outages(self, cluster: Cluster, state: controlplane.ClusterState,
                 operator: OperatorProcess) -> None:
        api = Api(cluster)
        assert operator.proc is not None
        pid = operator.proc.pid
        small = {"requests": {"cpu": "50m", "memory": "64Mi"}}
        spec = {"model": {"source": {"builtin": "tiny"}},
                **{role: {"replicas": 1, "resources": small}
                   for role in ("prefill", "decode", "router")}}
        with cluster.namespace("outage") as namespace:
            cluster.apply([llmservice_manifest(NAME, spec)], "-n", namespace)
            wait_until(lambda: converged(api, namespace), CONVERGE_S,
                       "the LLMService to converge", operator)
            for outage_s in OUTAGES_S:
                controlplane.stop_components(state, OUTAGE)
                self._sleep(outage_s)
                controlplane.start_components(state, tuple(reversed(OUTAGE)))
                back = time.monotonic()
                deleted = drift(cluster, api, namespace)
                left = ["not checked"]
                while left and time.monotonic() - back < REPAIR_S:
                    self._sleep(1.0)
                    left = drift_left(api, namespace, deleted)
                assert not left, (f"after a {outage_s:.0f} s outage, not repaired within "
                                  f"{REPAIR_S:.0f} s: {left}\n{operator.log_tail()}")
                self.figures.append((outage_s, time.monotonic() - back))
                assert operator.alive() and operator.proc.pid == pid, (
                    f"the operator did not survive a {outage_s:.0f} s outage:\n"
                    f"{operator.log_tail()}")
            delete_llmservices(api, namespace, operator)


def converged(api: Api, namespace: str) -> bool:
    service = api.llmservice(namespace, NAME)
    return bool(service and observed_current(service) and is_true(service, "Ready")
                and set(api.children(namespace, NAME)) == expected_children(service))


def drift(cluster: Cluster, api: Api, namespace: str) -> dict[tuple[str, str], str]:
    """Two children deleted (the router's Deployment, the ConfigMaps), the prefill Deployment
    scaled by hand; returns the uids of the deleted ones."""
    router = deployment_name(NAME, "router")
    children: dict[tuple[str, str], Any] = api.children(namespace, NAME)
    deleted = {key: children[key]["metadata"]["uid"] for key in children
               if key[0] == "ConfigMap" or key == ("Deployment", router)}
    cluster.kubectl("-n", namespace, "delete", "deployment", router, "--wait=false")
    cluster.kubectl("-n", namespace, "delete", "configmap", "-l", children_selector(NAME),
                    "--wait=false")
    cluster.kubectl("-n", namespace, "scale", "deployment", deployment_name(NAME, "prefill"),
                    "--replicas=3")
    return deleted


def drift_left(api: Api, namespace: str, deleted: dict[tuple[str, str], str]) -> list[str]:
    """What is not yet repaired. (Not readiness: KWOK leaves the pods that the node controller
    marked not ready during the outage so.)"""
    service = api.llmservice(namespace, NAME)
    assert service is not None
    children = api.children(namespace, NAME)
    left = [f"{kind} {name} missing" for kind, name in expected_children(service) - set(children)]
    left += [f"{kind} {name} not recreated" for (kind, name), uid in deleted.items()
             if (kind, name) in children and children[(kind, name)]["metadata"]["uid"] == uid]
    replicas = api.apps.read_namespaced_deployment(deployment_name(NAME, "prefill"),
                                                   namespace).spec.replicas
    if replicas != 1:
        left.append(f"prefill scaled to {replicas}")
    return left

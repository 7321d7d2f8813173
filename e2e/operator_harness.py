"""The pdserve operator as a local process against the e2e cluster, and what tests watch it do.

KWOK nodes have no kubelet, so the in-cluster operator Deployment stays at 0 replicas and the
operator runs here instead, with the credentials of the chart's ServiceAccount: a test thereby
also proves that the chart's RBAC is enough for the operator.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config

from e2e.cluster.session import Cluster
from pdserve.api.resource import CRD_NAME, GROUP, PLURAL, VERSION
from pdserve.api.spec import LLMServiceSpec
from pdserve.controller.context import Owner
from pdserve.controller.names import children_selector
from pdserve.controller.render import render_children

ROOT = Path(__file__).resolve().parents[1]
INSTALL_YAML = ROOT / "manifests" / "install.yaml"
CHART = ROOT / "charts" / "pdserve"
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
# What manifests/install.yaml creates.
SYSTEM_NAMESPACE = "pdserve-system"
OPERATOR = "pdserve-operator"
CHILD_KINDS = ("ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy")

T = TypeVar("T")


LWS_GROUP = "leaderworkerset.x-k8s.io"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class OperatorProcess:
    """`pdserve operator` in a subprocess; SIGKILL-able, restartable, measurable."""

    kubeconfig: Path
    scope: list[str]
    log_path: Path
    health_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        """Starts the operator; with `wait`, returns once its /healthz answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        command = [
            sys.executable,
            "-m",
            "pdserve",
            "operator",
            *self.scope,
            "--kubeconfig",
            str(self.kubeconfig),
            "--health-port",
            str(self.health_port),
            "--metrics-port",
            str(self.metrics_port),
        ]
        # No KUBECONFIG in the environment: --kubeconfig alone must lead to the cluster.
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["PDSERVE_IMAGE"] = "pdserve:e2e"
        with self.log_path.open("ab") as log:
            log.write(f"\n==== start {' '.join(command)}\n".encode())
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait:
            wait_until(self.healthy, 60, "the operator's /healthz", self)

    def healthy(self) -> bool:
        if not self.alive():
            raise AssertionError(f"the operator exited:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful shutdown, as when a node dies."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")

    def metric(self, name: str) -> float:
        """Sum of one metric's samples on the operator's /metrics."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def wait_until(
    check: Callable[[], T | bool | None],
    timeout_s: float,
    what: str,
    operator: OperatorProcess | None = None,
    interval_s: float = 0.2,
) -> T:
    """Polls `check` every `interval_s` until it returns something truthy, and returns that."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result  # type: ignore[return-value]
        except client.ApiException as exc:
            last_error = exc
        time.sleep(interval_s)
    detail = f"\nlast API error: {last_error}" if last_error else ""
    tail = f"\noperator log:\n{operator.log_tail()}" if operator else ""
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{detail}{tail}")


def service_account_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount (a bound token from the apiserver)."""
    token = cluster.kubectl(
        "create", "token", account, "-n", namespace, "--duration=4h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    contexts = {item["name"]: item["context"] for item in admin["contexts"]}
    cluster_name = contexts[admin["current-context"]]["cluster"]
    cluster_entry = next(item for item in admin["clusters"] if item["name"] == cluster_name)
    user = f"system:serviceaccount:{namespace}:{account}"
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster_entry],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    path.chmod(0o600)
    return path


@dataclass
class Api:
    """Typed reads with the admin kubeconfig: cheaper than a kubectl process per poll."""

    cluster: Cluster
    api_client: client.ApiClient = field(init=False)

    def __post_init__(self) -> None:
        self.api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.cluster.kubeconfig)
        )
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.policy = client.PolicyV1Api(self.api_client)
        self.networking = client.NetworkingV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    def llmservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
            return found
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def llmservices(self, namespace: str) -> list[dict[str, Any]]:
        found = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        items: list[dict[str, Any]] = found["items"]
        return items

    def children(self, namespace: str, service: str) -> dict[tuple[str, str], dict[str, Any]]:
        """Every object labelled as a child of the LLMService, by (kind, name)."""
        selector = children_selector(service)
        listers: dict[str, Callable[..., Any]] = {
            "ConfigMap": self.core.list_namespaced_config_map,
            "Service": self.core.list_namespaced_service,
            "Deployment": self.apps.list_namespaced_deployment,
            "PodDisruptionBudget": self.policy.list_namespaced_pod_disruption_budget,
            "NetworkPolicy": self.networking.list_namespaced_network_policy,
        }
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for kind, lister in listers.items():
            for item in lister(namespace, label_selector=selector).items:
                found[(kind, item.metadata.name)] = self.api_client.sanitize_for_serialization(item)
        for lws in self.leaderworkersets(namespace, selector):
            found[("LeaderWorkerSet", lws["metadata"]["name"])] = lws
        return found

    def leaderworkersets(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        """The namespace's LeaderWorkerSets (none where that API is not installed)."""
        try:
            listed = self.custom.list_namespaced_custom_object(
                LWS_GROUP, "v1", namespace, "leaderworkersets", label_selector=selector)
        except client.ApiException as exc:
            if exc.status == 404:
                return []
            raise
        items: list[dict[str, Any]] = listed["items"]
        return items

    def serves(self, group: str) -> bool:
        """Whether the cluster serves an API group (e.g. an add-on's CRDs)."""
        groups = client.ApisApi(self.api_client).get_api_versions().groups
        return any(found.name == group for found in groups)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [self.api_client.sanitize_for_serialization(pod) for pod in items]

    def node_labels(self) -> dict[str, dict[str, str]]:
        return {
            node.metadata.name: node.metadata.labels or {} for node in self.core.list_node().items
        }


def expected_children(service: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of every child the operator must create, from its own pure renderer."""
    meta = service["metadata"]
    spec = LLMServiceSpec.model_validate(service["spec"])
    owner = Owner(meta["name"], meta["namespace"], meta["uid"])
    return {
        (child["kind"], child["metadata"]["name"])
        for child in render_children(spec, owner, "pdserve:e2e")
    }


def condition(service: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for item in ((service or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return dict(item)
    return None


def is_true(service: dict[str, Any] | None, kind: str) -> bool:
    found = condition(service, kind)
    return found is not None and found["status"] == "True"


def observed_current(service: dict[str, Any] | None) -> bool:
    if service is None:
        return False
    status = service.get("status") or {}
    return bool(status.get("observedGeneration") == service["metadata"]["generation"])


@contextlib.contextmanager
def running_operator(
    kubeconfig: Path,
    scope: list[str],
    log_path: Path,
) -> Iterator[OperatorProcess]:
    operator = OperatorProcess(kubeconfig, scope, log_path)
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


def llmservice_manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMService", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


INSTALLED_OPERATOR_PODS = "app.kubernetes.io/instance=pdserve,app.kubernetes.io/component=operator"


def install_manifests(cluster: Cluster) -> None:
    """`kubectl apply --server-side` of install.yaml, then its in-cluster operator stopped:
    these tests run the operator as a local process (with its ServiceAccount's token)."""
    cluster.kubectl("apply", "--server-side", "-f", str(INSTALL_YAML), timeout=120)
    # Also until discovery serves it: kubectl's discovery cache was written by the apply,
    # before the CRD existed, and `explain` and friends trust that cache.
    cluster.wait_crd_established(CRD_NAME)
    stop_installed_operator(cluster)


def stop_installed_operator(cluster: Cluster) -> None:
    """Scale install.yaml's operator to 0 and wait for its pod to be gone. Where the real node
    holds the image, the pod does start: left running, it reconciles every LLMService with its
    own default image beside the local operator, and the two roll the workloads back and
    forth."""
    cluster.kubectl("-n", SYSTEM_NAMESPACE, "scale", f"deployment/{OPERATOR}", "--replicas=0")

    def gone() -> bool:
        listed = cluster.kubectl("-n", SYSTEM_NAMESPACE, "get", "pods", "-l",
                                 INSTALLED_OPERATOR_PODS, "-o", "name")
        return not listed.stdout.strip()

    wait_until(gone, 90, "install.yaml's operator pod to stop")


@contextlib.contextmanager
def installed_operator(cluster: Cluster, workdir: Path) -> Iterator[OperatorProcess]:
    """The operator of install.yaml run here with its ServiceAccount's token, so the install's
    RBAC is exactly what it works with."""
    kubeconfig = service_account_kubeconfig(cluster, SYSTEM_NAMESPACE, OPERATOR,
                                            workdir / "operator.kubeconfig")
    with running_operator(kubeconfig, ["--all-namespaces"], workdir / "operator.log") as running:
        yield running


def delete_llmservices(api: Api, namespace: str, operator: OperatorProcess | None = None) -> None:
    """Delete every LLMService of a namespace and wait until they are gone (while the operator
    still runs: it removes its finalizer, else the namespace would hang in Terminating)."""
    count = len(api.llmservices(namespace))
    if not count:
        return
    api.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    wait_until(
        lambda: not api.llmservices(namespace),
        60 + count,
        f"{count} LLMServices of {namespace} to be deleted",
        operator,
    )

"""Sections 1 and 2: the local cluster with its GPU/TPU/CPU node pools, pdserve installed with
`kubectl apply --server-side`, the operator reconciling the samples onto the pools.

KWOK nodes have no kubelet, so the operator's own Deployment is scaled to 0 and the operator
runs here as a local process, with the token of the ServiceAccount the install created (so the
install's RBAC is what it works with)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster import controlplane
from e2e.cluster.session import Cluster
from e2e.demo import report
from e2e.operator_harness import (
    INSTALL_YAML,
    OPERATOR,
    SAMPLES,
    SYSTEM_NAMESPACE,
    Api,
    OperatorProcess,
    delete_llmservices,
    installed_operator,
    is_true,
    observed_current,
    wait_until,
)
from pdserve.controller.names import LABEL_ROLE, LABEL_SERVICE

NAMESPACE = "pdserve-demo"
READY_TIMEOUT_S = 240
POOL_LABELS = ("pdserve.dev/pool", "cloud.google.com/gke-accelerator",
               "cloud.google.com/gke-tpu-accelerator", "cloud.google.com/gke-tpu-topology")


@dataclass(frozen=True)
class LocalCluster:
    cluster: Cluster
    state_dir: Path
    started_here: bool


def cluster_up(state_dir: Path) -> LocalCluster:
    """The local cluster: reused when one already runs in `state_dir`, else started."""
    existing = controlplane.read_state(state_dir)
    started = existing is None or not controlplane.is_healthy(existing)
    state = controlplane.up(state_dir) if started else existing
    assert state is not None
    if not started:
        report.say(f"reusing the cluster already running in {state_dir}")
    cluster = Cluster(Path(state.kubeconfig), Path(state.bin_dir), local=True)
    report.say(f"export KUBECONFIG={state.kubeconfig}   # to look around with kubectl\n")
    show(cluster, "get", "nodes", "-L", ",".join(POOL_LABELS))
    return LocalCluster(cluster, state_dir, started)


def show(cluster: Cluster, *args: str, timeout: float = 120) -> str:
    """Runs kubectl and prints the command line and its output."""
    output = cluster.kubectl(*args, timeout=timeout).stdout
    report.command("kubectl " + " ".join(args), output)
    return output


def install(cluster: Cluster) -> None:
    show(cluster, "apply", "--server-side", "-f", os.path.relpath(INSTALL_YAML))
    cluster.kubectl("wait", "--for=condition=Established", "crd/llmservices.pdserve.dev",
                    "--timeout=60s", timeout=90)
    report.say("\nKWOK nodes run no containers: the operator runs here as a local process with "
               "the ServiceAccount token of the install, its Deployment scaled to 0.")
    show(cluster, "-n", SYSTEM_NAMESPACE, "scale", f"deployment/{OPERATOR}", "--replicas=0")


@contextlib.contextmanager
def operator(cluster: Cluster, workdir: Path) -> Iterator[OperatorProcess]:
    with installed_operator(cluster, workdir) as process:
        report.say(f"operator running (pid {process.proc.pid if process.proc else '?'}, "
                   f"log {workdir / 'operator.log'})")
        yield process


def apply_samples(cluster: Cluster, running: OperatorProcess) -> None:
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    show(cluster, "apply", "-n", NAMESPACE, "-f", os.path.relpath(SAMPLES[0].parent))
    api = Api(cluster)
    names = [path.stem for path in SAMPLES]

    def all_ready() -> bool:
        services = api.llmservices(NAMESPACE)
        return len(services) >= len(names) and all(
            observed_current(s) and is_true(s, "Ready") for s in services)

    wait_until(all_ready, READY_TIMEOUT_S, f"the samples in {NAMESPACE} to be Ready", running)
    report.say("")
    show(cluster, "get", "llms,deploy,pods", "-n", NAMESPACE, "-o", "wide")
    report.say("\nwhere each role landed (node pool label pdserve.dev/pool):")
    pools = {node: labels.get(POOL_LABELS[0], "-") for node, labels in api.node_labels().items()}
    rows = []
    for service in api.llmservices(NAMESPACE):
        name = service["metadata"]["name"]
        for role in ("prefill", "decode", "router"):
            pods = api.pods(NAMESPACE, f"{LABEL_SERVICE}={name},{LABEL_ROLE}={role}")
            nodes = sorted({pod["spec"].get("nodeName") or "(pending)" for pod in pods})
            pool = ", ".join(sorted({pools.get(node, "-") for node in nodes}))
            rows.append([name, role, len(pods), pool, ", ".join(nodes)])
    report.table(["LLMService", "role", "pods", "pool", "nodes"], rows)


def remove_samples(cluster: Cluster, running: OperatorProcess) -> None:
    """Deletes the demo's LLMServices while the operator still runs (it removes their
    finalizers; without it they and their namespace would hang in deletion), then the
    namespace."""
    delete_llmservices(Api(cluster), NAMESPACE, running)
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def tidy(local: LocalCluster, keep: bool) -> None:
    """Stops the cluster the demo started unless --keep; a cluster that already ran before the
    demo stays up (without the demo's namespace unless --keep: see remove_samples)."""
    if keep:
        report.say(f"the cluster keeps running (KUBECONFIG={local.cluster.kubeconfig}); "
                   f"stop it with: {_down_command(local.state_dir)}")
    elif local.started_here:
        controlplane.down(local.state_dir)
    else:
        report.say(f"deleted the samples and namespace {NAMESPACE}; the cluster was running "
                   f"before the demo and keeps running (stop it with: "
                   f"{_down_command(local.state_dir)})")


def _down_command(state_dir: Path) -> str:
    if state_dir == controlplane.default_state_dir().resolve():
        return "make cluster-down"
    return f"python -m e2e.cluster down --state-dir {state_dir}"


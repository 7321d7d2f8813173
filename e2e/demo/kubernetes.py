"""Sections 1 and 2: the local cluster with its GPU/TPU/CPU node pools and its one real node,
the pdserve image built and imported there, pdserve installed with `kubectl apply
--server-side`, the operator running in-cluster on the real node and reconciling the samples:
the GPU and TPU samples onto KWOK pools (pods that run nothing), the agentic sample onto the
real node (pods that serve sections 3 and 4)."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e import image
from e2e.cluster import controlplane
from e2e.cluster.node import identity
from e2e.cluster.session import Cluster, local_cluster
from e2e.demo import report
from e2e.demo.workloads import DEMO_KV_COMPRESSION
from e2e.operator_harness import (
    INSTALL_YAML,
    OPERATOR,
    SAMPLES,
    SYSTEM_NAMESPACE,
    Api,
    delete_llmservices,
    is_true,
    observed_current,
    wait_until,
)
from e2e.real_node import Placement
from pdserve.api.resource import CRD_NAME
from pdserve.controller.names import LABEL_ROLE, LABEL_SERVICE

NAMESPACE = "pdserve-demo"
READY_TIMEOUT_S = 480
POOL_LABELS = ("pdserve.dev/pool", "cloud.google.com/gke-accelerator",
               "cloud.google.com/gke-tpu-accelerator", "cloud.google.com/gke-tpu-topology")
AGENTIC = next(path for path in SAMPLES if path.stem == "agentic-chat")
# The sample asks for a CPU core and 2 GiB a worker; the real node is this 2-core machine.
SMALL_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}}


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
    if not state.real_node:
        raise RuntimeError(f"the cluster in {state_dir} runs without its real node (started "
                           f"with PDSERVE_REAL_NODE=0), where the demo's pods run: stop it "
                           f"({_down_command(state_dir)}) or use --skip-cluster")
    cluster = local_cluster(state)
    report.say(f"export KUBECONFIG={state.kubeconfig}   # to look around with kubectl\n")
    show(cluster, "get", "nodes", "-L", ",".join(POOL_LABELS))
    report.say(f"\n{identity.NODE_NAME} is a real node (containerd, kubelet, kube-proxy, "
               f"CoreDNS on this machine); the others are KWOK nodes that run nothing.")
    return LocalCluster(cluster, state_dir, started)


def show(cluster: Cluster, *args: str, timeout: float = 120) -> str:
    """Runs kubectl and prints the command line and its output."""
    output = cluster.kubectl(*args, timeout=timeout).stdout
    report.command("kubectl " + " ".join(args), output)
    return output


def load_image(cluster: Cluster) -> None:
    """The image the pods run, built from the Dockerfile (cached by content) and imported into
    the real node's containerd; both say how they go while they run."""
    assert cluster.node is not None
    archive = image.build()
    image.import_into_containerd(archive, Path(cluster.tool("ctr")),
                                 cluster.node.containerd_socket)


def install(cluster: Cluster) -> None:
    """install.yaml as a user applies it, then its operator placed on the real node (what a
    kustomize patch would do) and waited for."""
    show(cluster, "apply", "--server-side", "-f", os.path.relpath(INSTALL_YAML))
    cluster.wait_crd_established(CRD_NAME)
    patch = {"spec": {"replicas": 1, "template": {"spec": Placement.real_node().apply({})}}}
    show(cluster, "-n", SYSTEM_NAMESPACE, "patch", f"deployment/{OPERATOR}", "--type=merge",
         "-p", json.dumps(patch))
    show(cluster, "-n", SYSTEM_NAMESPACE, "rollout", "status", f"deployment/{OPERATOR}",
         "--timeout=300s", timeout=320)
    show(cluster, "-n", SYSTEM_NAMESPACE, "get", "pods", "-o", "wide")


def stop_operator(cluster: Cluster) -> None:
    cluster.kubectl("-n", SYSTEM_NAMESPACE, "scale", f"deployment/{OPERATOR}", "--replicas=0")


def agentic_on_real_node(prefill: int, decode: int, short_prompt_threshold: int
                         ) -> dict[str, Any]:
    """The agentic sample with its roles on the real node and sized for it."""
    manifest: dict[str, Any] = yaml.safe_load(AGENTIC.read_text())
    spec = manifest["spec"]
    placement = Placement.real_node()
    for role, replicas in (("prefill", prefill), ("decode", decode), ("router", None)):
        placed = placement.apply(spec[role])
        placed["resources"] = copy.deepcopy(SMALL_RESOURCES)
        if replicas is not None:
            placed["replicas"] = replicas
        spec[role] = placed
    spec["router"]["shortPromptThreshold"] = short_prompt_threshold
    spec["router"]["disaggregation"] = "always"  # the demo measures the handoff it shows
    spec["prefill"].setdefault("engine", {})["kvCompression"] = DEMO_KV_COMPRESSION.to_k8s()
    return manifest


def apply_samples(cluster: Cluster, agentic: dict[str, Any]) -> None:
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    others = [path for path in SAMPLES if path != AGENTIC]
    show(cluster, "apply", "-n", NAMESPACE,
         *[arg for path in others for arg in ("-f", os.path.relpath(path))])
    report.say(f"\n{AGENTIC.name}, placed on {identity.NODE_NAME} (nodeSelector + "
               f"toleration) with 100m CPU / 256Mi requests a pod, "
               f"{agentic['spec']['prefill']['replicas']} prefill + "
               f"{agentic['spec']['decode']['replicas']} decode:")
    report.command(f"kubectl apply -n {NAMESPACE} -f -", cluster.apply([agentic], "-n",
                                                                       NAMESPACE))
    api = Api(cluster)
    names = [*(path.stem for path in others), agentic["metadata"]["name"]]

    def all_ready() -> bool:
        services = api.llmservices(NAMESPACE)
        return len(services) >= len(names) and all(
            observed_current(s) and is_true(s, "Ready") for s in services)

    wait_until(all_ready, READY_TIMEOUT_S, f"the samples in {NAMESPACE} to be Ready",
               interval_s=1.0)
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


def remove_samples(cluster: Cluster) -> None:
    """Deletes the demo's LLMServices while the operator still runs (it removes their
    finalizers; without it they and their namespace would hang in deletion), then the
    namespace."""
    delete_llmservices(Api(cluster), NAMESPACE)
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def tidy(local: LocalCluster, keep: bool) -> None:
    """Stops the cluster the demo started unless --keep; a cluster that already ran before the
    demo stays up (without the demo's namespace and with the operator scaled back to 0, unless
    --keep: see remove_samples)."""
    if keep:
        report.say(f"the cluster keeps running (KUBECONFIG={local.cluster.kubeconfig}); "
                   f"stop it with: {_down_command(local.state_dir)}")
    elif local.started_here:
        controlplane.down(local.state_dir)
    else:
        report.say(f"deleted the samples and namespace {NAMESPACE}, scaled the operator to 0; "
                   f"the cluster was running before the demo and keeps running (stop it with: "
                   f"{_down_command(local.state_dir)})")


def _down_command(state_dir: Path) -> str:
    if state_dir == controlplane.default_state_dir().resolve():
        return "make cluster-down"
    return f"python -m e2e.cluster down --state-dir {state_dir}"

"""Install by `helm install` (namespaced RBAC); the operator, running with the release's
ServiceAccount token, serves its own namespace only; upgrades and uninstalls leave the CRD."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from e2e.cluster.session import Cluster
from e2e.operator_harness import (
    CHART,
    ROOT,
    Api,
    OperatorProcess,
    delete_llmservices,
    expected_children,
    is_true,
    observed_current,
    running_operator,
    service_account_kubeconfig,
    wait_until,
)
from pdserve.api.accelerators import accelerator_facts
from pdserve.api.resource import CRD_NAME
from pdserve.controller.names import LABEL_ROLE, LABEL_SERVICE

pytestmark = [pytest.mark.e2e]

RELEASE = "pdserve-helm"
OPERATOR = f"{RELEASE}-operator"
CRD = CRD_NAME
STORY = ROOT / "manifests" / "samples" / "story-generation-gpu.yaml"
CONVERGE_S = 150


def helm_ok(cluster: Cluster, *args: str) -> str:
    done = cluster.helm(*args)
    assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """(namespace, `helm install` output) of a namespaced release with the operator at 0."""
    namespace = f"pdserve-helm-{uuid.uuid4().hex[:6]}"
    output = helm_ok(
        cluster,
        "install",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--create-namespace",
        "--set",
        "operator.replicas=0",
        "--set",
        "rbac.namespaced=true",
        "--wait",
        "--timeout",
        "120s",
    )
    try:
        yield namespace, output
    finally:
        cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s")
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Api:
    return Api(cluster)


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, release: tuple[str, str], api: Api, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    namespace, _ = release
    workdir = tmp_path_factory.mktemp("operator-helm")
    kubeconfig = service_account_kubeconfig(cluster, namespace, OPERATOR, workdir / "kubeconfig")
    with running_operator(
        kubeconfig, [f"--namespace={namespace}"], workdir / "operator.log"
    ) as running:
        yield running
        delete_llmservices(api, namespace, running)


@pytest.mark.timeout(240)
def test_helm_install_creates_the_release(cluster: Cluster, release: tuple[str, str]) -> None:
    namespace, output = release
    assert "STATUS: deployed" in output
    assert f"LLMServices in namespace {namespace} only" in output  # NOTES.txt
    assert "kubectl apply --server-side --force-conflicts -f crds/" in output
    deployment = cluster.get("deployment", OPERATOR, "-n", namespace)
    assert deployment["spec"]["replicas"] == 0
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["pdserve", "operator"]
    assert f"--namespace={namespace}" in container["args"]
    assert cluster.get("role", OPERATOR, "-n", namespace)["rules"]
    assert cluster.get("rolebinding", OPERATOR, "-n", namespace)["roleRef"]["kind"] == "Role"
    # CRDs come from the chart's crds/ directory: never part of the release's manifest.
    manifest = helm_ok(cluster, "get", "manifest", RELEASE, "-n", namespace)
    kinds = {doc["kind"] for doc in yaml.safe_load_all(manifest) if doc}
    assert "CustomResourceDefinition" not in kinds
    assert {"Deployment", "ServiceAccount", "Role", "RoleBinding", "ClusterRole"} <= kinds
    cluster.wait_crd_established(CRD)


@pytest.mark.timeout(120)
def test_namespaced_identity_stays_in_its_namespace(
    cluster: Cluster, release: tuple[str, str]
) -> None:
    namespace, _ = release
    account = f"system:serviceaccount:{namespace}:{OPERATOR}"

    def can(*args: str) -> bool:
        done = cluster.kubectl("auth", "can-i", *args, "--as", account, check=False)
        return done.stdout.strip() == "yes"

    assert can("create", "deployments.apps", "-n", namespace)
    assert can("patch", "llmservices.pdserve.dev", "-n", namespace)
    assert not can("create", "deployments.apps", "-n", "default")
    assert not can("list", "llmservices.pdserve.dev", "-n", "default")
    assert can("watch", "customresourcedefinitions.apiextensions.k8s.io")


def converged(api: Api, namespace: str, name: str) -> dict[str, Any] | None:
    service = api.llmservice(namespace, name)
    if service is None or not observed_current(service) or not is_true(service, "Ready"):
        return None
    if set(api.children(namespace, name)) != expected_children(service):
        return None
    return service


@pytest.mark.timeout(480)
def test_namespaced_operator_serves_only_its_namespace(
    cluster: Cluster, release: tuple[str, str], operator: OperatorProcess, api: Api
) -> None:
    namespace, _ = release
    with cluster.namespace("outside") as outside:
        # The outside one first: once the inside one has converged, the operator had every
        # chance to see the outside one too.
        cluster.kubectl("apply", "-n", outside, "-f", str(STORY))
        cluster.kubectl("apply", "-n", namespace, "-f", str(STORY))
        name = yaml.safe_load(STORY.read_text())["metadata"]["name"]
        service = wait_until(
            lambda: converged(api, namespace, name),
            CONVERGE_S,
            "the sample in the release namespace to converge",
            operator,
        )
        nodes = api.node_labels()
        gpu_label = accelerator_facts("nvidia-h100").node_labels
        for role in ("prefill", "decode"):
            pods = api.pods(namespace, f"{LABEL_SERVICE}={name},{LABEL_ROLE}={role}")
            assert len(pods) == service["spec"][role]["replicas"]
            for pod in pods:
                labels = nodes[pod["spec"]["nodeName"]]
                assert gpu_label.items() <= labels.items(), labels
        foreign = api.llmservice(outside, name)
        assert foreign is not None and "status" not in foreign
        assert not api.children(outside, name)
        cluster.kubectl("delete", "llmservice", name, "-n", outside)


@pytest.mark.timeout(240)
def test_helm_upgrade_changes_the_operator_not_the_crd(
    cluster: Cluster, release: tuple[str, str]
) -> None:
    namespace, _ = release
    crd_before = cluster.get("crd", CRD)
    helm_ok(
        cluster,
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--reuse-values",
        "--set",
        "operator.workerImage=registry.example/pdserve:2",
        "--wait",
        "--timeout",
        "120s",
    )
    container = cluster.get("deployment", OPERATOR, "-n", namespace)["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["PDSERVE_IMAGE"] == "registry.example/pdserve:2"
    crd_after = cluster.get("crd", CRD)
    assert crd_after["metadata"]["resourceVersion"] == crd_before["metadata"]["resourceVersion"]
    annotations = crd_after["metadata"].get("annotations") or {}
    assert "meta.helm.sh/release-name" not in annotations


@pytest.mark.timeout(240)
def test_helm_uninstall_leaves_the_crd(cluster: Cluster) -> None:
    release = "pdserve-gone"
    with cluster.namespace("helm-uninstall") as namespace:
        helm_ok(
            cluster,
            "install",
            release,
            str(CHART),
            "-n",
            namespace,
            "--set",
            "operator.replicas=0",
            "--set",
            "rbac.namespaced=true",
            "--wait",
            "--timeout",
            "120s",
        )
        selector = f"app.kubernetes.io/instance={release}"
        assert cluster.get("clusterroles", "-l", selector)["items"]
        helm_ok(cluster, "uninstall", release, "-n", namespace, "--wait", "--timeout", "120s")
        for kinds in (
            "clusterroles,clusterrolebindings",
            "deployments,serviceaccounts,roles,rolebindings",
        ):
            left = cluster.get(kinds, "-A", "-l", selector)["items"]
            assert not left, [item["metadata"]["name"] for item in left]
        assert cluster.get("crd", CRD)["metadata"]["name"] == CRD

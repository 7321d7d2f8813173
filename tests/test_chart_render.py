"""The chart rendered by the real helm: lint, objects, security, RBAC, values schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests_generator import GENERATE

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "pdserve"
RELEASE_NAMESPACE = "serving"


HELM = GENERATE.find_helm()
pytestmark = [
    pytest.mark.skipif(HELM is None, reason="helm not built (make cluster-build) nor on PATH"),
    pytest.mark.timeout(60),
]
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=60, check=False
    )


def render(*sets: str) -> list[dict[str, Any]]:
    args = [
        "template",
        "pdserve",
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--kube-version",
        "1.30.0",
    ]
    for item in sets:
        args += ["--set", item]
    done = helm(*args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [obj for obj in objects if obj["kind"] == kind]
    assert len(matches) == 1, f"{len(matches)} {kind} objects"
    return matches[0]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["rbac.namespaced=true"],
        ["monitors.enabled=true"],
        ["grafanaDashboard.enabled=true", "grafanaDashboard.namespace=grafana"],
        ["operator.replicas=0"],
        ["serviceAccount.create=false", "serviceAccount.name=existing"],
    ],
)
def test_helm_lint_is_clean(sets: list[str]) -> None:
    args = ["lint", str(CHART), "--strict", "--kube-version", "1.30.0"]
    for item in sets:
        args += ["--set", item]
    done = helm(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


def test_default_objects() -> None:
    kinds = sorted(obj["kind"] for obj in render())
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount",
                     "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]


def test_the_pod_patch_policy_binds_the_operators_own_account() -> None:
    """RBAC's `patch pods` is narrowed to the deletion-cost annotation for exactly the account
    the operator runs as (e2e/test_operator_install.py tries it on the real apiserver)."""
    objects = render("serviceAccount.name=custom-sa")
    policy = one(objects, "ValidatingAdmissionPolicy")
    [condition] = policy["spec"]["matchConditions"]
    account = one(objects, "ServiceAccount")["metadata"]
    assert account["name"] == "custom-sa"
    assert condition["expression"] == (
        f'request.userInfo.username == "system:serviceaccount:{RELEASE_NAMESPACE}:custom-sa"')
    binding = one(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"],
                               "validationActions": ["Deny"]}


def test_every_object_carries_the_recommended_labels() -> None:
    for obj in render("monitors.enabled=true", "grafanaDashboard.enabled=true",
                      "rbac.namespaced=true"):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "pdserve", obj["kind"]
        assert labels["app.kubernetes.io/instance"] == "pdserve"
        assert labels["app.kubernetes.io/version"] == APP_VERSION
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/component"] == "operator"


def test_operator_deployment_is_a_restricted_singleton() -> None:
    objects = render()
    deployment = one(objects, "Deployment")
    assert deployment["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    container = operator_container(objects)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["resources"]["limits"]["memory"]


def test_probes_hit_the_operator_health_port() -> None:
    container = operator_container(render("operator.healthPort=9444", "operator.metricsPort=9445"))
    assert container["ports"] == [
        {"name": "health", "containerPort": 9444, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9445, "protocol": "TCP"},
    ]
    assert {"--health-port=9444", "--metrics-port=9445"} <= set(container["args"])
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_command_and_default_images() -> None:
    container = operator_container(render())
    assert container["command"] == ["pdserve", "operator"]
    assert "--all-namespaces" in container["args"]
    assert container["image"] == f"pdserve:{APP_VERSION}"
    assert env_of(container)["PDSERVE_IMAGE"] == f"pdserve:{APP_VERSION}"


def test_image_values() -> None:
    container = operator_container(
        render("image.repository=registry.example/pdserve", "image.tag=1.2.3")
    )
    assert container["image"] == "registry.example/pdserve:1.2.3"
    assert env_of(container)["PDSERVE_IMAGE"] == "registry.example/pdserve:1.2.3"
    container = operator_container(render("operator.workerImage=registry.example/worker:cuda"))
    assert container["image"] == f"pdserve:{APP_VERSION}"
    assert env_of(container)["PDSERVE_IMAGE"] == "registry.example/worker:cuda"


def test_replicas_zero_keeps_everything_but_the_running_operator() -> None:
    objects = render("operator.replicas=0")
    assert one(objects, "Deployment")["spec"]["replicas"] == 0
    assert one(objects, "ClusterRole")


def rules_by_resource(role: dict[str, Any]) -> dict[str, set[str]]:
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "*" not in rule["apiGroups"], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault(f"{group}/{resource}", set()).update(rule["verbs"])
    return granted


# What exactly is granted is proven against the audit log of the e2e suite
# (e2e/test_rbac_audit.py); here, how the two modes split it.
DISCOVERY = {"apiextensions.k8s.io/customresourcedefinitions", "/namespaces"}


def test_cluster_rbac_is_the_namespaced_role_plus_discovery() -> None:
    objects = render()
    namespaced = render("rbac.namespaced=true")
    assert rules_by_resource(one(objects, "ClusterRole")) == (
        rules_by_resource(one(namespaced, "Role"))
        | rules_by_resource(one(namespaced, "ClusterRole")))
    assert {"list", "watch"} == rules_by_resource(one(objects, "ClusterRole"))["/namespaces"]
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(objects, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pdserve-operator", "namespace": RELEASE_NAMESPACE}
    ]


def test_namespaced_rbac_confines_the_operator_to_its_namespace() -> None:
    objects = render("rbac.namespaced=true")
    role = one(objects, "Role")
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert not set(rules_by_resource(role)) & DISCOVERY
    binding = one(objects, "RoleBinding")
    assert binding["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    # Only read-only discovery stays cluster-wide.
    discovery = rules_by_resource(one(objects, "ClusterRole"))
    assert set(discovery) == DISCOVERY
    assert all(verbs <= {"get", "list", "watch"} for verbs in discovery.values())
    assert one(objects, "ClusterRoleBinding")["roleRef"]["kind"] == "ClusterRole"
    args = operator_container(objects)["args"]
    assert f"--namespace={RELEASE_NAMESPACE}" in args and "--all-namespaces" not in args


def test_no_rbac_when_disabled() -> None:
    kinds = {obj["kind"] for obj in render("rbac.create=false")}
    assert kinds == {"Deployment", "ServiceAccount"}


def test_monitors_are_optional() -> None:
    kinds = {obj["kind"] for obj in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "Service"}
    objects = render("monitors.enabled=true", "monitors.labels.release=prom")
    monitors = {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects
                if obj["kind"] in ("ServiceMonitor", "PodMonitor")}
    assert set(monitors) == {("ServiceMonitor", "pdserve-operator"),
                             ("PodMonitor", "pdserve-workloads")}
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "prom"
    workloads = monitors[("PodMonitor", "pdserve-workloads")]["spec"]
    # Every pod the operator creates (tests/test_scrape_labels.py checks the relabelings).
    assert workloads["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "pdserve",
        "app.kubernetes.io/managed-by": "pdserve-operator",
    }
    assert workloads["namespaceSelector"] == {"any": True}
    (endpoint,) = workloads["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http", "/metrics", "15s")
    # The operator's monitor reaches its metrics port through the metrics Service.
    service = one(objects, "Service")
    operator_monitor = monitors[("ServiceMonitor", "pdserve-operator")]["spec"]
    selected = operator_monitor["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert (
        service["spec"]["selector"] == one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    )
    (endpoint,) = operator_monitor["endpoints"]
    assert service["spec"]["ports"][0]["targetPort"] == endpoint["port"]
    assert endpoint["path"] == "/metrics"
    namespaced = render("monitors.enabled=true", "rbac.namespaced=true")
    for monitor in (obj for obj in namespaced if obj["kind"] in ("ServiceMonitor", "PodMonitor")):
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}


def test_grafana_dashboard_is_optional() -> None:
    assert "ConfigMap" not in {obj["kind"] for obj in render()}
    configmap = one(render("grafanaDashboard.enabled=true"), "ConfigMap")
    assert configmap["metadata"]["namespace"] == RELEASE_NAMESPACE
    # Grafana's sidecar loads ConfigMaps by this label (kube-prometheus-stack's default).
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["pdserve.json"]) == json.loads(
        (CHART / "dashboards" / "pdserve.json").read_text())
    moved = one(render("grafanaDashboard.enabled=true", "grafanaDashboard.namespace=grafana",
                       "grafanaDashboard.annotations.grafana_folder=LLM"), "ConfigMap")
    assert moved["metadata"]["namespace"] == "grafana"
    assert moved["metadata"]["annotations"] == {"grafana_folder": "LLM"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("bogus=1", "additional properties 'bogus' not allowed"),
        ("operator.replicas=2", "/operator/replicas"),
        ("operator.replicaCount=1", "'replicaCount' not allowed"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("monitors.interval=soon", "/monitors/interval"),
        ("grafanaDashboard.namespace=Grafana", "/grafanaDashboard/namespace"),
        ("rbac.namespaced=maybe", "/rbac/namespaced"),
        ("operator.tolerations[0].effect=Never", "/operator/tolerations/0/effect"),
    ],
)
def test_schema_rejects_bad_values(bad: str, message: str) -> None:
    done = helm("template", "pdserve", str(CHART), "--kube-version", "1.30.0", "--set", bad)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_chart_crds_are_not_templates() -> None:
    # Helm's crds/ directory: installed on first install, never upgraded or deleted by Helm.
    kinds = {obj["kind"] for obj in render()}
    assert "CustomResourceDefinition" not in kinds
    assert any((CHART / "crds").glob("*.yaml"))


@pytest.mark.parametrize("sets", [[], ["rbac.namespaced=true"]])
def test_operator_command_line_is_accepted_by_the_operator(sets: list[str], tmp_path: Path) -> None:
    container = operator_container(render(*sets))
    missing = tmp_path / "no-kubeconfig"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pdserve",
            *container["command"][1:],
            *container["args"],
            "--kubeconfig",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Arguments parsed; it stopped only at the missing credentials.
    assert done.returncode == 2
    assert f"no kubeconfig at {missing}" in done.stderr, done.stderr

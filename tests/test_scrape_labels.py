"""The label contract: the planner selects by exactly the labels that the chart's PodMonitor and
manifests/prometheus/scrape-config.yaml give router and worker series, from the same sources,
and both select the pods the operator renders."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests_generator import GENERATE
from promql_names import exported_series, names

from e2e import kubernetes_scrape
from pdserve.api import LLMServiceSpec
from pdserve.autoscaler.prometheus_source import PrometheusSource, Selector, queries
from pdserve.autoscaler.scrape_labels import SOURCES, pod_label_meta
from pdserve.controller.context import Owner
from pdserve.controller.names import LABEL_ROLE, LABEL_SERVICE
from pdserve.controller.render import render_children

ROOT = Path(__file__).resolve().parents[1]
HELM = GENERATE.find_helm()
CONTRACT = {label: [source] for label, source in SOURCES.items()}
pytestmark = pytest.mark.timeout(60)


def planner_promql() -> list[str]:
    sel = Selector("ns", "svc")
    asked: list[str] = []
    PrometheusSource("http://unused", query=lambda q: asked.append(q) or []).in_flight_by_pod(
        sel, "decode")
    return [*queries(sel).values(), *asked]


def copied_labels(rules: list[dict[str, Any]], source: str, target: str) -> dict[str, list[str]]:
    """Target label -> source labels of the relabelings that copy a value verbatim."""
    copies = [rule for rule in rules if rule.get("action", "replace") == "replace"]
    for rule in copies:
        assert "regex" not in rule and "replacement" not in rule, rule
    return {rule[target]: rule[source] for rule in copies}


def scrape_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(kubernetes_scrape.SCRAPE_CONFIG.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def rendered_pods() -> list[dict[str, Any]]:
    children = render_children(LLMServiceSpec.model_validate(
        {"model": {"source": {"builtin": "tiny"}}}), Owner("chat", "team-a", "uid"), "img")
    return [child["spec"]["template"] for child in children if child["kind"] == "Deployment"]


def port_names(pod: dict[str, Any]) -> set[str]:
    return {port["name"] for c in pod["spec"]["containers"] for port in c.get("ports", [])}


def test_the_contract_reads_the_pod_labels_the_operator_sets() -> None:
    assert SOURCES["role"] == pod_label_meta(LABEL_ROLE) == (
        "__meta_kubernetes_pod_label_pdserve_dev_role")
    assert SOURCES["llmservice"] == pod_label_meta(LABEL_SERVICE)
    for pod in rendered_pods():
        assert {LABEL_ROLE, LABEL_SERVICE} <= set(pod["metadata"]["labels"])


def test_the_planner_selects_by_exactly_the_contract_labels() -> None:
    used: set[str] = set()
    series = exported_series()
    for promql in planner_promql():
        found = names(promql)
        used |= found.labels()
        for selector in found.selectors:
            assert selector.metric in series, selector.metric
    assert used == set(SOURCES)


def test_plain_prometheus_config_gives_the_contract_labels() -> None:
    job = scrape_jobs()["pdserve-workloads"]
    assert copied_labels(job["relabel_configs"], "source_labels", "target_label") == CONTRACT
    assert {"action": "keep", "regex": "http",
            "source_labels": ["__meta_kubernetes_pod_container_port_name"]} in job[
        "relabel_configs"]
    (discovery,) = job["kubernetes_sd_configs"]
    assert discovery["role"] == "pod"
    (selector,) = discovery["selectors"]
    required = dict(term.split("=") for term in selector["label"].split(","))
    for pod in rendered_pods():
        assert required.items() <= pod["metadata"]["labels"].items()
        assert "http" in port_names(pod)


def test_in_cluster_settings_are_the_only_ones_a_test_replaces(tmp_path: Path) -> None:
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    moved = kubernetes_scrape.scrape_configs("https://127.0.0.1:6443", token, ca, ["team-a"])
    original = list(scrape_jobs().values())
    assert len(moved) == len(original)
    for job, before in zip(moved, original, strict=True):
        for discovery, was in zip(job["kubernetes_sd_configs"], before["kubernetes_sd_configs"],
                                  strict=True):
            assert was["api_server"] == "https://kubernetes.default.svc"
            assert was["authorization"]["credentials_file"] == (
                "/var/run/secrets/kubernetes.io/serviceaccount/token")
            assert was["tls_config"]["ca_file"] == (
                "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
            assert discovery == {**was, "api_server": "https://127.0.0.1:6443",
                                 "authorization": {"credentials_file": str(token)},
                                 "tls_config": {"ca_file": str(ca)},
                                 "namespaces": {"names": ["team-a"]}}
        rest = {key: value for key, value in job.items() if key != "kubernetes_sd_configs"}
        assert rest == {key: value for key, value in before.items()
                        if key != "kubernetes_sd_configs"}


def helm_template(*sets: str) -> list[dict[str, Any]]:
    if HELM is None:
        pytest.skip("helm not built (make cluster-build) nor on PATH: chart monitors unchecked")
    args = [str(HELM), "template", "pdserve", str(GENERATE.CHART), "--namespace", "serving",
            "--kube-version", GENERATE.KUBE_VERSION]
    for item in sets:
        args += ["--set", item]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_chart_pod_monitor_gives_the_contract_labels() -> None:
    objects = helm_template("monitors.enabled=true")
    (monitor,) = [obj for obj in objects if obj["kind"] == "PodMonitor"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert copied_labels(endpoint["relabelings"], "sourceLabels", "targetLabel") == CONTRACT
    assert endpoint["port"] == "http"
    # The same pods as the plain Prometheus configuration.
    (discovery,) = scrape_jobs()["pdserve-workloads"]["kubernetes_sd_configs"]
    (selector,) = discovery["selectors"]
    required = dict(term.split("=") for term in selector["label"].split(","))
    assert monitor["spec"]["selector"] == {"matchLabels": required}


def test_both_configurations_scrape_the_operator_with_its_own_labels() -> None:
    objects = helm_template("monitors.enabled=true")
    operator_pod = next(obj for obj in objects if obj["kind"] == "Deployment")["spec"]["template"]
    job = scrape_jobs()["pdserve-operator"]
    assert job["honor_labels"] is True
    (discovery,) = job["kubernetes_sd_configs"]
    (selector,) = discovery["selectors"]
    required = dict(term.split("=") for term in selector["label"].split(","))
    assert required.items() <= operator_pod["metadata"]["labels"].items()
    keep = next(rule for rule in job["relabel_configs"] if rule.get("action") == "keep")
    assert keep["regex"] in port_names(operator_pod)
    monitor = next(obj for obj in objects if obj["kind"] == "ServiceMonitor")
    assert [endpoint["honorLabels"] for endpoint in monitor["spec"]["endpoints"]] == [True]

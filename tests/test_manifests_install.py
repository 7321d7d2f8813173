"""manifests/install.yaml is the chart's default rendering, committed, and never stale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests_generator import GENERATE

ROOT = Path(__file__).resolve().parents[1]


HELM = GENERATE.find_helm()


def installed() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(GENERATE.INSTALL_YAML.read_text()) if doc]


@pytest.mark.skipif(HELM is None, reason="helm not built (make cluster-build) nor on PATH")
@pytest.mark.timeout(60)
def test_install_yaml_is_up_to_date() -> None:
    fresh = GENERATE.render(HELM)
    assert GENERATE.INSTALL_YAML.read_text() == fresh, (
        "manifests/install.yaml is stale: run `python manifests/generate.py`"
    )


@pytest.mark.timeout(10)
def test_install_yaml_applies_in_order() -> None:
    kinds = [obj["kind"] for obj in installed()]
    # kubectl apply goes in file order: the namespace and the CRD before what uses them.
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"]
    assert set(kinds[2:]) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
                              "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


@pytest.mark.timeout(10)
def test_install_yaml_targets_its_namespace() -> None:
    objects = installed()
    namespace = objects[0]
    assert namespace["metadata"]["name"] == GENERATE.NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] in ("ServiceAccount", "Deployment"):
            assert obj["metadata"]["namespace"] == GENERATE.NAMESPACE, obj["kind"]


@pytest.mark.timeout(10)
def test_install_yaml_holds_the_generated_crd() -> None:
    crd = installed()[1]
    source = yaml.safe_load((ROOT / "crds" / "pdserve.dev_llmservices.yaml").read_text())
    assert crd == source

"""The Argo CD Application example installs this repository's chart with valid values."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests_generator import GENERATE

ROOT = Path(__file__).resolve().parents[1]
APPLICATION = ROOT / "manifests" / "argocd" / "application.yaml"


def application() -> dict[str, Any]:
    app: dict[str, Any] = yaml.safe_load(APPLICATION.read_text())
    return app


@pytest.mark.timeout(10)
def test_application_points_at_the_chart() -> None:
    app = application()
    assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
    source = app["spec"]["source"]
    assert (ROOT / source["path"] / "Chart.yaml").is_file(), source["path"]
    assert "REPLACE-ME" in source["repoURL"], "the repo URL must be an obvious placeholder"
    options = app["spec"]["syncPolicy"]["syncOptions"]
    # The CRD is too large for client-side apply's last-applied annotation.
    assert "ServerSideApply=true" in options and "CreateNamespace=true" in options
    assert app["spec"]["destination"]["namespace"] == "pdserve-system"


@pytest.mark.timeout(60)
def test_application_values_render_the_chart(tmp_path: Path) -> None:
    helm = GENERATE.find_helm()
    if helm is None:
        pytest.skip("helm not built (make cluster-build) nor on PATH")
    source = application()["spec"]["source"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(source["helm"]["valuesObject"]))
    # What Argo CD runs: helm template with the release name, namespace and values (the schema
    # rejects any value the chart does not know).
    done = subprocess.run(
        [
            str(helm),
            "template",
            source["helm"]["releaseName"],
            str(ROOT / source["path"]),
            "--namespace",
            application()["spec"]["destination"]["namespace"],
            "--kube-version",
            "1.30.0",
            "--include-crds",
            "--values",
            str(values),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(done.stdout) if doc}
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole"} <= kinds

"""`pdserve plan --output yaml` as users run it: the command's manifest for each built-in
workload is accepted by the real apiserver (server-side dry run against the installed CRD)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from e2e.cluster.session import Cluster
from e2e.operator_harness import install_manifests
from pdserve.planning.workload import BUILTIN_WORKLOADS

pytestmark = [pytest.mark.e2e]

# Per workload: a model and targets the default catalogue meets at a modest rate.
CASES = {
    "summarization": ("llama-3.1-8b", "4", "2000", "50"),
    "story": ("llama-3.1-8b", "4", "1000", "40"),
    "agentic": ("qwen3-32b", "2", "1500", "50"),
    "balanced": ("llama-3.1-70b", "1", "3000", "60"),
}


@pytest.fixture(scope="module")
def namespace(cluster: Cluster) -> Iterator[str]:
    install_manifests(cluster)
    with cluster.namespace("plans") as name:
        yield name


def test_every_builtin_workload_has_a_case() -> None:
    assert set(CASES) == set(BUILTIN_WORKLOADS)


@pytest.mark.parametrize("workload", sorted(CASES))
@pytest.mark.timeout(180)
def test_plan_yaml_is_accepted_by_the_apiserver(cluster: Cluster, namespace: str,
                                                workload: str) -> None:
    model, rate, ttft, tpot = CASES[workload]
    done = subprocess.run(
        [sys.executable, "-m", "pdserve", "plan", "--model", model, "--workload", workload,
         "--rate", rate, "--ttft-ms", ttft, "--tpot-ms", tpot, "--output", "yaml"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = yaml.safe_load(done.stdout)
    assert manifest["kind"] == "LLMService" and manifest["metadata"]["name"] == workload
    cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                    input=done.stdout)
